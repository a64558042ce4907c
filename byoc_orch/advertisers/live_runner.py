"""Live Runner static registration: a readiness URL per worker and the `runners.json` that points
go-livepeer at it.

go-livepeer's static live runners (ai/runner/live_runner.go, doc/live-runner.md) are a JSON
document `{"runners": [...]}` given to `-liveRunnerConfig` (or POSTed to the CLI port's
`/registerLiveRunners`). go-livepeer GETs each `health_url` about every 5 s with a 3 s timeout and
routes to the runner only while the answer's status code equals `healthy_status_code` (200);
the body is not read. A runner that turns unhealthy is hidden from discovery and its sessions
are released. Client calls to `/apps/{label}/session/{id}/app/<path>` are reverse-proxied to
`runner_url` + `<path>` with the client's own headers.

So byoc-orch lists every replica of every entry — cold ones too — as a runner with `health_url`
on `/live-runner/<worker_id>/health`, which answers 200 only while that replica is warm and not
draining: go-livepeer's own poll then advertises warm replicas only, with no SDK and nothing to
re-register when either side restarts. `runner_url` is the replica's own proxy base, `label` its
worker id with label routing (stable public URLs; a worker id never contains `/`), `app` the
entry's `pipeline/model_id` (go-livepeer's docs' convention; every replica of an entry shares it),
`mode` persistent (a reserved session spans start/params/stop), `capacity` the replica's own
(go-livepeer counts the sessions it reserves per runner), and `gpu` its device when it has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from fastapi import APIRouter

from byoc_orch.aimodels import ModelEntry
from byoc_orch.container_spec import Slot, replica_id
from byoc_orch.offer import Offer, json_number
from byoc_orch.routes import LIVE_RUNNER_HEALTH_ROUTE, live_runner_health_url, proxy_url
from byoc_orch.worker_state import State

PIXELS_PER_720P_HOUR = 3600 * 1280 * 720 * 30
"""go-livepeer's `720p` price unit: USD per hour of 1280x720 at 30 fps."""


class WorkerStatus(NamedTuple):
    """One worker's state and reason, as /workers shows them, whether it drains, and the
    sessions it holds."""

    state: State
    reason: str | None
    draining: bool = False
    sessions: int = 0


StatusLookup = Callable[[str], WorkerStatus | None]
"""worker_id → its status, or None for an unknown worker id."""


def readiness(
    found: WorkerStatus | None, worker_id: str, *, reconciled: bool = True
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """GET/HEAD /live-runner/{worker_id}/health: 200 while warm — and while draining as long as
    it holds sessions, since one failed poll makes the registry release them
    (`checkStaticRunnerHealth`); byoc-orch's proxy refuses new starts on it meanwhile — 503 with
    the state otherwise, 404 for an unknown worker (503 with Retry-After while byoc-orch is
    starting and does not know its workers yet). The status, body and headers."""
    headers = {"Cache-Control": "no-store"}
    if found is None:
        if not reconciled:
            message = f"byoc-orch is starting and does not know {worker_id!r} yet"
            return 503, {"error": message}, {**headers, "Retry-After": "1"}
        return 404, {"error": f"no worker {worker_id!r}"}, headers
    state, reason, draining, sessions = WorkerStatus(*found)
    if state is State.WARM and (not draining or sessions > 0):
        body: dict[str, Any] = {"status": "OK", "worker_id": worker_id, "state": str(state)}
        if draining:
            body["draining"] = f"taking no new sessions; {sessions} still running"
        return 200, body, headers
    body = {
        "status": "unavailable",
        "worker_id": worker_id,
        "state": str(state),
        "reason": "draining: taking no new sessions" if draining else reason,
    }
    return 503, body, headers


def live_runner_router(
    status: StatusLookup, reconciled: Callable[[], bool] = lambda: True
) -> APIRouter:
    """The readiness route for FastAPI (its OpenAPI listing; byoc-orch's front door answers it
    before FastAPI, front.py)."""
    from fastapi import APIRouter
    from fastapi.responses import JSONResponse

    router = APIRouter()

    # One route per method, each with its own operation id (one route for both would list the
    # same id twice in the OpenAPI document).
    @router.head(
        LIVE_RUNNER_HEALTH_ROUTE,
        tags=["live runner"],
        response_model=None,
        operation_id="live_runner_health_head",
    )
    @router.get(
        LIVE_RUNNER_HEALTH_ROUTE,
        tags=["live runner"],
        response_model=None,
        operation_id="live_runner_health",
    )
    async def live_runner_health(worker_id: str) -> Any:
        code, body, headers = readiness(status(worker_id), worker_id, reconciled=reconciled())
        return JSONResponse(body, status_code=code, headers=headers)

    return router


def live_runner_price(offer: Offer, unit: str = "720p") -> dict[str, Any] | None:
    """`price_info` for a USD-priced entry, else None.

    go-livepeer takes live runner prices only in USD. An aiModels.json USD price is
    `price_per_unit` per `pixels_per_unit` pixels, and the `720p` unit divides its price by the
    pixels of an hour of 720p at 30 fps, so the conversion is exact. livepeer/node takes no
    `720p` unit: `hour` carries the same number, the price of an hour of such a stream."""
    per_pixel = offer.price_per_pixel
    if (offer.currency or "").strip().lower() != "usd" or not per_pixel:
        return None
    return {
        "price": json_number(per_pixel * PIXELS_PER_720P_HOUR),
        "currency": "usd",
        "unit": unit,
    }


def runner_entry(entry: ModelEntry, public_url: str, slot: Slot | None = None) -> dict[str, Any]:
    """One `runners` element (one replica of `entry`), with exactly the fields of go-livepeer's
    StaticLiveRunnerConfigEntry."""
    worker_id = replica_id(entry, slot.index) if slot is not None else entry.worker_id
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
    gpus = (slot.gpus if slot is not None else entry.gpu_request()) if entry.managed else None
    if gpus is not None and len(gpus.device_ids) == 1:
        runner["gpu"] = {"id": gpus.device_ids[0]}
    return runner


def runners_document(
    entries: Iterable[ModelEntry],
    public_url: str,
    replicas: Mapping[str, Sequence[Slot]] | None = None,
) -> dict[str, Any]:
    """The `-liveRunnerConfig` document: one runner for every replica of every entry."""
    runners = []
    for entry in entries:
        slots: Sequence[Slot | None] = (replicas or {}).get(entry.worker_id) or (None,)
        if not entry.managed:
            slots = (None,)
        runners += [runner_entry(entry, public_url, slot) for slot in slots]
    return {"runners": runners}
