"""Pass-through (batch) calls: any path under `/proxy/<id>/` that is not a session call.

Streamed both ways, any body size (images, audio, video), answers often streamed too (SSE,
chunked tokens). go-livepeer does not enforce `capacity` for BYOC, so each request holds one of
the replica's slots, shared with sessions, from routing's choice until its answer has been sent
(or the call fails).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import httpcore
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from byoc_orch.forwarding import Body, Unreachable, error_response, relay_stream
from byoc_orch.metrics import Metrics
from byoc_orch.proxy_target import Target, observe, refusal_response
from byoc_orch.routing import Refusal, choose
from byoc_orch.worker_calls import WorkerCalls

if TYPE_CHECKING:
    from byoc_orch.worker import Worker

log = structlog.get_logger("byoc_orch.passthrough")


NOT_FORWARDED = frozenset({"CONNECT", "TRACE"})
"""CONNECT asks for a tunnel and TRACE reflects the request (headers and all) back: neither is
a call to a worker."""
NO_BODY = frozenset({"HEAD"})
"""Methods whose request must not carry a body here (a HEAD answer has none to pair it with)."""


class BodyTooLarge(Exception):
    pass


def _unforwardable(request: Request, declared: int | None) -> Response | None:
    """byoc-orch's own clear 4xx for what the pass-through cannot forward."""
    method = request.method
    if method in NOT_FORWARDED:
        response = error_response(
            405,
            f"{method} is not forwarded to workers",
            fix="call the worker's routes with GET, POST, PUT, PATCH, DELETE or OPTIONS",
        )
        response.headers["Allow"] = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        return response
    has_body = bool(declared) or "transfer-encoding" in request.headers
    if method in NO_BODY and has_body:
        return error_response(400, f"a {method} request carries no body", fix="send it without")
    return None


class WorkerBrokeOff(Exception):
    """A worker's connection failed while its answer was being streamed to the client."""


class Passthrough:
    def __init__(self, calls: WorkerCalls, metrics: Metrics, *, max_body_bytes: int) -> None:
        self._calls = calls
        self._metrics = metrics
        self._max = max_body_bytes
        """0: no limit."""

    async def handle(self, request: Request, target: Target, path: str) -> Response:
        """Streamed to the least-loaded replica with a free slot and streamed back."""
        started = time.perf_counter()
        declared = declared_length(request)
        unforwardable = _unforwardable(request, declared)
        if unforwardable is not None:
            return self._observed(started, unforwardable)
        if self._max and declared is not None and declared > self._max:
            return self._observed(started, self._too_large())
        choice = choose(target.loads())
        if isinstance(choice, Refusal):
            refused = refusal_response(target, choice, self._metrics.requests_refused)
            return self._observed(started, refused)
        worker = next(w for w in target.candidates() if w.worker_id == choice.worker_id)
        release = _slot(worker)
        has_body = declared is not None or "transfer-encoding" in request.headers
        body: Body = limited(request.stream(), self._max) if has_body else b""
        try:
            upstream = await self._calls.open(
                worker,
                request.method,
                "/" + path,
                headers=request.scope["headers"],
                query=request.scope.get("query_string", b""),
                body=body,
                length=declared,
            )
        except BodyTooLarge:
            release()
            return self._observed(started, self._too_large())
        except ClientDisconnect:
            release()
            return Response(status_code=499)
        except httpcore.LocalProtocolError as exc:
            # What the client sent cannot be framed for the worker (h11 refused it).
            release()
            return self._observed(
                started,
                error_response(
                    400,
                    f"this request cannot be forwarded to the worker: {exc}",
                    fix="send a body only with a method that takes one, of its declared length",
                ),
            )
        except BaseException:
            release()
            raise
        if isinstance(upstream, Unreachable):
            release()
            return self._observed(started, upstream.response())
        observe(self._metrics, "passthrough", started, upstream.status)
        return relay_stream(upstream, _relayed(upstream, worker, "/" + path, release))

    def _observed(self, started: float, response: Response) -> Response:
        observe(self._metrics, "passthrough", started, response.status_code)
        return response

    def _too_large(self) -> Response:
        return error_response(
            413,
            f"request body is larger than {self._max} bytes",
            fix="send a smaller body or raise BYOC_ORCH_MAX_PASSTHROUGH_BYTES (0: no limit)",
        )


def _slot(worker: Worker) -> Callable[[], None]:
    """Take one of the worker's slots; the function returned gives it back, once."""
    worker.add_request(1)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            worker.add_request(-1)

    return release


async def _relayed(
    upstream: httpcore.Response, worker: Worker, path: str, release: Callable[[], None]
) -> AsyncIterator[bytes]:
    """The worker's answer as it arrives; the slot is given back when it ends, however."""
    try:
        async for chunk in upstream.aiter_stream():
            yield chunk
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException):
        log.warning(
            "worker broke off its answer; the client's response ends as an error",
            worker_id=worker.worker_id,
            pipeline=worker.entry.pipeline,
            model_id=worker.entry.model_id,
            path=path,
        )
        raise WorkerBrokeOff from None
    finally:
        await upstream.aclose()
        release()


async def limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, cut off with BodyTooLarge past `limit` (0: none)."""
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if limit and size > limit:
            raise BodyTooLarge
        if chunk:
            yield chunk


def declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None
