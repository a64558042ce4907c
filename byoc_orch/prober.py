"""Asking one worker's /health, over a keep-alive connection of its own.

Probes are the daemon's steady load: one per worker per second, 256 workers on a big host.
Through httpx each probe cost about 1.5 ms of CPU here (request and response models, the
connection pool's bookkeeping, anyio's stream wrappers), which alone would use a third of a
core at 256 workers. A health check needs none of that — one GET, a small JSON body — so it
speaks that much HTTP/1.1 directly on an asyncio stream: a request line, the status line,
headers, and a body framed by Content-Length, chunked encoding or the connection's close. One
connection per worker is reused while the worker keeps it open. Session calls and everything
else still go through the shared httpx client.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

from byoc_orch import __version__
from byoc_orch.health import ProbeFailure, ProbeResult, Verdict, classify

MAX_BODY = 64 * 1024
MAX_HEADERS = 100
MAX_LINE = 8 * 1024


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
        """One GET of the health URL, bounded by `timeout` overall; never raises."""
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
        except (OSError, EOFError, asyncio.IncompleteReadError, ProtocolError, ValueError) as exc:
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
        while True:
            status, version, headers = await _read_head(reader)
            if not 100 <= status < 200:
                break  # 1xx are interim answers; the real one follows
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
    line = await reader.readuntil(b"\n")
    if len(line) > MAX_LINE:
        raise ProtocolError("header line too long")
    return line.rstrip(b"\r\n")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    try:
        status_line = (await _read_line(reader)).decode("latin-1")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise EOFError("connection closed before an answer") from None
        raise
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:40]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = await _read_line(reader)
        if not line:
            return int(code), version, headers
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line {line[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    raise ProtocolError("too many header lines")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> tuple[bytes, bool]:
    """The body, and whether it ran to the connection's close (so it cannot be reused)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        size_so_far = 0
        while True:
            size_line = (await _read_line(reader)).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_line[:20]!r}") from None
            if size == 0:
                while await _read_line(reader):
                    pass  # trailers
                return b"".join(chunks), False
            size_so_far += size
            if size_so_far > MAX_BODY:
                raise ProtocolError(f"health body larger than {MAX_BODY} bytes")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ProtocolError(f"bad Content-Length {length[:20]!r}")
        if int(length) > MAX_BODY:
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
