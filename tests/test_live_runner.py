"""Live Runner: the readiness route go-livepeer polls, and the heartbeat advertiser against a fake
go-livepeer over real loopback HTTP."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from fractions import Fraction
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI

from byoc_orch.advertisers.heartbeat import LiveRunnerHeartbeatAdvertiser, go_duration
from byoc_orch.advertisers.live_runner import WorkerStatus, live_runner_router
from byoc_orch.capabilities import CapabilityRegistry, ReplicaShare
from byoc_orch.metrics import Metrics
from byoc_orch.worker_state import State
from tests.conftest import eventually
from tests.fake_livepeer import FakeLivepeer
from tests.manual_clock import ManualClock
from tests.test_byoc_register import PUBLIC, SECRET, TOKEN, capability, settings_for

# --------------------------------------------------------------------------- readiness route


@pytest.fixture
def states() -> dict[str, WorkerStatus]:
    return {"w1": WorkerStatus(State.STARTING, None)}


@pytest.fixture
async def client(states: dict[str, WorkerStatus]) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(live_runner_router(states.get))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://byoc-orch") as http:
        yield http


async def test_readiness_flips_with_the_worker_state(
    client: httpx.AsyncClient, states: dict[str, WorkerStatus]
) -> None:
    starting = await client.get("/live-runner/w1/health")
    assert starting.status_code == 503
    assert starting.json() == {
        "status": "unavailable",
        "worker_id": "w1",
        "state": "starting",
        "reason": None,
    }
    states["w1"] = WorkerStatus(State.WARM, None)
    warm = await client.get("/live-runner/w1/health")
    assert warm.status_code == 200
    assert warm.json() == {"status": "OK", "worker_id": "w1", "state": "warm"}
    assert warm.headers["cache-control"] == "no-store"
    assert (await client.head("/live-runner/w1/health")).status_code == 200
    states["w1"] = WorkerStatus(State.BACKOFF, "container died (exit 137)")
    crashed = await client.get("/live-runner/w1/health")
    assert crashed.status_code == 503
    assert crashed.json()["reason"] == "container died (exit 137)"


async def test_a_draining_replica_is_not_ready(
    client: httpx.AsyncClient, states: dict[str, WorkerStatus]
) -> None:
    states["w1"] = WorkerStatus(State.WARM, None, draining=True)
    draining = await client.get("/live-runner/w1/health")
    assert draining.status_code == 503
    assert draining.json()["state"] == "warm"
    assert "draining" in draining.json()["reason"]


async def test_readiness_of_an_unknown_worker_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/live-runner/nope/health")
    assert response.status_code == 404
    assert "nope" in response.json()["error"]


# --------------------------------------------------------------------------- heartbeats


async def test_every_warm_replica_is_a_runner_of_the_entrys_app(
    fake: FakeLivepeer, advertisers: list[LiveRunnerHeartbeatAdvertiser]
) -> None:
    registry = CapabilityRegistry()
    await start_heartbeats(advertisers, fake.url, registry)
    shares = tuple(
        ReplicaShare(f"w1-r{i}", i, f"{PUBLIC}/proxy/w1-r{i}", 1, gpu={"id": str(i)})
        for i in range(3)
    )
    cap = capability(capacity=3, replicas=shares)
    registry.set_warm(cap)
    await eventually(lambda: len(fake.runners) == 3, what="three runners")
    runners = sorted(fake.runners.values(), key=lambda r: r["label"])
    assert [r["label"] for r in runners] == ["w1-r0", "w1-r1", "w1-r2"]
    assert {r["app"] for r in runners} == {"live-video-to-video/m1"}
    assert [r["runner_url"] for r in runners] == [s.url for s in shares]
    assert [r["capacity"] for r in runners] == [1, 1, 1]
    assert [r["gpu"]["id"] for r in runners] == ["0", "1", "2"]
    # One replica dies: only its runner goes; a session shows up in its holder's heartbeat.
    busy = replace(shares[0], in_use=1, session_ids=("s-1",))
    registry.set_warm(replace(cap, capacity=2, replicas=(busy, shares[2])))
    await eventually(lambda: len(fake.runners) == 2, what="the dead replica's runner gone")
    assert {r["label"] for r in fake.runners.values()} == {"w1-r0", "w1-r2"}
    await eventually(
        lambda: any(r.get("session_ids") == ["s-1"] for r in fake.runners.values()),
        what="session ids heartbeated",
    )


def test_go_durations() -> None:
    assert go_duration("5s", 1) == 5
    assert go_duration("1m30s", 1) == 90
    assert go_duration("200ms", 1) == pytest.approx(0.2)
    assert go_duration("1.5s", 1) == 1.5
    assert go_duration("0s", 7) == 7
    assert go_duration("soon", 7) == 7
    assert go_duration(None, 7) == 7


@pytest.fixture
async def fake() -> AsyncIterator[FakeLivepeer]:
    orch = FakeLivepeer(SECRET, heartbeat_interval=0.2, heartbeat_ttl=5.0)
    await orch.start()
    yield orch
    await orch.stop()


@pytest.fixture
async def advertisers() -> AsyncIterator[list[LiveRunnerHeartbeatAdvertiser]]:
    made: list[LiveRunnerHeartbeatAdvertiser] = []
    yield made
    for adv in made:
        await adv.aclose(unregister=False)


async def start_heartbeats(
    made: list[LiveRunnerHeartbeatAdvertiser],
    orch_url: str,
    registry: CapabilityRegistry,
    clock: Callable[[], float] = time.monotonic,
    **overrides: Any,
) -> LiveRunnerHeartbeatAdvertiser:
    settings = settings_for(orch_url, live_runner_heartbeat=True, **overrides)
    adv = LiveRunnerHeartbeatAdvertiser(
        settings, registry, httpx.AsyncClient(trust_env=False), Metrics(), clock=clock
    )
    made.append(adv)
    await adv.start()
    return adv


def heartbeats(fake: FakeLivepeer) -> list[Any]:
    return fake.calls_to("/runners/heartbeat")


async def test_warm_worker_becomes_a_heartbeating_runner(
    fake: FakeLivepeer, advertisers: list[LiveRunnerHeartbeatAdvertiser]
) -> None:
    registry = CapabilityRegistry()
    adv = await start_heartbeats(advertisers, fake.url, registry)
    usd = {"price_per_unit": Fraction(3), "pixels_per_unit": Fraction(10**9), "currency": "USD"}
    registry.set_warm(capability(**usd))
    await eventually(lambda: len(fake.runners) == 1, what="runner registered")
    (runner,) = fake.runners.values()
    assert runner["app"] == "live-video-to-video/m1"
    assert runner["runner_url"] == f"{PUBLIC}/proxy/w1"
    assert (runner["status"], runner["mode"], runner["capacity"]) == ("ready", "persistent", 2)
    assert runner["price_info"] == {"price": "298.5984", "currency": "usd", "unit": "720p"}
    await eventually(lambda: len(heartbeats(fake)) >= 4, what="keeps heartbeating")
    first, *rest = heartbeats(fake)
    assert first.authorization == SECRET
    assert all(c.authorization not in (SECRET, None, "") for c in rest)
    assert all(json.loads(c.body)["runner_id"] == runner["runner_id"] for c in rest)
    gaps = [b.at - a.at for a, b in itertools.pairwise(rest)]
    assert all(gap > 0.1 for gap in gaps)
    assert adv.describe()["registered"] == [f"live-video-to-video/m1 ({runner['runner_id']})"]


async def test_withdrawn_worker_is_unregistered_at_once(
    fake: FakeLivepeer, advertisers: list[LiveRunnerHeartbeatAdvertiser]
) -> None:
    """At once, exactly: the advertiser's clock stands still, so no heartbeat falls due and
    only the change itself can send the calls."""
    clock = ManualClock()
    fake.clock = lambda: clock.now
    registry = CapabilityRegistry()
    await start_heartbeats(advertisers, fake.url, registry, clock)
    registry.set_warm(capability())
    await eventually(lambda: len(fake.runners) == 1, what="registered")
    (runner_id,) = fake.runners
    withdrawn_at = clock.now
    registry.withdraw("w1")
    await eventually(lambda: not fake.runners, what="unregistered")
    (call,) = fake.calls_to(f"/runners/{runner_id}/unregister")
    assert call.status == 204 and call.at - withdrawn_at < 1.0
    assert call.at == withdrawn_at
    registry.set_warm(capability())
    await eventually(lambda: len(fake.runners) == 1, what="back")
    assert heartbeats(fake)[-1].at == withdrawn_at


async def test_go_livepeer_restart_is_healed_by_the_next_heartbeat(
    fake: FakeLivepeer, advertisers: list[LiveRunnerHeartbeatAdvertiser]
) -> None:
    registry = CapabilityRegistry()
    await start_heartbeats(advertisers, fake.url, registry)
    registry.set_warm(capability("w1", "m1"))
    registry.set_warm(capability("w2", "m2"))
    await eventually(lambda: len(fake.runners) == 2, what="registered")
    before = set(fake.runners)
    restarted_at = fake.clock()
    await fake.restart(downtime=0.3)
    await eventually(lambda: len(fake.runners) == 2, within=3, what="registered again")
    assert set(fake.runners) == before, "the same proposed runner ids, registered again"
    bootstraps = [
        c
        for c in fake.calls_to("/runners/heartbeat")
        if c.at > restarted_at and c.authorization == SECRET and c.status == 200
    ]
    assert len(bootstraps) == 2
    assert {r["app"] for r in fake.runners.values()} == {
        "live-video-to-video/m1",
        "live-video-to-video/m2",
    }


async def test_capacity_changes_ride_the_next_heartbeat(
    fake: FakeLivepeer, advertisers: list[LiveRunnerHeartbeatAdvertiser]
) -> None:
    """The next heartbeat is sent at once for a change: with the clock standing still, no
    periodic one is due, yet the capacity arrives."""
    clock = ManualClock()
    registry = CapabilityRegistry()
    await start_heartbeats(advertisers, fake.url, registry, clock)
    registry.set_warm(capability(capacity=2))
    await eventually(lambda: len(fake.runners) == 1, what="registered")
    (runner_id,) = fake.runners
    sent = len(heartbeats(fake))
    registry.set_warm(capability(capacity=5))
    await eventually(lambda: fake.runners[runner_id]["capacity"] == 5, what="capacity")
    assert len(heartbeats(fake)) == sent + 1


async def test_refused_secret_and_disabled_runners_are_reported_and_not_hammered(
    advertisers: list[LiveRunnerHeartbeatAdvertiser],
) -> None:
    """Exactly, on clocks moved by hand: one single heartbeat each time `register_retry_max`
    has passed, for the two replicas together, and none in between."""
    wrong = FakeLivepeer("the-right-one", heartbeat_interval=0.2)
    disabled = FakeLivepeer(SECRET, live_runners=False)
    clocks = [ManualClock(), ManualClock()]
    await wrong.start()
    await disabled.start()
    try:
        with structlog.testing.capture_logs() as logs:
            registry = CapabilityRegistry()
            refused = await start_heartbeats(
                advertisers, wrong.url, registry, clocks[0], register_retry_max=0.25
            )
            off = await start_heartbeats(
                advertisers, disabled.url, registry, clocks[1], register_retry_max=0.25
            )
            registry.set_warm(capability("w1", "m1"))
            registry.set_warm(capability("w2", "m2"))
            await eventually(
                lambda: refused.describe()["state"] == off.describe()["state"] == "refused",
                what="both refused",
            )
            await moved(clocks, 0, reads=2)  # the refusing passes are over
            began = [len(heartbeats(orch)) for orch in (wrong, disabled)]
            for _ in range(4):  # one second of each advertiser's time
                before = [len(heartbeats(orch)) for orch in (wrong, disabled)]
                await moved(clocks, 0.1875, reads=3)  # a pass, its next sleep, the next pass
                assert [len(heartbeats(orch)) for orch in (wrong, disabled)] == before
                # a pass, the answer (read twice: the heartbeat and its outcome), the next sleep
                await moved(clocks, 0.0625, reads=4)
                assert [len(heartbeats(orch)) for orch in (wrong, disabled)] == [
                    n + 1 for n in before
                ]
        for orch, first in zip((wrong, disabled), began, strict=True):
            window = heartbeats(orch)[first:]
            assert 1 <= len(window) <= 1.0 / 0.25 + 1
            assert len(window) == 4
        errors = [e["event"] for e in logs if e["log_level"] == "error"]
        assert len(errors) == 2
        assert any("401" in e and "BYOC_ORCH_ORCH_SECRET" in e for e in errors)
        assert any("-useLiveRunners" in e for e in errors)
        assert SECRET not in repr(logs)
        wrong.secret = SECRET
        clocks[0].advance(0.25)
        await eventually(lambda: len(wrong.runners) == 2, within=2, what="accepted once fixed")
    finally:
        await wrong.stop()
        await disabled.stop()


async def moved(clocks: list[ManualClock], seconds: float, *, reads: int) -> None:
    """Move every clock, then wait until each has been read `reads` times since."""
    for clock in clocks:
        clock.advance(seconds)
    for clock in clocks:
        await clock.read(reads)


async def test_on_chain_without_usd_price_is_rejected_once(
    advertisers: list[LiveRunnerHeartbeatAdvertiser],
) -> None:
    orch = FakeLivepeer(SECRET, onchain=True, heartbeat_interval=0.2)
    await orch.start()
    try:
        registry = CapabilityRegistry()
        adv = await start_heartbeats(advertisers, orch.url, registry)
        registry.set_warm(capability("w1", "free"))
        registry.set_warm(capability("w2", "paid", price_per_unit=Fraction(1), currency="usd"))
        await eventually(lambda: len(orch.runners) == 1, what="the priced one registered")
        await eventually(lambda: len(heartbeats(orch)) >= 5, what="heartbeats go on")
        rejected = adv.describe()["rejected"]
        assert "price_info.price is required" in rejected["live-video-to-video/free"]
        assert len([c for c in heartbeats(orch) if c.status == 400]) == 1
    finally:
        await orch.stop()


async def test_aclose_unregisters_every_runner_and_secrets_stay_hidden(
    fake: FakeLivepeer, advertisers: list[LiveRunnerHeartbeatAdvertiser]
) -> None:
    registry = CapabilityRegistry()
    with structlog.testing.capture_logs() as logs:
        adv = await start_heartbeats(advertisers, fake.url, registry)
        for n in range(3):
            registry.set_warm(capability(f"w{n}", f"m{n}"))
        await eventually(lambda: len(fake.runners) == 3, what="registered")
        heartbeat_secrets = {c.authorization for c in heartbeats(fake)} - {SECRET}
        described = json.dumps(adv.describe(), default=str)
        await adv.aclose()
    assert fake.runners == {}
    text = repr(logs) + described
    for secret in {SECRET, TOKEN} | heartbeat_secrets:
        assert secret is not None and secret not in text
