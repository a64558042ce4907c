"""Reading /health answers, and asking a real loopback server for them."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable

import pytest

from byoc_orch.health import ProbeResult, Verdict, classify
from byoc_orch.prober import HealthProber


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


# -- classify --------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["ok", "OK", "IDLE", "idle", " Idle "])
def test_warm_words_are_warm(word: str) -> None:
    verdict, detail, reported, _ = classify(200, body({"status": word}))
    assert verdict is Verdict.WARM
    assert reported == word
    assert detail == word


def test_loading_on_200_is_loading() -> None:
    verdict, detail, reported, _ = classify(200, body({"status": "LOADING"}))
    assert verdict is Verdict.LOADING
    assert reported == "LOADING"
    assert "LOADING" in detail


def test_loading_on_503_is_loading() -> None:
    verdict, _, reported, _ = classify(503, body({"status": "loading"}))
    assert verdict is Verdict.LOADING
    assert reported == "loading"


def test_error_on_200_is_error() -> None:
    verdict, detail, reported, _ = classify(200, body({"status": "ERROR"}))
    assert verdict is Verdict.ERROR
    assert reported == "ERROR"
    assert "ERROR" in detail


def test_error_on_500_is_error() -> None:
    verdict, _, reported, _ = classify(500, body({"status": "error"}))
    assert verdict is Verdict.ERROR
    assert reported == "error"


def test_warm_word_on_a_non_200_is_not_warm() -> None:
    verdict, detail, reported, _ = classify(503, body({"status": "ok"}))
    assert verdict is Verdict.FAILED
    assert detail == "HTTP 503"
    assert reported == "ok"


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"", b"\xff\xfe\x00garbage", body(["ok"]), body({"state": "ok"}), body("ok")],
    ids=["text", "empty", "binary", "list", "no-status", "bare-string"],
)
def test_unreadable_bodies_fail(raw: bytes) -> None:
    verdict, detail, reported, _ = classify(200, raw)
    assert verdict is Verdict.FAILED
    assert "unreadable body" in detail
    assert reported is None


def test_unknown_status_word_fails() -> None:
    verdict, detail, reported, _ = classify(200, body({"status": "warming-up"}))
    assert verdict is Verdict.FAILED
    assert "unknown status" in detail
    assert "warming-up" in detail
    assert reported == "warming-up"


def test_non_string_status_fails() -> None:
    verdict, _, reported, _ = classify(200, body({"status": 1}))
    assert verdict is Verdict.FAILED
    assert reported == "1"


def test_not_found_fails_with_the_status_code() -> None:
    verdict, detail, reported, _ = classify(404, b"404 page not found")
    assert verdict is Verdict.FAILED
    assert detail == "HTTP 404"
    assert reported is None


# -- probe against a loopback server ---------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> None:
    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
        pass


def answering(status_line: str, payload: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            f"HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    return handle


def silent(stop: asyncio.Event) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await stop.wait()  # never answers
        writer.close()

    return handle


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/health"


async def probe(url: str, timeout: float) -> ProbeResult:
    prober = HealthProber(url)
    try:
        return await prober.probe(timeout)
    finally:
        prober.close()


async def test_probe_good_answer_is_warm() -> None:
    server, url = await serve(answering("200 OK", body({"status": "IDLE"})))
    async with server:
        result = await probe(url, timeout=5.0)
    assert result.verdict is Verdict.WARM
    assert result.http_status == 200
    assert result.reported == "IDLE"
    assert result.latency > 0
    assert result.at > 0


async def test_probe_loading_on_503() -> None:
    server, url = await serve(answering("503 Service Unavailable", body({"status": "LOADING"})))
    async with server:
        result = await probe(url, timeout=5.0)
    assert result.verdict is Verdict.LOADING
    assert result.http_status == 503


async def test_probe_silent_server_times_out() -> None:
    stop = asyncio.Event()
    server, url = await serve(silent(stop))
    async with server:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await probe(url, timeout=0.2)
        elapsed = loop.time() - started
        stop.set()
    assert result.verdict is Verdict.FAILED
    assert result.detail == "no answer within 0.2 s"
    assert result.http_status is None
    assert 0.15 <= elapsed < 3.0
    assert result.latency >= 0.15


async def test_probe_closed_port_is_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        # Bound but not listening: connecting is refused.
        result = await probe(f"http://127.0.0.1:{port}/health", timeout=2.0)
    assert result.verdict is Verdict.FAILED
    assert result.detail == "connection refused"
    assert result.http_status is None


async def test_probe_never_raises_on_a_dropped_connection() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    server, url = await serve(hang_up)
    async with server:
        result = await probe(url, timeout=2.0)
    assert result.verdict is Verdict.FAILED
    assert result.detail
    assert result.http_status is None


def test_deeply_nested_body_is_a_failed_probe() -> None:
    verdict, _, _, _ = classify(200, b"[" * 100_000)
    assert verdict is Verdict.FAILED


async def test_one_kept_alive_connection_serves_every_probe() -> None:
    connections = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        payload = body({"status": "IDLE"})
        while True:
            line = await reader.readline()
            if not line:
                break
            await _read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            await writer.drain()
        writer.close()

    server, url = await serve(keep_alive)
    prober = HealthProber(url)
    async with server:
        results = [await prober.probe(2.0) for _ in range(5)]
        prober.close()
    assert [r.verdict for r in results] == [Verdict.WARM] * 5
    assert connections == 1


async def test_a_closed_idle_connection_is_replaced_without_a_failed_probe() -> None:
    server, url = await serve(answering("200 OK", body({"status": "ok"})))
    prober = HealthProber(url)
    async with server:
        # Each answer says Connection: close, and the next probe simply reconnects.
        results = [await prober.probe(2.0) for _ in range(3)]
        prober.close()
    assert [r.verdict for r in results] == [Verdict.WARM] * 3


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'7\r\n{"statu\r\nA\r\ns": "IDLE"\r\n1\r\n}\r\n0\r\n\r\n',
        b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"status": "IDLE"}',
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n"
        b'{"status": "IDLE"}',
    ],
    ids=["chunked", "until-close", "interim-100"],
)
async def test_bodies_framed_every_http_1_way_are_read(raw: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    server, url = await serve(answer)
    async with server:
        result = await probe(url, timeout=2.0)
    assert result.verdict is Verdict.WARM, result.detail
    assert result.reported == "IDLE"


@pytest.mark.parametrize(
    "raw",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"],
    ids=["not-http", "bad-length"],
)
async def test_garbage_answers_are_failed_probes(raw: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    server, url = await serve(answer)
    async with server:
        result = await probe(url, timeout=2.0)
    assert result.verdict is Verdict.FAILED
    assert "ProtocolError" in result.detail
