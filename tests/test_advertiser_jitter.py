"""Jitter on the advertisers' waits: bounded (80–100 % of the nominal wait, never longer, so a
Live Runner heartbeat is never later than the registry's interval), deterministic under an
injected random source, and enough to spread a fleet that lost its orchestrator together."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from byoc_orch.advertisers.base import JITTER, Reply, Result, jittered
from byoc_orch.advertisers.byoc_register import ByocRegisterAdvertiser
from byoc_orch.advertisers.heartbeat import LiveRunnerHeartbeatAdvertiser
from byoc_orch.capabilities import CapabilityRegistry
from byoc_orch.metrics import Metrics
from tests.conftest import eventually
from tests.fake_livepeer import FakeLivepeer
from tests.manual_clock import ManualClock
from tests.test_byoc_register import SECRET, capability, settings_for

DOWN = Reply(None, "", Result.UNAVAILABLE, "ConnectError: refused")
HOSTS = 200
OUTAGE = 300.0
"""Seconds the fleet's orchestrator is away (a restart with an upgrade, say)."""


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def test_a_jittered_wait_is_between_four_fifths_and_all_of_it() -> None:
    assert JITTER == 0.2
    for draw in (0.0, 0.25, 0.5, 0.999999, 1.0, -3.0, 7.0):
        assert 24.0 <= jittered(30.0, draw) <= 30.0
    assert jittered(30.0, 0.0) == 30.0
    assert jittered(30.0, 0.5) == pytest.approx(27.0)
    assert jittered(30.0, 1.0) == pytest.approx(24.0)


def comeback_times(
    http: httpx.AsyncClient, draw_for: Callable[[int], Callable[[], float]]
) -> list[float]:
    """When each of HOSTS hosts, all losing the orchestrator at t=0 (the worst case: the same
    instant), makes its first call after it is back at OUTAGE: the real advertiser's back-off
    decisions, default retry settings (1 s doubling to 30 s)."""
    settings = settings_for(
        "http://127.0.0.1:9", register_retry_initial=1.0, register_retry_max=30.0
    )
    times = []
    for host in range(HOSTS):
        adv = ByocRegisterAdvertiser(
            settings, CapabilityRegistry(), http, Metrics(), draw=draw_for(host)
        )
        now = 0.0
        while now < OUTAGE:
            adv._unreachable(now, DOWN, "down")
            assert adv._retry_at > now
            now = adv._retry_at
        times.append(now)
    return times


def busiest_second(times: list[float]) -> int:
    return max(Counter(int(t) for t in times).values())


def test_without_jitter_a_fleet_comes_back_in_one_instant(http: httpx.AsyncClient) -> None:
    times = comeback_times(http, lambda host: lambda: 0.0)
    assert len(set(times)) == 1, "every host retries at the same moment: a stampede"


def test_a_fleet_backing_off_together_comes_back_spread_out(http: httpx.AsyncClient) -> None:
    times = comeback_times(http, lambda host: random.Random(host).random)
    assert all(OUTAGE <= t <= OUTAGE + 30.0 for t in times), "no host waits past retry_max"
    assert max(times) - min(times) > 20.0
    assert busiest_second(times) <= HOSTS // 10, sorted(times)
    again = comeback_times(http, lambda host: random.Random(host).random)
    assert again == times, "an injected random source makes it deterministic"


def test_each_back_off_step_stays_within_its_bounds(http: httpx.AsyncClient) -> None:
    settings = settings_for(
        "http://127.0.0.1:9", register_retry_initial=1.0, register_retry_max=30.0
    )
    rng = random.Random(7)
    adv = ByocRegisterAdvertiser(settings, CapabilityRegistry(), http, Metrics(), draw=rng.random)
    nominal = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    now = 0.0
    for step in nominal:
        adv._unreachable(now, DOWN, "down")
        waited = adv._retry_at - now
        assert (1 - JITTER) * step <= waited <= step
        now = adv._retry_at


def test_refused_retry_and_probe_are_jittered_too(http: httpx.AsyncClient) -> None:
    settings = settings_for("http://127.0.0.1:9", register_retry_max=30.0)
    shortest = ByocRegisterAdvertiser(
        settings, CapabilityRegistry(), http, Metrics(), clock=lambda: 0.0, draw=lambda: 0.999999
    )
    shortest._refused(0.0, Reply(400, "invalid authorization", Result.REFUSED), "refused")
    assert shortest._retry_at == pytest.approx(24.0, abs=1e-4)
    probe = settings.register_probe_interval
    assert shortest._next_probe == pytest.approx((1 - JITTER) * probe, abs=1e-4)
    assert shortest._next_refresh == pytest.approx(
        (1 - JITTER) * settings.register_refresh_interval, abs=1e-3
    )
    longest = ByocRegisterAdvertiser(
        settings, CapabilityRegistry(), http, Metrics(), clock=lambda: 0.0, draw=lambda: 0.0
    )
    longest._refused(0.0, Reply(400, "invalid authorization", Result.REFUSED), "refused")
    assert longest._retry_at == 30.0 and longest._next_probe == probe


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
async def test_a_heartbeat_is_never_later_than_the_registrys_interval(
    draw: float, http: httpx.AsyncClient
) -> None:
    """The registry lapses a runner after its TTL (20 s) without a heartbeat; it asks for one
    every interval (5 s). Jitter only brings a heartbeat forward, by at most a fifth."""
    orch = FakeLivepeer(SECRET, heartbeat_interval=5.0, heartbeat_ttl=20.0)
    await orch.start()
    clock = ManualClock()
    registry = CapabilityRegistry()
    adv = LiveRunnerHeartbeatAdvertiser(
        settings_for(orch.url, live_runner_heartbeat=True),
        registry,
        http,
        Metrics(),
        clock=clock,
        draw=lambda: draw,
    )
    try:
        await adv.start()
        registry.set_warm(capability())
        await eventually(lambda: len(orch.runners) == 1, what="registered")
        (runner,) = adv._runners.values()
        assert (runner.interval, runner.ttl) == (5.0, 20.0)
        wait = runner.next_due - runner.last_ok
        assert wait == pytest.approx(jittered(5.0, draw))
        assert (1 - JITTER) * runner.interval <= wait <= runner.interval < runner.ttl
    finally:
        await adv.aclose(unregister=False)
        await orch.stop()


async def test_heartbeats_of_many_runners_spread_and_stay_in_bounds(
    http: httpx.AsyncClient,
) -> None:
    """Real heartbeats on a real clock, interval 0.25 s: every gap between two heartbeats of
    one runner lies within [0.8, 1] × interval (plus scheduling slack), and the gaps differ."""
    orch = FakeLivepeer(SECRET, heartbeat_interval=0.25, heartbeat_ttl=5.0)
    await orch.start()
    registry = CapabilityRegistry()
    adv = LiveRunnerHeartbeatAdvertiser(
        settings_for(orch.url, live_runner_heartbeat=True),
        registry,
        http,
        Metrics(),
        draw=random.Random(3).random,
    )
    try:
        await adv.start()
        registry.set_warm(capability())
        await eventually(
            lambda: len(orch.calls_to("/runners/heartbeat")) >= 12, within=10, what="heartbeats"
        )
    finally:
        await adv.aclose(unregister=False)
        await orch.stop()
    beats = [c.at for c in orch.calls_to("/runners/heartbeat") if c.status == 200][1:]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert all(0.8 * 0.25 - 0.02 <= gap <= 0.25 + 0.1 for gap in gaps), gaps
    assert max(gaps) - min(gaps) > 0.01, "jittered, not a fixed period"
