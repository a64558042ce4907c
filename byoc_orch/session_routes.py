"""Which session routes a container serves, found once per container: its prefix (`""` for
pytrickle >= 0.1.5, `/api` for the older generation and the Livepeer docs) and the name of its
params route (`params`, or `update` on some `/api` workers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from byoc_orch.forwarding import Answer, Unreachable
from byoc_orch.worker_calls import RawHeaders, WorkerCalls

if TYPE_CHECKING:
    from byoc_orch.worker import Worker

log = structlog.get_logger("byoc_orch.session_routes")


@dataclass
class Routes:
    container_id: str | None
    prefix: str
    params_op: str = "params"


class ContainerRoutes:
    def __init__(self, calls: WorkerCalls) -> None:
        self._calls = calls
        self._known: dict[str, Routes] = {}

    def forget(self, worker_id: str) -> None:
        """A replica is gone (or its sessions all ended): find out again next time."""
        self._known.pop(worker_id, None)

    async def of(self, worker: Worker) -> Routes:
        """The container's session routes: as configured, or found once per container by
        asking `GET /stream/status` and then `/api/stream/status` for a non-404."""
        container_id = worker.status.container_id
        known = self._known.get(worker.worker_id)
        if known is not None and known.container_id == container_id:
            return known
        configured = worker.entry.stream_prefix
        if configured != "auto":
            found = Routes(container_id, configured)
        else:
            found = Routes(container_id, "")
            for prefix in ("", "/api"):
                reply = await self._calls.send(worker, "GET", f"{prefix}/stream/status")
                if isinstance(reply, Unreachable):
                    return found  # not remembered: ask again on the next call
                if reply.status != 404:
                    found = Routes(container_id, prefix)
                    break
            log.info(
                "session routes detected",
                worker_id=worker.worker_id,
                pipeline=worker.entry.pipeline,
                model_id=worker.entry.model_id,
                container_id=(container_id or "")[:12] or None,
                prefix=found.prefix or "/",
            )
        self._known[worker.worker_id] = found
        return found

    async def status(self, worker: Worker) -> Answer | Unreachable:
        """The container's own `/stream/status` answer, asked by byoc-orch (no caller's
        headers): what session recovery reads."""
        routes = await self.of(worker)
        return await self._calls.send(worker, "GET", f"{routes.prefix}/stream/status")

    async def stop(self, worker: Worker, session_id: str) -> Answer | Unreachable:
        """Stop a stream on byoc-orch's own account (its session ended elsewhere), naming it
        the way go-livepeer does (`X-Stream-Id`)."""
        routes = await self.of(worker)
        return await self._calls.send(
            worker,
            "POST",
            f"{routes.prefix}/stream/stop",
            headers=[(b"x-stream-id", session_id.encode("utf-8", "replace"))],
        )

    async def send_params(
        self, worker: Worker, routes: Routes, *, headers: RawHeaders, query: bytes, body: bytes
    ) -> Answer | Unreachable:
        """A params call to the route the container serves; a 404 or 405 on `params` is tried
        again on `update`, and that is remembered when it is the one served."""
        path = f"{routes.prefix}/stream/{routes.params_op}"
        upstream = await self._calls.send(
            worker, "POST", path, headers=headers, query=query, body=body
        )
        if (
            isinstance(upstream, Answer)
            and upstream.status in (404, 405)
            and routes.params_op == "params"
        ):
            retry = await self._calls.send(
                worker,
                "POST",
                f"{routes.prefix}/stream/update",
                headers=headers,
                query=query,
                body=body,
            )
            if isinstance(retry, Unreachable) or retry.status not in (404, 405):
                routes.params_op = "update"
                return retry
        return upstream
