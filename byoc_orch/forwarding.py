"""Carrying one call to a worker's HTTP server and its answer back: the proxy's transport.

Nothing here knows about sessions, capacity or replicas. `forward` returns the worker's answer,
or an `Unreachable` saying why there is none — it never raises for a worker that is down or
slow, so the caller decides what that means. Headers are passed through except the hop-by-hop
ones and the caller's own `Authorization`; the entry's token (if any) is sent instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)


@dataclass(frozen=True)
class Unreachable:
    """The worker gave no answer: `status` is 502 (could not be reached) or 504 (too slow)."""

    status: int
    message: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, fix=self.fix, **self.details)


def request_headers(incoming: Mapping[str, str], token: str | None) -> dict[str, str]:
    """What the worker is sent: the caller's end-to-end headers, with the entry's token."""
    headers = {k: v for k, v in incoming.items() if k.lower() not in HOP_BY_HOP}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def forward(
    http: httpx.AsyncClient,
    url: str,
    method: str,
    *,
    headers: Mapping[str, str],
    body: bytes,
    timeout: httpx.Timeout,
    stream: bool = False,
    what: str,
) -> httpx.Response | Unreachable:
    """One request to a worker. `what` names the worker and call in byoc-orch's own errors."""
    outgoing = http.build_request(method, url, content=body, headers=headers, timeout=timeout)
    try:
        return await http.send(outgoing, stream=stream)
    except httpx.TimeoutException as exc:
        return Unreachable(
            504,
            f"{what} did not answer in time ({type(exc).__name__})",
            fix="raise BYOC_ORCH_PROXY_TIMEOUT if the worker is legitimately slow",
        )
    except httpx.HTTPError as exc:
        return Unreachable(502, f"{what} could not be reached: {type(exc).__name__}")


def relay(upstream: httpx.Response) -> Response:
    """The worker's status, headers and (already read) body, unchanged."""
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        headers=response_headers(upstream.headers, keep_encoding=False),
    )


def relay_stream(upstream: httpx.Response) -> StreamingResponse:
    """The worker's answer streamed back as it arrives, still encoded as the worker sent it."""
    return StreamingResponse(
        _raw(upstream),
        status_code=upstream.status_code,
        headers=response_headers(upstream.headers, keep_encoding=True),
        background=BackgroundTask(upstream.aclose),
    )


def response_headers(headers: httpx.Headers, *, keep_encoding: bool) -> dict[str, str]:
    dropped = HOP_BY_HOP - {"authorization"} | (
        {"content-encoding"} if not keep_encoding else set()
    )
    return {k: v for k, v in headers.items() if k.lower() not in dropped}


async def _raw(upstream: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in upstream.aiter_raw():
        yield chunk


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
