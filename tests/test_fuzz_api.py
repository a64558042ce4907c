"""Fuzzing the HTTP API as it runs (`byoc-orch run`, its real server): every route in the
OpenAPI document driven by schemathesis, and raw malformed requests at the proxy. Whatever comes
in, byoc-orch answers with a 4xx naming the problem (or passes the worker's answer on), never
a 500, and keeps serving. Bounded and derandomised, so it is quick and repeatable in CI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import ROOT, eventually, free_port
from tests.test_daemon import start_local_worker

SERVER_ERRORS = {500, 501}
CRASHED = b"Internal Server Error"
"""What uvicorn answers when the application raised: byoc-orch's own failure. Workers' 5xx
(the demo worker answers 500 for a bad params body, 501 for HEAD) are passed on unchanged."""


class Running:
    def __init__(self, base: str, ids: list[str], process: subprocess.Popen[bytes]) -> None:
        self.base, self.ids, self.process = base, ids, process


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """byoc-orch serving two external demo workers (no Docker needed)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    ports = [free_port(), free_port()]
    workers = [start_local_worker(port) for port in ports]
    entries = [
        {
            "pipeline": "live-video-to-video",
            "model_id": f"fuzz-{n}",
            "url": f"http://127.0.0.1:{port}",
            "warm": True,
            "capacity": 2,
        }
        for n, port in enumerate(ports)
    ]
    models = tmp / "aiModels.json"
    models.write_text(json.dumps(entries))
    port = free_port()
    env = {
        **os.environ,
        "BYOC_ORCH_MODELS_PATH": str(models),
        "BYOC_ORCH_PORT": str(port),
        "BYOC_ORCH_INSTANCE": f"fuzz{port}",
        "BYOC_ORCH_DOCKER_HOST": "unix:///nonexistent/docker.sock",
        "BYOC_ORCH_GPU_METRICS": "false",
        "BYOC_ORCH_PROXY_TIMEOUT": "3",
        "BYOC_ORCH_LOG_LEVEL": "warning",
        "BYOC_ORCH_LOG_FORMAT": "json",
    }
    log = (tmp / "daemon.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "byoc_orch", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        ids: list[str] = []
        while time.monotonic() < deadline and len(ids) < 2:
            time.sleep(0.2)
            try:
                listed = httpx.get(f"{base}/capabilities", timeout=2).json()
            except httpx.HTTPError:
                continue
            ids = [c["url"].rsplit("/", 1)[1] for c in listed]
        assert len(ids) == 2, (tmp / "daemon.log").read_text()[-2000:]
        yield Running(base, ids, process)
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        for worker in workers:
            worker.terminate()
            worker.wait(5)
        assert ROOT.exists()


def test_openapi_lists_every_route(daemon: Running) -> None:
    paths = httpx.get(f"{daemon.base}/openapi.json").json()["paths"]
    for path in (
        "/proxy/{target}/stream/start",
        "/proxy/{target}/api/stream/stop",
        "/proxy/{target}/stream/status",
        "/proxy/{target}/{path}",
        "/stream/start",
        "/api/stream/update",
        "/live-runner/{worker_id}/health",
        "/capabilities",
        "/workers",
        "/entries",
        "/sessions",
        "/reload",
        "/metrics",
    ):
        assert path in paths, path


def test_no_route_answers_a_server_error(daemon: Running) -> None:
    document = httpx.get(f"{daemon.base}/openapi.json").json()
    # Point the path parameters at real entries and workers part of the time, so generated
    # calls get past the lookup into the session and pass-through code.
    for item in document["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] in ("target", "worker_id"):
                    parameter["schema"] = {"anyOf": [{"enum": daemon.ids}, {"type": "string"}]}
    # Stopping the daemon (and withdrawing the host) are real actions, fuzzed or not: the
    # rest of the module needs it serving. Both are exercised in test_restart.py.
    for path in ("/shutdown", "/withdraw"):
        document["paths"].pop(path, None)
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            response = case.call(base_url=daemon.base, timeout=15)
            if response.status_code in SERVER_ERRORS and (
                CRASHED in response.content or b'"source":"byoc-orch"' in response.content
            ):
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")

        call()
    assert failures == []
    assert httpx.get(f"{daemon.base}/healthz").status_code == 200


def _raw_requests(ids: list[str]) -> Iterator[bytes]:
    rng = random.Random(20261129)
    targets = [*ids, "nope", "", "..", "%00", "a%2Fb"]
    paths = [
        "stream/start",
        "api/stream/stop",
        "stream/params",
        "stream/status",
        "v1/echo",
        "v1/echo/%00/x",
        "%ff%fe",
        "../../etc/passwd",
        "x" * 3000,
        "caf\xe9",
    ]
    bodies = [
        b"",
        b"{",
        b"[" * 5000 + b"]" * 5000,
        b'{"gateway_request_id": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"gateway_request_id": "g", "params": ' + b"{\"a\":" * 200 + b"1" + b"}" * 200 + b"}",
        b'{"gateway_request_id": 7}',
        b'{"gateway_request_id": "x\\u0000y", "subscribe_url": "a", "publish_url": "b"}',
        json.dumps({"gateway_request_id": "é" * 10, "subscribe_url": "a"}).encode(),
        b"\xff\xfe\x00garbage",
        b"1" * 5000,
    ]
    headers = [
        b"Content-Type: application/json",
        b"X-Stream-Id: \xe9\xff",
        b"X-Gateway-Request-Id: " + b"a" * 9000,
        b"X-Model-Id: fuzz-0",
        b"X-Caf\xe9: 1",
        b"Authorization: Bearer \xff",
        b"Transfer-Encoding: chunked",
        b"Content-Length: -1",
        b"Content-Length: 99999999999999999999",
        b"Expect: 100-continue",
    ]
    for _ in range(160):
        method = rng.choice(
            [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"BREW", b"CONNECT", b"TRACE"]
        )
        target = rng.choice(targets)
        path = rng.choice(paths)
        raw_path = f"/proxy/{target}/{path}".encode("latin-1")
        if rng.random() < 0.2:
            raw_path = b"/" + path.encode("latin-1")
        body = rng.choice(bodies)
        chosen = rng.sample(headers, rng.randint(0, 3))
        if not any(h.lower().startswith((b"content-length", b"transfer-encoding")) for h in chosen):
            chosen.append(b"Content-Length: " + str(len(body)).encode())
        head = b"\r\n".join(
            [method + b" " + raw_path + b" HTTP/1.1", b"Host: byoc", *chosen, b"Connection: close"]
        )
        yield head + b"\r\n\r\n" + body


def _answer_to(port: int, request: bytes) -> tuple[int | None, bytes]:
    """The status and the body of the answer to one raw request (read until close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(request)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split()
    return (int(line[1]) if len(line) > 1 and line[1].isdigit() else None), body


async def test_raw_malformed_requests_never_get_a_server_error(daemon: Running) -> None:
    port = int(daemon.base.rsplit(":", 1)[1])
    statuses: dict[int | None, int] = {}
    errors = []
    for request in _raw_requests(daemon.ids):
        status, body = await asyncio.to_thread(_answer_to, port, request)
        statuses[status] = statuses.get(status, 0) + 1
        if status in SERVER_ERRORS and (CRASHED in body or b'"source":"byoc-orch"' in body):
            errors.append(request[:200])
    assert errors == [], errors[:3]
    assert sum(n for s, n in statuses.items() if s is not None and s < 500) > 100, statuses

    async def alive() -> bool:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{daemon.base}/healthz")).status_code == 200

    assert await eventually(alive, what="still serving")


@pytest.mark.parametrize(
    ("method", "extra", "body", "status"),
    [
        ("CONNECT", "Content-Length: 5", b"hello", 405),
        ("CONNECT", "", b"", 405),
        ("TRACE", "", b"", 405),
        ("HEAD", "Content-Length: 5", b"hello", 400),
        ("GET", "X-Big: " + "a" * 200_000, b"", 431),
        ("GET", "X-Fine: " + "a" * 30_000, b"", 200),
    ],
    ids=["connect-body", "connect", "trace", "head-body", "huge-header", "large-header"],
)
async def test_what_cannot_be_forwarded_is_a_clear_4xx(
    daemon: Running, method: str, extra: str, body: bytes, status: int
) -> None:
    from byoc_orch import server

    port = int(daemon.base.rsplit(":", 1)[1])
    lines = [f"{method} /proxy/{daemon.ids[0]}/v1/echo HTTP/1.1", "Host: byoc"]
    lines += [extra] if extra else []
    request = ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode() + body
    answered, text = await asyncio.to_thread(_answer_to, port, request)
    assert answered == status, text[:200]
    if status >= 400 and method != "HEAD":  # a HEAD answer has no body
        assert b"error" in text
    if status == 431:
        assert str(server.MAX_HEAD_BYTES).encode() in text


async def test_slow_headers_are_cut_off(daemon: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client dribbling its headers does not keep a connection for ever."""
    from byoc_orch import server

    port = int(daemon.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    started = time.monotonic()
    closed = await asyncio.wait_for(reader.read(), server.HEADER_TIMEOUT + 10)
    assert closed == b""
    assert server.HEADER_TIMEOUT - 1 < time.monotonic() - started < server.HEADER_TIMEOUT + 5
    writer.close()
