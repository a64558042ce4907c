"""The daemon end to end on the real engine with the reference worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from byoc_orch.aimodels import parse_models
from byoc_orch.api import create_app
from byoc_orch.container_spec import LABEL_INSTANCE, LABEL_MANAGED_BY
from byoc_orch.daemon import Daemon
from byoc_orch.settings import Settings
from byoc_orch.worker import Worker
from byoc_orch.worker_state import State
from tests.conftest import ROOT, Harness, eventually, free_port

pytestmark = pytest.mark.engine

FAST = {
    "probe_interval": 0.2,
    "startup_probe_interval": 0.1,
    "probe_timeout": 0.5,
    "failure_threshold": 2,
    "unhealthy_restart_after": 60,
    "backoff_initial": 0.5,
    "backoff_max": 2.0,
    "stop_timeout": 1,
}


def worker_entry(harness: Harness, model_id: str, port: int | None = None, **fields: Any) -> dict:
    env = {"DEMO_LOAD_SECONDS": "0.3", **fields.pop("env", {})}
    return {
        "pipeline": "live-video-to-video",
        "model_id": model_id,
        "container": harness.worker_image,
        "url": f"http://127.0.0.1:{port or free_port()}",
        "warm": True,
        "gpus": "all",
        "env": env,
        **fields,
    }


def settings_for(harness: Harness, instance: str, **overrides: Any) -> Settings:
    return Settings(
        docker_host=harness.docker_host,
        instance=instance,
        port=free_port(),
        **{**FAST, **overrides},
    )


@asynccontextmanager
async def running(
    harness: Harness, instance: str, entries: list[dict], **overrides: Any
) -> AsyncIterator[Daemon]:
    models = parse_models(json.dumps(entries), source="test")
    daemon = Daemon(settings_for(harness, instance, **overrides), models)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def only(daemon: Daemon) -> Worker:
    (worker,) = daemon.workers.values()
    return worker


def by_model(daemon: Daemon, model_id: str) -> Worker:
    return next(w for w in daemon.workers.values() if w.entry.model_id == model_id)


async def listed(daemon: Daemon) -> list[str]:
    transport = httpx.ASGITransport(app=create_app(daemon))
    async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as client:
        reply = await client.get("/capabilities")
    assert reply.status_code == 200
    return [f"{c['pipeline']}/{c['model_id']}" for c in reply.json()]


async def api_get(daemon: Daemon, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(daemon))
    async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as client:
        return await client.get(path)


# -- warming up -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["pytrickle", "docs"])
async def test_cold_start_is_listed_only_once_loading_ends(
    harness: Harness, instance: str, style: str
) -> None:
    entry = worker_entry(
        harness, f"cold-{style}", env={"DEMO_LOAD_SECONDS": "2", "DEMO_HEALTH_STYLE": style}
    )
    async with running(harness, instance, [entry]) as daemon:
        worker = only(daemon)
        seen_loading = await eventually(
            lambda: (
                worker.status.last_probe is not None
                and worker.status.last_probe.verdict == "loading"
            ),
            what="a LOADING probe",
        )
        assert seen_loading
        assert worker.status.state is State.STARTING
        assert await listed(daemon) == []
        await eventually(lambda: worker.status.state is State.WARM, what="warm")
        assert await listed(daemon) == [entry["pipeline"] + "/" + entry["model_id"]]
        capability = (await api_get(daemon, "/capabilities")).json()[0]
        assert capability["warm"] is True
        assert capability["url"].endswith(f"/proxy/{worker.worker_id}")
        described = (await api_get(daemon, f"/workers/{worker.worker_id}")).json()
        assert described["state"] == "warm" and described["kind"] == "managed"
        assert described["container_id"] == worker.status.container_id
        assert described["host_port"] == int(entry["url"].rsplit(":", 1)[1])
        assert described["gpus"] == "all"
        assert described["last_health"]["status"] in ("IDLE", "ok")


async def test_readyz_and_unknown_worker(harness: Harness, instance: str) -> None:
    async with running(harness, instance, [worker_entry(harness, "ready")]) as daemon:
        assert (await api_get(daemon, "/readyz")).status_code == 200
        missing = await api_get(daemon, "/workers/nope")
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        assert (await api_get(daemon, "/healthz")).json() == {"status": "ok"}


# -- failures -------------------------------------------------------------------------------


async def test_error_status_restarts_the_worker(harness: Harness, instance: str) -> None:
    entry = worker_entry(harness, "errors", env={"DEMO_ERROR_AFTER": "1.5"})
    async with running(harness, instance, [entry]) as daemon:
        worker = only(daemon)
        await eventually(lambda: worker.status.state is State.WARM, what="warm")
        first = worker.status.container_id
        await eventually(lambda: worker.status.restarts >= 1, what="a restart after ERROR")
        assert "ERROR" in worker.status.reason or worker.status.state is not State.WARM
        await eventually(
            lambda: worker.status.state is State.WARM and worker.status.container_id != first,
            what="warm again in a new container",
        )


async def test_killed_container_is_withdrawn_before_a_poll_and_comes_back(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entry = worker_entry(harness, "killed")
    async with running(harness, instance, [entry], probe_interval=30) as daemon:
        worker = only(daemon)
        await eventually(lambda: worker.status.state is State.WARM, what="warm")
        container_id = worker.status.container_id
        assert container_id
        killed_at = time.monotonic()
        docker_client.containers.get(container_id).kill()
        await eventually(lambda: not daemon.registry.is_warm(worker.worker_id), within=5)
        withdrawn_after = time.monotonic() - killed_at
        assert withdrawn_after < 5, "the 30 s poll cannot have noticed; the die event did"
        assert "137" in worker.status.last_failure
        await eventually(
            lambda: (
                worker.status.state is State.WARM and worker.status.container_id != container_id
            ),
            what="restarted and warm",
        )
        assert worker.status.restarts == 1


async def test_crash_loop_backs_off_with_growing_visible_delays(
    harness: Harness, instance: str
) -> None:
    entry = worker_entry(harness, "crashloop", env={"DEMO_EXIT_AFTER": "0.2"})
    async with running(harness, instance, [entry]) as daemon:
        worker = only(daemon)
        periods: dict[float, float] = {}

        async def three_backoffs() -> bool:
            status = worker.status
            if status.state is State.BACKOFF and status.next_attempt_at is not None:
                described = (await api_get(daemon, f"/workers/{worker.worker_id}")).json()
                assert described["next_restart_at"] and described["restarts"] == status.restarts
                periods[status.since] = round(status.next_attempt_at - status.since, 2)
            return len(periods) >= 3

        await eventually(three_backoffs, within=30, what="three back-off periods")
        assert [periods[since] for since in sorted(periods)][:3] == [0.5, 1.0, 2.0]
        assert worker.status.restarts >= 3
        assert not daemon.registry.is_warm(worker.worker_id)


async def test_hung_health_is_withdrawn_after_the_threshold(
    harness: Harness, instance: str
) -> None:
    entry = worker_entry(harness, "hangs", env={"DEMO_HEALTH_HANG_AFTER": "1.5"})
    async with running(harness, instance, [entry]) as daemon:
        worker = only(daemon)
        await eventually(lambda: worker.status.state is State.WARM, what="warm")
        await eventually(lambda: worker.status.state is State.UNHEALTHY, what="unhealthy")
        assert not daemon.registry.is_warm(worker.worker_id)
        assert "no answer" in worker.status.reason


async def test_exit_at_start_is_a_crash_with_its_exit_code(harness: Harness, instance: str) -> None:
    entry = worker_entry(harness, "exits", env={"DEMO_EXIT_AT_START": "1", "DEMO_EXIT_CODE": "7"})
    async with running(harness, instance, [entry]) as daemon:
        worker = only(daemon)
        await eventually(lambda: worker.status.state is State.BACKOFF, what="back-off")
        assert "code 7" in worker.status.reason


async def test_pull_failures_fail_only_their_own_worker(harness: Harness, instance: str) -> None:
    entries = [
        worker_entry(harness, "good"),
        worker_entry(harness, "no-such-tag", container=f"{harness.registry}/byoc/demo-worker:nope"),
        worker_entry(harness, "registry-down", container=f"127.0.0.1:{free_port()}/byoc/x:1"),
    ]
    async with running(harness, instance, entries) as daemon:
        good, missing, down = (by_model(daemon, e["model_id"]) for e in entries)
        await eventually(lambda: good.status.state is State.WARM, what="the good worker warm")
        await eventually(lambda: missing.status.state is State.FAILED, what="missing image failed")
        await eventually(lambda: down.status.state is State.FAILED, what="registry-down failed")
        assert "not found" in missing.status.reason
        assert "unreachable" in down.status.reason
        described = (await api_get(daemon, f"/workers/{down.worker_id}")).json()
        assert described["reason"] and described["state"] == "failed"
        assert await listed(daemon) == ["live-video-to-video/good"]


async def test_port_taken_fails_naming_the_port(harness: Harness, instance: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        entry = worker_entry(harness, "port-taken", port=port)
        async with running(harness, instance, [entry]) as daemon:
            worker = only(daemon)
            await eventually(lambda: worker.status.state is State.FAILED, what="failed")
            assert f"127.0.0.1:{port}" in worker.status.reason


# -- restarts and reconcile -----------------------------------------------------------------


async def test_restart_adopts_warm_containers_without_restarting_them(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entries = [worker_entry(harness, "adopt-a"), worker_entry(harness, "adopt-b")]
    async with running(harness, instance, entries) as daemon:
        for worker in daemon.workers.values():
            await eventually(lambda w=worker: w.status.state is State.WARM, what="warm")
        before = {w.worker_id: w.status.container_id for w in daemon.workers.values()}
    started = {
        cid: docker_client.api.inspect_container(cid)["State"]["StartedAt"]
        for cid in before.values()
    }
    async with running(harness, instance, entries) as daemon:
        assert sorted(daemon.adopted) == sorted(before)
        for worker in daemon.workers.values():
            await eventually(lambda w=worker: w.status.state is State.WARM, within=3)
        assert {w.worker_id: w.status.container_id for w in daemon.workers.values()} == before
        assert all(w.status.restarts == 0 for w in daemon.workers.values())
    for cid, when in started.items():
        assert docker_client.api.inspect_container(cid)["State"]["StartedAt"] == when


async def test_changed_entry_is_replaced_and_removed_entry_is_removed(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    keep, change, drop = (worker_entry(harness, m) for m in ("keep", "change", "drop"))
    async with running(harness, instance, [keep, change, drop]) as daemon:
        for worker in daemon.workers.values():
            await eventually(lambda w=worker: w.status.state is State.WARM, what="warm")
        before = {w.entry.model_id: w.status.container_id for w in daemon.workers.values()}
    changed = {**change, "env": {**change["env"], "EXTRA": "1"}}
    async with running(harness, instance, [keep, changed]) as daemon:
        kept, replaced = by_model(daemon, "keep"), by_model(daemon, "change")
        await eventually(lambda: replaced.status.state is State.WARM, what="replacement warm")
        assert kept.status.container_id == before["keep"]
        assert replaced.status.container_id != before["change"]
        ours = docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
        )
        assert before["drop"] not in {c.id for c in ours}
        assert before["change"] not in {c.id for c in ours}
        assert len(ours) == 2


async def test_other_instances_containers_are_untouched(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    other = docker_client.containers.run(
        harness.busybox_image,
        ["sleep", "300"],
        detach=True,
        labels={LABEL_MANAGED_BY: "byoc-orch", LABEL_INSTANCE: f"{instance}x"},
    )
    try:
        async with running(harness, instance, [worker_entry(harness, "mine")]) as daemon:
            await eventually(lambda: only(daemon).status.state is State.WARM, what="warm")
        other.reload()
        assert other.status == "running"
    finally:
        other.remove(force=True)


async def test_cold_entries_are_listed_as_cold_and_not_started(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    async with running(harness, instance, [worker_entry(harness, "cold", warm=False)]) as daemon:
        worker = only(daemon)
        assert worker.status.state is State.COLD
        assert (
            docker_client.containers.list(
                all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}
            )
            == []
        )
        assert (await api_get(daemon, "/workers")).json()[0]["state"] == "cold"


# -- external workers -----------------------------------------------------------------------


def start_local_worker(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORT": str(port), "DEMO_LOAD_SECONDS": "0.2"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "deploy/demo-worker/worker.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_external_entry_follows_its_health(harness: Harness, instance: str) -> None:
    port = free_port()
    external = {
        "pipeline": "text-to-image",
        "model_id": "external",
        "url": f"http://127.0.0.1:{port}",
        "warm": True,
    }
    process = start_local_worker(port)
    try:
        async with running(harness, instance, [external]) as daemon:
            worker = only(daemon)
            await eventually(lambda: worker.status.state is State.WARM, what="external warm")
            # Listed once byoc-orch knows which streams it already runs (none here).
            await eventually(lambda: worker.routable, what="its streams known")
            assert await listed(daemon) == ["text-to-image/external"]
            process.terminate()
            process.wait(5)
            await eventually(lambda: worker.status.state is State.UNHEALTHY, what="unhealthy")
            assert await listed(daemon) == []
            process = start_local_worker(port)
            await eventually(lambda: worker.status.state is State.WARM, what="warm again")
            assert (await api_get(daemon, "/workers")).json()[0]["kind"] == "external"
    finally:
        process.terminate()
        process.wait(5)


# -- the real command -----------------------------------------------------------------------


def byoc_orch(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "byoc_orch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def test_run_command_serves_then_adopts_after_sigterm(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    models = tmp_path / "aiModels.json"
    models.write_text(json.dumps([worker_entry(harness, "cli")]))
    port = free_port()
    env = {
        **os.environ,
        "BYOC_ORCH_MODELS_PATH": str(models),
        "BYOC_ORCH_PORT": str(port),
        "BYOC_ORCH_INSTANCE": instance,
        "BYOC_ORCH_DOCKER_HOST": harness.docker_host,
        "BYOC_ORCH_STARTUP_PROBE_INTERVAL": "0.1",
        "BYOC_ORCH_LOG_FORMAT": "json",
    }
    base = f"http://127.0.0.1:{port}"

    async def warm_container() -> str | None:
        try:
            async with httpx.AsyncClient() as client:
                workers = (await client.get(f"{base}/workers", timeout=1)).json()
        except httpx.HTTPError:
            return None
        warm = [w["container_id"] for w in workers if w["state"] == "warm"]
        return warm[0] if warm else None

    ids = []
    for _ in range(2):
        process = byoc_orch(["run"], env)
        try:
            ids.append(await eventually(warm_container, what="byoc-orch run serving a warm worker"))
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{base}/readyz")).status_code == 200
        finally:
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=15)[0].decode()
        assert process.returncode == 0, output
        assert "shutting down" in output
    assert ids[0] == ids[1]
