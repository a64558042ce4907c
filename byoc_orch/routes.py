"""byoc-orch's own URLs that other parties are handed: the proxy base of each worker (the
`url` every advertiser gives go-livepeer) and each worker's Live Runner readiness URL.
Built here and nowhere else, so the API's routes and what is advertised cannot drift apart."""

from __future__ import annotations

PROXY_PREFIX = "/proxy/"
LIVE_RUNNER_HEALTH_ROUTE = "/live-runner/{worker_id}/health"


def proxy_url(base_url: str, worker_id: str) -> str:
    """Where calls for one worker enter byoc-orch's proxy."""
    return f"{base_url.rstrip('/')}{PROXY_PREFIX}{worker_id}"


def live_runner_health_url(base_url: str, worker_id: str) -> str:
    """The URL go-livepeer polls to learn whether one worker is routable."""
    return base_url.rstrip("/") + LIVE_RUNNER_HEALTH_ROUTE.format(worker_id=worker_id)
