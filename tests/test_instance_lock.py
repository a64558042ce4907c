"""One daemon per instance id and engine: a second one refuses to start, touching nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from byoc_orch.instance_lock import InstanceLocked, acquire
from tests.conftest import eventually, free_port
from tests.test_daemon import byoc_orch


def test_the_lock_is_per_instance_and_engine_and_released_on_close() -> None:
    instance = f"t{uuid.uuid4().hex[:8]}"
    held = acquire(instance, "unix:///run/a.sock")
    try:
        with pytest.raises(InstanceLocked) as refused:
            acquire(instance, "unix:///run/a.sock")
        assert instance in str(refused.value)
        assert "BYOC_ORCH_INSTANCE" in str(refused.value)
        acquire(f"{instance}x", "unix:///run/a.sock").close()
        acquire(instance, "unix:///run/b.sock").close()
    finally:
        held.close()
    acquire(instance, "unix:///run/a.sock").close()


async def test_a_second_daemon_with_the_same_instance_refuses(tmp_path: Path) -> None:
    models = tmp_path / "aiModels.json"
    models.write_text(json.dumps([{"pipeline": "p", "model_id": "m", "url": "http://127.0.0.1:9"}]))
    instance = f"t{uuid.uuid4().hex[:8]}"
    first_port, second_port = free_port(), free_port()
    env = {
        **os.environ,
        "BYOC_ORCH_MODELS_PATH": str(models),
        "BYOC_ORCH_INSTANCE": instance,
        "BYOC_ORCH_LOG_FORMAT": "json",
        "BYOC_ORCH_GPU_METRICS": "false",
    }
    first = byoc_orch(["run", "--port", str(first_port)], env)
    try:

        async def serving() -> bool:
            try:
                async with httpx.AsyncClient() as client:
                    reply = await client.get(f"http://127.0.0.1:{first_port}/readyz", timeout=1)
                return reply.status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(serving, what="the first daemon serving")
        second = byoc_orch(["run", "--port", str(second_port)], env)
        output = (await asyncio.to_thread(second.communicate, timeout=30))[0].decode()
        assert second.returncode == 1, output
        assert "another byoc-orch already runs instance" in output
        assert await serving()
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.to_thread(first.communicate, timeout=20)
    assert first.returncode == 0
