"""The scaling decisions, pure: up on headroom, down after the delay, the last GPU's rule."""

from __future__ import annotations

from dataclasses import replace

from byoc_orch.aimodels.packing import Claim, Need, PoolGpu, PoolLayout, PoolState
from byoc_orch.scaling import Action, Demand, Reason, Scaler


def pool(free: int, total: int = 4) -> PoolState:
    """`total` whole GPUs, of which the first `total - free` are held by a static entry."""
    gpus = tuple(PoolGpu(str(i), None) for i in range(total))
    held = tuple(Claim("static", "static", str(i), None) for i in range(total - free))
    return PoolLayout(gpus, held).state()


def demand(entry_id: str, order: int = 0, **fields: object) -> Demand:
    base = Demand(
        entry_id=entry_id,
        order=order,
        min=1,
        max=4,
        headroom=1,
        capacity=1,
        scale_down_after=300.0,
        replicas=1,
        starting=0,
        free=1,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def test_enough_headroom_decides_nothing() -> None:
    assert Scaler().step(0.0, [demand("a")], pool(3)) == []


def test_headroom_gone_starts_one_replica_on_a_free_gpu() -> None:
    (decision,) = Scaler().step(0.0, [demand("a", free=0)], pool(3))
    assert decision.action is Action.UP
    assert decision.reason is Reason.HEADROOM
    assert decision.devices == ("1",)
    assert "0 free warm slots < headroom 1" in decision.detail


def test_a_replica_on_its_way_counts_toward_the_headroom() -> None:
    assert Scaler().step(0.0, [demand("a", free=0, replicas=2, starting=1)], pool(3)) == []


def test_below_min_starts_the_missing_replicas_at_once() -> None:
    decisions = Scaler().step(0.0, [demand("a", min=3, replicas=0, free=0)], pool(4))
    assert [(d.action, d.reason, d.devices) for d in decisions] == [
        (Action.UP, Reason.BELOW_MIN, ("0",)),
        (Action.UP, Reason.BELOW_MIN, ("1",)),
        (Action.UP, Reason.BELOW_MIN, ("2",)),
    ]


def test_never_above_max() -> None:
    assert Scaler().step(0.0, [demand("a", replicas=4, max=4, free=0)], pool(4)) == []


def test_a_burst_wants_several_replicas_in_one_step() -> None:
    decisions = Scaler().step(0.0, [demand("a", headroom=3, free=0)], pool(3))
    assert [d.action for d in decisions] == [Action.UP] * 3


def test_the_arrival_rate_times_the_cold_start_raises_the_headroom() -> None:
    busy = demand("a", free=1, arrival_rate=0.5, cold_start=6.0)
    assert busy.wanted_headroom() == 4  # 1 configured + 3 expected while one starts
    assert [d.action for d in Scaler().step(0.0, [busy], pool(3))] == [Action.UP] * 3
    assert demand("a", max=2, arrival_rate=9, cold_start=9).wanted_headroom() == 2


def test_a_surplus_retires_one_replica_only_after_the_delay() -> None:
    scaler = Scaler()
    idle = demand("a", replicas=3, free=3, scale_down_after=10.0)
    assert scaler.step(0.0, [idle], pool(1)) == []
    assert scaler.step(9.9, [idle], pool(1)) == []
    (decision,) = scaler.step(10.0, [idle], pool(1))
    assert (decision.action, decision.reason) == (Action.DOWN, Reason.IDLE)
    # the spell goes on: the next look retires another while the headroom still holds
    assert scaler.step(10.5, [replace(idle, replicas=2, free=2)], pool(2))[0].action is Action.DOWN
    # a look where it does not hold ends the spell, and the wait starts over
    assert scaler.step(11.0, [replace(idle, replicas=2, free=1)], pool(2)) == []
    assert scaler.step(12.0, [replace(idle, replicas=2, free=2)], pool(2)) == []
    assert scaler.step(22.0, [replace(idle, replicas=2, free=2)], pool(2))[0].action is Action.DOWN


def test_a_surplus_that_ends_restarts_the_wait() -> None:
    scaler = Scaler()
    idle = demand("a", replicas=3, free=3, scale_down_after=10.0)
    scaler.step(0.0, [idle], pool(1))
    scaler.step(5.0, [replace(idle, free=1)], pool(1))  # demand came back: no surplus
    assert scaler.step(12.0, [idle], pool(1)) == []
    assert scaler.step(22.0, [idle], pool(1))[0].action is Action.DOWN


def test_no_surplus_unless_the_headroom_holds_without_the_replica() -> None:
    scaler = Scaler()
    # headroom 1, capacity 2: 2 free is not enough to give up a replica (1 + 2 needed)
    almost = demand("a", replicas=2, free=2, capacity=2, scale_down_after=1.0)
    scaler.step(0.0, [almost], pool(2))
    assert scaler.step(5.0, [almost], pool(2)) == []
    enough = replace(almost, free=3)
    scaler.step(6.0, [enough], pool(2))
    assert scaler.step(7.0, [enough], pool(2))[0].action is Action.DOWN


def test_never_below_min() -> None:
    scaler = Scaler()
    at_min = demand("a", min=2, replicas=2, free=2, scale_down_after=1.0)
    scaler.step(0.0, [at_min], pool(2))
    assert scaler.step(100.0, [at_min], pool(2)) == []


def test_above_max_retires_at_once() -> None:
    decisions = Scaler().step(0.0, [demand("a", replicas=5, max=3, free=5)], pool(0))
    assert [(d.action, d.reason) for d in decisions] == [(Action.DOWN, Reason.ABOVE_MAX)] * 2


def test_a_replica_draining_away_is_taken_back_before_a_new_one_starts() -> None:
    (decision,) = Scaler().step(0.0, [demand("a", free=0, retiring=1)], pool(3))
    assert decision.action is Action.RECLAIM


def test_the_last_gpu_goes_to_the_entry_with_the_least_free_headroom() -> None:
    # b is later in the file but shorter of headroom (0 free of 2 wanted) than a (0 of 1)
    a = demand("a", order=0, free=0, headroom=1)
    b = demand("b", order=1, free=0, headroom=2)
    decisions = Scaler().step(0.0, [a, b], pool(1))
    assert [(d.entry_id, d.action) for d in decisions] == [
        ("b", Action.UP),
        ("a", Action.NO_GPU),
        ("b", Action.NO_GPU),  # still one short of its headroom of 2
    ]
    assert "no room for 1 whole GPU" in decisions[1].detail


def test_equal_shortfall_goes_in_file_order() -> None:
    a = demand("a", order=0, free=0)
    b = demand("b", order=1, free=0)
    decisions = Scaler().step(0.0, [b, a], pool(1))
    assert [(d.entry_id, d.action) for d in decisions] == [
        ("a", Action.UP),
        ("b", Action.NO_GPU),
    ]


def test_below_min_comes_before_headroom() -> None:
    a = demand("a", order=0, free=0, headroom=5)
    b = demand("b", order=1, replicas=0, free=0, min=1)
    decisions = Scaler().step(0.0, [a, b], pool(1))
    assert [(d.entry_id, d.action, d.reason) for d in decisions] == [
        ("b", Action.UP, Reason.BELOW_MIN),
        ("a", Action.NO_GPU, Reason.HEADROOM),
    ]


def test_a_smaller_replica_still_fits_where_a_whole_gpu_does_not() -> None:
    gpus = (PoolGpu("0", 24000),)
    shared = PoolState(gpus)
    shared.add(Claim("x-r0", "x", "0", 16000))
    whole = demand("a", order=0, free=0)
    small = demand("b", order=1, free=0, need=Need(1, 8000))
    decisions = Scaler().step(0.0, [whole, small], shared)
    assert [(d.entry_id, d.action, d.devices) for d in decisions] == [
        ("a", Action.NO_GPU, ()),
        ("b", Action.UP, ("0",)),
    ]


def test_a_refused_start_brings_a_replica_even_with_headroom_0() -> None:
    assert Scaler().step(0.0, [demand("a", headroom=0, free=0)], pool(3)) == []
    (decision,) = Scaler().step(0.0, [demand("a", headroom=0, free=0, refused=1)], pool(3))
    assert decision.action is Action.UP
