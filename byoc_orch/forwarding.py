"""Carrying one call to a worker's HTTP server and its answer back: the proxy's transport.

Nothing here knows about sessions, capacity or replicas. Requests go out through
`WorkerConnections` — httpcore connection pools, one small pool per worker origin, kept alive —
without httpx's request and response models on top: a proxy passes bytes through, and those
layers cost about 0.3 ms a call (measured on the session path). `forward` returns the worker's
answer (its body still to be read or streamed), or an `Unreachable` saying why there is none: it
never raises for a worker that is down or slow, so the caller decides what that means. Headers
pass through as raw bytes, except the hop-by-hop ones and the caller's own `Authorization`; the
entry's token (if any) is sent instead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from byoc_orch.network_backend import AsyncioBackend

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"authorization",
        b"expect",
    }
)
RESPONSE_DROPPED = HOP_BY_HOP - {b"authorization", b"content-length"}
"""Dropped from relayed answers; a whole body gets its own Content-Length, a streamed one keeps
the worker's (so a worker that breaks off mid-body shows as a short, failed response)."""

Headers = list[tuple[bytes, bytes]]
Body = bytes | AsyncIterable[bytes]


class AnswerTooLarge(Exception):
    """A worker's answer to a session call is larger than byoc-orch reads."""


@dataclass(frozen=True)
class Unreachable:
    """The worker gave no answer: `status` is 502 (could not be reached, or broke off), 504
    (too slow), or 400 (the request could not be put on the wire at all)."""

    status: int
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, fix=self.fix, **self.details)


@dataclass(frozen=True)
class Deadlines:
    """How long a worker may take: to connect, between reads (or writes), and — for calls whose
    answer is read whole — for the entire exchange."""

    connect: float
    read: float
    total: float | None = None

    def extensions(self) -> dict[str, Any]:
        return {
            "timeout": {
                "connect": self.connect,
                "read": self.read,
                "write": self.read,
                "pool": self.connect,
            }
        }


@dataclass(frozen=True)
class Origin:
    """Where a worker answers: scheme, host, port and the base path its routes sit under."""

    scheme: bytes
    host: bytes
    port: int
    base: str

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme or "http"
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme.encode(), (parts.hostname or "").encode(), port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> bytes:
        default = 443 if self.scheme == b"https" else 80
        host = b"[" + self.host + b"]" if b":" in self.host else self.host
        return host if self.port == default else host + b":" + str(self.port).encode()


class WorkerConnections:
    """Keep-alive connections to workers: one httpcore pool per origin, created on first use,
    so a request only ever looks at its own worker's connections."""

    def __init__(self, per_origin: int = 64) -> None:
        self._per_origin = per_origin
        self._pools: dict[tuple[bytes, bytes, int], httpcore.AsyncConnectionPool] = {}
        self._origins: dict[str, Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self._backend = AsyncioBackend()

    def origin(self, url: str) -> Origin:
        found = self._origins.get(url)
        if found is None:
            found = self._origins[url] = Origin.of(url)
        return found

    def _pool(self, origin: Origin) -> httpcore.AsyncConnectionPool:
        key = (origin.scheme, origin.host, origin.port)
        pool = self._pools.get(key)
        if pool is None:
            if origin.scheme == b"https" and self._tls is None:
                self._tls = ssl.create_default_context()
            pool = httpcore.AsyncConnectionPool(
                ssl_context=self._tls,
                max_connections=self._per_origin,
                # Every connection stays open for reuse: a busy worker would otherwise see a new
                # connection per request past the idle limit (a stdlib server's listen queue
                # is 5 deep).
                max_keepalive_connections=self._per_origin,
                keepalive_expiry=30.0,
                network_backend=self._backend,
            )
            self._pools[key] = pool
        return pool

    async def open(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Headers,
        body: Body,
        deadlines: Deadlines,
    ) -> httpcore.Response:
        """Send a request; the answer's body is left to stream. Raises httpcore's errors."""
        url = httpcore.URL(
            scheme=origin.scheme,
            host=origin.host,
            port=origin.port,
            target=(origin.base + target).encode("latin-1"),
        )
        request = httpcore.Request(
            method.encode("latin-1"),
            url,
            headers=[(b"host", origin.host_header), *headers],
            content=body,
            extensions=deadlines.extensions(),
        )
        return await self._pool(origin).handle_async_request(request)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def request_headers(incoming: Iterable[tuple[bytes, bytes]], token: str | None) -> Headers:
    """What the worker is sent: the caller's end-to-end headers, with the entry's token."""
    headers = [(k, v) for k, v in incoming if k.lower() not in HOP_BY_HOP]
    if token:
        headers.append((b"authorization", b"Bearer " + token.encode("latin-1")))
    return headers


def framing(body: Body, length: int | None) -> Headers:
    """Content-Length for a body of known size, chunked encoding for a stream of unknown size."""
    if isinstance(body, bytes):
        return [(b"content-length", str(len(body)).encode())] if body else []
    if length is not None:
        return [(b"content-length", str(length).encode())]
    return [(b"transfer-encoding", b"chunked")]


async def forward(
    connections: WorkerConnections,
    origin: Origin,
    method: str,
    target: str,
    *,
    headers: Headers,
    body: Body,
    deadlines: Deadlines,
    what: str,
) -> httpcore.Response | Unreachable:
    """One request to a worker, its answer's body still to come. `what` names the worker and
    the call in byoc-orch's own errors."""
    try:
        return await connections.open(origin, method, target, headers, body, deadlines)
    except httpcore.LocalProtocolError:
        return Unreachable(
            400,
            "the request cannot be passed on: its path or a header value has characters HTTP "
            "does not allow (NUL, CR or LF, or a raw non-ASCII byte in the path)",
            fix="percent-encode the path and remove control characters from header values",
        )
    except httpcore.TimeoutException as exc:
        return too_slow(what, exc)
    except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
        return Unreachable(502, f"{what} could not be reached: {type(exc).__name__}")


@dataclass(frozen=True)
class Answer:
    """A worker's whole answer to a call whose body byoc-orch reads (session calls)."""

    status: int
    headers: Headers
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def response(self) -> Response:
        """The worker's status, headers and body, unchanged."""
        response = Response(self.body, status_code=self.status)
        response.raw_headers = [
            *(h for h in response_headers(self.headers) if h[0].lower() != b"content-length"),
            (b"content-length", str(len(self.body)).encode()),
        ]
        return response


async def exchange(
    connections: WorkerConnections,
    origin: Origin,
    method: str,
    target: str,
    *,
    headers: Headers,
    body: bytes,
    deadlines: Deadlines,
    what: str,
    limit: int,
) -> Answer | Unreachable:
    """One request whose answer is read whole: within `deadlines.total` for everything
    (a worker that dribbles its answer is cut off, not waited on read by read), and at most
    `limit` bytes of body."""
    try:
        async with asyncio.timeout(deadlines.total):
            answer = await forward(
                connections,
                origin,
                method,
                target,
                headers=[*headers, *framing(body, None)],
                body=body,
                deadlines=deadlines,
                what=what,
            )
            if isinstance(answer, Unreachable):
                return answer
            try:
                return Answer(answer.status, answer.headers, await _read(answer, limit))
            except AnswerTooLarge:
                return Unreachable(
                    502,
                    f"{what} answered with more than {limit} bytes; byoc-orch does not relay "
                    "session answers that large",
                )
            except (httpcore.NetworkError, httpcore.ProtocolError, OSError) as exc:
                return Unreachable(502, f"{what} broke off its answer: {type(exc).__name__}")
            except httpcore.TimeoutException as exc:
                return too_slow(what, exc)
    except TimeoutError as exc:
        return too_slow(what, exc)


async def _read(answer: httpcore.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in answer.aiter_stream():
            size += len(chunk)
            if size > limit:
                raise AnswerTooLarge
            chunks.append(chunk)
    finally:
        await answer.aclose()
    return b"".join(chunks)


def too_slow(what: str, exc: BaseException) -> Unreachable:
    return Unreachable(
        504,
        f"{what} did not answer in time ({type(exc).__name__})",
        fix="raise BYOC_ORCH_PROXY_TIMEOUT if the worker is legitimately slow",
    )


def relay_stream(
    answer: httpcore.Response,
    chunks: AsyncIterator[bytes],
    on_close: Callable[[], Awaitable[None]] | None = None,
) -> StreamingResponse:
    """The worker's answer streamed back as it arrives (no buffering, encoding untouched)."""
    response = StreamingResponse(
        chunks,
        status_code=answer.status,
        background=BackgroundTask(on_close) if on_close is not None else None,
    )
    response.raw_headers = response_headers(answer.headers)
    return response


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return [(k, v) for k, v in headers if k.lower() not in RESPONSE_DROPPED]


def error_response(
    status: int,
    message: str,
    *,
    fix: str | None = None,
    headers: dict[str, str] | None = None,
    **details: Any,
) -> JSONResponse:
    """byoc-orch's own answer (never the worker's): marked with `"source": "byoc-orch"`."""
    body: dict[str, Any] = {"error": message, "source": "byoc-orch"}
    if fix:
        body["fix"] = fix
    body.update(details)
    return JSONResponse(body, status_code=status, headers=headers)
