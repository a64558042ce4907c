"""The HTTP API: liveness, readiness, the warm capability listing, the worker and session
tables, metrics, and the session proxy's routes. front.py answers the proxy, the readiness
URLs and the probes before FastAPI; this is the rest."""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from byoc_orch import __version__
from byoc_orch.advertisers.live_runner import live_runner_router
from byoc_orch.daemon import Daemon, ReloadRejected
from byoc_orch.engine import EngineError
from byoc_orch.front import FrontDoor, worker_status
from byoc_orch.openapi_proxy import proxy_paths
from byoc_orch.worker import Worker


def create_app(daemon: Daemon) -> FrontDoor:
    """The whole HTTP API behind its front door, FastAPI built at once (tests, embedding)."""
    return FrontDoor(daemon, app=fastapi_app(daemon))


def fastapi_app(daemon: Daemon) -> FastAPI:
    """Everything but the front door's fast routes (which it also lists, for OpenAPI)."""
    app = FastAPI(title="byoc-orch", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive and serving; says nothing about workers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """503 until the first reconcile has finished, while the Docker engine cannot be
        reached, and while shutting down."""
        summary = daemon.summary()
        return JSONResponse(summary, status_code=200 if summary["ready"] else 503)

    @app.get("/capabilities")
    async def capabilities() -> list[dict[str, Any]]:
        """Warm workers only, in go-livepeer's aiModels.json shape, pointing at byoc-orch, with
        the session slots each still has free."""
        return [c.as_aimodels_entry(with_free=True) for c in daemon.registry.warm()]

    @app.get("/sessions")
    async def sessions(request: Request, include_ended: bool = True) -> list[dict[str, Any]]:
        """Live sessions (starting, active) first, then recently ended ones, newest first. The
        streams' URLs only with the API token (when one is set)."""
        table = daemon.sessions
        urls = daemon.guard.allowed(request)
        listed = [s.describe(with_urls=urls) for s in table.live()]
        if include_ended:
            listed += [s.describe(with_urls=urls) for s in table.ended()]
        return listed

    @app.get("/sessions/{session_id}")
    async def session(request: Request, session_id: str) -> JSONResponse:
        found = daemon.sessions.get(session_id)
        if found is None:
            return JSONResponse(
                {"error": f"no session {session_id!r}", "fix": "GET /sessions lists them"},
                status_code=404,
            )
        return JSONResponse(found.describe(with_urls=daemon.guard.allowed(request)))

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format; rendered off the event loop (GPU collectors call NVML)."""
        body = await daemon.render_metrics()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get("/workers")
    async def workers() -> list[dict[str, Any]]:
        return [daemon.describe_worker(worker) for worker in daemon.workers.values()]

    @app.get("/entries")
    async def entries() -> list[dict[str, Any]]:
        """One line per aiModels.json entry: its replicas, warm capacity and rollout."""
        return [deployment.describe() for deployment in daemon.deployments.values()]

    @app.get("/gpus")
    async def gpus() -> list[dict[str, Any]]:
        """The host's GPUs as NVML reported them at start-up; empty without a driver."""
        return [
            {
                "index": g.index,
                "uuid": g.uuid,
                "name": g.name,
                "memory_total_bytes": g.memory_total_bytes,
            }
            for g in daemon.gpu_inventory
        ]

    @app.get("/workers/{worker_id}")
    async def worker(worker_id: str) -> JSONResponse:
        found = daemon.workers.get(worker_id)
        if found is None:
            return JSONResponse(
                {
                    "error": f"no worker {worker_id!r}",
                    "known": sorted(daemon.workers),
                },
                status_code=404,
            )
        return JSONResponse(daemon.describe_worker(found))

    @app.get("/advertisers")
    async def advertisers() -> list[dict[str, Any]]:
        """Each advertiser's view of go-livepeer: what it registered, its last call and error."""
        return [advertiser.describe() for advertiser in daemon.advertisers]

    app.include_router(
        live_runner_router(functools.partial(worker_status, daemon), lambda: daemon.reconciled)
    )

    @app.post("/reload")
    async def reload(request: Request, dry_run: bool = False) -> Response:
        """Re-read aiModels.json and apply only the difference (the same as SIGHUP); with
        `dry_run`, only say what would change. 422 lists every problem of an invalid file."""
        denied = daemon.guard.denied(request)
        if denied is not None:
            return denied
        try:
            applied = await daemon.reload_reported(dry_run=dry_run)
        except ReloadRejected as exc:
            return JSONResponse(
                {
                    "result": "rejected",
                    "error": f"{daemon.settings.models_path} is invalid; nothing was changed",
                    "problems": [str(p) for p in exc.problems],
                },
                status_code=422,
            )
        except EngineError as exc:
            return JSONResponse(
                {"result": "rejected", "error": f"nothing was changed: {exc}"}, status_code=503
            )
        return JSONResponse({"result": "planned" if dry_run else "applied", **applied.report()})

    def _named(name: str) -> list[Worker] | JSONResponse:
        found = daemon.replicas_named(name)
        if not found:
            return JSONResponse(
                {
                    "error": f"no worker, entry or model_id {name!r}",
                    "fix": "GET /workers lists worker ids, entry ids and model_ids",
                },
                status_code=404,
            )
        return found

    async def _act(request: Request, name: str, action: str) -> Response:
        denied = daemon.guard.denied(request)
        if denied is not None:
            return denied
        found = _named(name)
        if isinstance(found, JSONResponse):
            return found
        taken_at = datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")
        if action == "restart":
            daemon.restart(found)
        else:
            daemon.drain(found, action == "drain")
        return JSONResponse(
            {"result": action, "workers": [w.worker_id for w in found], "at": taken_at},
            status_code=202,
        )

    @app.post("/workers/{name}/restart", status_code=202)
    async def restart(request: Request, name: str) -> Response:
        """Start a replica (or every replica of an entry or model_id) afresh; its sessions
        end."""
        return await _act(request, name, "restart")

    @app.post("/workers/{name}/drain", status_code=202)
    async def drain(request: Request, name: str) -> Response:
        """Take no new sessions or requests and leave the advertised set; running sessions go
        on."""
        return await _act(request, name, "drain")

    @app.post("/workers/{name}/undrain", status_code=202)
    async def undrain(request: Request, name: str) -> Response:
        """Take sessions again after a drain."""
        return await _act(request, name, "undrain")

    @app.post("/withdraw", status_code=202)
    async def withdraw(request: Request, cancel: bool = False) -> Response:
        """Take the whole host out of service: every replica drains (no new sessions or
        requests, nothing advertised that could take them; running sessions go on, their Live
        Runner runners stay registered until they end). Kept across restarts; `cancel` undoes
        it."""
        denied = daemon.guard.denied(request)
        if denied is not None:
            return denied
        workers = daemon.withdraw(cancel=cancel)
        return JSONResponse(
            {
                "result": "cancelled" if cancel else "withdrawn",
                "workers": [w.worker_id for w in workers],
                "sessions": len(daemon.sessions.live()),
            },
            status_code=202,
        )

    @app.post("/shutdown", status_code=202)
    async def shutdown(request: Request) -> Response:
        """Exit as SIGTERM would: containers keep running unless
        BYOC_ORCH_STOP_CONTAINERS_ON_EXIT."""
        denied = daemon.guard.denied(request)
        if denied is not None:
            return denied
        if daemon.request_exit is None:
            return JSONResponse({"error": "this daemon cannot be stopped over HTTP"}, 409)
        daemon.request_exit()
        return JSONResponse({"result": "stopping"}, status_code=202)

    proxy = daemon.proxy
    for prefix in ("/stream", "/api/stream"):
        for op in ("start", "stop", "params", "update"):
            app.add_route(f"{prefix}/{op}", proxy.handle_routed, methods=["POST"])
        app.add_route(f"{prefix}/status", proxy.handle_routed, methods=["GET", "HEAD"])

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description="byoc-orch's HTTP API: status, capabilities, sessions, metrics and "
                "the session proxy. Reads are open; calls that change something (and every "
                "call through the proxy) need BYOC_ORCH_API_TOKEN when one is set.",
                routes=app.routes,
            )
            schema["paths"].update(proxy_paths())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
