"""The session proxy: session calls to the right replica, everything else passed through.

Each entry has a stable base, `/proxy/<entry_id>`, which is the `url` byoc-orch advertises; each
replica has one too, `/proxy/<worker_id>` (Live Runner advertises replicas one by one). Under it
`stream/{start,stop,params,update,status}` (with or without `api/`) are session calls:
byoc-orch keeps the session table, enforces each replica's capacity, sends a start to the
replica `routing.choose` picks and every later call about that session to the replica holding
it, and forwards to the prefix the container actually serves. A session is named by
`X-Gateway-Request-Id`, go-livepeer's `X-Stream-Id`, a `gateway_request_id` query parameter or
body field. Any other path is forwarded as it is (batch BYOC workers). The same session calls
at byoc-orch's root are routed by the `X-Model-Id` (and `X-Pipeline`) headers, as the Livepeer
docs describe for BYOC clients.

The container's answer is passed through unchanged; byoc-orch answers with its own JSON error
only when the container was never reached (or byoc-orch refused first). Carrying bytes is
forwarding.py's job.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpcore
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from byoc_orch.auth import Guard
from byoc_orch.forwarding import (
    Answer,
    Body,
    Deadlines,
    Unreachable,
    WorkerConnections,
    error_response,
    exchange,
    forward,
    framing,
    relay_stream,
    request_headers,
)
from byoc_orch.metrics import Metrics
from byoc_orch.routing import Refusal, RefusalReason, ReplicaLoad, choose
from byoc_orch.sessions import EndReason, Refused, SessionState, SessionTable

if TYPE_CHECKING:
    from byoc_orch.deployment import Deployment
    from byoc_orch.worker import Worker

log = structlog.get_logger("byoc_orch.proxy")

SESSION_PATH = re.compile(r"^/?(?:api/)?stream/(start|stop|params|update|status)/?$")
SESSION_OPS = {"start": "start", "stop": "stop", "params": "params", "update": "params"}
SESSION_HEADERS = ("x-gateway-request-id", "x-stream-id")
"""Headers naming a session: byoc-orch's own, and the one go-livepeer sends on every call."""
_error = error_response


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


class WorkerBrokeOff(Exception):
    """A worker's connection failed while its answer was being streamed to the client."""


UNKNOWN_SESSION_PREFIX = "byoc-orch:unknown-stream:"
"""Id of the placeholder holding a worker busy when it runs a stream it cannot name."""
SESSION_ANSWER_LIMIT = 1024 * 1024
MAX_JSON_DEPTH = 64
"""Largest answer to a session call byoc-orch reads (status answers are a few hundred bytes)."""
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """What a call addresses: an entry (routed over its replicas) or one of its replicas."""

    deployment: Deployment
    worker: Worker | None = None

    def candidates(self) -> list[Worker]:
        return [self.worker] if self.worker is not None else self.deployment.replicas()

    def loads(self) -> list[ReplicaLoad]:
        return self.deployment.loads(self.worker)

    @property
    def name(self) -> str:
        entry = self.deployment.entry
        if self.worker is not None and self.worker.worker_id != self.deployment.entry_id:
            return f"{entry.capability} replica {self.worker.replica}"
        return entry.capability


@dataclass
class _Routes:
    """What a container serves, found once per container: its session prefix and the name of
    its params route (`params`, or `update` on some `/api` workers)."""

    container_id: str | None
    prefix: str
    params_op: str = "params"


class SessionProxy:
    """Forwards calls for the entries `resolve` finds; owns the session table's transitions."""

    def __init__(
        self,
        *,
        resolve: Callable[[str], Target | None],
        deployments: Callable[[], Mapping[str, Deployment]],
        sessions: SessionTable,
        connections: WorkerConnections,
        metrics: Metrics,
        connect_timeout: float,
        timeout: float,
        max_body_bytes: int,
        max_passthrough_bytes: int,
        guard: Guard,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._resolve = resolve
        self._deployments = deployments
        self.sessions = sessions
        self._connections = connections
        self._metrics = metrics
        self._session_deadlines = Deadlines(connect_timeout, timeout, connect_timeout + timeout)
        self._stream_deadlines = Deadlines(connect_timeout, timeout)
        self._max_body = max_body_bytes
        self._max_passthrough = max_passthrough_bytes
        self._guard = guard
        self._clock = clock
        self._routes: dict[str, _Routes] = {}

    # -- entry points ---------------------------------------------------------------------------

    async def handle_worker(self, request: Request) -> Response:
        """Everything under /proxy/{id}/: an entry's id or one replica's."""
        some_id = request.path_params["worker_id"]
        target = self._resolve(some_id)
        if target is None:
            return _error(
                404,
                f"no entry or worker {some_id!r}",
                fix="GET /capabilities lists the entries' URLs, GET /workers every replica",
            )
        path = request.path_params.get("path", "")
        denied = self._guard.denied(request, reads_too=True)
        if denied is not None:
            return denied
        op = session_op(path, request.method)
        if op is None:
            return await self._passthrough(request, target, path)
        return await self._session_call(request, target, op)

    async def handle_routed(self, request: Request) -> Response:
        """Session calls at the root, routed by X-Model-Id (and X-Pipeline)."""
        denied = self._guard.denied(request, reads_too=True)
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
                "or call /proxy/<entry id>/stream/... directly",
            )
        every = self._deployments().values()
        candidates = [
            d
            for d in every
            if d.entry.model_id == model_id and (not pipeline or d.entry.pipeline == pipeline)
        ]
        if not candidates:
            known = sorted(d.entry.capability for d in every)
            return _error(
                404,
                f"no worker serves model_id {model_id!r}"
                + (f" for pipeline {pipeline!r}" if pipeline else ""),
                model_id=model_id,
                known=known,
            )
        if len(candidates) > 1:
            return _error(
                400,
                f"model_id {model_id!r} is served by several pipelines",
                fix="send X-Pipeline naming one of them",
                model_id=model_id,
                pipelines=sorted(d.entry.pipeline for d in candidates),
            )
        return await self._session_call(request, Target(candidates[0]), op)

    def forget(self, worker_id: str) -> None:
        """A replica is gone: forget what its container serves."""
        self._routes.pop(worker_id, None)

    # -- session calls --------------------------------------------------------------------------

    async def _session_call(self, request: Request, target: Target, op: str) -> Response:
        started = time.perf_counter()
        try:
            body = await self._read_body(request)
        except BodyTooLarge:
            return self._observed(op, started, self._too_large())
        except ClientDisconnect:
            return Response(status_code=499)
        if op == "start":
            response = await self._start(request, target, body)
        else:
            response = await self._about_session(request, target, op, body)
        return self._observed(op, started, response)

    async def _start(self, request: Request, target: Target, body: bytes) -> Response:
        entry = target.deployment.entry
        try:
            payload = _json(body)
        except ValueError as exc:
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
        choice = choose(target.loads())
        if isinstance(choice, Refusal):
            return self._refuse(target, choice)
        worker = next(w for w in target.candidates() if w.worker_id == choice.worker_id)
        try:
            self.sessions.reserve(
                session_id,
                worker_id=worker.worker_id,
                entry_id=target.deployment.entry_id,
                pipeline=entry.pipeline,
                model_id=entry.model_id,
                capacity=worker.entry.capacity - worker.requests,
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
            return self._refuse(target, Refusal(RefusalReason.FULL, 1, 0, 0), str(refused))
        try:
            routes = await self._container_routes(worker)
            upstream = await self._send(
                worker, "POST", f"{routes.prefix}/stream/start", request, body
            )
        except BaseException:
            self.sessions.release(session_id)
            raise
        if isinstance(upstream, Unreachable):
            self.sessions.release(session_id)
            return upstream.response()
        if upstream.is_success:
            if self.sessions.confirm(session_id) is not None:
                self._metrics.sessions_started.labels(entry.pipeline, entry.model_id).inc()
                # Logged once the answer is on its way (the next loop turn), not before.
                asyncio.get_running_loop().call_soon(
                    functools.partial(
                        log.info,
                        "session started",
                        session=session_id,
                        worker_id=worker.worker_id,
                        pipeline=entry.pipeline,
                        model_id=entry.model_id,
                        replica=worker.replica,
                        container_id=(worker.status.container_id or "")[:12] or None,
                    )
                )
        else:
            self.sessions.release(session_id)
        return upstream.response()

    async def _about_session(
        self, request: Request, target: Target, op: str, body: bytes
    ) -> Response:
        """stop, params and status: to the replica holding the session."""
        held = self._holder(request, target, body, op)
        if isinstance(held, Response):
            return held
        worker, session_id = held
        if op == "params" and body:
            try:
                _json(body)
            except ValueError as exc:
                return _error(400, f"params body is not valid JSON: {exc}")
        routes = await self._container_routes(worker)
        if op == "status":
            upstream = await self._send(
                worker, "GET", f"{routes.prefix}/stream/status", request, b""
            )
            return upstream.response()
        if op == "stop":
            upstream = await self._send(
                worker, "POST", f"{routes.prefix}/stream/stop", request, body
            )
            if isinstance(upstream, Unreachable):
                return upstream.response()
            if session_id is not None and upstream.status < 500:
                # 2xx: stopped. 4xx: the container has no such stream, so it is not running either.
                self.sessions.end(
                    session_id,
                    EndReason.STOPPED,
                    self._clock(),
                    None if upstream.is_success else f"container answered {upstream.status}",
                )
            return upstream.response()
        upstream = await self._send_params(worker, routes, request, body)
        if isinstance(upstream, Unreachable):
            return upstream.response()
        if upstream.is_success and session_id is not None:
            self.sessions.set_params(session_id, _params_of(body), self._clock())
        return upstream.response()

    async def _send_params(
        self, worker: Worker, routes: _Routes, request: Request, body: bytes
    ) -> Answer | Unreachable:
        path = f"{routes.prefix}/stream/{routes.params_op}"
        upstream = await self._send(worker, "POST", path, request, body)
        if (
            isinstance(upstream, Answer)
            and upstream.status in (404, 405)
            and routes.params_op == "params"
        ):
            # Some /api-generation workers only serve `update`: learn it once.
            retry = await self._send(
                worker, "POST", f"{routes.prefix}/stream/update", request, body
            )
            if isinstance(retry, Unreachable) or retry.status not in (404, 405):
                routes.params_op = "update"
                return retry
        return upstream

    def _holder(
        self, request: Request, target: Target, body: bytes, op: str
    ) -> tuple[Worker, str | None] | Response:
        """The replica a call about a session goes to, and the session it is about (None when
        byoc-orch does not know it and leaves the answer to the only replica there is)."""
        candidates = target.candidates()
        by_id = {w.worker_id: w for w in candidates}
        named = _named_session(request, body)
        if named:
            session = self.sessions.get(named)
            if (
                session is not None
                and session.state is not SessionState.ENDED
                and session.worker_id in by_id
            ):
                return by_id[session.worker_id], named
            if len(candidates) == 1:
                return candidates[0], None
            return _error(
                404,
                f"no live session {named!r} on {target.name}",
                fix="GET /sessions lists the live sessions and the replica holding each",
                session=named,
                live=self._live_ids(candidates),
            )
        live = [s for w in candidates for s in self.sessions.live(w.worker_id)]
        if len(live) == 1:
            return by_id[live[0].worker_id], live[0].id
        if len(live) > 1:
            return _error(
                400,
                f"{len(live)} sessions are live on {target.name}; this {op} names none of them",
                fix="name the session: X-Gateway-Request-Id or X-Stream-Id header, or "
                "gateway_request_id in the query or the JSON body",
                sessions=[s.id for s in live],
            )
        if len(candidates) == 1:
            return candidates[0], None
        return _error(
            400,
            f"no session is live on {target.name} and this {op} names none",
            fix="name the session (X-Gateway-Request-Id or X-Stream-Id), or call one replica: "
            "/proxy/<worker id>/stream/...",
            replicas=sorted(by_id),
        )

    def _live_ids(self, workers: Sequence[Worker]) -> list[str]:
        return [s.id for w in workers for s in self.sessions.live(w.worker_id)]

    def _refuse(
        self,
        target: Target,
        refusal: Refusal,
        message: str | None = None,
        *,
        counter: Any = None,
    ) -> Response:
        entry = target.deployment.entry
        reason = str(refusal.reason)
        counted = counter if counter is not None else self._metrics.session_starts_refused
        counted.labels(entry.pipeline, entry.model_id, reason).inc()
        candidates = target.candidates()
        if message is None:
            if refusal.reason is RefusalReason.NOT_WARM:
                states = ", ".join(f"{w.status.state}" for w in candidates)
                message = (
                    f"{target.name} is not warm (state {states}); try another orchestrator"
                    if len(candidates) == 1
                    else f"{target.name} has no warm replica ({states}); try another orchestrator"
                )
            else:
                message = (
                    f"{target.name} is at capacity ({refusal.in_use}/{refusal.capacity} slots "
                    f"in use over {refusal.routable} replica"
                    f"{'s' if refusal.routable != 1 else ''}); try another orchestrator"
                )
        details: dict[str, Any] = {
            "reason": reason,
            "pipeline": entry.pipeline,
            "model_id": entry.model_id,
            "entry_id": target.deployment.entry_id,
            "worker_id": candidates[0].worker_id if len(candidates) == 1 else None,
            "state": str(candidates[0].status.state) if len(candidates) == 1 else None,
            "capacity": sum(w.entry.capacity for w in candidates if w.routable),
            "in_use": sum(w.in_use for w in candidates),
            "replicas": [
                {"worker_id": w.worker_id, "state": str(w.status.state), "draining": w.draining}
                for w in candidates
            ],
        }
        if len(candidates) == 1:
            details["capacity"] = entry.capacity
        return _error(503, message, headers={"Retry-After": "1"}, **details)

    # -- pass-through ---------------------------------------------------------------------------

    async def _passthrough(self, request: Request, target: Target, path: str) -> Response:
        """Any other path: streamed to the least-loaded replica with a free slot and streamed
        back, holding that slot until the answer has been sent (or the call fails)."""
        started = time.perf_counter()
        declared = _declared_length(request)
        if self._max_passthrough and declared is not None and declared > self._max_passthrough:
            return self._observed("passthrough", started, self._passthrough_too_large())
        choice = choose(target.loads())
        if isinstance(choice, Refusal):
            refused = self._refuse(target, choice, counter=self._metrics.requests_refused)
            return self._observed("passthrough", started, refused)
        worker = next(w for w in target.candidates() if w.worker_id == choice.worker_id)
        worker.add_request(1)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                worker.add_request(-1)

        has_body = declared is not None or "transfer-encoding" in request.headers
        body: Body = self._limited(request.stream(), self._max_passthrough) if has_body else b""
        try:
            upstream = await self._open(worker, request, "/" + path, body, declared)
        except BodyTooLarge:
            release()
            return self._observed("passthrough", started, self._passthrough_too_large())
        except ClientDisconnect:
            release()
            return Response(status_code=499)
        except BaseException:
            release()
            raise
        if isinstance(upstream, Unreachable):
            release()
            return self._observed("passthrough", started, upstream.response())
        self._observed_status("passthrough", started, upstream.status)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_stream():
                    yield chunk
            except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException):
                log.warning(
                    "worker broke off its answer; the client's response ends as an error",
                    worker_id=worker.worker_id,
                    pipeline=worker.entry.pipeline,
                    model_id=worker.entry.model_id,
                    path="/" + path,
                )
                raise WorkerBrokeOff from None
            finally:
                await upstream.aclose()
                release()

        return relay_stream(upstream, chunks())

    async def _limited(self, stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
        """The request body as it arrives, cut off with BodyTooLarge past `limit` (0: none)."""
        size = 0
        async for chunk in stream:
            size += len(chunk)
            if limit and size > limit:
                raise BodyTooLarge
            if chunk:
                yield chunk

    def _passthrough_too_large(self) -> Response:
        return _error(
            413,
            f"request body is larger than {self._max_passthrough} bytes",
            fix="send a smaller body or raise BYOC_ORCH_MAX_PASSTHROUGH_BYTES (0: no limit)",
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
            origin = self._connections.origin(worker.upstream_url)
            for prefix in ("", "/api"):
                reply = await exchange(
                    self._connections,
                    origin,
                    "GET",
                    f"{prefix}/stream/status",
                    headers=request_headers((), _token(worker)),
                    body=b"",
                    deadlines=self._session_deadlines,
                    what=worker.worker_id,
                    limit=SESSION_ANSWER_LIMIT,
                )
                if isinstance(reply, Unreachable):
                    return found  # not remembered: ask again on the next call
                if reply.status != 404:
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

    async def _send(
        self, worker: Worker, method: str, path: str, request: Request, body: bytes
    ) -> Answer | Unreachable:
        """A session call: the whole answer, within the proxy timeout overall."""
        answer = await exchange(
            self._connections,
            self._connections.origin(worker.upstream_url),
            method,
            _with_query(path, request),
            headers=request_headers(request.scope["headers"], _token(worker)),
            body=body,
            deadlines=self._session_deadlines,
            what=_what(worker, method, path),
            limit=SESSION_ANSWER_LIMIT,
        )
        return self._about(worker, answer)

    async def _open(
        self, worker: Worker, request: Request, path: str, body: Body, length: int | None
    ) -> httpcore.Response | Unreachable:
        """A pass-through call: the answer's head, its body left to stream."""
        headers = request_headers(request.scope["headers"], _token(worker))
        answer = await forward(
            self._connections,
            self._connections.origin(worker.upstream_url),
            request.method,
            _with_query(path, request),
            headers=[*headers, *framing(body, length)],
            body=body,
            deadlines=self._stream_deadlines,
            what=_what(worker, request.method, path),
        )
        return self._about(worker, answer)

    @staticmethod
    def _about(worker: Worker, answer: T) -> T:
        if isinstance(answer, Unreachable):
            answer.details.update(
                worker_id=worker.worker_id,
                model_id=worker.entry.model_id,
                state=str(worker.status.state),
            )
        return answer

    def _observed(self, route: str, started: float, response: Response) -> Response:
        self._observed_status(route, started, response.status_code)
        return response

    def _observed_status(self, route: str, started: float, status: int) -> None:
        self._metrics.proxy_duration.labels(route, status_class(status)).observe(
            time.perf_counter() - started
        )

    # -- after a restart ------------------------------------------------------------------------

    async def recover(self, worker: Worker) -> list[str]:
        """Record the streams a worker runs that byoc-orch did not start (it restarted).

        pytrickle's `/stream/status` names the live stream's `gateway_request_id`; a worker that
        cannot say which stream it runs, and does not report IDLE, is held busy by a
        placeholder session until it does (or a stop reaches it), so no second start is sent to
        a worker that is already streaming. Returns the ids recorded."""
        routes = await self._container_routes(worker)
        answer = await exchange(
            self._connections,
            self._connections.origin(worker.upstream_url),
            "GET",
            f"{routes.prefix}/stream/status",
            headers=request_headers((), _token(worker)),
            body=b"",
            deadlines=self._session_deadlines,
            what=_what(worker, "GET", f"{routes.prefix}/stream/status"),
            limit=SESSION_ANSWER_LIMIT,
        )
        running = _running_streams(answer)
        if running is None:
            if worker.reports_idle:
                return []
            running = [(UNKNOWN_SESSION_PREFIX + worker.worker_id, {})]
        entry = worker.entry
        recorded = []
        for session_id, request in running:
            adopted = self.sessions.adopt(
                session_id,
                worker_id=worker.worker_id,
                entry_id=worker.entry_id,
                pipeline=entry.pipeline,
                model_id=entry.model_id,
                now=self._clock(),
                request=request,
            )
            if adopted is not None:
                recorded.append(session_id)
        return recorded

    def end_session(self, session_id: str, reason: EndReason, detail: str | None) -> None:
        ended = self.sessions.end(session_id, reason, self._clock(), detail)
        if ended is not None:
            log.info(
                "session ended",
                session=session_id,
                reason=str(reason),
                detail=detail,
                worker_id=ended.worker_id,
                pipeline=ended.pipeline,
                model_id=ended.model_id,
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


def _what(worker: Worker, method: str, path: str) -> str:
    return f"{worker.entry.capability} ({worker.worker_id}) {method} {path}"


def _with_query(path: str, request: Request) -> str:
    query = request.scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def _token(worker: Worker) -> str | None:
    token = worker.entry.token
    return token.get_secret_value() if token else None


def _named_session(request: Request, body: bytes) -> str | None:
    """The session a call names: by header (ours or go-livepeer's X-Stream-Id), query, or a
    `gateway_request_id` in a JSON body."""
    for header in SESSION_HEADERS:
        value = request.headers.get(header, "").strip()
        if value:
            return value
    named = request.query_params.get("gateway_request_id", "").strip()
    if named:
        return named
    if body[:1] == b"{":
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        found = payload.get("gateway_request_id") if isinstance(payload, dict) else None
        if isinstance(found, str) and found.strip():
            return found.strip()
    return None


def _running_streams(answer: Answer | Unreachable) -> list[tuple[str, dict[str, Any]]] | None:
    """The streams a `/stream/status` answer says run: (gateway_request_id, URLs) each; [] when
    it says none does (or the worker has no session routes: a batch worker); None when it
    cannot tell (no answer, a server error, or busy without saying with which stream)."""
    if isinstance(answer, Unreachable) or answer.status >= 500:
        return None
    if answer.status != 200:
        return []
    try:
        body = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    status = body.get("status")
    if isinstance(status, str) and status.isascii() and status.strip().upper() == "IDLE":
        return []  # pytrickle keeps an ended stream's params but reports IDLE
    if body.get("client_active") is False or body.get("active_streams") == 0:
        return []
    current = body.get("current_params")
    current = current if isinstance(current, dict) else {}
    session_id = current.get("gateway_request_id") or body.get("gateway_request_id")
    if not isinstance(session_id, str) or not session_id.strip():
        busy = body.get("client_active") is True or status in ("OK", "ok")
        return None if busy else []
    urls = {k: v for k, v in current.items() if k in ("subscribe_url", "publish_url")}
    return [(session_id.strip(), {k: v for k, v in urls.items() if isinstance(v, str)})]


def _json(body: bytes) -> Any:
    """A session body parsed, or ValueError saying why not: not JSON, or nested deeper than
    MAX_JSON_DEPTH (session tables keep params, and relay them in /sessions)."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _params_of(body: bytes) -> Any:
    try:
        payload = _json(body)
    except ValueError:
        return None
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "gateway_request_id"}
        if set(payload) == {"params"}:
            return payload["params"]
    return payload


__all__ = ["SessionProxy", "Target", "session_op"]
