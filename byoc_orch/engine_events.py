"""Docker's container events, routed to the workers they concern, and what the stream says
about Docker's reachability.

A `die` goes to the worker that runs the container, at once, its exit status in words
(exit_status.py: 137 is SIGKILL, "out of memory" when an `oom` came first — Docker emits it as
it sets OOMKilled, so no inspect is needed on this path): a crash is noticed in milliseconds,
not after failed probes. When the stream is lost, Docker is unreachable; when it is back,
containers are listed again and every worker whose container stopped meanwhile is told it died
(kubelet's relist, in miniature), with the exit code and OOMKilled that inspect shows, then
every worker hears that Docker answers again. The router is handed the stream and callables,
not the daemon, so all of this is testable without Docker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import structlog

from byoc_orch.engine import STREAM_LOST, STREAM_RESTORED, ContainerInfo, EngineError, EngineEvent
from byoc_orch.exit_status import describe_exit
from byoc_orch.metrics import Metrics
from byoc_orch.worker_state import Died, EngineBack, Event, Status

# The daemon's logger: these lines were the daemon's and operators' filters know them so.
log = structlog.get_logger("byoc_orch.daemon")


class Followed(Protocol):
    """What the router needs of a worker (a `Worker` is one)."""

    @property
    def status(self) -> Status: ...

    def post(self, event: Event) -> None: ...


class EngineReachability:
    """Whether Docker answers: None while byoc-orch has had no need of it. Each change is
    logged once and exported as byoc_orch_docker_engine_up."""

    def __init__(self, host: str, metrics: Metrics) -> None:
        self.host = host
        self.up: bool | None = None
        self._metrics = metrics

    def reached(self, reachable: bool = True) -> None:
        if reachable != self.up:
            log.log(
                logging.INFO if reachable else logging.ERROR,
                "Docker engine reachable again" if reachable else "Docker engine unreachable",
                host=self.host,
            )
        self.up = reachable
        self._metrics.engine_up.set(1 if reachable else 0)

    def stream_lost(self) -> None:
        self._metrics.event_stream_reconnects.inc()
        self.reached(False)

    def stream_restored(self) -> None:
        self.reached(True)


class EngineEvents:
    def __init__(
        self,
        events: AsyncIterable[EngineEvent],
        *,
        workers: Callable[[], Iterable[Followed]],
        list_containers: Callable[[], Awaitable[Sequence[ContainerInfo]]],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None],
        inspect: Callable[[str], Awaitable[ContainerInfo]] | None = None,
    ) -> None:
        """`workers`: every worker followed now; `list_containers`: this instance's
        containers, for the relist after the stream comes back; `inspect`: one container's
        state, for the exit status of one that stopped while the stream was down."""
        self._events = events
        self._workers = workers
        self._list = list_containers
        self._inspect = inspect
        self._on_lost = on_lost
        self._on_restored = on_restored
        self._oom_killed: set[str] = set()

    async def run(self) -> None:
        """Route every event until the stream ends (or the task is cancelled)."""
        async for event in self._events:
            if event.action == STREAM_LOST:
                self._on_lost()
            elif event.action == STREAM_RESTORED:
                self._on_restored()
                await self.resync()
                for worker in list(self._workers()):
                    worker.post(EngineBack())
            elif event.action == "oom" and event.container_id:
                self._oom_killed.add(event.container_id)
            elif event.action == "die" and event.container_id:
                oom = event.container_id in self._oom_killed
                self._oom_killed.discard(event.container_id)
                self._died(event.container_id, event.exit_code, oom)

    def worker_for_container(self, container_id: str) -> Followed | None:
        for worker in self._workers():
            if worker.status.container_id == container_id:
                return worker
        return None

    def _died(self, container_id: str, exit_code: int | None, oom: bool) -> None:
        worker = self.worker_for_container(container_id)
        if worker is None:
            return
        worker.post(Died(container_id, describe_exit(exit_code, oom_killed=True if oom else None)))

    async def resync(self) -> None:
        """After the event stream was down: anything that died meanwhile is a crash."""
        try:
            running = {c.id for c in await self._list() if c.running}
        except EngineError as exc:
            log.warning("could not re-list containers", error=str(exc))
            return
        for worker in list(self._workers()):
            status = worker.status
            container_id = status.container_id
            if status.managed and container_id and container_id not in running:
                worker.post(Died(container_id, await self._stopped_unseen(container_id)))

    async def _stopped_unseen(self, container_id: str) -> str:
        reason = "container stopped while Docker events were down"
        if self._inspect is None:
            return reason
        try:
            info = await self._inspect(container_id)
        except EngineError:
            return reason  # already removed: nothing more is known
        if info.exit_code is None:
            return reason
        exited = describe_exit(info.exit_code, oom_killed=info.oom_killed)
        return f"{exited} (while Docker events were down)"
