"""The session proxy on the real engine, against the reference worker in both route generations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import docker
import httpx
import pytest

from byoc_orch.api import create_app
from byoc_orch.daemon import Daemon
from byoc_orch.worker import Worker
from byoc_orch.worker_state import State
from tests.conftest import Harness, eventually, free_port
from tests.test_daemon import by_model, only, running, worker_entry

pytestmark = pytest.mark.engine


@contextlib.asynccontextmanager
async def api(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(daemon))
    async with httpx.AsyncClient(transport=transport, base_url="http://byoc", timeout=30) as c:
        yield c


async def warm(daemon: Daemon, worker: Worker) -> None:
    await eventually(lambda: daemon.registry.is_warm(worker.worker_id), what="worker warm")


async def container_calls(worker: Worker, path_suffix: str = "") -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{worker.upstream_url}/_demo/calls")
    return [c for c in reply.json() if c["path"].endswith(path_suffix)]


def start_body(session: str, **extra: Any) -> dict[str, Any]:
    return {
        "subscribe_url": "http://127.0.0.1:1/in",
        "publish_url": "http://127.0.0.1:1/out",
        "gateway_request_id": session,
        **extra,
    }


@pytest.mark.parametrize(
    ("served", "called"),
    [("stream", ""), ("stream", "api/"), ("api", ""), ("api", "api/")],
    ids=[
        "serves-stream/calls-stream",
        "serves-stream/calls-api",
        "serves-api/calls-stream",
        "serves-api/calls-api",
    ],
)
async def test_session_lifecycle_reaches_the_container_under_its_own_prefix(
    harness: Harness, instance: str, served: str, called: str
) -> None:
    entry = worker_entry(harness, f"life-{served}", env={"DEMO_ROUTES": served})
    prefix = "/api" if served == "api" else ""
    async with running(harness, instance, [entry]) as daemon, api(daemon) as client:
        worker = only(daemon)
        await warm(daemon, worker)
        base = f"/proxy/{worker.worker_id}/{called}stream"

        reply = await client.post(f"{base}/start", json=start_body("s-1", params={"p": 1}))
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "success"
        (start,) = await container_calls(worker, "/stream/start")
        assert start["path"] == f"{prefix}/stream/start"
        assert start["body"]["gateway_request_id"] == "s-1"
        assert start["body"]["params"] == {"p": 1}

        session = (await client.get("/sessions/s-1")).json()
        assert session["state"] == "active"
        assert session["worker_id"] == worker.worker_id
        assert session["params"] == {"p": 1}
        capability = (await client.get("/capabilities")).json()[0]
        assert capability["free_capacity"] == 0
        assert (await client.get(f"/workers/{worker.worker_id}")).json()["in_use"] == 1

        status = await client.get(f"{base}/status")
        assert status.status_code == 200
        assert status.json()["request_id"] == "s-1"

        for op, value in (("params", 2), ("update", 3)):
            reply = await client.post(f"{base}/{op}", json={"p": value})
            assert reply.status_code == 200, reply.text
        params_calls = await container_calls(worker, "/stream/params")
        assert [c["path"] for c in params_calls] == [f"{prefix}/stream/params"] * 2
        assert [c["body"] for c in params_calls] == [{"p": 2}, {"p": 3}]
        assert (await client.get("/sessions/s-1")).json()["params"] == {"p": 3}

        reply = await client.post(f"{base}/stop", json={"gateway_request_id": "s-1"})
        assert reply.status_code == 200, reply.text
        assert len(await container_calls(worker, "/stream/stop")) == 1
        session = (await client.get("/sessions/s-1")).json()
        assert session["state"] == "ended"
        assert session["end_reason"] == "stopped"
        await eventually(
            lambda: daemon.registry.warm()[0].free == 1, what="slot free again after stop"
        )
        assert (
            daemon.metrics.sample(
                "byoc_orch_sessions_ended_total",
                {"pipeline": entry["pipeline"], "model_id": entry["model_id"], "reason": "stopped"},
            )
            == 1
        )


async def test_a_full_worker_refuses_at_once_and_the_container_never_sees_it(
    harness: Harness, instance: str
) -> None:
    entry = worker_entry(harness, "full", capacity=1)
    async with running(harness, instance, [entry]) as daemon, api(daemon) as client:
        worker = only(daemon)
        await warm(daemon, worker)
        base = f"/proxy/{worker.worker_id}/stream"
        assert (await client.post(f"{base}/start", json=start_body("a"))).status_code == 200
        refused = await client.post(f"{base}/start", json=start_body("b"))
        assert refused.status_code == 503
        body = refused.json()
        assert body["reason"] == "full"
        assert body["model_id"] == "full"
        assert "capacity" in body["error"]
        starts = await container_calls(worker, "/stream/start")
        assert [c["body"]["gateway_request_id"] for c in starts] == ["a"]
        assert daemon.sessions.get("b") is None

        # Stop without naming the session acts on the worker's only one.
        assert (await client.post(f"{base}/stop", json={})).status_code == 200
        assert daemon.sessions.get("a").end_reason == "stopped"  # type: ignore[union-attr]
        assert (await client.post(f"{base}/start", json=start_body("b"))).status_code == 200


async def test_start_while_loading_is_refused_without_reaching_the_container(
    harness: Harness, instance: str
) -> None:
    entry = worker_entry(harness, "loading", env={"DEMO_LOAD_SECONDS": "60"})
    async with running(harness, instance, [entry]) as daemon, api(daemon) as client:
        worker = only(daemon)
        await eventually(
            lambda: (
                worker.status.last_probe is not None
                and worker.status.last_probe.verdict == "loading"
            ),
            what="a LOADING probe",
        )
        reply = await client.post(
            f"/proxy/{worker.worker_id}/stream/start", json=start_body("early")
        )
        assert reply.status_code == 503
        assert reply.json()["reason"] == "not_warm"
        assert reply.json()["state"] == "starting"
        assert await container_calls(worker, "/stream/start") == []
        assert (
            daemon.metrics.sample(
                "byoc_orch_session_starts_refused_total",
                {"pipeline": entry["pipeline"], "model_id": "loading", "reason": "not_warm"},
            )
            == 1
        )


async def test_a_killed_worker_ends_its_session_with_a_reason(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entry = worker_entry(harness, "killed")
    async with running(harness, instance, [entry]) as daemon, api(daemon) as client:
        worker = only(daemon)
        await warm(daemon, worker)
        reply = await client.post(
            f"/proxy/{worker.worker_id}/stream/start", json=start_body("doomed")
        )
        assert reply.status_code == 200
        container_id = worker.status.container_id
        await asyncio.to_thread(docker_client.containers.get(container_id).kill)
        session = await eventually(
            lambda: (s := daemon.sessions.get("doomed")) and s.state == "ended" and s,
            what="session ended after the kill",
        )
        assert session.end_reason == "crashed"
        assert "137" in (session.end_detail or "")
        assert daemon.sessions.in_use(worker.worker_id) == 0
        listed = (await client.get("/sessions")).json()
        assert [s["state"] for s in listed if s["id"] == "doomed"] == ["ended"]
        # Back warm with a fresh container: a new session can start.
        await eventually(
            lambda: (
                daemon.registry.is_warm(worker.worker_id)
                and worker.status.container_id != container_id
            ),
            what="relaunched and warm",
        )
        reply = await client.post(
            f"/proxy/{worker.worker_id}/stream/start", json=start_body("next")
        )
        assert reply.status_code == 200, reply.text


async def test_container_errors_pass_through_and_byoc_orch_errors_are_its_own(
    harness: Harness, instance: str
) -> None:
    entry = worker_entry(harness, "errors")
    async with (
        running(harness, instance, [entry], max_body_bytes=2048) as daemon,
        api(daemon) as client,
    ):
        worker = only(daemon)
        await warm(daemon, worker)
        base = f"/proxy/{worker.worker_id}/stream"

        # The container's 400 (missing subscribe_url) comes back unchanged; no session.
        reply = await client.post(
            f"{base}/start", json={"publish_url": "x", "gateway_request_id": "bad"}
        )
        assert reply.status_code == 400
        assert reply.json()["status"] == "error"
        assert "subscribe_url" in reply.json()["message"]
        assert "source" not in reply.json()
        assert daemon.sessions.get("bad") is None
        assert daemon.sessions.in_use(worker.worker_id) == 0

        # Stop with no stream: the container's 400, unchanged.
        reply = await client.post(f"{base}/stop", json={})
        assert reply.status_code == 400
        assert reply.json() == {"status": "error", "message": "No active stream to stop"}

        # byoc-orch's own refusals never reach the container.
        malformed = await client.post(
            f"{base}/start", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400
        assert "not valid JSON" in malformed.json()["error"]
        missing = await client.post(f"{base}/start", json={"subscribe_url": "x"})
        assert missing.status_code == 400
        assert "gateway_request_id" in missing.json()["error"]
        huge = await client.post(f"{base}/start", json=start_body("big", pad="x" * 4096))
        assert huge.status_code == 413
        assert "BYOC_ORCH_MAX_BODY_BYTES" in huge.json()["fix"]
        starts = await container_calls(worker, "/stream/start")
        assert [c["body"].get("gateway_request_id") for c in starts] == ["bad"]

        unknown = await client.post("/proxy/nope/stream/start", json=start_body("z"))
        assert unknown.status_code == 404
        assert "nope" in unknown.json()["error"]


async def test_transparent_paths_round_trip_method_query_headers_and_body(
    harness: Harness, instance: str
) -> None:
    entry = worker_entry(
        harness, "batch", token="entry-token-123", env={"DEMO_AUTH_TOKEN": "entry-token-123"}
    )
    async with running(harness, instance, [entry]) as daemon, api(daemon) as client:
        worker = only(daemon)
        await warm(daemon, worker)
        payload = {"prompt": "a cat", "n": [1, 2, 3]}
        reply = await client.post(
            f"/proxy/{worker.worker_id}/v1/echo/run?seed=7&fast=1",
            json=payload,
            headers={"X-Job": "j-1", "Authorization": "Bearer caller-token"},
        )
        assert reply.status_code == 200
        assert reply.headers["x-demo-echo"] == "1"
        echoed = reply.json()
        assert echoed["method"] == "POST"
        assert echoed["path"] == "/v1/echo/run"
        assert echoed["query"] == "seed=7&fast=1"
        assert echoed["json"] == payload
        assert echoed["headers"]["x-job"] == "j-1"
        # The entry's token replaces whatever the caller sent.
        assert echoed["headers"]["authorization"] == "Bearer entry-token-123"

        put = await client.put(f"/proxy/{worker.worker_id}/v1/echo", content=b"raw bytes")
        assert put.json()["method"] == "PUT"
        assert put.json()["body"] == "raw bytes"
        missing = await client.get(f"/proxy/{worker.worker_id}/no/such/path")
        assert missing.status_code == 404
        assert missing.json()["message"] == "Not found: /no/such/path"

        # Session calls carry the token too (the worker answers 401 without it).
        start = await client.post(f"/proxy/{worker.worker_id}/stream/start", json=start_body("tok"))
        assert start.status_code == 200, start.text


async def test_root_session_calls_are_routed_by_model_id(harness: Harness, instance: str) -> None:
    entries = [
        worker_entry(harness, "routed-a"),
        worker_entry(harness, "routed-b", env={"DEMO_ROUTES": "api"}),
    ]
    async with running(harness, instance, entries) as daemon, api(daemon) as client:
        a, b = by_model(daemon, "routed-a"), by_model(daemon, "routed-b")
        await warm(daemon, a)
        await warm(daemon, b)
        reply = await client.post(
            "/api/stream/start", json=start_body("r-1"), headers={"X-Model-Id": "routed-b"}
        )
        assert reply.status_code == 200, reply.text
        assert [c["path"] for c in await container_calls(b, "/stream/start")] == [
            "/api/stream/start"
        ]
        assert await container_calls(a, "/stream/start") == []
        status = await client.get("/stream/status", headers={"X-Model-Id": "routed-b"})
        assert status.json()["request_id"] == "r-1"
        update = await client.post(
            "/api/stream/update",
            json={"strength": 0.5},
            headers={"X-Model-Id": "routed-b", "X-Pipeline": "live-video-to-video"},
        )
        assert update.status_code == 200
        stop = await client.post(
            "/stream/stop",
            json={},
            headers={"X-Model-Id": "routed-b", "X-Gateway-Request-Id": "r-1"},
        )
        assert stop.status_code == 200
        assert daemon.sessions.get("r-1").end_reason == "stopped"  # type: ignore[union-attr]

        unknown = await client.post(
            "/api/stream/start", json=start_body("r-2"), headers={"X-Model-Id": "ghost"}
        )
        assert unknown.status_code == 404
        assert "ghost" in unknown.json()["error"]
        assert "live-video-to-video/routed-a" in unknown.json()["known"]
        no_header = await client.post("/api/stream/start", json=start_body("r-3"))
        assert no_header.status_code == 400
        assert "X-Model-Id" in no_header.json()["error"]


async def test_api_token_guards_state_changing_calls_only(harness: Harness, instance: str) -> None:
    entry = worker_entry(harness, "guarded")
    async with (
        running(harness, instance, [entry], api_token="s3cret-token") as daemon,
        api(daemon) as client,
    ):
        worker = only(daemon)
        await warm(daemon, worker)
        base = f"/proxy/{worker.worker_id}/stream"
        denied = await client.post(f"{base}/start", json=start_body("g"))
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == "Bearer"
        assert "s3cret" not in denied.text
        wrong = await client.post(
            f"{base}/start", json=start_body("g"), headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        assert await container_calls(worker, "/stream/start") == []
        ok = await client.post(
            f"{base}/start",
            json=start_body("g"),
            headers={"Authorization": "Bearer s3cret-token"},
        )
        assert ok.status_code == 200
        # The caller's token is ours; it never reaches the container.
        (start,) = await container_calls(worker, "/stream/start")
        assert start["authorization"] is None
        for read in ("/sessions", "/capabilities", "/workers", "/metrics"):
            assert (await client.get(read)).status_code == 200, read
        # Every call through the proxy acts with the worker's credential: reads need the token.
        assert (await client.get(f"{base}/status")).status_code == 401
        guarded = {"Authorization": "Bearer s3cret-token"}
        assert (await client.get(f"{base}/status", headers=guarded)).status_code == 200
        # The live streams' URLs are for token holders only.
        (listed,) = [s for s in (await client.get("/sessions")).json() if s["id"] == "g"]
        assert set(listed["request"].values()) == {"[hidden]"}
        shown = (await client.get("/sessions/g", headers=guarded)).json()
        assert shown["request"]["subscribe_url"] == start_body("g")["subscribe_url"]
        routed = await client.post("/stream/stop", json={}, headers={"X-Model-Id": "guarded"})
        assert routed.status_code == 401


async def test_without_a_token_session_calls_are_open(harness: Harness, instance: str) -> None:
    entry = worker_entry(harness, "open")
    async with running(harness, instance, [entry]) as daemon, api(daemon) as client:
        worker = only(daemon)
        await warm(daemon, worker)
        reply = await client.post(
            f"/proxy/{worker.worker_id}/stream/start",
            json=start_body("o"),
            headers={"Authorization": "Bearer anything"},
        )
        assert reply.status_code == 200


# -- without the engine: external workers on loopback ---------------------------------------


HEALTHY = b'HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{"status": "ok"}'
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


async def _silent_server() -> tuple[asyncio.Server, int]:
    """A healthy batch worker (no session routes) that never answers a job: the proxy's
    timeout must fire."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /health"):
                    writer.write(HEALTHY)
                elif b"/stream/status" in head.split(b"\r\n", 1)[0]:
                    writer.write(NOT_FOUND)
                else:
                    await reader.read()
                    break
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_unreachable_worker_is_502_and_a_silent_one_504(tmp_path: Any) -> None:
    from byoc_orch.aimodels import parse_models
    from byoc_orch.settings import Settings

    server, silent_port = await _silent_server()
    dead_port = free_port()
    entries = [
        {"pipeline": "p", "model_id": "dead", "url": f"http://127.0.0.1:{dead_port}"},
        {
            "pipeline": "p",
            "model_id": "silent",
            "url": f"http://127.0.0.1:{silent_port}",
            "warm": True,
        },
    ]
    settings = Settings(
        instance=f"t{uuid.uuid4().hex[:8]}",
        port=free_port(),
        proxy_timeout=0.3,
    )
    models = parse_models(json.dumps(entries), source="test")
    daemon = Daemon(settings, models)
    await daemon.start()
    try:
        await warm(daemon, by_model(daemon, "silent"))
        async with api(daemon) as client:
            dead = await client.get(f"/proxy/{by_model(daemon, 'dead').worker_id}/stream/status")
            assert dead.status_code == 502
            assert dead.json()["source"] == "byoc-orch"
            assert "p/dead" in dead.json()["error"]
            silent = await client.post(
                f"/proxy/{by_model(daemon, 'silent').worker_id}/v1/run", json={"x": 1}
            )
            assert silent.status_code == 504
            assert "BYOC_ORCH_PROXY_TIMEOUT" in silent.json()["fix"]
            assert by_model(daemon, "dead").status.state is not State.WARM
    finally:
        await daemon.stop()
        server.close()


async def test_worker_cookies_are_relayed_not_kept(tmp_path: Any) -> None:
    """A Set-Cookie from one worker reaches the caller; byoc-orch never sends it back."""
    from byoc_orch.aimodels import parse_models
    from byoc_orch.settings import Settings

    seen: list[str] = []

    async def cookie_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            cookie = [
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"cookie:")
            ]
            if head.startswith(b"GET /health"):
                writer.write(HEALTHY)
                await writer.drain()
                continue
            if b"/stream/status" not in head.split(b"\r\n", 1)[0]:
                seen.append(cookie[0] if cookie else "")
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/\r\n"
                b"Content-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
            )
            await writer.drain()

    server = await asyncio.start_server(cookie_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    models = parse_models(
        json.dumps(
            [{"pipeline": "p", "model_id": "c", "url": f"http://127.0.0.1:{port}", "warm": True}]
        ),
        source="test",
    )
    daemon = Daemon(Settings(instance=f"t{uuid.uuid4().hex[:8]}", port=free_port()), models)
    await daemon.start()
    try:
        await warm(daemon, only(daemon))
        async with api(daemon) as client:
            worker_id = only(daemon).worker_id
            first = await client.get(f"/proxy/{worker_id}/v1/thing")
            assert first.headers["set-cookie"] == "session=abc; Path=/"
            client.cookies.clear()
            await client.get(f"/proxy/{worker_id}/v1/thing")
        assert seen == ["", ""]
    finally:
        await daemon.stop()
        server.close()
