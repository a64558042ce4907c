"""Batch workers through the pass-through, on the real engine with `byoc-orch run` as its own
process (its real HTTP server, so streaming and memory are what an operator gets): bodies of
any size both ways, live server-sent events, aborts both ways, in-flight capacity, and
go-livepeer's batch forwarding."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import Harness, eventually, free_port
from tests.fake_livepeer import FakeLivepeer
from tests.test_daemon import worker_entry

pytestmark = pytest.mark.engine

MIB = 1024 * 1024
SECRET = "orch-secret-for-batch"
API_TOKEN = "api-token-for-batch"


def pattern(size: int) -> Iterator[bytes]:
    """What the demo worker's /v1/bytes sends."""
    block = bytes(range(256)) * 256
    while size > 0:
        piece = block[: min(size, len(block))]
        size -= len(piece)
        yield piece


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


class Daemon:
    def __init__(self, process: subprocess.Popen[bytes], base: str, log: Path) -> None:
        self.process, self.base, self.log = process, base, log

    async def entry(self, model_id: str, *, warm: bool = True) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            try:
                async with httpx.AsyncClient() as client:
                    listed = (await client.get(f"{self.base}/entries", timeout=2)).json()
            except httpx.HTTPError:
                return None
            mine = next((e for e in listed if e["model_id"] == model_id), None)
            return mine if mine is not None and (mine["warm"] or not warm) else None

        return await eventually(found, within=30, what=f"{model_id} warm")

    async def workers(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            return list((await client.get(f"{self.base}/workers", timeout=2)).json())


@asynccontextmanager
async def byoc_orch(
    harness: Harness, instance: str, tmp_path: Path, entries: list[dict[str, Any]], **env: str
) -> AsyncIterator[Daemon]:
    models = tmp_path / "aiModels.json"
    models.write_text(json.dumps(entries))
    port = free_port()
    log = tmp_path / "daemon.log"
    environment = {
        **os.environ,
        "BYOC_ORCH_MODELS_PATH": str(models),
        "BYOC_ORCH_PORT": str(port),
        "BYOC_ORCH_INSTANCE": instance,
        "BYOC_ORCH_DOCKER_HOST": harness.docker_host,
        "BYOC_ORCH_STARTUP_PROBE_INTERVAL": "0.1",
        "BYOC_ORCH_PROBE_INTERVAL": "0.2",
        "BYOC_ORCH_BACKOFF_INITIAL": "0.5",
        "BYOC_ORCH_GPU_METRICS": "false",
        "BYOC_ORCH_LOG_FORMAT": "json",
        **env,
    }
    process = _spawn(environment, log)
    try:
        yield Daemon(process, f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _spawn(environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "byoc_orch", "run"],
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def batch_entry(harness: Harness, model_id: str, **fields: Any) -> dict[str, Any]:
    entry = worker_entry(harness, model_id, gpus="none", **fields)
    return entry


async def test_64_mib_up_and_down_stream_through_in_little_memory(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    async with byoc_orch(harness, instance, tmp_path, [batch_entry(harness, "big")]) as daemon:
        url = (await daemon.entry("big"))["url"]
        before = vm_hwm_kib(daemon.process.pid)
        size = 64 * MIB

        async def upload() -> AsyncIterator[bytes]:
            for piece in pattern(size):
                yield piece

        want = hashlib.sha256()
        for piece in pattern(size):
            want.update(piece)
        async with httpx.AsyncClient(timeout=60) as client:
            reply = await client.post(
                f"{url}/v1/sha256",
                content=upload(),
                headers={"content-type": "application/octet-stream"},
            )
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"sha256": want.hexdigest(), "bytes": size}

            got, received = hashlib.sha256(), 0
            async with client.stream("GET", f"{url}/v1/bytes", params={"n": size}) as download:
                assert download.status_code == 200
                assert download.headers["content-length"] == str(size)
                async for chunk in download.aiter_raw():
                    got.update(chunk)
                    received += len(chunk)
            assert received == size
            assert got.hexdigest() == download.headers["x-demo-sha256"] == want.hexdigest()
        grown_mib = (vm_hwm_kib(daemon.process.pid) - before) / 1024
        assert grown_mib < 16, f"daemon peak RSS grew {grown_mib:.1f} MiB for 64 MiB bodies"


async def test_server_sent_events_arrive_as_the_worker_sends_them(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    async with byoc_orch(harness, instance, tmp_path, [batch_entry(harness, "sse")]) as daemon:
        url = (await daemon.entry("sse"))["url"]
        arrived: list[float] = []
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream("GET", f"{url}/v1/sse", params={"events": 5, "interval": 0.4}) as events,
        ):
            assert events.headers["content-type"].startswith("text/event-stream")
            started = time.monotonic()
            async for line in events.aiter_lines():
                if line.startswith("data:"):
                    arrived.append(time.monotonic() - started)
        assert len(arrived) == 5
        # The first event is not held back until the last is written (1.6 s later).
        assert arrived[0] < 0.8, arrived
        assert arrived[-1] - arrived[0] > 1.2, arrived


async def test_aborts_go_both_ways(
    harness: Harness, instance: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    entries = [batch_entry(harness, "abort"), batch_entry(harness, "killed")]
    async with byoc_orch(harness, instance, tmp_path, entries) as daemon:
        abort_url = (await daemon.entry("abort"))["url"]
        killed_url = (await daemon.entry("killed"))["url"]
        workers = {w["model_id"]: w for w in await daemon.workers()}

        # The client goes away mid-download: the worker sees its connection go.
        async with httpx.AsyncClient(timeout=10) as client:
            slow = {"n": 64 * MIB, "delay": 0.05}
            async with client.stream("GET", f"{abort_url}/v1/bytes", params=slow) as download:
                async for _chunk in download.aiter_raw():
                    break
        worker_url = f"http://127.0.0.1:{workers['abort']['host_port']}"

        async def aborted() -> list[Any]:
            async with httpx.AsyncClient() as client:
                return list((await client.get(f"{worker_url}/_demo/aborts")).json())

        (abort,) = await eventually(aborted, within=10, what="the worker saw the client leave")
        assert 0 < abort["sent"] < 64 * MIB
        await eventually(
            lambda: _in_flight(daemon, "abort"), within=5, what="the slot given back"
        )

        # The worker dies mid-download: the client sees an error, never a short 200.
        async with httpx.AsyncClient(timeout=10) as client:
            slow = {"n": 64 * MIB, "delay": 0.05}
            with pytest.raises(httpx.HTTPError):
                async with client.stream("GET", f"{killed_url}/v1/bytes", params=slow) as body:
                    assert body.status_code == 200
                    received = 0
                    async for chunk in body.aiter_raw():
                        received += len(chunk)
                        if received >= MIB:
                            container = workers["killed"]["container_id"]
                            await asyncio.to_thread(docker_client.containers.get(container).kill)


async def _in_flight(daemon: Daemon, model_id: str) -> bool:
    workers = {w["model_id"]: w for w in await daemon.workers()}
    return workers[model_id]["requests_in_flight"] == 0


async def test_capacity_counts_requests_in_flight(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    entries = [batch_entry(harness, "busy", capacity=2)]
    async with byoc_orch(harness, instance, tmp_path, entries) as daemon:
        url = (await daemon.entry("busy"))["url"]
        async with httpx.AsyncClient(timeout=10) as client:
            slow = [
                asyncio.create_task(client.post(f"{url}/v1/sleep", params={"seconds": 1.5}))
                for _ in range(2)
            ]
            await eventually(
                lambda: _requests(daemon, "busy", 2), within=5, what="two requests in flight"
            )
            third = await client.post(f"{url}/v1/sleep", params={"seconds": 0.1})
            assert third.status_code == 503
            assert third.json()["reason"] == "full"
            assert third.headers["retry-after"] == "1"
            capability = (await client.get(f"{daemon.base}/capabilities")).json()[0]
            assert capability["free_capacity"] == 0
            assert [reply.status_code for reply in await asyncio.gather(*slow)] == [200, 200]
            fourth = await client.post(f"{url}/v1/sleep", params={"seconds": 0.1})
            assert fourth.status_code == 200
            worker = (await daemon.workers())[0]
            calls = (
                await client.get(f"http://127.0.0.1:{worker['host_port']}/_demo/calls")
            ).json()
            assert len([c for c in calls if c["path"] == "/v1/sleep"]) == 3
            metrics = (await client.get(f"{daemon.base}/metrics")).text
            assert 'byoc_orch_requests_refused_total{model_id="busy"' in metrics


async def _requests(daemon: Daemon, model_id: str, count: int) -> bool:
    workers = {w["model_id"]: w for w in await daemon.workers()}
    return workers[model_id]["requests_in_flight"] == count


async def test_a_body_over_the_pass_through_limit_is_refused_before_the_worker(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    entries = [batch_entry(harness, "limited")]
    async with byoc_orch(
        harness, instance, tmp_path, entries, BYOC_ORCH_MAX_PASSTHROUGH_BYTES=str(MIB)
    ) as daemon:
        url = (await daemon.entry("limited"))["url"]
        async with httpx.AsyncClient(timeout=10) as client:
            sized = await client.post(f"{url}/v1/sha256", content=b"x" * (2 * MIB))
            assert sized.status_code == 413
            assert "BYOC_ORCH_MAX_PASSTHROUGH_BYTES" in sized.json()["fix"]

            async def unsized() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"x" * MIB

            streamed = await client.post(f"{url}/v1/sha256", content=unsized())
            assert streamed.status_code == 413
            # A session call keeps its own, small limit; a pass-through just under the limit
            # goes through.
            fits = await client.post(f"{url}/v1/sha256", content=b"x" * (MIB - 1))
            assert fits.json()["bytes"] == MIB - 1


async def test_go_livepeers_batch_forwarding_round_trips(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    """go-livepeer's processJob: POST {url}/<path after /process/request/>, query dropped, the
    client's body raw with its Content-Type, and the capability's token as a Bearer."""
    orch = FakeLivepeer(SECRET)
    await orch.start()
    entry = batch_entry(
        harness,
        "batched",
        token="entry-secret-token",
        env={"DEMO_AUTH_TOKEN": "entry-secret-token"},
    )
    try:
        async with byoc_orch(
            harness,
            instance,
            tmp_path,
            [entry],
            BYOC_ORCH_ORCH_URL=orch.url,
            BYOC_ORCH_ORCH_SECRET=SECRET,
            BYOC_ORCH_API_TOKEN=API_TOKEN,
            BYOC_ORCH_REGISTER_PROBE_INTERVAL="0.1",
        ) as daemon:
            await daemon.entry("batched")
            await eventually(lambda: "batched" in orch.registered, what="registered")
            job = base64.b64encode(
                json.dumps({"capability": "batched", "timeout_seconds": 10}).encode()
            ).decode()
            async with httpx.AsyncClient(timeout=10) as client:
                reply = await client.post(
                    f"{orch.url}/process/request/v1/echo/run?dropped=1",
                    content=b'{"prompt": "a cat"}',
                    headers={"Livepeer": job, "Content-Type": "application/json"},
                )
            assert reply.status_code == 200, reply.text
            echoed = reply.json()
            assert echoed["method"] == "POST"
            assert echoed["path"] == "/v1/echo/run"
            assert echoed["query"] == ""
            assert echoed["json"] == {"prompt": "a cat"}
            assert echoed["headers"]["content-type"] == "application/json"
            # go-livepeer sent byoc-orch's API token; the worker got the entry's own.
            assert echoed["headers"]["authorization"] == "Bearer entry-secret-token"
            (forwarded,) = orch.forwarded
            assert forwarded["authorization"] == f"Bearer {API_TOKEN}"
            assert forwarded["url"].endswith("/v1/echo/run")
    finally:
        await orch.stop()
