"""What a proxied call addresses, and what the session proxy and the pass-through share about
it: byoc-orch's own 503 when no replica can take the call, and the per-route timing metric."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter
from starlette.responses import Response

from byoc_orch.forwarding import error_response
from byoc_orch.metrics import Metrics
from byoc_orch.routing import Refusal, RefusalReason, ReplicaLoad

if TYPE_CHECKING:
    from byoc_orch.deployment import Deployment
    from byoc_orch.worker import Worker


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


def refusal_response(target: Target, refusal: Refusal, counter: Counter) -> Response:
    """byoc-orch's 503 for a call routing turned down, counted in `counter` by reason."""
    entry = target.deployment.entry
    reason = str(refusal.reason)
    if refusal.reason is RefusalReason.FULL and target.worker is None:
        target.deployment.demand_unmet()
        if target.deployment.pool_full:
            reason = "no_gpu"  # full, and the GPU pool has no room for another replica
    counter.labels(entry.pipeline, entry.model_id, reason).inc()
    candidates = target.candidates()
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
    return error_response(503, message, headers={"Retry-After": "1"}, **details)


def status_class(status: int) -> str:
    return f"{min(max(status // 100, 2), 5)}xx"


def observe(metrics: Metrics, route: str, started: float, status: int) -> None:
    """A proxied call's duration since `started` (perf_counter), by route and status class."""
    metrics.proxy_duration.labels(route, status_class(status)).observe(
        time.perf_counter() - started
    )
