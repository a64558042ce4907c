"""byoc-orch's front door: the calls that must be fast — and answered from the first moment a
restarted process serves — are routed here before FastAPI, which is loaded only when
something else is asked for. (Building it in a background thread once serving had begun was
tried: it holds the GIL for ~150 ms and starved the event loop during the restart window.)

The session proxy (`/proxy/...`) skips FastAPI's middleware and route matching (~0.4 ms less
per proxied call on a 2-core VM); the Live Runner readiness URLs go-livepeer polls and the
liveness/readiness probes are answered here too. FastAPI and its OpenAPI models are about a
fifth of byoc-orch's start-up imports: left off the path from exec to the first proxied call.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from byoc_orch.advertisers.live_runner import WorkerStatus, readiness
from byoc_orch.passthrough import WorkerBrokeOff
from byoc_orch.routes import PROXY_PREFIX

if TYPE_CHECKING:
    from byoc_orch.daemon import Daemon

READINESS_PATH = re.compile(r"^/live-runner/([^/]+)/health$")


class FrontDoor:
    def __init__(
        self,
        daemon: Daemon,
        *,
        app: ASGIApp | None = None,
        build: Callable[[], ASGIApp] | None = None,
    ) -> None:
        """`app` is the FastAPI application, or `build` what builds it on first need."""
        self._daemon = daemon
        self._proxy = daemon.proxy
        self._factory = build
        self._app = app

    @property
    def app(self) -> ASGIApp:
        """The FastAPI application, built now if it was not yet."""
        if self._app is None:
            assert self._factory is not None
            self._app = self._factory()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(PROXY_PREFIX):
                # The path past the id goes to the worker exactly as the client wrote it
                # (percent-encoding kept), so nothing is decoded and re-encoded on the way.
                raw = scope.get("raw_path") or path.encode("utf-8", "surrogateescape")
                worker_id, _, rest = raw[len(PROXY_PREFIX) :].partition(b"/")
                if worker_id:
                    scope["path_params"] = {
                        "worker_id": worker_id.decode("latin-1"),
                        "path": rest.decode("latin-1"),
                    }
                    response = await self._proxy.handle_worker(Request(scope, receive))
                    with contextlib.suppress(WorkerBrokeOff):
                        # The response was started: returning without finishing it makes the
                        # server close the connection, so the client sees an error, not a
                        # short 200.
                        await response(scope, receive, send)
                    return
            if scope["method"] in ("GET", "HEAD"):
                fast = self._fast(path)
                if fast is not None:
                    await fast(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _fast(self, path: str) -> JSONResponse | None:
        daemon = self._daemon
        if path == "/healthz":
            return JSONResponse({"status": "ok"})
        if path == "/readyz":
            summary = daemon.summary()
            return JSONResponse(summary, status_code=200 if summary["ready"] else 503)
        match = READINESS_PATH.match(path)
        if match is None:
            return None
        worker_id = match.group(1)
        status = worker_status(daemon, worker_id)
        code, body, headers = readiness(status, worker_id, reconciled=daemon.reconciled)
        return JSONResponse(body, status_code=code, headers=headers)


def worker_status(daemon: Daemon, worker_id: str) -> WorkerStatus | None:
    """What a replica's readiness URL answers from (None: no such worker)."""
    found = daemon.workers.get(worker_id)
    if found is None:
        return None
    return WorkerStatus(
        found.status.state,
        found.status.reason or None,
        found.draining or found.held,
        found.sessions,
    )


def create_front(daemon: Daemon) -> FrontDoor:
    """The ASGI application `byoc-orch run` serves: FastAPI loaded on first need."""

    def build() -> ASGIApp:
        from byoc_orch.api import fastapi_app

        return fastapi_app(daemon)

    return FrontDoor(daemon, build=build)
