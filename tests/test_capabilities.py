"""The capability registry and the aiModels.json shape of a warm capability."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any

from byoc_orch.capabilities import Capability, CapabilityRegistry, Change
from tests.conftest import with_offer


def cap(worker_id: str = "w1", model_id: str = "m1", **changes: Any) -> Capability:
    base = Capability(
        entry_id=worker_id,
        pipeline="live-video-to-video",
        model_id=model_id,
        url=f"http://127.0.0.1:9000/w/{worker_id}",
        capacity=1,
    )
    return replace(base, **with_offer(changes))


def recording(registry: CapabilityRegistry) -> list[Change]:
    seen: list[Change] = []
    registry.subscribe(seen.append)
    return seen


def test_set_warm_notifies_added() -> None:
    registry = CapabilityRegistry()
    seen = recording(registry)
    registry.set_warm(cap())
    assert seen == [Change(added=(cap(),))]
    assert registry.is_warm("w1")
    assert registry.warm() == [cap()]


def test_identical_capability_again_does_not_notify() -> None:
    registry = CapabilityRegistry()
    seen = recording(registry)
    registry.set_warm(cap())
    registry.set_warm(cap())
    assert len(seen) == 1


def test_changed_capability_replaces_the_previous_one() -> None:
    registry = CapabilityRegistry()
    seen = recording(registry)
    registry.set_warm(cap(capacity=1))
    registry.set_warm(cap(capacity=4))
    assert seen[-1] == Change(added=(cap(capacity=4),), removed=(cap(capacity=1),))
    assert registry.warm() == [cap(capacity=4)]


def test_withdraw_notifies_removed() -> None:
    registry = CapabilityRegistry()
    registry.set_warm(cap())
    seen = recording(registry)
    registry.withdraw("w1")
    assert seen == [Change(removed=(cap(),))]
    assert not registry.is_warm("w1")
    assert registry.warm() == []


def test_withdrawing_an_unknown_worker_does_nothing() -> None:
    registry = CapabilityRegistry()
    registry.set_warm(cap())
    seen = recording(registry)
    registry.withdraw("nobody")
    assert seen == []
    assert registry.is_warm("w1")


def test_withdraw_all() -> None:
    registry = CapabilityRegistry()
    registry.set_warm(cap("w1", "m1"))
    registry.set_warm(cap("w2", "m2"))
    seen = recording(registry)
    registry.withdraw_all()
    assert len(seen) == 1
    assert set(seen[0].removed) == {cap("w1", "m1"), cap("w2", "m2")}
    assert seen[0].added == ()
    assert registry.warm() == []
    registry.withdraw_all()
    assert len(seen) == 1  # nothing left to remove, nothing to say


def test_a_failing_subscriber_does_not_stop_the_others() -> None:
    registry = CapabilityRegistry()
    before = recording(registry)

    def broken(change: Change) -> None:
        raise RuntimeError("advertiser is down")

    registry.subscribe(broken)
    after = recording(registry)
    registry.set_warm(cap())
    registry.withdraw("w1")
    assert len(before) == 2
    assert len(after) == 2
    assert not registry.is_warm("w1")


def test_unsubscribe() -> None:
    registry = CapabilityRegistry()
    seen: list[Change] = []
    unsubscribe = registry.subscribe(seen.append)
    other = recording(registry)
    registry.set_warm(cap())
    unsubscribe()
    registry.withdraw("w1")
    assert seen == [Change(added=(cap(),))]
    assert len(other) == 2


def test_aimodels_entry_with_whole_and_fractional_prices() -> None:
    entry = cap(
        capacity=2,
        price_per_unit=Fraction(1200),
        pixels_per_unit=Fraction(1, 4),
        currency="USD",
        gateway="0xabc",
    ).as_aimodels_entry()
    assert entry == {
        "pipeline": "live-video-to-video",
        "model_id": "m1",
        "url": "http://127.0.0.1:9000/w/w1",
        "warm": True,
        "capacity": 2,
        "price_per_unit": 1200,
        "pixels_per_unit": 0.25,
        "currency": "USD",
        "gateway": "0xabc",
    }
    assert type(entry["price_per_unit"]) is int
    assert type(entry["pixels_per_unit"]) is float


def test_aimodels_entry_omits_none_fields() -> None:
    entry = cap().as_aimodels_entry()
    assert entry == {
        "pipeline": "live-video-to-video",
        "model_id": "m1",
        "url": "http://127.0.0.1:9000/w/w1",
        "warm": True,
        "capacity": 1,
    }


def test_aimodels_entry_keeps_a_zero_price() -> None:
    entry = cap(price_per_unit=Fraction(0)).as_aimodels_entry()
    assert entry["price_per_unit"] == 0


def test_warm_is_sorted_by_name() -> None:
    registry = CapabilityRegistry()
    for worker_id, model_id in [("w1", "zeta"), ("w2", "alpha"), ("w3", "mid")]:
        registry.set_warm(cap(worker_id, model_id))
    assert [c.name for c in registry.warm()] == [
        "live-video-to-video/alpha",
        "live-video-to-video/mid",
        "live-video-to-video/zeta",
    ]
    assert cap(model_id="x").name == "live-video-to-video/x"
