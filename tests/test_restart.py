"""Restarting byoc-orch loses nothing: under socket activation no call fails or is refused,
advertisements stay as they were, an operator can withdraw a host without cutting a session,
and an upgrade from the previous release adopts its containers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import Harness, eventually, free_port
from tests.fake_livepeer import FakeLivepeer
from tests.socket_holder import SocketHolder, environment_without_activation
from tests.test_live_runner_sessions import remove_containers
from tests.test_replicas import replicated

pytestmark = pytest.mark.engine

SECRET = "orch-secret-for-restarts"
ROOT = Path(__file__).resolve().parent.parent
PREVIOUS_RELEASE = "965f9045411427cc40b30ae9b42fc46b13506740"
"""The last commit that landed before state files, socket activation and stable runner ids."""
BODY = {"subscribe_url": "http://127.0.0.1:1/in", "publish_url": "http://127.0.0.1:1/out"}


def daemon_env(
    harness: Harness, instance: str, port: int, models: Path, state: Path, orch: FakeLivepeer
) -> dict[str, str]:
    return {
        **environment_without_activation(),
        "BYOC_ORCH_MODELS_PATH": str(models),
        "BYOC_ORCH_PORT": str(port),
        "BYOC_ORCH_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "BYOC_ORCH_INSTANCE": instance,
        "BYOC_ORCH_DOCKER_HOST": harness.docker_host,
        "BYOC_ORCH_GPUS": "0,1",
        "BYOC_ORCH_STARTUP_PROBE_INTERVAL": "0.1",
        "BYOC_ORCH_PROBE_INTERVAL": "0.5",
        "BYOC_ORCH_ORCH_URL": orch.url,
        "BYOC_ORCH_ORCH_SECRET": SECRET,
        "BYOC_ORCH_LIVE_RUNNER_HEARTBEAT": "true",
        "BYOC_ORCH_REGISTER_RETRY_INITIAL": "0.05",
        "BYOC_ORCH_STATE_DIRECTORY": str(state),
        "BYOC_ORCH_LOG_FORMAT": "json",
    }


async def ready(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{base}/readyz", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


async def workers(base: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        return list((await client.get(f"{base}/workers", timeout=5)).json())


class Load:
    """A client calling every 50 ms, each call on a new connection as curl does: a session's
    status, a small batch request and a readiness poll. Every answer but a 200 is a failure."""

    def __init__(self, base: str, session_worker: str, batch_worker: str) -> None:
        self.calls = [
            ("GET", f"{base}/proxy/{session_worker}/stream/status"),
            ("POST", f"{base}/proxy/{batch_worker}/v1/echo"),
            ("GET", f"{base}/live-runner/{session_worker}/health"),
        ]
        self.done = 0
        self.failures: list[str] = []
        self.slowest = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=15) as client:
            while not self._stop.is_set():
                for method, url in self.calls:
                    began = time.monotonic()
                    try:
                        reply = await client.request(method, url, content=b"x" * 100)
                        if reply.status_code != 200:
                            self.failures.append(
                                f"{method} {url}: {reply.status_code} {reply.text[:200]}"
                            )
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{method} {url}: {type(exc).__name__}")
                    self.slowest = max(self.slowest, time.monotonic() - began)
                    self.done += 1
                await asyncio.sleep(0.05)


async def stopped(
    process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM
) -> float:
    """Signal and wait without blocking the event loop: the fake orchestrator runs on it, and
    a daemon stopping with a call to it in flight would otherwise wait for that call."""
    began = time.monotonic()
    process.send_signal(how)
    await asyncio.to_thread(process.wait, 20)
    return time.monotonic() - began


async def test_restarts_under_socket_activation_fail_no_call_and_withdraw_nothing(
    harness: Harness, instance: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    models = tmp_path / "aiModels.json"
    models.write_text(json.dumps([replicated(harness, "rs", free_port(2), replicas=2, gpus=1)]))
    orch = FakeLivepeer(SECRET, heartbeat_interval=0.5)
    await orch.start()
    holder = SocketHolder(port)
    env = daemon_env(harness, instance, port, models, tmp_path / "state", orch)
    log = tmp_path / "daemon.log"
    process = holder.spawn(env, log=log)
    try:
        await eventually(lambda: ready(base), within=30, what="ready")
        await eventually(lambda: len(orch.runners) == 2 and orch.registered, what="advertised")
        await eventually(
            lambda: orch.capabilities.get("rs", {}).get("capacity") == 2,
            what="registered with both replicas warm",
        )
        w0, w1 = sorted(w["worker_id"] for w in await workers(base))
        async with httpx.AsyncClient() as client:
            started = await client.post(
                f"{base}/proxy/{w0}/stream/start", json={**BODY, "gateway_request_id": "g"}
            )
        assert started.status_code == 200
        runners = set(orch.runners)
        registers = len(orch.calls_to("/capability/register"))
        async with Load(base, w0, w1) as load:
            await asyncio.sleep(0.5)
            failed_at: dict[str, list[str]] = {}
            for how in (signal.SIGTERM, signal.SIGKILL):
                before = len(load.failures)
                took = await stopped(process, how)
                assert took < 2.0, f"{how.name} → exit took {took:.2f} s"
                process = holder.spawn(env, log=log)
                await eventually(lambda: ready(base), within=30, what="ready again")
                await asyncio.sleep(1.0)
                failed_at[how.name] = load.failures[before:]
        # systemctl restart sends SIGTERM: nothing fails. A SIGKILL (the watchdog, the OOM
        # killer) takes down the one call the client had in flight with the process — a
        # broken connection, never an answer other than 200; every call after it is served.
        assert failed_at["SIGTERM"] == [], failed_at["SIGTERM"][:5]
        killed = failed_at["SIGKILL"]
        assert len(killed) <= 1 and all(f.endswith("Error") for f in killed), killed
        assert load.done > 60
        # Nothing at the orchestrator noticed: no unregister, no new registration, the same
        # runners heartbeated on.
        assert orch.calls_to("/capability/unregister") == []
        assert len(orch.calls_to("/capability/register")) == registers
        assert set(orch.runners) == runners
        assert not [c for c in orch.calls if c.path.endswith("/unregister")]
        live = [s for s in (await _sessions(base)) if s["state"] == "active"]
        assert [s["id"] for s in live] == ["g"]

        # Withdrawing the host: no new sessions, the running one goes on, BYOC withdrawn at
        # once, the idle replica's runner at once, the busy one's when its session ends.
        waiter = _cli(env, ["withdraw", "--wait", "--timeout", "30"])
        await eventually(
            lambda: orch.calls_to("/capability/unregister"), what="BYOC capability withdrawn"
        )
        await eventually(lambda: len(orch.runners) == 1, what="the idle runner unregistered")
        async with httpx.AsyncClient() as client:
            refused = await client.post(
                f"{base}/proxy/{w1}/stream/start", json={**BODY, "gateway_request_id": "h"}
            )
            assert refused.status_code == 503
            assert waiter.poll() is None, "still waiting for the running session"
            stop = await client.post(f"{base}/proxy/{w0}/stream/stop", headers={"X-Stream-Id": "g"})
            assert stop.status_code == 200
        out, _ = await asyncio.to_thread(waiter.communicate, timeout=30)
        assert waiter.returncode == 0, out
        await eventually(lambda: not orch.runners, what="every runner unregistered")
        # Kept across a restart until cancelled.
        await stopped(process)
        process = holder.spawn(env, log=log)
        await eventually(lambda: ready(base), within=30, what="ready again")
        assert all(w["drained_by_operator"] for w in await workers(base))
        cancel = _cli(env, ["withdraw", "--cancel"])
        assert cancel.wait(30) == 0
        await eventually(lambda: len(orch.runners) == 2, what="back in service")
    finally:
        with contextlib.suppress(Exception):
            await stopped(process)
        holder.close()
        await orch.stop()
        remove_containers(docker_client, instance)


async def test_a_bound_restart_says_retry_later_until_it_knows_its_workers(
    harness: Harness, instance: str
) -> None:
    """Without socket activation the API answers at once: a worker not known yet is 503 with
    Retry-After (not 404), on the proxy and on its readiness URL."""
    from byoc_orch.api import create_app
    from byoc_orch.daemon import Daemon
    from tests.test_replicas import models_for, settings_for

    settings = settings_for(harness, instance)
    daemon = Daemon(settings, models_for([], settings))
    transport = httpx.ASGITransport(app=create_app(daemon))
    async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as client:
        for path in ("/proxy/some-worker/stream/status", "/live-runner/some-worker/health"):
            reply = await client.get(path)
            assert reply.status_code == 503, path
            assert reply.headers["retry-after"] == "1"
        await daemon.start()
        try:
            assert (await client.get("/proxy/some-worker/stream/status")).status_code == 404
        finally:
            await daemon.stop()


async def test_an_upgrade_from_the_previous_release_adopts_every_container(
    harness: Harness, instance: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """The previous release's tree (git archive of PREVIOUS_RELEASE) runs first and leaves its
    containers; this tree then adopts them all: labels and spec hashes are unchanged."""
    tree = tmp_path / "previous"
    tree.mkdir()
    archive = subprocess.run(  # noqa: ASYNC221 (a test's setup)
        ["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_RELEASE, "byoc_orch"],
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, (
        f"the previous release {PREVIOUS_RELEASE[:10]} is not in this clone's history "
        f"(git archive: {archive.stderr.decode(errors='replace').strip()}) — fetch it "
        "(git fetch --unshallow)"
    )
    (tmp_path / "previous.tar").write_bytes(archive.stdout)
    with tarfile.open(tmp_path / "previous.tar") as tar:
        tar.extractall(tree, filter="data")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    models = tmp_path / "aiModels.json"
    entries = [
        replicated(harness, "up", free_port(2), replicas=2, gpus=1),
        {**replicated(harness, "single", free_port()), "gpus": "all"},
    ]
    for entry in entries[1:]:
        entry.pop("replicas", None)
    models.write_text(json.dumps(entries))
    orch = FakeLivepeer(SECRET, heartbeat_interval=0.5)
    await orch.start()
    env = daemon_env(harness, instance, port, models, tmp_path / "state", orch)
    try:
        old = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "byoc_orch", "run"],
            env={**env, "PYTHONPATH": str(tree)},
            cwd=tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            await eventually(lambda: _all_warm(base, 3), within=60, what="old release warm")
            before = {w["worker_id"]: w["container_id"] for w in await workers(base)}
        finally:
            await stopped(old)
        new = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "byoc_orch", "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            await eventually(lambda: _all_warm(base, 3), within=60, what="new release warm")
            after = {w["worker_id"]: w["container_id"] for w in await workers(base)}
            assert after == before, "every container adopted, none recreated"
            await eventually(lambda: len(orch.runners) == 3, what="runners registered")
        finally:
            await stopped(new)
    finally:
        await orch.stop()
        remove_containers(docker_client, instance)


async def _all_warm(base: str, count: int) -> bool:
    try:
        listed = await workers(base)
    except (httpx.HTTPError, ValueError):
        return False
    return len(listed) == count and all(w["state"] == "warm" for w in listed)


async def _sessions(base: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        return list((await client.get(f"{base}/sessions", timeout=5)).json())


def _cli(env: dict[str, str], args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "byoc_orch", *args],
        env={k: v for k, v in env.items() if k in os.environ or k.startswith("BYOC_ORCH_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_a_connection_accepted_as_the_process_stops_gets_its_answer(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    """uvicorn closes every connection without a request in progress when it shuts down; one
    accepted a moment before SIGTERM whose request is still on the way (and one half-way
    through its head) would see a reset. byoc-orch serves that request, then closes."""
    port = free_port()
    models = tmp_path / "aiModels.json"
    models.write_text("[]")
    orch = FakeLivepeer(SECRET)
    env = daemon_env(harness, instance, port, models, tmp_path / "state", orch)
    log = tmp_path / "daemon.log"
    holder = SocketHolder(port)
    process = holder.spawn(env, log=log)
    try:
        await eventually(lambda: ready(f"http://127.0.0.1:{port}"), within=30, what="ready")
        silent = socket.create_connection(("127.0.0.1", port))
        halfway = socket.create_connection(("127.0.0.1", port))
        halfway.sendall(b"GET /healthz HTTP/1.1\r\nHost: byoc\r\n")
        # Both accepted by this process: a request on a third connection is answered after them.
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        process.send_signal(signal.SIGTERM)
        await eventually(
            lambda: "Shutting down" in log.read_text(errors="replace"),
            what="uvicorn shutting down",
        )
        silent.sendall(b"GET /healthz HTTP/1.1\r\nHost: byoc\r\n\r\n")
        halfway.sendall(b"\r\n")
        for connection in (silent, halfway):
            connection.settimeout(10)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
            connection.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            assert b"connection: close" in answer.lower()
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        holder.close()
