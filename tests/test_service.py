"""`byoc-orch run` as systemd runs it: a real $NOTIFY_SOCKET, WATCHDOG_USEC, SIGHUP reloads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Harness, eventually, free_port
from tests.test_daemon import byoc_orch, worker_entry

pytestmark = pytest.mark.engine


class NotifySocket:
    """The service manager's end: a datagram socket read by its own thread, as systemd reads
    it promptly (a unix datagram queue holds only a few messages)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._open = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while self._open:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def drain(self) -> list[str]:
        return list(self.messages)

    def seen(self, field: str) -> list[str]:
        return [m for m in self.drain() if field in m.split("\n")]

    def close(self) -> None:
        self._open = False
        self._reader.join(1)
        self.sock.close()


async def workers(base: str) -> dict[str, dict[str, Any]]:
    try:
        async with httpx.AsyncClient() as client:
            listed = (await client.get(f"{base}/workers", timeout=2)).json()
    except httpx.HTTPError:
        return {}
    return {w["model_id"]: w for w in listed}


async def test_notify_watchdog_and_sighup_reload(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    models = tmp_path / "aiModels.json"
    keep, change = worker_entry(harness, "svc-keep"), worker_entry(harness, "svc-change")
    models.write_text(json.dumps([keep, change]))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "300000",
        "BYOC_ORCH_MODELS_PATH": str(models),
        "BYOC_ORCH_PORT": str(port),
        "BYOC_ORCH_INSTANCE": instance,
        "BYOC_ORCH_DOCKER_HOST": harness.docker_host,
        "BYOC_ORCH_STOP_TIMEOUT": "1",
        "BYOC_ORCH_LOG_FORMAT": "json",
    }
    process = byoc_orch(["run"], env)
    try:
        ready = await eventually(lambda: notify.seen("READY=1"), what="READY=1")
        assert any(line.startswith("STATUS=") for line in ready[0].split("\n"))
        # READY comes after the first reconcile, which is when /readyz turns 200.
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base}/readyz")).status_code == 200
        await eventually(
            lambda: len(notify.seen("WATCHDOG=1")) >= 3, what="watchdog pings every 0.15 s"
        )
        await eventually(
            lambda: any(m == "STATUS=2/2 warm" for m in notify.drain()), what="STATUS 2/2 warm"
        )
        before = await workers(base)
        assert {w["state"] for w in before.values()} == {"warm"}

        # A broken file: rejected, everything keeps running exactly as it was.
        models.write_text(json.dumps([keep, {**change, "gpus": "some"}]))
        reloading_before = len(notify.seen("RELOADING=1"))
        process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: len(notify.seen("RELOADING=1")) > reloading_before, what="RELOADING=1"
        )
        await eventually(
            lambda: any("reload rejected" in m for m in notify.drain()), what="rejected STATUS"
        )
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{base}/metrics")).text
        assert 'byoc_orch_config_reloads_total{result="rejected"} 1.0' in text
        same = await workers(base)
        assert {k: w["container_id"] for k, w in same.items()} == {
            k: w["container_id"] for k, w in before.items()
        }

        # A real change: only the changed entry gets a new container.
        models.write_text(json.dumps([keep, {**change, "env": {**change["env"], "X": "1"}}]))
        process.send_signal(signal.SIGHUP)

        async def replaced() -> dict[str, dict[str, Any]] | None:
            now = await workers(base)
            fresh = now.get("svc-change", {})
            if (
                fresh.get("state") == "warm"
                and fresh.get("container_id") != before["svc-change"]["container_id"]
            ):
                return now
            return None

        after = await eventually(replaced, what="changed entry replaced and warm")
        assert after["svc-keep"]["container_id"] == before["svc-keep"]["container_id"]
        assert after["svc-keep"]["state"] == "warm"
    finally:
        process.send_signal(signal.SIGTERM)
        output = await asyncio.to_thread(process.communicate, timeout=20)
        await eventually(lambda: notify.seen("STOPPING=1"), within=5, what="STOPPING=1")
        notify.close()
    assert process.returncode == 0, output[0].decode()[-2000:]
    assert "STOPPING=1" in notify.messages, notify.messages[-8:]
    lines = [json.loads(line) for line in output[0].decode().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "SIGHUP: reloading" for line in lines)
    assert any(line.get("event") == "reload rejected; running configuration kept" for line in lines)
