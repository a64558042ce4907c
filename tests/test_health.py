"""Reading /health answers, and asking a real loopback server for them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from byoc_orch.health import ProbeFailure, ProbeResult, Verdict, classify
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


# -- strict status words ---------------------------------------------------------------------


@pytest.mark.parametrize("word", [" ok\t", "Ok", "oK", "\r\n IDLE \x0b\x0c", "Idle", "OK"])
def test_warm_words_with_ascii_whitespace_and_any_case_are_warm(word: str) -> None:
    verdict, _, reported, failure = classify(200, body({"status": word}))
    assert verdict is Verdict.WARM
    assert reported == word
    assert failure is None


@pytest.mark.parametrize(
    "word",
    [
        "o\u212a",  # KELVIN SIGN: "o\u212a".lower() == "ok"
        "\u212a",
        "\uff4f\uff4b",  # fullwidth "ok"
        "\uff2f\uff2b",  # fullwidth "OK"
        "\uff29\uff24\uff2c\uff25",  # fullwidth "IDLE"
        "\u0131dle",  # dotless i: "\u0131dle".upper() == "IDLE"
        "ok\u00a0",  # a no-break space is whitespace to str.strip(), not ASCII whitespace
        "\u3000ok",
        "ok\u200b",
        "\u2003IDLE",
        "ok\x00",
        "o k",
        "okay",
        "",
    ],
)
def test_look_alikes_of_warm_words_are_not_warm(word: str) -> None:
    verdict, detail, reported, failure = classify(200, body({"status": word}))
    assert verdict is Verdict.FAILED
    assert failure is ProbeFailure.BAD_BODY
    assert "unknown status" in detail
    assert reported == word


@pytest.mark.parametrize(
    ("word", "verdict"),
    [
        ("\uff2c\uff2f\uff21\uff24\uff29\uff2e\uff27", Verdict.FAILED),  # fullwidth LOADING
        ("LOAD\u0130NG", Verdict.FAILED),  # dotted capital I
        ("\u00a0LOADING", Verdict.FAILED),
        ("\uff25\uff32\uff32\uff2f\uff32", Verdict.FAILED),  # fullwidth ERROR
        ("\u212aERROR", Verdict.FAILED),
        (" loading\n", Verdict.LOADING),
        ("\tError ", Verdict.ERROR),
    ],
)
def test_loading_and_error_follow_the_same_ascii_rule(word: str, verdict: Verdict) -> None:
    assert classify(200, body({"status": word})).verdict is verdict


@pytest.mark.parametrize(
    "raw",
    [
        b'{"status": "ok", "status": "ok"}',
        b'{"status": "ERROR", "status": "IDLE"}',
        b'{"status": "LOADING", "status": "OK"}',
        b'{"status": "ok", "st\\u0061tus": "ok"}',  # the same key, escaped
    ],
    ids=["same", "error-then-idle", "loading-then-ok", "escaped"],
)
def test_a_duplicated_status_key_is_an_unreadable_body(raw: bytes) -> None:
    verdict, detail, reported, failure = classify(200, raw)
    assert verdict is Verdict.FAILED
    assert failure is ProbeFailure.BAD_BODY
    assert "more than once" in detail
    assert reported is None


def test_a_repeated_key_elsewhere_does_not_matter() -> None:
    raw = b'{"status": "IDLE", "detail": {"status": 1, "status": 2}, "x": 1, "x": 2}'
    assert classify(200, raw).verdict is Verdict.WARM


def test_a_body_that_is_not_utf8_is_unreadable() -> None:
    verdict, _, _, failure = classify(200, '{"status": "ok"}'.encode("utf-16"))
    assert verdict is Verdict.FAILED
    assert failure is ProbeFailure.BAD_BODY


@pytest.mark.parametrize(
    ("raw", "verdict"),
    [
        (body({"status": " ok\t"}), Verdict.WARM),
        (body({"status": "Ok"}), Verdict.WARM),
        (body({"status": "o\u212a"}), Verdict.FAILED),
        ('{"status": "\uff4f\uff4b"}'.encode(), Verdict.FAILED),
        (b'{"status": "ok", "status": "ok"}', Verdict.FAILED),
    ],
    ids=["padded-ok", "Ok", "kelvin", "fullwidth-raw-utf8", "duplicate-key"],
)
async def test_probe_judges_status_words_strictly(raw: bytes, verdict: Verdict) -> None:
    server, url = await serve(answering("200 OK", raw))
    async with server:
        result = await probe(url, timeout=5.0)
    assert result.verdict is verdict, result.detail
    if verdict is Verdict.FAILED:
        assert result.failure is ProbeFailure.BAD_BODY


# -- hostile workers -------------------------------------------------------------------------

# A probe of a hostile worker must fail long before this, and without spinning the CPU.
HOSTILE_TIMEOUT = 5.0


def flooding(head: bytes, line: bytes) -> Handler:
    """Answers with `head`, then writes `line` over and over until the prober hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        try:
            writer.write(head)
            while not reader.at_eof():
                writer.write(line * 64)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return handle


async def timed_probe(handler: Handler, timeout: float) -> tuple[ProbeResult, float, float]:
    """Probe a server running `handler`: the result, and the wall time and CPU time (the whole
    process's, the server's share included) the probe took. Waits for the server's handler to
    end too, so none is left running when the test's event loop closes."""
    handlers: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await handler(reader, writer)

    server, url = await serve(tracked)
    async with server:
        cpu, wall = time.process_time(), time.perf_counter()
        result = await probe(url, timeout)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        await asyncio.wait_for(asyncio.gather(*handlers), 5.0)
    return result, wall, cpu


@pytest.mark.parametrize(
    ("head", "line", "why"),
    [
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n", "interim (1xx) answers"),
        (b"", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", "interim (1xx) answers"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'12\r\n{"status": "IDLE"}\r\n0\r\n',
            b"X-Trailer: again\r\n",
            "trailer lines",
        ),
        (b"HTTP/1.1 200 OK\r\n", b"X-Header: again\r\n", "header lines"),
        (b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * 1024, "longer than"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n", "chunks"),
    ],
    ids=["100-continue", "103-early-hints", "trailers", "headers", "endless-line", "tiny-chunks"],
)
async def test_endless_answers_are_cut_off_quickly_and_cheaply(
    head: bytes, line: bytes, why: str
) -> None:
    result, wall, cpu = await timed_probe(flooding(head, line), HOSTILE_TIMEOUT)
    assert result.verdict is Verdict.FAILED
    assert result.failure is ProbeFailure.OTHER
    assert "ProtocolError" in result.detail and why in result.detail, result.detail
    assert wall < 1.0, f"took {wall:.2f} s"
    assert cpu < 0.5, f"used {cpu:.2f} s of CPU"


async def test_eight_interim_answers_are_allowed_and_nine_are_not() -> None:
    payload = body({"status": "IDLE"})
    real = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
    for interim, verdict in ((8, Verdict.WARM), (9, Verdict.FAILED)):
        server, url = await serve(raw_answer(b"HTTP/1.1 100 Continue\r\n\r\n" * interim + real))
        async with server:
            result = await probe(url, timeout=2.0)
        assert result.verdict is verdict, (interim, result.detail)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-Pad%d: %s\r\n" % (n, b"p" * 8000) for n in range(5))
        + b"\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x12\r\n" + b"a" * 18,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
        b"HTTP/1.1 2\xb200 OK\r\n\r\n",
    ],
    ids=[
        "head-too-big",
        "101-headers",
        "101-upgrade",
        "two-lengths",
        "unicode-digit-length",
        "0x-chunk",
        "negative-chunk",
        "unicode-digit-status",
    ],
)
async def test_oversized_or_ambiguous_heads_are_protocol_failures(raw: bytes) -> None:
    server, url = await serve(raw_answer(raw))
    async with server:
        result = await probe(url, timeout=2.0)
    assert result.verdict is Verdict.FAILED
    assert "ProtocolError" in result.detail, result.detail


def raw_answer(raw: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    return handle


def trickling(head: bytes, piece: bytes, every: float) -> Handler:
    """Answers with `head`, then one `piece` every `every` seconds, for ever: each read of the
    prober gets something, so only a deadline for the whole probe ends it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        try:
            writer.write(head)
            while not reader.at_eof():  # until the prober hangs up
                await writer.drain()
                await asyncio.sleep(every)
                writer.write(piece)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    return handle


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n", b"a"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\na\r\n"),
        (b"HTTP/1.1 200 OK\r\n\r\n", b" "),
        (b"", b"H"),
    ],
    ids=["headers", "sized-body", "chunked-body", "body-until-close", "status-line"],
)
async def test_the_timeout_is_a_deadline_for_the_whole_probe(head: bytes, piece: bytes) -> None:
    result, wall, cpu = await timed_probe(trickling(head, piece, every=0.05), 0.5)
    assert result.verdict is Verdict.FAILED
    assert result.failure is ProbeFailure.TIMEOUT, result.detail
    assert 0.45 <= wall < 1.5, f"took {wall:.2f} s"
    assert cpu < 0.5


async def test_the_deadline_covers_a_reconnect() -> None:
    """A kept-alive connection the worker closed is replaced within the same deadline."""
    stop = asyncio.Event()
    answered = 0

    async def once_then_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await _read_request(reader)
        if answered == 0:
            answered += 1
            payload = body({"status": "IDLE"})
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()  # closes the kept-alive connection behind the prober's back
            return
        await stop.wait()
        writer.close()

    server, url = await serve(once_then_silent)
    prober = HealthProber(url)
    async with server:
        assert (await prober.probe(2.0)).verdict is Verdict.WARM
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        result = await prober.probe(0.4)
        wall = time.perf_counter() - started
        stop.set()
        prober.close()
    assert result.failure is ProbeFailure.TIMEOUT
    assert wall < 1.0
