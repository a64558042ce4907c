"""The HTTP API: liveness, readiness, the warm capability listing and the worker table."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from byoc_orch import __version__
from byoc_orch.daemon import Daemon


def create_app(daemon: Daemon) -> FastAPI:
    app = FastAPI(title="byoc-orch", version=__version__, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive and serving; says nothing about workers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """503 until the first reconcile has finished, and again while shutting down."""
        return JSONResponse(daemon.summary(), status_code=200 if daemon.ready else 503)

    @app.get("/capabilities")
    async def capabilities() -> list[dict[str, Any]]:
        """Warm workers only, in go-livepeer's aiModels.json shape, pointing at byoc-orch."""
        return [capability.as_aimodels_entry() for capability in daemon.registry.warm()]

    @app.get("/workers")
    async def workers() -> list[dict[str, Any]]:
        return [worker.describe() for worker in daemon.workers.values()]

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
        return JSONResponse(found.describe())

    return app
