"""Live Runner sessions end to end, as a client makes them: reserved at the (fake) registry,
called through its reverse proxy, on the real engine with the demo worker.

What byoc-orch keeps alive stays alive at the orchestrator (drains, rolling replacements,
restarts), what ends on one side ends on the other (a worker's stream ends → released at the
registry; the registry releases → the worker is stopped), and a crash releases exactly the
crashed replica's sessions. The fake registry runs a short TTL (8 s, room for a restart on a
loaded 2-core machine) so "still reserved after the TTL has passed" is checked in seconds
rather than the 20 s go-livepeer uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import uvicorn

from byoc_orch import session_lifecycle
from byoc_orch.api import create_app
from byoc_orch.daemon import Daemon
from byoc_orch.settings import Settings
from byoc_orch.worker import Worker
from tests.conftest import Harness, eventually, free_port
from tests.fake_livepeer import FakeLivepeer
from tests.test_daemon import byoc_orch
from tests.test_replicas import all_warm, calls_seen, models_for, replicated, settings_for

pytestmark = pytest.mark.engine

SECRET = "orch-secret-for-live-runner-sessions"
INTERVAL = 0.5
TTL = 8.0


def body(session: str | None = None) -> dict[str, Any]:
    start: dict[str, Any] = {
        "subscribe_url": "http://127.0.0.1:1/in",
        "publish_url": "http://127.0.0.1:1/out",
    }
    if session is not None:
        start["gateway_request_id"] = session
    return start


def lr_settings(harness: Harness, instance: str, orch: FakeLivepeer, **extra: Any) -> Settings:
    port = free_port()
    values: dict[str, Any] = {
        "port": port,
        "public_url": f"http://127.0.0.1:{port}",
        "orch_url": orch.url,
        "orch_secret": SECRET,
        "byoc_register": False,
        "live_runner_heartbeat": True,
        "register_retry_initial": 0.05,
        "register_retry_max": 0.5,
        **extra,
    }
    return settings_for(harness, instance, **values)


@asynccontextmanager
async def served(settings: Settings, entries: list[dict[str, Any]]) -> AsyncIterator[Daemon]:
    """A daemon behind a real HTTP server, as the registry's reverse proxy must reach it."""
    daemon = Daemon(settings, models_for(entries, settings))
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(daemon),
            host="127.0.0.1",
            port=settings.port,
            log_config=None,
            lifespan="off",
            access_log=False,
        )
    )
    http = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="API listening")
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()
        server.should_exit = True
        await http


@asynccontextmanager
async def registry(**extra: Any) -> AsyncIterator[FakeLivepeer]:
    orch = FakeLivepeer(SECRET, heartbeat_interval=INTERVAL, heartbeat_ttl=TTL, **extra)
    await orch.start()
    try:
        yield orch
    finally:
        await orch.stop()


def remove_containers(client: docker.DockerClient, instance: str) -> None:
    for container in client.containers.list(
        all=True, filters={"label": f"byoc-orch.instance={instance}"}
    ):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


async def runner_of(orch: FakeLivepeer, worker_id: str) -> str:
    found = await eventually(
        lambda: orch.runner_labelled(worker_id), what=f"a runner for {worker_id}"
    )
    return str(found["runner_id"])


async def reserved_and_started(orch: FakeLivepeer, route: str, session: str | None = None) -> str:
    """Reserve a session on `route` and start the app's stream through the registry."""
    reply = await orch.reserve(route)
    assert reply.status_code == 200, reply.text
    session_id = str(reply.json()["session_id"])
    started = await orch.app_call(route, session_id, "stream/start", json_body=body(session))
    assert started.status_code == 200, started.text
    return session_id


def released(orch: FakeLivepeer, session_id: str) -> list[Any]:
    return [r for r in orch.released if r.session_id == session_id]


def sessions_at(orch: FakeLivepeer, runner_id: str) -> list[str]:
    return orch.registry.sessions_of(runner_id)


async def two_replicas(daemon: Daemon, orch: FakeLivepeer) -> tuple[list[Worker], list[str]]:
    workers = await all_warm(daemon, "lr", 2)
    runners = [await runner_of(orch, w.worker_id) for w in workers]
    return workers, runners


async def test_a_session_lands_on_its_replica_and_a_drain_keeps_it(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    async with registry() as orch:
        settings = lr_settings(harness, instance, orch)
        entry = replicated(harness, "lr", free_port(2), replicas=2, gpus=1)
        try:
            async with served(settings, [entry]) as daemon:
                (r0, r1), (run0, run1) = await two_replicas(daemon, orch)
                assert run1 == f"byoc-{run1.split('-')[1]}-{instance}-{r1.worker_id}"
                session_id = await reserved_and_started(orch, run1)
                # It landed on the replica whose runner was reserved, under the registry's id.
                assert [c["path"] for c in await calls_seen(r1, "/start")] == ["/stream/start"]
                assert await calls_seen(r0, "/start") == []
                (live,) = daemon.sessions.live()
                assert live.worker_id == r1.worker_id and live.id == session_id
                assert live.describe()["orchestrator_session"] == session_id
                assert "token" not in json.dumps(live.describe()).lower()

                daemon.drain([r1], True)
                await eventually(
                    lambda: (
                        orch.runners[run1]["capacity"] == 1
                        and daemon.describe_worker(r1)["live_runner"]["draining"]
                    ),
                    what="the drained runner advertising only its session",
                )
                await asyncio.sleep(2 * INTERVAL + 0.2)
                assert sessions_at(orch, run1) == [session_id], "still reserved"
                assert not released(orch, session_id)
                status = await orch.app_call(run1, session_id, "stream/status", method="GET")
                assert status.status_code == 200
                full = await orch.reserve(run1)
                assert full.status_code == 503, "nothing new is reserved on a draining replica"
                assert (await orch.reserve(run0)).status_code == 200

                # The stream ends as the client ends it: the drained runner then leaves.
                stopped = await orch.app_call(run1, session_id, "stream/stop")
                assert stopped.status_code == 200
                await eventually(
                    lambda: orch.runner_labelled(r1.worker_id) is None,
                    what="the drained runner unregistered once its last session ended",
                )
                assert [r.reason for r in released(orch, session_id)] == ["unregister"]
        finally:
            remove_containers(docker_client, instance)


async def test_the_orchestrator_releasing_a_session_stops_its_stream(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    async with registry() as orch:
        settings = lr_settings(harness, instance, orch)
        entry = replicated(harness, "lr", free_port(2), replicas=2, gpus=1)
        try:
            async with served(settings, [entry]) as daemon:
                (r0, _r1), (run0, _run1) = await two_replicas(daemon, orch)
                session_id = await reserved_and_started(orch, run0, "gw-1")
                assert daemon.sessions.by_orchestrator_session(session_id) is not None
                began = time.monotonic()
                assert (await orch.client_stop(run0, session_id)).status_code == 204
                stops = await eventually(
                    lambda: calls_seen(r0, "/stop"), what="the worker told to stop"
                )
                elapsed = time.monotonic() - began
                assert elapsed <= INTERVAL + 1.0, elapsed
                assert stops[0]["x_headers"].get("x-stream-id") == "gw-1"
                ended = await eventually(lambda: daemon.sessions.get("gw-1"), what="ended")
                await eventually(lambda: daemon.sessions.get("gw-1").end_reason is not None)
                ended = daemon.sessions.get("gw-1")
                assert str(ended.end_reason) == "released_by_orchestrator"
                assert [r.reason for r in released(orch, session_id)] == ["client stop"]
                # The slot is free again: the next reservation starts on the same replica.
                again = await reserved_and_started(orch, run0, "gw-2")
                assert again != session_id
        finally:
            remove_containers(docker_client, instance)


async def test_a_stream_that_ends_on_the_worker_is_released_at_the_registry(
    harness: Harness,
    instance: str,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session_lifecycle, "IDLE_GRACE", 0.3)
    async with registry() as orch:
        settings = lr_settings(harness, instance, orch)
        entry = replicated(harness, "lr", free_port(2), replicas=2, gpus=1)
        try:
            async with served(settings, [entry]) as daemon:
                (r0, _r1), (run0, _run1) = await two_replicas(daemon, orch)
                session_id = await reserved_and_started(orch, run0, "gw-idle")
                await asyncio.sleep(0.5)
                async with httpx.AsyncClient() as client:  # behind everyone's back
                    assert (await client.post(f"{r0.upstream_url}/stream/stop")).status_code == 200
                await eventually(lambda: released(orch, session_id), what="released")
                ended = daemon.sessions.get("gw-idle")
                assert ended is not None and str(ended.end_reason) == "ended_by_worker"
                assert ended.ended_at is not None
                (release,) = released(orch, session_id)
                assert release.reason == "runner stop"
                assert release.wall - ended.ended_at <= 2.0
                assert sessions_at(orch, run0) == []
                text = (await httpx.AsyncClient().get(f"{settings.local_api_url}/metrics")).text
                assert (
                    'byoc_orch_orchestrator_releases_total{model_id="lr",'
                    'pipeline="live-video-to-video",reason="ended_by_worker",result="released"} 1.0'
                ) in text
        finally:
            remove_containers(docker_client, instance)


async def test_a_replica_crash_releases_only_its_own_sessions(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    async with registry() as orch:
        settings = lr_settings(harness, instance, orch)
        entry = replicated(harness, "lr", free_port(2), replicas=2, gpus=1)
        try:
            async with served(settings, [entry]) as daemon:
                (r0, _r1), (run0, run1) = await two_replicas(daemon, orch)
                doomed = await reserved_and_started(orch, run0, "gw-doomed")
                kept = await reserved_and_started(orch, run1, "gw-kept")
                container = docker_client.containers.get(r0.status.container_id or "")
                await asyncio.to_thread(container.kill)
                await eventually(lambda: released(orch, doomed), what="the crashed one released")
                ended = daemon.sessions.get("gw-doomed")
                assert ended is not None and ended.ended_at is not None
                assert str(ended.end_reason) == "crashed"
                assert min(r.wall for r in released(orch, doomed)) - ended.ended_at <= 1.0
                assert not released(orch, kept)
                assert sessions_at(orch, run1) == [kept]
        finally:
            remove_containers(docker_client, instance)


async def test_a_rolling_replacement_releases_no_session_before_it_ends(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    async with registry() as orch:
        settings = lr_settings(harness, instance, orch, drain_timeout=60.0)
        port = free_port(2)
        entry = replicated(harness, "lr", port, replicas=2, gpus=1)
        try:
            async with served(settings, [entry]) as daemon:
                workers, runners = await two_replicas(daemon, orch)
                sessions = {
                    w.worker_id: (run, await reserved_and_started(orch, run))
                    for w, run in zip(workers, runners, strict=True)
                }
                old = {w.worker_id: w.status.container_id for w in workers}
                changed = replicated(
                    harness, "lr", port, replicas=2, gpus=1, env={"DEMO_LOAD_SECONDS": "0.4"}
                )
                await daemon.reload(models_for([changed], settings))
                await asyncio.sleep(3 * INTERVAL)
                assert orch.released == [], "a drain releases nothing"
                for run, session_id in sessions.values():
                    assert sessions_at(orch, run) == [session_id]
                    status = await orch.app_call(run, session_id, "stream/status", method="GET")
                    assert status.status_code == 200
                # Each client ends its session when it is done (byoc-orch then stops its
                # stream); only then is its replica replaced.
                for run, session_id in sessions.values():
                    assert (await orch.client_stop(run, session_id)).status_code == 204
                await eventually(
                    lambda: (
                        len(daemon.deployments[workers[0].entry_id].replicas()) == 2
                        and all(
                            w.status.container_id not in old.values()
                            and str(w.status.state) == "warm"
                            for w in daemon.deployments[workers[0].entry_id].replicas()
                        )
                    ),
                    within=60,
                    what="both replicas replaced",
                )
                assert {r.reason for r in orch.released} == {"client stop"}
                await eventually(lambda: len(orch.runners) == 2, what="both runners back")
        finally:
            remove_containers(docker_client, instance)


async def test_static_runners_keep_a_draining_replicas_session(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    from byoc_orch.advertisers.live_runner import runners_document

    async with registry(health_interval=0.3) as orch:
        settings = lr_settings(harness, instance, orch, live_runner_heartbeat=False)
        entry = replicated(harness, "lr", free_port(2), replicas=2, gpus=1)
        try:
            async with served(settings, [entry]) as daemon:
                (r0, _r1) = await all_warm(daemon, "lr", 2)
                models = models_for([entry], settings)
                document = runners_document(
                    models.entries, settings.public_base_url, models.replicas
                )
                async with httpx.AsyncClient() as client:
                    reply = await client.post(
                        f"{orch.url}/registerLiveRunners", content=json.dumps(document)
                    )
                assert reply.status_code == 200, reply.text
                assert all(r["healthy"] for r in reply.json()["runners"])
                route = r0.worker_id  # label routing
                session_id = await reserved_and_started(orch, route, "gw-static")
                daemon.drain([r0], True)
                await asyncio.sleep(4 * 0.3)
                assert not released(orch, session_id), "a healthy poll kept it"
                status = await orch.app_call(route, session_id, "stream/status", method="GET")
                assert status.status_code == 200
                assert (await orch.app_call(route, session_id, "stream/stop")).status_code == 200
                async with httpx.AsyncClient() as client:
                    health = await client.get(
                        f"{settings.local_api_url}/live-runner/{r0.worker_id}/health"
                    )
                assert health.status_code == 503, "drained with nothing left: unavailable"
        finally:
            remove_containers(docker_client, instance)


async def test_livepeer_node_answers_are_understood(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    async with registry(flavor="livepeer-node") as orch:
        settings = lr_settings(harness, instance, orch, live_runner_price_unit="hour")
        entry = replicated(
            harness,
            "lr",
            free_port(2),
            replicas=2,
            gpus=1,
            price_per_unit=1,
            pixels_per_unit=1_000_000_000,
            currency="USD",
        )
        try:
            async with served(settings, [entry]) as daemon:
                (r0, _r1), (run0, _run1) = await two_replicas(daemon, orch)
                assert orch.runners[run0]["price_info"]["unit"] == "hour"
                session_id = await reserved_and_started(orch, run0, "gw-node")
                assert (await orch.reserve(run0)).status_code == 409
                container = docker_client.containers.get(r0.status.container_id or "")
                await asyncio.to_thread(container.kill)
                await eventually(lambda: released(orch, session_id), what="released")
                text = (await httpx.AsyncClient().get(f"{settings.local_api_url}/metrics")).text
                assert 'reason="crashed",result="released"} 1.0' in text
        finally:
            remove_containers(docker_client, instance)


async def test_an_unusable_state_file_is_a_warning_and_a_fresh_registration(
    harness: Harness, instance: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    state = tmp_path / f"{instance}.state.json"
    state.write_text('{"format": 1, "instance": "' + instance + '", "runners": [')
    async with registry() as orch:
        settings = lr_settings(harness, instance, orch, state_directory=tmp_path)
        entry = replicated(harness, "lr", free_port(2), replicas=2, gpus=1)
        try:
            async with served(settings, [entry]) as daemon:
                await two_replicas(daemon, orch)
                await eventually(
                    lambda: len(json.loads(state.read_text())["runners"]) == 2,
                    what="the state file rewritten with both runners",
                )
                assert stat.S_IMODE(state.stat().st_mode) == 0o600
                assert SECRET not in state.read_text()
        finally:
            remove_containers(docker_client, instance)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_restart_keeps_runners_and_sessions(
    harness: Harness,
    instance: str,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    how: signal.Signals,
) -> None:
    models = tmp_path / "aiModels.json"
    models.write_text(json.dumps([replicated(harness, "lr", free_port(2), replicas=2, gpus=1)]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with registry() as orch:
        env = {
            **os.environ,
            "BYOC_ORCH_MODELS_PATH": str(models),
            "BYOC_ORCH_PORT": str(port),
            "BYOC_ORCH_PUBLIC_URL": base,
            "BYOC_ORCH_INSTANCE": instance,
            "BYOC_ORCH_DOCKER_HOST": harness.docker_host,
            "BYOC_ORCH_GPUS": "0,1",
            "BYOC_ORCH_STARTUP_PROBE_INTERVAL": "0.1",
            "BYOC_ORCH_PROBE_INTERVAL": "0.2",
            "BYOC_ORCH_ORCH_URL": orch.url,
            "BYOC_ORCH_ORCH_SECRET": SECRET,
            "BYOC_ORCH_BYOC_REGISTER": "false",
            "BYOC_ORCH_LIVE_RUNNER_HEARTBEAT": "true",
            "BYOC_ORCH_STATE_DIRECTORY": str(tmp_path / "state"),
            "BYOC_ORCH_LOG_FORMAT": "json",
        }
        process = byoc_orch(["run"], env)
        try:
            await eventually(lambda: len(orch.runners) == 2, within=30, what="two runners")
            runners = dict(orch.runners)
            route = sorted(runners)[0]
            session_id = await reserved_and_started(orch, route, "gw-restart")
            await eventually(
                lambda: (
                    (tmp_path / "state" / f"{instance}.state.json").exists()
                    and "gw-restart" in (tmp_path / "state" / f"{instance}.state.json").read_text()
                ),
                what="the session's identity in the state file",
            )
            other = next(w for w in await _workers(base) if w["worker_id"] not in route)
            async with httpx.AsyncClient() as client:
                drained = await client.post(f"{base}/workers/{other['worker_id']}/drain")
            assert drained.status_code == 202
            await eventually(
                lambda: set(orch.runners) == {route}, what="the drained, idle replica's runner gone"
            )
            runners = dict(orch.runners)
            process.send_signal(how)
            process.wait(15)
            process = byoc_orch(["run"], env)
            await eventually(
                lambda: _recovered(base, "gw-restart"), within=30, what="session recovered"
            )
            await asyncio.sleep(TTL + 1.5)
            assert set(orch.runners) == set(runners), "the same runners, heartbeated on"
            assert not orch.calls_to(f"/runners/{route}/unregister")
            assert sessions_at(orch, route) == [session_id], orch.released
            assert not released(orch, session_id)
            status = await orch.app_call(route, session_id, "stream/status", method="GET")
            assert status.status_code == 200
            recovered = await _recovered(base, "gw-restart")
            assert recovered["orchestrator_session"] == session_id
            # The operator's drain is state too: the other replica came back drained.
            back = {w["worker_id"]: w for w in await _workers(base)}
            assert back[other["worker_id"]]["drained_by_operator"] is True
            assert (await orch.client_stop(route, session_id)).status_code == 204
        finally:
            process.terminate()
            with contextlib.suppress(Exception):
                process.wait(15)
            remove_containers(docker_client, instance)


async def _workers(base: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        return list((await client.get(f"{base}/workers", timeout=5)).json())


async def _recovered(base: str, session: str) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient() as client:
            listed = (await client.get(f"{base}/sessions", timeout=2)).json()
    except (httpx.HTTPError, ValueError):
        return None
    for item in listed:
        if item["id"] == session and item["state"] == "active" and item.get("recovered"):
            return dict(item)
    return None
