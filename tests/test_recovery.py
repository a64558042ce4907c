"""Sessions survive byoc-orch's restarts, on the real engine: streams running in adopted
containers are found again, capacity is right at once, and a worker's own word (IDLE) ends
sessions that ended behind byoc-orch's back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from byoc_orch import session_lifecycle
from byoc_orch.session_lifecycle import UNKNOWN_SESSION_PREFIX
from tests.conftest import Harness, eventually
from tests.test_daemon import only, running, worker_entry
from tests.test_passthrough import byoc_orch
from tests.test_proxy import api, start_body, warm

pytestmark = pytest.mark.engine


async def sessions_of(base: str) -> list[dict[str, Any]] | None:
    try:
        async with httpx.AsyncClient() as client:
            return list((await client.get(f"{base}/sessions", timeout=2)).json())
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_a_restart_finds_the_running_stream_and_keeps_the_slot_taken(
    harness: Harness, instance: str, tmp_path: Path, how: signal.Signals
) -> None:
    entries = [worker_entry(harness, "kept", gpus="none")]
    async with byoc_orch(harness, instance, tmp_path, entries) as first:
        url = (await first.entry("kept"))["url"]
        async with httpx.AsyncClient(timeout=10) as client:
            reply = await client.post(f"{url}/stream/start", json=start_body("live-1"))
            assert reply.status_code == 200, reply.text
        first.process.send_signal(how)
        await asyncio.to_thread(first.process.wait, 15)
    (tmp_path / "second").mkdir()
    async with byoc_orch(harness, instance, tmp_path / "second", entries) as second:
        url = (await second.entry("kept"))["url"]
        listed = await sessions_of(second.base)
        assert listed is not None
        (session,) = [s for s in listed if s["state"] == "active"]
        assert (session["id"], session["recovered"]) == ("live-1", True)
        async with httpx.AsyncClient(timeout=10) as client:
            capability = (await client.get(f"{second.base}/capabilities")).json()[0]
            assert capability["free_capacity"] == 0
            worker = (await second.workers())[0]
            refused = await client.post(f"{url}/stream/start", json=start_body("live-2"))
            assert refused.status_code == 503 and refused.json()["reason"] == "full"
            # The worker never saw the second start; its stream is still the first one.
            status = (
                await client.get(f"http://127.0.0.1:{worker['host_port']}/stream/status")
            ).json()
            assert status["request_id"] == "live-1"
            stopped = await client.post(f"{url}/stream/stop", headers={"X-Stream-Id": "live-1"})
            assert stopped.status_code == 200
            capability = (await client.get(f"{second.base}/capabilities")).json()[0]
            assert capability["free_capacity"] == 1


async def test_a_stream_ended_on_the_worker_frees_its_slot(
    harness: Harness, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_lifecycle, "IDLE_GRACE", 0.3)
    async with running(harness, instance, [worker_entry(harness, "ended")]) as daemon:
        worker = only(daemon)
        await warm(daemon, worker)
        async with api(daemon) as client:
            base = f"/proxy/{worker.worker_id}/stream"
            assert (await client.post(f"{base}/start", json=start_body("gone"))).status_code == 200
        # go-livepeer ends streams by closing their channels, never telling byoc-orch: here the
        # stream stops on the worker itself.
        async with httpx.AsyncClient() as direct:
            assert (await direct.post(f"{worker.upstream_url}/stream/stop", json={})).is_success
        session = await eventually(
            lambda: (s := daemon.sessions.get("gone")) and s.state == "ended" and s,
            within=10,
            what="the session ended once the worker reports IDLE",
        )
        assert session.end_reason == "ended_by_worker"
        assert worker.in_use == 0


class _BusyWorker:
    """An external worker that streams but cannot say which stream: health OK (busy), then
    IDLE once told to; /stream/status fails."""

    def __init__(self) -> None:
        self.idle = False
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /health"):
                    body = json.dumps({"status": "IDLE" if self.idle else "OK"}).encode()
                    status = b"200 OK"
                else:
                    body, status = b'{"error": "boom"}', b"500 Internal Server Error"
                writer.write(
                    b"HTTP/1.1 "
                    + status
                    + b"\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        writer.close()


async def test_a_worker_that_cannot_name_its_stream_is_held_busy_until_idle(
    harness: Harness, instance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_lifecycle, "IDLE_GRACE", 0.3)
    busy = _BusyWorker()
    server = await asyncio.start_server(busy.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    entry = {"pipeline": "p", "model_id": "opaque", "url": f"http://127.0.0.1:{port}", "warm": True}
    try:
        async with running(harness, instance, [entry]) as daemon:
            worker = only(daemon)
            await eventually(lambda: worker.routable, what="streams asked for")
            (placeholder,) = daemon.sessions.live(worker.worker_id)
            assert placeholder.id == UNKNOWN_SESSION_PREFIX + worker.worker_id
            assert placeholder.recovered
            assert daemon.registry.warm()[0].free == 0
            busy.idle = True
            await eventually(
                lambda: not daemon.sessions.live(worker.worker_id),
                within=10,
                what="the placeholder gone once the worker reports IDLE",
            )
            assert daemon.registry.warm()[0].free == 1
    finally:
        server.close()
