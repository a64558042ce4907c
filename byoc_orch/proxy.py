"""The session proxy: session calls to the right replica, everything else passed through.

Each entry has a stable base, `/proxy/<entry_id>`, which is the `url` byoc-orch advertises; each
replica has one too, `/proxy/<worker_id>` (Live Runner advertises replicas one by one). Under it
`stream/{start,stop,params,update,status}` (with or without `api/`) are session calls: a start
goes to the replica the session lifecycle opens it on, every later call about that session to
the replica holding it, at the prefix the container actually serves (session_routes.py). A
session is named by `X-Gateway-Request-Id`, go-livepeer's `X-Stream-Id`, a `gateway_request_id`
query parameter or body field. Any other path is passthrough.py's (batch BYOC workers). The
same session calls at byoc-orch's root are routed by the `X-Model-Id` (and `X-Pipeline`)
headers, as the Livepeer docs describe for BYOC clients.

The container's answer is passed through unchanged; byoc-orch answers with its own JSON error
only when the container was never reached (or byoc-orch refused first). This module is the HTTP
side only: sessions change in session_lifecycle.py, bytes travel through worker_calls.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from byoc_orch.auth import Guard
from byoc_orch.forwarding import Unreachable, error_response
from byoc_orch.metrics import Metrics
from byoc_orch.orchestrator_sessions import NotFromRegistry, RegistrySession, from_headers
from byoc_orch.passthrough import Passthrough
from byoc_orch.proxy_target import Target, observe, refusal_response, status_class
from byoc_orch.routing import Refusal
from byoc_orch.session_body import SessionBody
from byoc_orch.session_lifecycle import Duplicate, NotHeld, Opening, SessionLifecycle, named_session
from byoc_orch.session_routes import ContainerRoutes
from byoc_orch.sessions import EndReason
from byoc_orch.worker_calls import WorkerCalls

if TYPE_CHECKING:
    from byoc_orch.deployment import Deployment
    from byoc_orch.live_runner_sessions import LiveRunnerSessions

SESSION_PATH = re.compile(r"^/?(?:api/)?stream/(start|stop|params|update|status)/?$")
SESSION_OPS = {"start": "start", "stop": "stop", "params": "params", "update": "params"}
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


class SessionProxy:
    """Answers the calls for the entries `resolve` finds."""

    def __init__(
        self,
        *,
        resolve: Callable[[str], Target | None],
        deployments: Callable[[], Mapping[str, Deployment]],
        lifecycle: SessionLifecycle,
        live_runner: LiveRunnerSessions | None = None,
        calls: WorkerCalls,
        routes: ContainerRoutes,
        passthrough: Passthrough,
        metrics: Metrics,
        max_body_bytes: int,
        guard: Guard,
        reconciled: Callable[[], bool] = lambda: True,
    ) -> None:
        self._resolve = resolve
        self._deployments = deployments
        self._lifecycle = lifecycle
        self._live_runner = live_runner
        self._calls = calls
        self._routes = routes
        self._passthrough = passthrough
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._guard = guard
        self._reconciled = reconciled

    # -- entry points ---------------------------------------------------------------------------

    async def handle_worker(self, request: Request) -> Response:
        """Everything under /proxy/{id}/: an entry's id or one replica's."""
        some_id = request.path_params["worker_id"]
        target = self._resolve(some_id)
        if target is None and not self._reconciled():
            # A restarted byoc-orch answers before its first reconcile knows every worker: not
            # "no such worker", but "ask again in a moment".
            response = _error(
                503,
                f"byoc-orch is starting and does not know {some_id!r} yet",
                fix="retry shortly (Retry-After)",
            )
            response.headers["Retry-After"] = "1"
            return response
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
            return await self._passthrough.handle(request, target, path)
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

    # -- session calls --------------------------------------------------------------------------

    async def _session_call(self, request: Request, target: Target, op: str) -> Response:
        started = time.perf_counter()
        try:
            raw = await self._read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)
        if raw is None:
            response = self._too_large()
        elif op == "start":
            response = await self._start(request, target, SessionBody(raw))
        else:
            response = await self._about_session(request, target, op, SessionBody(raw))
        observe(self._metrics, op, started, response.status_code)
        return response

    async def _start(self, request: Request, target: Target, body: SessionBody) -> Response:
        entry = target.deployment.entry
        try:
            registry = from_headers(request.headers)
        except NotFromRegistry as exc:
            return _error(
                400,
                f"this start carries Livepeer-Session-Id but {exc}",
                fix="call through the orchestrator's Live Runner proxy, which sets all four "
                "Livepeer-* headers, or send none of them",
                model_id=entry.model_id,
            )
        try:
            payload = body.json()
        except ValueError as exc:
            return _error(400, f"start body is not valid JSON: {exc}", model_id=entry.model_id)
        if not isinstance(payload, dict):
            return _error(400, "start body must be a JSON object", model_id=entry.model_id)
        session_id = payload.get("gateway_request_id")
        if registry is not None and not (isinstance(session_id, str) and session_id.strip()):
            # A client of the registry names its session there; the worker needs it named.
            session_id = registry.session_id
            payload = {**payload, "gateway_request_id": session_id}
            body = SessionBody(json.dumps(payload).encode())
        if not isinstance(session_id, str) or not session_id.strip():
            return _error(
                400,
                "gateway_request_id is required in the start body (a non-empty string)",
                model_id=entry.model_id,
            )
        opening = Opening(
            session_id,
            entry_id=target.deployment.entry_id,
            pipeline=entry.pipeline,
            model_id=entry.model_id,
            params=payload.get("params"),
            request={
                k: payload[k]
                for k in ("subscribe_url", "publish_url", "control_url", "events_url")
                if k in payload
            },
            registry=registry,
        )
        opened = self._lifecycle.open(opening, target.candidates())
        if isinstance(opened, Refusal):
            self._not_started(registry, target, f"refused_{opened.reason}")
            return refusal_response(target, opened, self._metrics.session_starts_refused)
        if isinstance(opened, Duplicate):
            return _error(409, opened.message, model_id=entry.model_id, session=session_id)
        worker = opened.worker
        try:
            routes = await self._routes.of(worker)
            upstream = await self._calls.send(
                worker,
                "POST",
                f"{routes.prefix}/stream/start",
                headers=request.scope["headers"],
                query=request.scope.get("query_string", b""),
                body=body.raw,
            )
        except BaseException:
            self._lifecycle.abandon(session_id)
            raise
        if isinstance(upstream, Unreachable):
            self._lifecycle.abandon(session_id)
            self._not_started(registry, target, "start_failed")
            return upstream.response()
        if upstream.is_success:
            self._lifecycle.confirm(opened)
        else:
            self._lifecycle.abandon(session_id)
            if upstream.status >= 500:
                # The replica cannot serve it (busy, broken); a 4xx is the client's to fix
                # within its reservation.
                self._not_started(registry, target, "start_failed")
        return upstream.response()

    def _not_started(self, registry: RegistrySession | None, target: Target, why: str) -> None:
        """A registry session whose start will not run here is released there at once."""
        if registry is None or self._live_runner is None:
            return
        entry = target.deployment.entry
        worker_id = target.worker.worker_id if target.worker is not None else target.name
        self._live_runner.refused(registry, worker_id, entry.pipeline, entry.model_id, why)

    async def _about_session(
        self, request: Request, target: Target, op: str, body: SessionBody
    ) -> Response:
        """stop, params and status: to the replica holding the session."""
        named = named_session(request.headers, request.query_params, body)
        if named is None:
            named = self._by_registry(request)
        held = self._lifecycle.holder(named, target.candidates(), op=op, target=target.name)
        if isinstance(held, NotHeld):
            return _error(held.status, held.message, fix=held.fix, **held.details)
        worker, session_id = held.worker, held.session_id
        if op == "params" and body.raw and body.error is not None:
            return _error(400, f"params body is not valid JSON: {body.error}")
        routes = await self._routes.of(worker)
        headers = request.scope["headers"]
        query = request.scope.get("query_string", b"")
        if op == "status":
            status = await self._calls.send(
                worker, "GET", f"{routes.prefix}/stream/status", headers=headers, query=query
            )
            return status.response()
        if op == "stop":
            with self._lifecycle.stopping(session_id):
                upstream = await self._calls.send(
                    worker,
                    "POST",
                    f"{routes.prefix}/stream/stop",
                    headers=headers,
                    query=query,
                    body=body.raw,
                )
                if isinstance(upstream, Unreachable):
                    return upstream.response()
                if session_id is not None and upstream.status < 500:
                    # 2xx: stopped. 4xx: the container has no such stream, so it is not running
                    # either.
                    self._lifecycle.end(
                        session_id,
                        EndReason.STOPPED,
                        None if upstream.is_success else f"container answered {upstream.status}",
                    )
            return upstream.response()
        upstream = await self._routes.send_params(
            worker, routes, headers=headers, query=query, body=body.raw
        )
        if isinstance(upstream, Unreachable):
            return upstream.response()
        if upstream.is_success and session_id is not None:
            self._lifecycle.set_params(session_id, body.params())
        return upstream.response()

    # -- plumbing -------------------------------------------------------------------------------

    def _by_registry(self, request: Request) -> str | None:
        """The session a call through the Live Runner proxy belongs to, by the registry's id."""
        orchestrator_session = request.headers.get("livepeer-session-id", "").strip()
        if not orchestrator_session:
            return None
        found = self._lifecycle.table.by_orchestrator_session(orchestrator_session)
        return None if found is None else found.id

    async def _read_body(self, request: Request) -> bytes | None:
        """The whole body, or None when it is larger than byoc-orch takes for a session call."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> Response:
        return _error(
            413,
            f"request body is larger than {self._max_body} bytes",
            fix="send a smaller body or raise BYOC_ORCH_MAX_BODY_BYTES",
        )


__all__ = ["SessionProxy", "Target", "session_op", "status_class"]
