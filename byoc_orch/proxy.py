"""The session proxy: session calls to the right warm container, everything else passed through.

Each worker has a stable base, `/proxy/<worker_id>`, which is the `url` byoc-orch advertises.
Under it `stream/{start,stop,params,update,status}` (with or without `api/`) are session
calls: byoc-orch keeps the session table, enforces capacity, and forwards to the prefix the
container actually serves. Any other path is forwarded as it is (batch BYOC workers). The same
session calls at byoc-orch's root are routed by the `X-Model-Id` (and `X-Pipeline`) headers,
as the Livepeer docs describe for BYOC clients.

The container's answer is passed through unchanged; byoc-orch answers with its own JSON error
only when the container was never reached (or byoc-orch refused first). One shared
`httpx.AsyncClient` carries every call, over pooled keep-alive connections.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from byoc_orch.auth import token_denied
from byoc_orch.metrics import Metrics
from byoc_orch.sessions import EndReason, Refused, SessionTable

if TYPE_CHECKING:
    from byoc_orch.worker import Worker

log = structlog.get_logger("byoc_orch.proxy")

SESSION_PATH = re.compile(r"^/?(?:api/)?stream/(start|stop|params|update|status)/?$")
SESSION_OPS = {"start": "start", "stop": "stop", "params": "params", "update": "params"}
SESSION_HEADER = "x-gateway-request-id"
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


def session_op(path: str, method: str) -> str | None:
    """`start`, `stop`, `params` or `status` for a session path (either generation), else
    None: the path is passed through as it is."""
    match = SESSION_PATH.match(path)
    if match is None:
        return None
    op = match.group(1)
    if op == "status":
        return "status" if method in ("GET", "HEAD") else None
    return SESSION_OPS[op] if method == "POST" else None


def status_class(status: int) -> str:
    return f"{min(max(status // 100, 2), 5)}xx"


class BodyTooLarge(Exception):
    pass


@dataclass
class _Routes:
    """What a container serves, found once per container: its session prefix and the name of
    its params route (`params`, or `update` on some `/api` workers)."""

    container_id: str | None
    prefix: str
    params_op: str = "params"


class SessionProxy:
    """Forwards calls for the workers `lookup` finds; owns the session table's transitions."""

    def __init__(
        self,
        *,
        workers: Callable[[], Mapping[str, Worker]],
        is_warm: Callable[[str], bool],
        sessions: SessionTable,
        http: httpx.AsyncClient,
        metrics: Metrics,
        connect_timeout: float,
        timeout: float,
        max_body_bytes: int,
        api_token: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._workers = workers
        self._is_warm = is_warm
        self.sessions = sessions
        self._http = http
        self._metrics = metrics
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._max_body = max_body_bytes
        self._api_token = api_token
        self._clock = clock
        self._routes: dict[str, _Routes] = {}

    # -- entry points ---------------------------------------------------------------------------

    async def handle_worker(self, request: Request) -> Response:
        """Everything under /proxy/{worker_id}/."""
        worker_id = request.path_params["worker_id"]
        worker = self._workers().get(worker_id)
        if worker is None:
            return _error(
                404,
                f"no worker {worker_id!r}",
                fix="GET /workers lists the worker ids",
                known=sorted(self._workers()),
            )
        path = request.path_params.get("path", "")
        denied = self._authorize(request)
        if denied is not None:
            return denied
        op = session_op(path, request.method)
        if op is None:
            return await self._passthrough(request, worker, path)
        return await self._session_call(request, worker, op)

    async def handle_routed(self, request: Request) -> Response:
        """Session calls at the root, routed by X-Model-Id (and X-Pipeline)."""
        denied = self._authorize(request)
        if denied is not None:
            return denied
        op = session_op(request.url.path, request.method)
        if op is None:
            return _error(405, f"{request.method} not allowed on {request.url.path}")
        model_id = request.headers.get("x-model-id", "").strip()
        pipeline = request.headers.get("x-pipeline", "").strip()
        if not model_id:
            return _error(
                400,
                "X-Model-Id header is required to route a session call at the root",
                fix="send X-Model-Id (and X-Pipeline if the model serves several pipelines), "
                "or call /proxy/<worker_id>/stream/... directly",
            )
        candidates = [
            w
            for w in self._workers().values()
            if w.entry.model_id == model_id and (not pipeline or w.entry.pipeline == pipeline)
        ]
        if not candidates:
            return _error(
                404,
                f"no worker serves model_id {model_id!r}"
                + (f" for pipeline {pipeline!r}" if pipeline else ""),
                model_id=model_id,
                known=sorted(w.entry.capability for w in self._workers().values()),
            )
        if len(candidates) > 1:
            return _error(
                400,
                f"model_id {model_id!r} is served by several pipelines",
                fix="send X-Pipeline naming one of them",
                model_id=model_id,
                pipelines=sorted(w.entry.pipeline for w in candidates),
            )
        return await self._session_call(request, candidates[0], op)

    def _authorize(self, request: Request) -> Response | None:
        return token_denied(request, self._api_token)

    # -- session calls --------------------------------------------------------------------------

    async def _session_call(self, request: Request, worker: Worker, op: str) -> Response:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            return self._observed(op, started, self._too_large())
        except ClientDisconnect:
            return Response(status_code=499)
        if op == "start":
            response = await self._start(request, worker, body)
        elif op == "stop":
            response = await self._stop(request, worker, body)
        elif op == "params":
            response = await self._params(request, worker, body)
        else:
            response = await self._status(request, worker)
        return self._observed(op, started, response)

    async def _start(self, request: Request, worker: Worker, body: bytes) -> Response:
        entry = worker.entry
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"start body is not valid JSON: {exc}", model_id=entry.model_id)
        if not isinstance(payload, dict):
            return _error(400, "start body must be a JSON object", model_id=entry.model_id)
        session_id = payload.get("gateway_request_id")
        if not isinstance(session_id, str) or not session_id.strip():
            return _error(
                400,
                "gateway_request_id is required in the start body (a non-empty string)",
                model_id=entry.model_id,
            )
        if not self._is_warm(worker.worker_id):
            return self._refuse(
                worker,
                "not_warm",
                f"{entry.capability} is not warm (state {worker.status.state}); "
                "try another orchestrator",
            )
        try:
            self.sessions.reserve(
                session_id,
                worker_id=worker.worker_id,
                pipeline=entry.pipeline,
                model_id=entry.model_id,
                capacity=entry.capacity,
                now=self._clock(),
                params=payload.get("params"),
                request={
                    k: payload[k]
                    for k in ("subscribe_url", "publish_url", "control_url", "events_url")
                    if k in payload
                },
            )
        except Refused as refused:
            if refused.reason == "duplicate":
                return _error(409, str(refused), model_id=entry.model_id, session=session_id)
            return self._refuse(worker, refused.reason, str(refused))
        try:
            routes = await self._container_routes(worker)
            upstream = await self._forward(
                worker, "POST", f"{routes.prefix}/stream/start", request, body
            )
        except BaseException:
            self.sessions.release(session_id)
            raise
        if isinstance(upstream, Response):
            self.sessions.release(session_id)
            return upstream
        if upstream.is_success:
            if self.sessions.confirm(session_id) is not None:
                self._metrics.sessions_started.labels(entry.pipeline, entry.model_id).inc()
                log.info(
                    "session started",
                    session=session_id,
                    worker_id=worker.worker_id,
                    pipeline=entry.pipeline,
                    model_id=entry.model_id,
                    container_id=(worker.status.container_id or "")[:12] or None,
                )
        else:
            self.sessions.release(session_id)
        return _relay(upstream)

    async def _stop(self, request: Request, worker: Worker, body: bytes) -> Response:
        routes = await self._container_routes(worker)
        session_id = self._session_named(request, worker, body)
        upstream = await self._forward(
            worker, "POST", f"{routes.prefix}/stream/stop", request, body
        )
        if isinstance(upstream, Response):
            return upstream
        if session_id is not None and upstream.status_code < 500:
            # 2xx: stopped. 4xx: the container has no such stream, so it is not running either.
            self.sessions.end(
                session_id,
                EndReason.STOPPED,
                self._clock(),
                None if upstream.is_success else f"container answered {upstream.status_code}",
            )
        return _relay(upstream)

    async def _params(self, request: Request, worker: Worker, body: bytes) -> Response:
        routes = await self._container_routes(worker)
        session_id = self._session_named(request, worker, body)
        upstream = await self._forward(
            worker, "POST", f"{routes.prefix}/stream/{routes.params_op}", request, body
        )
        if (
            not isinstance(upstream, Response)
            and upstream.status_code in (404, 405)
            and routes.params_op == "params"
        ):
            # Some /api-generation workers only serve `update`: learn it once.
            retry = await self._forward(
                worker, "POST", f"{routes.prefix}/stream/update", request, body
            )
            if isinstance(retry, Response) or retry.status_code not in (404, 405):
                await upstream.aclose()
                routes.params_op = "update"
                upstream = retry
        if isinstance(upstream, Response):
            return upstream
        if upstream.is_success and session_id is not None:
            self.sessions.set_params(session_id, _params_of(body), self._clock())
        return _relay(upstream)

    async def _status(self, request: Request, worker: Worker) -> Response:
        routes = await self._container_routes(worker)
        upstream = await self._forward(
            worker, "GET", f"{routes.prefix}/stream/status", request, b""
        )
        return upstream if isinstance(upstream, Response) else _relay(upstream)

    def _session_named(self, request: Request, worker: Worker, body: bytes) -> str | None:
        """The session a stop or params call means: by header, query or body, else the
        worker's only live session."""
        named = request.headers.get(SESSION_HEADER) or request.query_params.get(
            "gateway_request_id"
        )
        if not named and body:
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                payload = None
            if isinstance(payload, dict) and isinstance(payload.get("gateway_request_id"), str):
                named = payload["gateway_request_id"]
        if named:
            session = self.sessions.get(named)
            return named if session is not None and session.worker_id == worker.worker_id else None
        live = self.sessions.live(worker.worker_id)
        return live[0].id if len(live) == 1 else None

    def _refuse(self, worker: Worker, reason: str, message: str) -> Response:
        entry = worker.entry
        self._metrics.session_starts_refused.labels(entry.pipeline, entry.model_id, reason).inc()
        return _error(
            503,
            message,
            reason=reason,
            pipeline=entry.pipeline,
            model_id=entry.model_id,
            worker_id=worker.worker_id,
            state=str(worker.status.state),
            capacity=entry.capacity,
            in_use=self.sessions.in_use(worker.worker_id),
            headers={"Retry-After": "1"},
        )

    # -- pass-through ---------------------------------------------------------------------------

    async def _passthrough(self, request: Request, worker: Worker, path: str) -> Response:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            return self._observed("passthrough", started, self._too_large())
        except ClientDisconnect:
            return Response(status_code=499)
        target = "/" + path
        upstream = await self._forward(worker, request.method, target, request, body, stream=True)
        if isinstance(upstream, Response):
            return self._observed("passthrough", started, upstream)
        self._observed_status("passthrough", started, upstream.status_code)
        return StreamingResponse(
            _raw(upstream),
            status_code=upstream.status_code,
            headers=_response_headers(upstream.headers, keep_encoding=True),
            background=BackgroundTask(upstream.aclose),
        )

    # -- plumbing -------------------------------------------------------------------------------

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> Response:
        return _error(
            413,
            f"request body is larger than {self._max_body} bytes",
            fix="send a smaller body or raise BYOC_ORCH_MAX_BODY_BYTES",
        )

    async def _container_routes(self, worker: Worker) -> _Routes:
        """The container's session prefix: as configured, or found once per container by
        asking `GET /stream/status` and then `/api/stream/status` for a non-404."""
        container_id = worker.status.container_id
        known = self._routes.get(worker.worker_id)
        if known is not None and known.container_id == container_id:
            return known
        configured = worker.entry.stream_prefix
        if configured != "auto":
            found = _Routes(container_id, configured)
        else:
            found = _Routes(container_id, "")
            for prefix in ("", "/api"):
                try:
                    reply = await self._http.get(
                        f"{worker.upstream_url}{prefix}/stream/status",
                        headers=self._upstream_auth(worker),
                        timeout=self._timeout,
                    )
                except httpx.HTTPError:
                    return found  # not remembered: ask again on the next call
                if reply.status_code != 404:
                    found = _Routes(container_id, prefix)
                    break
            log.info(
                "session routes detected",
                worker_id=worker.worker_id,
                pipeline=worker.entry.pipeline,
                model_id=worker.entry.model_id,
                container_id=(container_id or "")[:12] or None,
                prefix=found.prefix or "/",
            )
        self._routes[worker.worker_id] = found
        return found

    def _upstream_auth(self, worker: Worker) -> dict[str, str]:
        token = worker.entry.token
        return {"authorization": f"Bearer {token.get_secret_value()}"} if token else {}

    async def _forward(
        self,
        worker: Worker,
        method: str,
        path: str,
        request: Request,
        body: bytes,
        *,
        stream: bool = False,
    ) -> httpx.Response | Response:
        """Send to the container; an httpx.Response when it answered, else byoc-orch's own
        502/504 naming the worker."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers.update(self._upstream_auth(worker))
        query = request.url.query
        url = f"{worker.upstream_url}{path}" + (f"?{query}" if query else "")
        outgoing = self._http.build_request(
            method, url, content=body, headers=headers, timeout=self._timeout
        )
        try:
            return await self._http.send(outgoing, stream=stream)
        except httpx.TimeoutException as exc:
            return _error(
                504,
                f"{worker.entry.capability} did not answer {method} {path} in time "
                f"({type(exc).__name__})",
                fix="raise BYOC_ORCH_PROXY_TIMEOUT if the worker is legitimately slow",
                worker_id=worker.worker_id,
                model_id=worker.entry.model_id,
            )
        except httpx.HTTPError as exc:
            return _error(
                502,
                f"{worker.entry.capability} could not be reached for {method} {path}: "
                f"{type(exc).__name__}",
                worker_id=worker.worker_id,
                model_id=worker.entry.model_id,
                state=str(worker.status.state),
            )

    def _observed(self, route: str, started: float, response: Response) -> Response:
        self._observed_status(route, started, response.status_code)
        return response

    def _observed_status(self, route: str, started: float, status: int) -> None:
        self._metrics.proxy_duration.labels(route, status_class(status)).observe(
            time.perf_counter() - started
        )

    def end_worker_sessions(self, worker_id: str, reason: EndReason, detail: str | None) -> None:
        ended = self.sessions.end_worker(worker_id, reason, self._clock(), detail)
        self._routes.pop(worker_id, None)
        for session in ended:
            log.info(
                "session ended",
                session=session.id,
                reason=str(reason),
                detail=detail,
                worker_id=worker_id,
                pipeline=session.pipeline,
                model_id=session.model_id,
            )


def _relay(upstream: httpx.Response) -> Response:
    """The container's status, headers and body, unchanged."""
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        headers=_response_headers(upstream.headers, keep_encoding=False),
    )


def _response_headers(headers: httpx.Headers, *, keep_encoding: bool) -> dict[str, str]:
    dropped = HOP_BY_HOP - {"authorization"} | (
        {"content-encoding"} if not keep_encoding else set()
    )
    return {k: v for k, v in headers.items() if k.lower() not in dropped}


async def _raw(upstream: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in upstream.aiter_raw():
        yield chunk


def _params_of(body: bytes) -> Any:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "gateway_request_id"}
        if set(payload) == {"params"}:
            return payload["params"]
    return payload


def _error(
    status: int,
    message: str,
    *,
    fix: str | None = None,
    headers: dict[str, str] | None = None,
    **details: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"error": message, "source": "byoc-orch"}
    if fix:
        body["fix"] = fix
    body.update(details)
    return JSONResponse(body, status_code=status, headers=headers)
