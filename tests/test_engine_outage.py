"""Docker going away and coming back, or hanging, on the real engine behind a proxy a test
can cut or stall: workers waiting only for Docker retry as soon as it answers, readiness says
it is unreachable, and a stalled Docker API delays neither /metrics nor a reload."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import httpx
import pytest

from byoc_orch.aimodels import parse_models
from byoc_orch.api import create_app
from byoc_orch.daemon import Daemon
from byoc_orch.worker_state import State
from tests.conftest import Harness, eventually
from tests.test_daemon import only, settings_for, worker_entry
from tests.unix_proxy import UnixProxy

pytestmark = pytest.mark.engine

DOCKER_THREADS = 4


async def test_workers_waiting_for_docker_start_as_soon_as_it_is_back(
    harness: Harness, instance: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    proxy = UnixProxy(tmp_path / "docker.sock", harness.docker_host.removeprefix("unix://"))
    await proxy.start()
    settings = settings_for(
        harness,
        instance,
        docker_timeout=2,
        unhealthy_restart_after=0.5,
        backoff_initial=60,
        backoff_max=120,
    ).model_copy(update={"docker_host": proxy.docker_host})
    models = parse_models(json.dumps([worker_entry(harness, "outage")]), source="test")
    daemon = Daemon(settings, models)
    await daemon.start()
    transport = httpx.ASGITransport(app=create_app(daemon))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as api:
            worker = only(daemon)
            await eventually(lambda: worker.status.state is State.WARM, what="warm")
            assert (await api.get("/readyz")).json()["engine"] == "reachable"
            first = worker.status.container_id
            # Docker goes away and takes the container with it (as `systemctl stop docker`).
            await proxy.cut()
            await asyncio.to_thread(docker_client.containers.get(first or "").kill)
            await eventually(
                lambda: worker.status.state is State.FAILED and worker.status.waiting_for_engine,
                within=20,
                what="waiting for Docker",
            )
            ready = await api.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["engine"] == "unreachable"
            assert daemon.metrics.sample("byoc_orch_docker_engine_up") == 0
            streak = worker.status.crash_streak
            await proxy.start()
            back = time.monotonic()
            await eventually(
                lambda: worker.status.state is State.WARM, within=20, what="warm again"
            )
            # Its back-off would have been a minute: it went on as soon as Docker answered.
            assert time.monotonic() - back < 15
            assert worker.status.crash_streak <= streak + 1
            assert worker.status.container_id != first
            assert (await api.get("/readyz")).status_code == 200
    finally:
        await daemon.stop()
        await proxy.cut()


async def test_a_stalled_docker_api_delays_neither_metrics_nor_a_reload(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    # Docker calls run on the loop's default executor: of a known size here, so that the test
    # can tell when every one of its threads is tied up.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=DOCKER_THREADS, thread_name_prefix="docker-calls")
    )
    proxy = UnixProxy(tmp_path / "docker.sock", harness.docker_host.removeprefix("unix://"))
    await proxy.start()
    path = tmp_path / "aiModels.json"
    entry = worker_entry(harness, "stalled", capacity=1)
    path.write_text(json.dumps([entry]))
    settings = settings_for(harness, instance, docker_timeout=20, models_path=path).model_copy(
        update={"docker_host": proxy.docker_host}
    )
    daemon = Daemon(settings, parse_models(path.read_text(), source="test"))
    await daemon.start()
    transport = httpx.ASGITransport(app=create_app(daemon))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as api:
            worker = only(daemon)
            await eventually(lambda: worker.status.state is State.WARM, what="warm")
            proxy.stalled = True
            # Tie up Docker calls: sweeps that would hang for docker_timeout, more of them than
            # there are threads for Docker calls.
            hanging = [asyncio.create_task(daemon.sweep()) for _ in range(12)]
            await eventually(
                lambda: proxy.held == DOCKER_THREADS,
                within=10,
                what=lambda: f"every Docker thread blocked; {proxy.held} calls held",
            )
            started = time.monotonic()
            assert (await api.get("/metrics")).status_code == 200
            assert time.monotonic() - started < 2
            assert proxy.held == DOCKER_THREADS, "Docker's threads were freed before it answered"
            path.write_text(json.dumps([{**entry, "capacity": 2}]))
            started = time.monotonic()
            reloaded = await api.post("/reload")
            assert reloaded.status_code == 200, reloaded.text
            assert reloaded.json()["updated"] == [worker.entry_id]
            assert time.monotonic() - started < 2
            assert proxy.held == DOCKER_THREADS
            for task in hanging:
                task.cancel()
    finally:
        proxy.stalled = False
        await daemon.stop()
        await proxy.cut()
