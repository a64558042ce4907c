"""Advertisers: one module per outward protocol, each mirroring the warm set into go-livepeer.

* `byoc_register` — BYOC `/capability/register` and `/capability/unregister` (ORCH_URL and
  ORCH_SECRET set, BYOC_REGISTER not turned off).
* `heartbeat` — Live Runner dynamic registration with heartbeats (LIVE_RUNNER_HEARTBEAT=true,
  same ORCH_URL and ORCH_SECRET).
* `live_runner` — Live Runner static registration: the readiness route and the runners.json
  that `byoc-orch export live-runners` prints; go-livepeer polls, so there is no task.

The `GET /capabilities` listing is the HTTP API's own.
"""

from __future__ import annotations

import httpx

from byoc_orch.advertisers.base import Advertiser
from byoc_orch.advertisers.byoc_register import ByocRegisterAdvertiser, Remembered
from byoc_orch.advertisers.heartbeat import LiveRunnerHeartbeatAdvertiser, RunnerHooks
from byoc_orch.capabilities import CapabilityRegistry
from byoc_orch.metrics import Metrics
from byoc_orch.settings import Settings

__all__ = [
    "Advertiser",
    "ByocRegisterAdvertiser",
    "LiveRunnerHeartbeatAdvertiser",
    "build_advertisers",
]


def build_advertisers(
    settings: Settings,
    registry: CapabilityRegistry,
    http: httpx.AsyncClient,
    metrics: Metrics,
    *,
    runners: CapabilityRegistry | None = None,
    hooks: RunnerHooks | None = None,
    remembered: Remembered | None = None,
) -> list[Advertiser]:
    """The advertisers these settings turn on, not yet started. Live Runner heartbeats follow
    `runners` (the warm set plus draining replicas that still hold sessions) when given."""
    has_orch = bool(
        settings.orch_url
        and settings.orch_secret is not None
        and settings.orch_secret.get_secret_value()
    )
    chosen: list[Advertiser] = []
    if has_orch and settings.byoc_register:
        chosen.append(
            ByocRegisterAdvertiser(settings, registry, http, metrics, remembered=remembered)
        )
    if has_orch and settings.live_runner_heartbeat:
        chosen.append(
            LiveRunnerHeartbeatAdvertiser(
                settings, runners if runners is not None else registry, http, metrics, hooks=hooks
            )
        )
    return chosen
