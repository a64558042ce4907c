"""Asking one worker's /health, over a keep-alive connection of its own.

Probes are the daemon's steady load: one per worker per second, 256 workers on a big host.
Through httpx each probe cost about 1.5 ms of CPU here (request and response models, the
connection pool's bookkeeping, anyio's stream wrappers), which alone would use a third of a
core at 256 workers. A health check needs none of that — one GET, a small JSON body — so it
speaks that much HTTP/1.1 directly on an asyncio stream: a request line, the status line,
headers, and a body framed by Content-Length, chunked encoding or the connection's close. One
connection per worker is reused while the worker keeps it open. Session calls and everything
else still go through the shared httpx client.

A worker's answer is untrusted input, read on the daemon's one event loop, so every part of it
is bounded and the probe's timeout is a deadline for the whole exchange — connecting, every
read, a reconnect — not for each read: a worker that trickles bytes, or repeats `100 Continue`
or trailer lines without end, is cut off at the deadline or, sooner, at a cap (at most
MAX_INTERIM interim answers, MAX_HEADERS header lines and MAX_HEAD_BYTES per head, MAX_LINE per
line, MAX_TRAILERS trailer lines, MAX_BODY of body), and the probe fails instead of spending the
daemon's CPU on it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from urllib.parse import urlsplit

from byoc_orch import __version__
from byoc_orch.health import ProbeFailure, ProbeResult, Verdict, classify

MAX_BODY = 64 * 1024
MAX_CHUNKS = 256  # a health body is one small JSON object, written in one or a few chunks
MAX_HEADERS = 100
MAX_HEAD_BYTES = 32 * 1024  # one head: the status line and its header lines
MAX_INTERIM = 8  # 1xx answers before the real one
MAX_LINE = 8 * 1024
MAX_TRAILERS = 32
NO_BODY_STATUSES = frozenset({204, 304})
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,8}")


class ProtocolError(ValueError):
    """The worker's answer is not HTTP/1.x we can read."""


class HealthProber:
    def __init__(self, url: str, *, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"health URL {url!r} is not an http(s) URL")
        self.url = url
        self._host = parts.hostname
        self._tls = (tls or _default_tls()) if parts.scheme == "https" else None
        self._port = parts.port or (443 if self._tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = parts.netloc.rpartition("@")[2]
        self._request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\n"
            f"User-Agent: byoc-orch/{__version__}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def probe(self, timeout: float) -> ProbeResult:
        """One GET of the health URL; never raises.

        `timeout` is a deadline for the whole probe — connecting (again, if the kept-alive
        connection turned out closed), sending and every read of the answer together — so a
        worker that keeps sending a little at a time cannot stretch it.
        """
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                status, body = await self._get()
        except TimeoutError:
            self.close()
            return _failed(f"no answer within {timeout:g} s", started, ProbeFailure.TIMEOUT)
        except ConnectionRefusedError:
            self.close()
            return _failed("connection refused", started, ProbeFailure.REFUSED)
        except (
            OSError,
            EOFError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ProtocolError,
            ValueError,
        ) as exc:
            self.close()
            return _failed(f"{type(exc).__name__}: {exc}"[:120], started, ProbeFailure.OTHER)
        verdict, detail, reported, failure = classify(status, body)
        return ProbeResult(
            verdict,
            detail,
            latency=time.perf_counter() - started,
            http_status=status,
            reported=reported,
            at=time.time(),
            failure=failure,
        )

    def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def _get(self) -> tuple[int, bytes]:
        if self._conn is not None:
            try:
                return await self._exchange(*self._conn)
            except (ConnectionError, asyncio.IncompleteReadError, EOFError):
                self.close()  # the worker closed the idle connection: ask again on a new one
        self._conn = await asyncio.open_connection(
            self._host, self._port, ssl=self._tls, limit=MAX_LINE * 2
        )
        return await self._exchange(*self._conn)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes]:
        writer.write(self._request)
        interim = 0
        while True:
            status, version, headers = await _read_head(reader)
            if status == 101:
                raise ProtocolError("101 Switching Protocols, but no upgrade was asked for")
            if not 100 <= status < 200:
                break
            interim += 1  # 1xx are interim answers; the real one follows, after a few at most
            if interim > MAX_INTERIM:
                raise ProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers")
        if status in NO_BODY_STATUSES:
            body, readable_until_close = b"", False
        else:
            body, readable_until_close = await _read_body(reader, headers)
        keep = (
            not readable_until_close
            and headers.get("connection", "").lower() != "close"
            and (version == "HTTP/1.1" or headers.get("connection", "").lower() == "keep-alive")
        )
        if not keep:
            self.close()
        return status, body


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes") from None
    if len(line) > MAX_LINE:
        raise ProtocolError(f"line longer than {MAX_LINE} bytes")
    return line.rstrip(b"\r\n")


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and other Unicode digits."""
    return text.isascii() and text.isdigit()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    try:
        raw_status = await _read_line(reader)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError("connection closed before an answer") from None
        raise
    status_line = raw_status.decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if (
        not version.startswith("HTTP/1.")
        or not _is_number(code)
        or len(code) != 3
        or rest[3:4] not in ("", " ")
    ):
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:40]!r}")
    size = len(raw_status)
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader)
        if not line:
            return int(code), version, headers
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ProtocolError(f"answer head larger than {MAX_HEAD_BYTES} bytes")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line {line[:40]!r}")
        key, value = name.strip().lower(), value.strip()
        if key == "content-length" and headers.get(key, value) != value:
            raise ProtocolError("conflicting Content-Length headers")
        headers[key] = value
    raise ProtocolError(f"more than {MAX_HEADERS} header lines")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[bytes, bool]:
    """The body, and whether it ran to the connection's close (so it cannot be reused)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader), False
    length = headers.get("content-length")
    if length is not None:
        if not _is_number(length):
            raise ProtocolError(f"bad Content-Length {length[:20]!r}")
        if len(length) > 9 or int(length) > MAX_BODY:
            raise ProtocolError(f"health body larger than {MAX_BODY} bytes")
        return await reader.readexactly(int(length)), False
    body = await reader.read(MAX_BODY + 1)
    while body and len(body) <= MAX_BODY and not reader.at_eof():
        more = await reader.read(MAX_BODY + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_BODY:
        raise ProtocolError(f"health body larger than {MAX_BODY} bytes")
    return body, True


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    size_so_far = 0
    for _ in range(MAX_CHUNKS + 1):
        size_line = (await _read_line(reader)).split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_line):
            raise ProtocolError(f"bad chunk size {size_line[:20]!r}")
        size = int(size_line, 16)
        if size == 0:
            for _ in range(MAX_TRAILERS + 1):
                if not await _read_line(reader):
                    return b"".join(chunks)
            raise ProtocolError(f"more than {MAX_TRAILERS} trailer lines")
        size_so_far += size
        if size_so_far > MAX_BODY:
            raise ProtocolError(f"health body larger than {MAX_BODY} bytes")
        chunks.append(await reader.readexactly(size))
        if await _read_line(reader):
            raise ProtocolError("chunk data not followed by a line end")
    raise ProtocolError(f"health body in more than {MAX_CHUNKS} chunks")


_TLS: list[ssl.SSLContext] = []


def _default_tls() -> ssl.SSLContext:
    """One verifying context for every https health URL (each costs about 1 MB)."""
    if not _TLS:
        _TLS.append(ssl.create_default_context())
    return _TLS[0]


def _failed(detail: str, started: float, failure: ProbeFailure) -> ProbeResult:
    return ProbeResult(
        Verdict.FAILED,
        detail,
        latency=time.perf_counter() - started,
        at=time.time(),
        failure=failure,
    )
