"""The BYOC register advertiser against a fake go-livepeer over real loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from fractions import Fraction
from typing import Any

import httpx
import pytest
import structlog

from byoc_orch.advertisers import (
    ByocRegisterAdvertiser,
    LiveRunnerHeartbeatAdvertiser,
    build_advertisers,
)
from byoc_orch.advertisers.base import JITTER, display_url
from byoc_orch.advertisers.byoc_register import REFUSED_MESSAGE, byoc_price, registration_body
from byoc_orch.capabilities import Capability, CapabilityRegistry
from byoc_orch.metrics import Metrics
from byoc_orch.settings import Settings
from tests.conftest import eventually, free_port, with_offer
from tests.fake_livepeer import EXTERNAL_CAPABILITY, FakeLivepeer, go_decode
from tests.manual_clock import ManualClock

SECRET = "orch-secret-Zq81x"
TOKEN = "api-token-Kd02w"
PUBLIC = "http://10.1.2.3:9935"


class AdvertiserSettings(Settings):
    """The settings this module reads that settings.py does not have yet."""

    register_probe_interval: float = 2.0
    live_runner_heartbeat: bool = False
    byoc_register: bool = True
    orch_tls_verify: bool = False


def settings_for(orch_url: str, secret: str = SECRET, **overrides: Any) -> AdvertiserSettings:
    values: dict[str, Any] = {
        "orch_url": orch_url,
        "orch_secret": secret,
        "api_token": TOKEN,
        "public_url": PUBLIC,
        "register_refresh_interval": 30.0,
        "register_retry_initial": 0.05,
        "register_retry_max": 0.2,
        "register_probe_interval": 0.1,
    }
    values.update(overrides)
    return AdvertiserSettings(**values)


def capability(worker_id: str = "w1", model_id: str = "m1", **fields: Any) -> Capability:
    values: dict[str, Any] = {
        "entry_id": worker_id,
        "pipeline": "live-video-to-video",
        "model_id": model_id,
        "url": f"{PUBLIC}/proxy/{worker_id}",
        "capacity": 2,
    }
    values.update(with_offer(fields))
    return Capability(**values)


Start = Callable[..., Awaitable[ByocRegisterAdvertiser]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeLivepeer]:
    orch = FakeLivepeer(SECRET)
    await orch.start()
    yield orch
    await orch.stop()


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Build and start advertisers on a fresh registry; closed (without unregistering) after."""
    made: list[ByocRegisterAdvertiser] = []
    clients: list[httpx.AsyncClient] = []

    async def _start(
        settings: Settings,
        registry: CapabilityRegistry,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ByocRegisterAdvertiser:
        http = httpx.AsyncClient(trust_env=False)
        clients.append(http)
        adv = ByocRegisterAdvertiser(settings, registry, http, metrics or Metrics(), clock=clock)
        made.append(adv)
        await adv.start()
        return adv

    yield _start
    for adv in made:
        await adv.aclose(unregister=False)
    for http in clients:
        await http.aclose()


def registers(fake: FakeLivepeer) -> list[dict[str, Any]]:
    return [json.loads(c.body) for c in fake.calls_to("/capability/register") if c.status == 200]


async def probed_since(fake: FakeLivepeer, moment: float) -> None:
    """Wait until the advertiser has been idle long enough to probe once more."""
    await eventually(
        lambda: any(c.at > moment for c in fake.calls_to("/capability/register", "GET")),
        within=5,
        what="a probe after the moment",
    )


PASS_WITHOUT_CALLS = 3
"""Clock reads that prove a pass made no call: one on entering it, one for the next sleep,
one on entering the next."""
PASS_WITH_ONE_CALL = 3
"""Clock reads that prove a pass with one call is over: on entering it, on the answer, and for
the next sleep."""


async def settled(clock: ManualClock) -> None:
    """Wait until the advertiser's pass in flight (if any) is over and its next is timed."""
    clock.advance(0)
    await clock.read(2)


def calls_total(metrics: Metrics, call: str, result: str) -> float:
    labels = {"advertiser": "byoc_register", "call": call, "result": result}
    return metrics.sample("byoc_orch_advertiser_calls_total", labels) or 0.0


# --------------------------------------------------------------------------- the body


def test_registration_body_has_go_livepeer_types() -> None:
    cap = capability(price_per_unit=Fraction(3, 2), pixels_per_unit=Fraction(10), currency="eth")
    body = registration_body(cap, TOKEN)
    decoded = go_decode(json.dumps(body).encode(), EXTERNAL_CAPABILITY, "core.X", strict=True)
    assert decoded == {
        "name": "m1",
        "description": "byoc-orch live-video-to-video/m1",
        "url": f"{PUBLIC}/proxy/w1",
        "capacity": 2,
        "price_per_unit": 3,
        "price_scaling": 20,
        "currency": "eth",
        "token": TOKEN,
    }


def test_prices_become_int64_ratios() -> None:
    assert byoc_price(None, None) == (0, 1)
    assert byoc_price(Fraction(1000), None) == (1000, 1)
    assert byoc_price(Fraction(1, 3), Fraction(7)) == (1, 21)
    numerator, denominator = byoc_price(Fraction(1, 3**50), None)
    assert 0 <= numerator < 2**63 and 0 < denominator < 2**63
    with pytest.raises(ValueError, match="int64"):
        byoc_price(Fraction(2**70), None)


def test_display_url_hides_credentials() -> None:
    assert display_url("https://user:pw@orch.example:8935/x") == "https://orch.example:8935/x"
    assert display_url("http://127.0.0.1:8935") == "http://127.0.0.1:8935"


def test_build_advertisers_by_settings() -> None:
    registry, http, metrics = CapabilityRegistry(), httpx.AsyncClient(), Metrics()
    off = AdvertiserSettings(orch_url="http://127.0.0.1:8935")
    assert build_advertisers(off, registry, http, metrics) == []
    on = settings_for("http://127.0.0.1:8935")
    assert [type(a) for a in build_advertisers(on, registry, http, metrics)] == [
        ByocRegisterAdvertiser
    ]
    both = settings_for("http://127.0.0.1:8935", live_runner_heartbeat=True)
    assert [type(a) for a in build_advertisers(both, registry, http, metrics)] == [
        ByocRegisterAdvertiser,
        LiveRunnerHeartbeatAdvertiser,
    ]
    only_runners = settings_for(
        "http://127.0.0.1:8935", live_runner_heartbeat=True, byoc_register=False
    )
    assert [type(a) for a in build_advertisers(only_runners, registry, http, metrics)] == [
        LiveRunnerHeartbeatAdvertiser
    ]


# --------------------------------------------------------------------------- register/unregister


async def test_warm_registers_once_with_the_right_body(fake: FakeLivepeer, start: Start) -> None:
    registry = CapabilityRegistry()
    adv = await start(settings_for(fake.url), registry)
    registry.set_warm(capability())
    await eventually(lambda: fake.registered == {"m1"}, what="m1 registered")
    await probed_since(fake, time.monotonic())
    calls = fake.calls_to("/capability/register")
    assert len(calls) == 1
    assert calls[0].authorization == SECRET
    assert fake.capabilities["m1"] == {
        "name": "m1",
        "description": "byoc-orch live-video-to-video/m1",
        "url": f"{PUBLIC}/proxy/w1",
        "capacity": 2,
        "price_per_unit": 0,
        "price_scaling": 1,
        "currency": "wei",
        "token": TOKEN,
        "load": 0,
    }
    assert adv.describe()["registered"] == ["m1"]
    assert adv.describe()["state"] == "up"


async def test_already_warm_capabilities_are_registered_at_start(
    fake: FakeLivepeer, start: Start
) -> None:
    registry = CapabilityRegistry()
    registry.set_warm(capability())
    registry.set_warm(capability("w2", "m2"))
    await start(settings_for(fake.url), registry)
    await eventually(lambda: fake.registered == {"m1", "m2"}, what="both registered")


async def test_withdrawn_is_unregistered_within_the_second_and_comes_back(
    fake: FakeLivepeer, start: Start
) -> None:
    """Exactly: with the advertiser's clock standing still, so that no timer of its own (probe,
    refresh, retry) can be what sends the calls; the change itself does, at once."""
    clock = ManualClock()
    fake.clock = lambda: clock.now
    registry = CapabilityRegistry()
    await start(settings_for(fake.url), registry, clock=clock)
    registry.set_warm(capability())
    await eventually(lambda: fake.registered == {"m1"}, what="registered")
    withdrawn_at = clock.now
    registry.withdraw("w1")
    await eventually(lambda: not fake.registered, what="unregistered")
    (unregister,) = fake.calls_to("/capability/unregister")
    assert unregister.body == b"m1"
    assert unregister.authorization == SECRET
    assert unregister.at - withdrawn_at < 1.0
    assert unregister.at == withdrawn_at
    registry.set_warm(capability())
    await eventually(lambda: fake.registered == {"m1"}, what="registered again")
    assert len(registers(fake)) == 2
    assert fake.calls_to("/capability/register")[-1].at == withdrawn_at


async def test_capacity_follows_warm_capacity_net_of_sessions_in_use(
    fake: FakeLivepeer, start: Start
) -> None:
    """Sessions starting and ending never re-register; a change of warm capacity does, and
    registers what is free at that moment, since go-livepeer's Load restarts from 0."""
    registry = CapabilityRegistry()
    await start(settings_for(fake.url), registry)
    cap = capability(capacity=2)
    registry.set_warm(cap)
    await eventually(lambda: len(registers(fake)) == 1, what="registered")
    registry.set_warm(replace(cap, in_use=1))
    registry.set_warm(replace(cap, in_use=2))
    await probed_since(fake, time.monotonic())
    assert len(registers(fake)) == 1
    assert fake.capabilities["m1"]["capacity"] == 2
    registry.set_warm(replace(cap, capacity=4, in_use=2))
    await eventually(lambda: len(registers(fake)) == 2, what="re-registered with capacity 4")
    assert fake.capabilities["m1"]["capacity"] == 2  # 4 warm, 2 in use: 2 free, Load 0


async def test_shared_model_id_registers_the_first_and_hands_over(
    fake: FakeLivepeer, start: Start
) -> None:
    registry = CapabilityRegistry()
    with structlog.testing.capture_logs() as logs:
        adv = await start(settings_for(fake.url), registry)
        registry.set_warm(capability("w1", "same", pipeline="p1"))
        registry.set_warm(capability("w2", "same", pipeline="p2"))
        await eventually(lambda: "w2" in adv.describe()["name_conflicts"], what="conflict seen")
        await eventually(lambda: fake.registered == {"same"}, what="the first registered")
    assert fake.capabilities["same"]["url"].endswith("/proxy/w1")
    assert any("share a BYOC capability name" in entry["event"] for entry in logs)
    registry.withdraw("w1")
    await eventually(
        lambda: fake.capabilities.get("same", {}).get("url", "").endswith("/proxy/w2"),
        what="w2 takes the name over",
    )
    assert fake.calls_to("/capability/unregister") == []


async def test_price_go_livepeer_chokes_on_is_reported_not_hammered(
    fake: FakeLivepeer, start: Start
) -> None:
    registry = CapabilityRegistry()
    adv = await start(settings_for(fake.url), registry)
    registry.set_warm(capability("w1", "usd", price_per_unit=Fraction(1, 100), currency="USD"))
    registry.set_warm(capability("w2", "wei"))
    await eventually(lambda: "usd" in adv.describe()["rejected"], what="usd rejected")
    await eventually(lambda: fake.registered == {"wei"}, what="the other one registered")
    assert "price feed" in adv.describe()["rejected"]["usd"]
    dropped = len([c for c in fake.calls_to("/capability/register") if c.status is None])
    await probed_since(fake, time.monotonic())
    assert len([c for c in fake.calls_to("/capability/register") if c.status is None]) == dropped
    assert adv.describe()["state"] == "up"


# --------------------------------------------------------------------------- go-livepeer restarts


async def test_restart_with_downtime_restores_the_warm_set(
    fake: FakeLivepeer, start: Start
) -> None:
    registry = CapabilityRegistry()
    await start(settings_for(fake.url), registry)
    registry.set_warm(capability("w1", "m1"))
    registry.set_warm(capability("w2", "m2"))
    await eventually(lambda: fake.registered == {"m1", "m2"}, what="registered")
    await fake.restart(downtime=0.5)
    assert fake.registered == set()
    await eventually(lambda: fake.registered == {"m1", "m2"}, within=3, what="restored")


async def test_instant_restart_is_repaired_by_the_idle_refresh(
    fake: FakeLivepeer, start: Start
) -> None:
    registry = CapabilityRegistry()
    settings = settings_for(fake.url, register_refresh_interval=0.3, register_probe_interval=5.0)
    await start(settings, registry)
    registry.set_warm(capability("w1", "idle"))
    registry.set_warm(capability("w2", "busy", in_use=1))
    await eventually(lambda: fake.registered == {"idle", "busy"}, what="registered")
    await fake.restart()
    await eventually(lambda: "idle" in fake.registered, within=2, what="idle one restored")
    await eventually(
        lambda: sum(1 for b in registers(fake) if b["name"] == "idle") >= 3,
        what="refreshed again",
    )
    assert sum(1 for b in registers(fake) if b["name"] == "busy") == 1
    registry.set_warm(capability("w2", "busy", in_use=0))
    await eventually(lambda: "busy" in fake.registered, within=2, what="busy one once idle")


async def test_down_then_up_registers_and_unregisters_what_changed_meanwhile(
    fake: FakeLivepeer, start: Start
) -> None:
    registry = CapabilityRegistry()
    metrics = Metrics()
    adv = await start(settings_for(fake.url), registry, metrics)
    registry.set_warm(capability("w1", "old"))
    await eventually(lambda: fake.registered == {"old"}, what="registered")
    await fake.stop()
    registry.withdraw("w1")
    registry.set_warm(capability("w2", "new"))
    await eventually(lambda: adv.describe()["state"] == "down", what="noticed down")
    await eventually(lambda: calls_total(metrics, "unregister", "unavailable") >= 3, what="retried")
    await fake.start()
    await eventually(lambda: fake.registered == {"new"}, within=3, what="caught up")
    assert fake.calls_to("/capability/unregister")[-1].body == b"old"
    assert adv.describe()["state"] == "up"


async def test_retries_back_off_while_down(fake: FakeLivepeer, start: Start) -> None:
    await fake.stop()
    registry = CapabilityRegistry()
    metrics = Metrics()
    settings = settings_for(fake.url, register_retry_initial=0.05, register_retry_max=0.4)
    await start(settings, registry, metrics)
    registry.set_warm(capability())
    began = time.monotonic()
    await eventually(lambda: calls_total(metrics, "register", "unavailable") >= 5, what="5 tries")
    elapsed = time.monotonic() - began
    assert elapsed >= (1 - JITTER) * (0.05 + 0.1 + 0.2 + 0.4)


# --------------------------------------------------------------------------- refused secret


async def test_bad_secret_is_reported_once_and_retried_slowly(
    fake: FakeLivepeer, start: Start
) -> None:
    """Exactly, on a clock moved by hand: one single call each time `register_retry_max` has
    passed, for the two capabilities together, and none in between."""
    clock = ManualClock()
    registry = CapabilityRegistry()
    wrong = "wrong-secret-Jr5m"
    settings = settings_for(fake.url, secret=wrong, register_retry_max=0.25)

    def attempts() -> int:
        return len(fake.calls_to("/capability/register"))

    with structlog.testing.capture_logs() as logs:
        adv = await start(settings, registry, clock=clock)
        registry.set_warm(capability("w1", "m1"))
        registry.set_warm(capability("w2", "m2"))
        await eventually(lambda: adv.describe()["state"] == "refused", what="refused")
        await settled(clock)
        refused_with = attempts()
        for _ in range(4):  # one second of the advertiser's time
            before = attempts()
            clock.advance(0.1875)
            await clock.read(PASS_WITHOUT_CALLS)
            assert attempts() == before, "retried before register_retry_max had passed"
            clock.advance(0.0625)
            await clock.read(PASS_WITH_ONE_CALL)
            assert attempts() == before + 1
    window = attempts() - refused_with
    assert 1 <= window <= 1.0 / 0.25 + 1
    assert window == 4
    assert all(c.status == 400 for c in fake.calls_to("/capability/register"))
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == [REFUSED_MESSAGE]
    assert wrong not in repr(logs) and wrong not in json.dumps(adv.describe(), default=str)
    fake.secret = wrong
    clock.advance(0.25)
    await eventually(lambda: fake.registered == {"m1", "m2"}, within=2, what="accepted once fixed")
    assert adv.describe()["state"] == "up"


# --------------------------------------------------------------------------- shutdown


async def test_aclose_unregisters_everything(fake: FakeLivepeer, start: Start) -> None:
    registry = CapabilityRegistry()
    adv = await start(settings_for(fake.url), registry)
    for n in range(3):
        registry.set_warm(capability(f"w{n}", f"m{n}"))
    await eventually(lambda: len(fake.registered) == 3, what="registered")
    await adv.aclose()
    assert fake.registered == set()
    assert sorted(c.body for c in fake.calls_to("/capability/unregister")) == [b"m0", b"m1", b"m2"]
    assert adv.describe()["registered"] == []


async def test_aclose_is_bounded_when_go_livepeer_hangs(start: Start) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def black_hole(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    port = free_port()
    server = await asyncio.start_server(black_hole, "127.0.0.1", port)
    try:
        registry = CapabilityRegistry()
        registry.set_warm(capability())
        adv = await start(settings_for(f"http://127.0.0.1:{port}"), registry)
        await eventually(lambda: accepted, what="a call hangs")
        adv._registered["m1"] = b"{}"
        began = time.monotonic()
        await adv.aclose(timeout=0.5)
        assert time.monotonic() - began < 1.5
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_hanging_go_livepeer_never_blocks_the_registry(start: Start) -> None:
    async def black_hole(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    port = free_port()
    server = await asyncio.start_server(black_hole, "127.0.0.1", port)
    try:
        registry = CapabilityRegistry()
        seen: list[str] = []
        await start(settings_for(f"http://127.0.0.1:{port}"), registry)
        registry.subscribe(lambda change: seen.extend(c.entry_id for c in change.added))
        began = time.monotonic()
        for n in range(50):
            registry.set_warm(capability(f"w{n}", f"m{n}"))
            await asyncio.sleep(0)
        assert time.monotonic() - began < 0.5
        assert len(seen) == 50
    finally:
        server.close()


# --------------------------------------------------------------------------- secrets


async def test_secrets_never_reach_logs_describe_or_metrics(
    fake: FakeLivepeer, start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = CapabilityRegistry()
    metrics = Metrics()
    url = f"http://someone:pw-Xy9@127.0.0.1:{fake.port}"
    with structlog.testing.capture_logs() as logs:
        adv = await start(settings_for(url), registry, metrics)
        registry.set_warm(capability())
        await eventually(lambda: fake.registered == {"m1"}, what="registered")
        await fake.stop()
        registry.withdraw("w1")
        await eventually(lambda: adv.describe()["state"] == "down", what="down")
        await fake.start()
        await eventually(lambda: not fake.registered, what="unregistered")
        described = json.dumps(adv.describe(), default=str)
        await adv.aclose()
    text = repr(logs) + caplog.text + described + metrics.render().decode()
    for secret in (SECRET, TOKEN, "pw-Xy9"):
        assert secret not in text
    assert f"127.0.0.1:{fake.port}" in described


async def test_call_counters_start_at_zero(fake: FakeLivepeer, start: Start) -> None:
    metrics = Metrics()
    await start(settings_for(fake.url, register_probe_interval=60.0), CapabilityRegistry(), metrics)
    for call in ("register", "unregister", "probe"):
        for result in ("ok", "refused", "rejected", "unavailable"):
            assert (
                metrics.sample(
                    "byoc_orch_advertiser_calls_total",
                    {"advertiser": "byoc_register", "call": call, "result": result},
                )
                == 0.0
            )
