"""Live Runner static registration: a readiness URL per worker and the `runners.json` that points
go-livepeer at it.

go-livepeer's static live runners (ai/runner/live_runner.go, doc/live-runner.md) are a JSON
document `{"runners": [...]}` given to `-liveRunnerConfig` (or POSTed to the CLI port's
`/registerLiveRunners`). go-livepeer GETs each `health_url` about every 5 s with a 3 s timeout and
routes to the runner only while the answer's status code equals `healthy_status_code` (200);
the body is not read. A runner that turns unhealthy is hidden from discovery and its sessions
are released. Client calls to `/apps/{label}/session/{id}/app/<path>` are reverse-proxied to
`runner_url` + `<path>` with the client's own headers.

So byoc-orch lists every entry — cold ones too — with `health_url` on
`/live-runner/<worker_id>/health`, which answers 200 only while the worker is warm: go-livepeer's
own poll then advertises warm workers only, with no SDK and nothing to re-register when either
side restarts. `runner_url` is the worker's proxy base, `label` its worker id with label routing
(stable public URLs; a worker id never contains `/`), `app` the `pipeline/model_id` go-livepeer's
docs use as the convention, `mode` persistent (a reserved session spans start/params/stop), and
`capacity` the entry's total: go-livepeer counts the sessions it reserves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from byoc_orch.aimodels import ModelEntry
from byoc_orch.offer import Offer, json_number
from byoc_orch.routes import LIVE_RUNNER_HEALTH_ROUTE, live_runner_health_url, proxy_url
from byoc_orch.worker_state import State

PIXELS_PER_720P_HOUR = 3600 * 1280 * 720 * 30
"""go-livepeer's `720p` price unit: USD per hour of 1280x720 at 30 fps."""

WorkerStatus = tuple[State, str | None]
"""(state, reason) of one worker, as /workers shows them."""
StatusLookup = Callable[[str], WorkerStatus | None]
"""worker_id → its status, or None for an unknown worker id."""


def live_runner_router(status: StatusLookup) -> APIRouter:
    """GET/HEAD /live-runner/{worker_id}/health: 200 while warm, 503 with the state otherwise,
    404 for an unknown worker."""
    router = APIRouter()

    @router.api_route(LIVE_RUNNER_HEALTH_ROUTE, methods=["GET", "HEAD"], include_in_schema=False)
    async def live_runner_health(worker_id: str) -> JSONResponse:
        found = status(worker_id)
        headers = {"Cache-Control": "no-store"}
        if found is None:
            return JSONResponse(
                {"error": f"no worker {worker_id!r}"}, status_code=404, headers=headers
            )
        state, reason = found
        if state is State.WARM:
            body: dict[str, Any] = {"status": "OK", "worker_id": worker_id, "state": str(state)}
            return JSONResponse(body, status_code=200, headers=headers)
        body = {
            "status": "unavailable",
            "worker_id": worker_id,
            "state": str(state),
            "reason": reason,
        }
        return JSONResponse(body, status_code=503, headers=headers)

    return router


def live_runner_price(offer: Offer) -> dict[str, Any] | None:
    """`price_info` for a USD-priced entry, else None.

    go-livepeer takes live runner prices only in USD. An aiModels.json USD price is
    `price_per_unit` per `pixels_per_unit` pixels, and the `720p` unit divides its price by the
    pixels of an hour of 720p at 30 fps, so the conversion is exact."""
    per_pixel = offer.price_per_pixel
    if (offer.currency or "").strip().lower() != "usd" or not per_pixel:
        return None
    return {
        "price": json_number(per_pixel * PIXELS_PER_720P_HOUR),
        "currency": "usd",
        "unit": "720p",
    }


def runner_entry(entry: ModelEntry, public_url: str) -> dict[str, Any]:
    """One `runners` element, with exactly the fields of go-livepeer's
    StaticLiveRunnerConfigEntry."""
    worker_id = entry.worker_id
    runner: dict[str, Any] = {
        "label": worker_id,
        "routing": "label",
        "runner_url": proxy_url(public_url, worker_id),
        "health_url": live_runner_health_url(public_url, worker_id),
        "healthy_status_code": 200,
        "app": entry.capability,
        "mode": "persistent",
        "capacity": entry.capacity,
    }
    price = live_runner_price(entry.offer)
    if price is not None:
        runner["price_info"] = price
    gpus = entry.gpu_request() if entry.managed else None
    if gpus is not None and len(gpus.device_ids) == 1:
        runner["gpu"] = {"id": gpus.device_ids[0]}
    return runner


def runners_document(entries: Iterable[ModelEntry], public_url: str) -> dict[str, Any]:
    """The `-liveRunnerConfig` document for every entry."""
    return {"runners": [runner_entry(entry, public_url) for entry in entries]}
