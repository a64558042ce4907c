"""Hostile and runaway workers, end to end: the daemon on the real engine names an
out-of-memory kill as such. (The probe's defences against hostile /health answers are tested in
test_health.py, the containment of containers in test_container_spec.py and test_engine.py.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from byoc_orch.aimodels import parse_models
from byoc_orch.daemon import Daemon
from byoc_orch.settings import Settings
from byoc_orch.worker import Worker
from tests.conftest import Harness, eventually, free_port

pytestmark = pytest.mark.engine


@asynccontextmanager
async def daemon_running(
    harness: Harness, instance: str, entries: list[dict[str, Any]]
) -> AsyncIterator[Daemon]:
    settings = Settings(
        docker_host=harness.docker_host,
        instance=instance,
        port=free_port(),
        probe_interval=0.2,
        startup_probe_interval=0.1,
        probe_timeout=0.5,
        backoff_initial=5.0,
        backoff_max=5.0,
        stop_timeout=1,
    )
    daemon = Daemon(settings, parse_models(json.dumps(entries), source="test"))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def only(daemon: Daemon) -> Worker:
    (worker,) = daemon.workers.values()
    return worker


async def test_a_worker_killed_for_memory_is_reported_as_out_of_memory(
    harness: Harness, instance: str
) -> None:
    entry = {
        "pipeline": "live-video-to-video",
        "model_id": "greedy",
        "container": harness.worker_image,
        "url": f"http://127.0.0.1:{free_port()}",
        "warm": True,
        "gpus": "none",
        "memory": "64m",
        "env": {"DEMO_LOAD_SECONDS": "5", "DEMO_ALLOCATE_MB": "512"},
    }
    async with daemon_running(harness, instance, [entry]) as daemon:
        worker = only(daemon)
        await eventually(
            lambda: "out of memory" in worker.status.last_failure,
            within=30,
            what="the crash named as an out-of-memory kill",
        )
        assert worker.status.last_failure.startswith(
            "container exited with code 137: killed by SIGKILL — out of memory (Docker reports"
        )
        # Through the restart that follows, the crash stays the reason shown.
        assert "out of memory" in worker.status.restart_cause
        assert not daemon.registry.is_warm(worker.worker_id)
