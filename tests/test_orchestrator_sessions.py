"""Registry sessions: identity from the proxy's headers, and releases at a real (fake) registry."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
import structlog

from byoc_orch.orchestrator_sessions import (
    NotFromRegistry,
    RegistrySession,
    Release,
    ReleaseResult,
    ReleaseSender,
    from_headers,
)
from tests.conftest import eventually, free_port
from tests.fake_livepeer import FakeLivepeer

SECRET = "orch-secret"


def headers(**overrides: str) -> dict[str, str]:
    base = {
        "livepeer-runner-route": "runner_abc",
        "livepeer-session-id": "session_1",
        "livepeer-session-token": "tok",
        "livepeer-session-control": "http://orch:8935/runner/runner_abc/session/session_1",
    }
    return {**base, **overrides}


def test_identity_from_the_four_headers() -> None:
    found = from_headers(headers())
    assert found == RegistrySession(
        "session_1", "runner_abc", "http://orch:8935/runner/runner_abc/session/session_1", "tok"
    )
    assert "tok" not in repr(found) and "orch:8935" not in repr(found)
    assert found is not None
    assert found.describe() == {"orchestrator_session": "session_1", "runner_route": "runner_abc"}
    assert from_headers({"x-stream-id": "s"}) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"livepeer-session-token": ""},
        {"livepeer-session-control": "http://evil/elsewhere"},
        {"livepeer-session-control": "http://orch/runner/other/session/session_1"},
        {"livepeer-session-control": "ftp://orch/runner/runner_abc/session/session_1"},
        {"livepeer-session-control": "http://u:p@orch/runner/runner_abc/session/session_1"},
        {"livepeer-session-control": "http://orch/runner/runner_abc/session/session_1?x=1"},
        {"livepeer-runner-route": "x" * 5000},
    ],
)
def test_headers_that_cannot_be_the_registrys_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(NotFromRegistry):
        from_headers(headers(**bad))


async def reserved(orch: FakeLivepeer) -> tuple[str, RegistrySession]:
    """Register a runner, reserve a session, and read its identity as the proxy would."""
    async with httpx.AsyncClient() as client:
        reply = await client.post(
            f"{orch.url}/runners/heartbeat",
            json={"runner_url": "http://127.0.0.1:1/proxy/w", "app": "p/m", "capacity": 1},
            headers={"Authorization": SECRET},
        )
    runner_id = reply.json()["runner_id"]
    session_id = (await orch.reserve(runner_id)).json()["session_id"]
    runner = orch.registry.lock(runner_id)
    identity = RegistrySession(
        session_id,
        runner_id,
        orch.registry.control_url(runner_id, session_id),
        runner.session_token(session_id),
    )
    return runner_id, identity


def release_of(identity: RegistrySession) -> Release:
    return Release(identity, "crashed", "p", "m", "w")


@pytest.mark.parametrize("flavor", ["go-livepeer", "livepeer-node"])
async def test_release_frees_the_slot_at_once_and_a_second_one_is_already_gone(
    flavor: Any,
) -> None:
    orch = FakeLivepeer(SECRET, flavor=flavor)
    await orch.start()
    seen: list[tuple[ReleaseResult, float]] = []
    try:
        async with httpx.AsyncClient() as http:
            sender = ReleaseSender(http, observe=lambda _r, result, s: seen.append((result, s)))
            runner_id, identity = await reserved(orch)
            began = time.monotonic()
            sender.release(release_of(identity))
            sender.release(release_of(identity))  # the same session: one release
            await eventually(lambda: seen, within=2, what="released")
            assert time.monotonic() - began < 1.0
            assert seen[0][0] is ReleaseResult.RELEASED
            assert orch.registry.sessions_of(runner_id) == []
            assert [r.reason for r in orch.released] == ["runner stop"]
            sender.release(release_of(identity))
            await eventually(lambda: len(seen) == 2, within=2, what="second")
            assert seen[1][0] is ReleaseResult.ALREADY_GONE
    finally:
        await orch.stop()


async def test_a_wrong_token_is_refused_and_logged_without_it() -> None:
    orch = FakeLivepeer(SECRET)
    await orch.start()
    seen: list[ReleaseResult] = []
    try:
        async with httpx.AsyncClient() as http:
            sender = ReleaseSender(http, observe=lambda _r, result, _s: seen.append(result))
            _runner_id, identity = await reserved(orch)
            forged = RegistrySession(identity.session_id, identity.route, identity.control_url, "x")
            with structlog.testing.capture_logs() as logs:
                sender.release(release_of(forged))
                await eventually(lambda: seen, within=2, what="answered")
            assert seen == [ReleaseResult.REFUSED]
            assert identity.token not in repr(logs) and "control" not in repr(logs)
    finally:
        await orch.stop()


async def test_an_unreachable_orchestrator_is_retried_until_it_answers() -> None:
    orch = FakeLivepeer(SECRET)
    await orch.start()
    seen: list[ReleaseResult] = []
    try:
        async with httpx.AsyncClient() as http:
            sender = ReleaseSender(
                http, observe=lambda _r, result, _s: seen.append(result), retry_initial=0.05
            )
            runner_id, identity = await reserved(orch)
            await orch.stop()  # down, its registry kept
            with structlog.testing.capture_logs() as logs:
                sender.release(release_of(identity))
                await eventually(lambda: logs, what="a warning while it is down")
            assert not seen and sender.pending == 1
            await orch.start()
            await eventually(lambda: seen, within=5, what="released after the outage")
            assert seen == [ReleaseResult.RELEASED]
            assert orch.registry.sessions_of(runner_id) == []
    finally:
        await orch.stop()


async def test_a_release_gives_up_after_its_deadline() -> None:
    seen: list[ReleaseResult] = []
    identity = RegistrySession(
        "s", "r", f"http://127.0.0.1:{free_port()}/runner/r/session/s", "tok"
    )
    async with httpx.AsyncClient() as http:
        sender = ReleaseSender(
            http,
            observe=lambda _r, result, _s: seen.append(result),
            retry_initial=0.05,
            give_up_after=0.3,
        )
        with structlog.testing.capture_logs() as logs:
            sender.release(release_of(identity))
            await eventually(lambda: seen, within=5, what="gave up")
    assert seen == [ReleaseResult.GAVE_UP]
    levels = [e["log_level"] for e in logs]
    assert levels == ["warning", "error"], "one warning while retrying, one error at the end"


def test_proposed_runner_ids_are_stable_route_safe_and_distinct(tmp_path: Any) -> None:
    from byoc_orch.runner_ids import MAX_RUNNER_ID, host_id, runner_id

    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef\n")
    host = host_id(machine)
    assert host == host_id(machine) and len(host) == 8
    other = tmp_path / "other"
    other.write_text("fedcba9876543210\n")
    assert host_id(other) != host
    ids = {
        runner_id(host, "default", "live-video-to-video-m-1234abcd-r0"),
        runner_id(host, "default", "live-video-to-video-m-1234abcd-r1"),
        runner_id(host, "second", "live-video-to-video-m-1234abcd-r0"),
        runner_id(host_id(other), "default", "live-video-to-video-m-1234abcd-r0"),
        runner_id(host, "dotted.one", "w"),
        runner_id(host, "dotted_one", "w"),
        runner_id(host, "default", "x" * 200),
        runner_id(host, "default", "x" * 201),
    }
    assert len(ids) == 8
    for each in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", each) and len(each) <= MAX_RUNNER_ID
    assert runner_id(host, "default", "w-r0") == f"byoc-{host}-default-w-r0"
