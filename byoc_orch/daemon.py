"""The daemon: reconcile at start-up, run one Worker per entry, route Docker events to them.

Order at start-up matters: the Docker event stream is opened before containers are listed, so
a container that dies between the two is still seen; adoption keeps warm containers running
across a daemon restart; `ready` turns true only once every entry has been set on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import structlog

from byoc_orch.advertisers import build_advertisers
from byoc_orch.advertisers.base import Advertiser
from byoc_orch.aimodels import ModelEntry, ModelsFile, ModelsFileError, Problem, load_models
from byoc_orch.capabilities import CapabilityRegistry, Change
from byoc_orch.container_spec import ContainerSpec, build_container_spec
from byoc_orch.engine import (
    STREAM_LOST,
    STREAM_RESTORED,
    Engine,
    EngineError,
    EngineEvent,
    EventStream,
)
from byoc_orch.gpu import (
    GpuCollector,
    GpuInfo,
    GpuReader,
    GpuUnavailableError,
    gpu_request_warnings,
    gpus_given,
)
from byoc_orch.http_client import shared_client
from byoc_orch.metrics import Metrics
from byoc_orch.proxy import SessionProxy
from byoc_orch.reconcile import ReloadPlan, Running, plan, plan_reload
from byoc_orch.routes import proxy_url
from byoc_orch.sessions import EndReason, Session, SessionTable
from byoc_orch.settings import Settings, reserved_ports
from byoc_orch.worker import Worker
from byoc_orch.worker_state import Adopt, Died, Event, Launch, Policy, State, Status, Stop

log = structlog.get_logger("byoc_orch.daemon")


def policy_from(settings: Settings) -> Policy:
    """Every Policy knob is a setting of the same name."""
    return Policy(**{f.name: getattr(settings, f.name) for f in fields(Policy)})


class ReloadRejected(Exception):
    """The new aiModels.json is invalid; nothing running was changed."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def engine_for(settings: Settings) -> Engine:
    return Engine(
        docker_host=settings.docker_host,
        instance=settings.instance,
        timeout=settings.docker_timeout,
        docker_config=settings.docker_config,
        pull_progress_interval=settings.pull_progress_interval,
        environment=os.environ,
    )


class Daemon:
    def __init__(
        self,
        settings: Settings,
        models: ModelsFile,
        *,
        engine: Engine | None = None,
        gpu_reader: GpuReader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.models = models
        self.engine = engine or engine_for(settings)
        self.registry = CapabilityRegistry()
        self.policy = policy_from(settings)
        self.workers: dict[str, Worker] = {}
        self.ready = False
        self.started_at = clock()
        self.adopted: list[str] = []
        self._clock = clock
        self.metrics = Metrics()
        self._http = shared_client()
        self.sessions = SessionTable(on_count=self._sessions_counted, on_end=self._session_ended)
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.proxy = SessionProxy(
            workers=lambda: self.workers,
            is_warm=self.registry.is_warm,
            sessions=self.sessions,
            http=self._http,
            metrics=self.metrics,
            connect_timeout=settings.proxy_connect_timeout,
            timeout=settings.proxy_timeout,
            max_body_bytes=settings.max_body_bytes,
            api_token=token or None,
            clock=clock,
        )
        self.registry.subscribe(self._capabilities_changed)
        self._events: EventStream | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._note_config_applied()
        self.advertisers: list[Advertiser] = build_advertisers(
            settings, self.registry, self._http, self.metrics
        )
        self.gpu_inventory: list[GpuInfo] = []
        self._gpus = (gpu_reader or GpuReader()) if settings.gpu_metrics else None
        if self._gpus is not None:
            self.metrics.register(GpuCollector(self._gpus))

    async def start(self) -> None:
        """Reconcile with the engine and start every worker; raises EngineError if Docker is out
        of reach, leaving nothing running."""
        entries = self.models.entries
        managed = [e for e in entries if e.managed]
        await self._read_gpus()
        self._warn_gpu_requests(self.models)
        if managed:
            await self._follow_engine()
            containers = await self.engine.list_containers()
        else:
            containers = []
        specs = {e.worker_id: build_container_spec(e, self.settings.instance) for e in managed}
        wanted = {e.worker_id: specs[e.worker_id].spec_hash for e in managed if e.warm}
        the_plan = plan(wanted, containers)
        for container_id in the_plan.remove:
            log.info("removing container no entry wants as it is", container_id=container_id[:12])
            try:
                await self.engine.remove(container_id)
            except EngineError as exc:
                log.warning(
                    "could not remove container", container_id=container_id[:12], error=str(exc)
                )
        for entry in entries:
            adopted = the_plan.adopt.get(entry.worker_id)
            self._spawn(entry, specs.get(entry.worker_id), Adopt(adopted) if adopted else None)
        self.adopted = sorted(the_plan.adopt)
        for advertiser in self.advertisers:
            await advertiser.start()
        self.ready = True
        log.info(
            "reconciled",
            entries=len(entries),
            adopted=len(the_plan.adopt),
            launched=sum(1 for e in entries if e.warm) - len(the_plan.adopt),
            removed=len(the_plan.remove),
            cold=sum(1 for e in entries if not e.warm),
        )

    async def _follow_engine(self) -> None:
        """Connect to Docker and open the event stream, once; events come before listing."""
        if self._events is not None:
            return
        info = await self.engine.connect()
        log.info("docker engine", version=info.server_version, host=self.settings.docker_host)
        self._events = self.engine.events()
        self._dispatcher = asyncio.create_task(self._dispatch(self._events), name="docker-events")

    async def _read_gpus(self) -> None:
        """The host's GPUs, once: NVML calls block, so they run in a thread."""
        if self._gpus is None:
            return
        try:
            self.gpu_inventory = await asyncio.to_thread(self._gpus.inventory)
        except GpuUnavailableError as exc:
            log.info("no GPU inventory: GPU ids are not checked, no GPU metrics", reason=str(exc))
            return
        log.info(
            "GPUs",
            count=len(self.gpu_inventory),
            gpus=[f"{g.index}:{g.name}" for g in self.gpu_inventory],
        )

    def _warn_gpu_requests(self, models: ModelsFile) -> None:
        if not self.gpu_inventory:
            return
        for problem in gpu_request_warnings(models.entries, self.gpu_inventory, models.source):
            log.warning("aiModels.json names a GPU this host lacks", problem=str(problem))

    def gpu_devices(self, entry: ModelEntry) -> list[dict[str, Any]] | None:
        """The host GPUs an entry's container is given, when that can be known."""
        request = entry.gpu_request() if entry.managed else None
        if request is None:
            return None
        chosen = gpus_given(request, self.gpu_inventory)
        return None if chosen is None else [g.described() for g in chosen]

    def _policy_for(self, entry: ModelEntry) -> Policy:
        if entry.startup_timeout is None:
            return self.policy
        return replace(self.policy, startup_timeout=entry.startup_timeout)

    def _spawn(self, entry: ModelEntry, spec: ContainerSpec | None, first: Event | None) -> None:
        """Follow one entry with a new Worker: metrics at zero, its tasks started, and its first
        event posted (`first`, else Launch when the entry is warm; a cold one waits)."""
        self.metrics.add_worker(entry.pipeline, entry.model_id, entry.capacity)
        worker = Worker(
            entry,
            spec=spec,
            engine=self.engine,
            registry=self.registry,
            policy=self._policy_for(entry),
            proxy_url=proxy_url(self.settings.public_base_url, entry.worker_id),
            probe_timeout=self.settings.probe_timeout,
            stop_timeout=self.settings.stop_timeout,
            metrics=self.metrics,
            clock=self._clock,
        )
        self.workers[worker.worker_id] = worker
        worker.start()
        if first is not None:
            worker.post(first)
        elif entry.warm:
            worker.post(Launch())

    async def stop(self) -> None:
        """Withdraw every capability first, then stop following workers; by default the
        containers keep running so the next start adopts them."""
        self.ready = False
        halted = [task for worker in self.workers.values() for task in worker.halt()]
        for worker_id in list(self.workers):
            self.proxy.end_worker_sessions(worker_id, EndReason.SHUTDOWN, "byoc-orch stopped")
        self.registry.withdraw_all()
        await asyncio.gather(*halted, return_exceptions=True)
        await asyncio.gather(
            *(advertiser.aclose() for advertiser in self.advertisers), return_exceptions=True
        )
        if self.settings.stop_containers_on_exit:
            await asyncio.gather(
                *(
                    self._stop_container(w.status)
                    for w in self.workers.values()
                    if w.status.container_id and w.entry.managed
                )
            )
        if self._events is not None:
            await self._events.aclose()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        await self._http.aclose()
        await self.engine.close()
        if self._gpus is not None:
            await asyncio.to_thread(self._gpus.close)
        log.info("stopped", containers_left_running=not self.settings.stop_containers_on_exit)

    async def _stop_container(self, status: Status) -> None:
        assert status.container_id
        try:
            await self.engine.stop(status.container_id, self.settings.stop_timeout)
            await self.engine.remove(status.container_id)
        except EngineError as exc:
            log.warning(
                "could not stop container", container_id=status.container_id[:12], error=str(exc)
            )

    # -- reload -------------------------------------------------------------------------------

    async def reload(self, models: ModelsFile | None = None) -> ReloadPlan:
        """Re-read aiModels.json (or take `models`) and apply only the difference.

        An invalid file raises ReloadRejected and changes nothing. Untouched entries keep their
        containers and sessions; an entry whose container is unaffected is updated in place;
        removed and replaced workers are withdrawn first, their sessions ended with the reason.
        """
        async with self._reload_lock:
            if models is None:
                try:
                    models = await asyncio.to_thread(
                        load_models,
                        self.settings.models_path,
                        reserved_ports=reserved_ports(self.settings),
                    )
                except ModelsFileError as exc:
                    self.metrics.config_reloads.labels("rejected").inc()
                    for problem in exc.problems:
                        log.error(
                            "reload rejected; running configuration kept", problem=str(problem)
                        )
                    raise ReloadRejected(exc.problems) from None
            for warning in models.warnings:
                log.warning("aiModels.json", warning=str(warning))
            self._warn_gpu_requests(models)
            try:
                the_plan = await self._apply(models)
            except EngineError as exc:
                self.metrics.config_reloads.labels("rejected").inc()
                log.error("reload could not reach Docker; nothing changed", error=str(exc))
                raise
            self.metrics.config_reloads.labels("applied").inc()
            self._note_config_applied()
            log.info("reloaded", **{k: len(v) for k, v in the_plan.summary().items()})
            return the_plan

    async def _apply(self, models: ModelsFile) -> ReloadPlan:
        instance = self.settings.instance
        entries = {e.worker_id: e for e in models.entries}
        specs = {
            e.worker_id: build_container_spec(e, instance) for e in models.entries if e.managed
        }
        current = {
            worker_id: Running(w.entry, w.spec.spec_hash if w.spec else None, w.entry.warm)
            for worker_id, w in self.workers.items()
        }
        wanted = {
            worker_id: Running(e, specs[worker_id].spec_hash if e.managed else None, e.warm)
            for worker_id, e in entries.items()
        }
        the_plan = plan_reload(current, wanted)
        if not the_plan.changed:
            self.models = models
            return the_plan
        if specs:
            await self._follow_engine()
        await asyncio.gather(
            *(self._retire(w, EndReason.REMOVED) for w in the_plan.remove),
            *(self._retire(w, EndReason.REPLACED) for w in the_plan.replace),
        )
        for worker_id in the_plan.remove:
            worker = self.workers.pop(worker_id)
            self.metrics.remove_worker(worker.entry.pipeline, worker.entry.model_id)
        for worker_id in the_plan.update:
            entry = entries[worker_id]
            self.workers[worker_id].update_entry(entry, self._policy_for(entry))
        for worker_id in (*the_plan.replace, *the_plan.add):
            if worker_id in the_plan.replace:
                old = self.workers[worker_id].entry
                self.metrics.remove_worker(old.pipeline, old.model_id)
            self._spawn(entries[worker_id], specs.get(worker_id), None)
        self.workers = {worker_id: self.workers[worker_id] for worker_id in entries}
        self.models = models
        return the_plan

    async def _retire(self, worker_id: str, reason: EndReason) -> None:
        """Withdraw a worker, end its sessions, stop its container and stop following it."""
        worker = self.workers[worker_id]
        self.proxy.end_worker_sessions(worker_id, reason, "aiModels.json changed")
        worker.post(Stop())
        try:
            await worker.wait_for(
                lambda s: s.state is State.STOPPED,
                timeout=self.settings.stop_timeout + self.settings.docker_timeout,
            )
        except TimeoutError:
            log.warning(
                "worker did not stop in time; left to start-up reconcile", worker_id=worker_id
            )
        await worker.close()
        self.registry.withdraw(worker_id)

    def _note_config_applied(self) -> None:
        with contextlib.suppress(OSError):
            self.metrics.config_loaded_timestamp.set(self.settings.models_path.stat().st_mtime)
        self.metrics.config_last_reload_timestamp.set(self._clock())

    # -- Docker events ------------------------------------------------------------------------

    async def _dispatch(self, events: EventStream) -> None:
        oom_killed: set[str] = set()
        async for event in events:
            if event.action == STREAM_LOST:
                self.metrics.event_stream_reconnects.inc()
            elif event.action == STREAM_RESTORED:
                await self._resync()
            elif event.action == "oom" and event.container_id:
                oom_killed.add(event.container_id)
            elif event.action == "die" and event.container_id:
                self._container_died(event, event.container_id in oom_killed)
                oom_killed.discard(event.container_id)

    def _container_died(self, event: EngineEvent, oom: bool) -> None:
        worker = self._by_container(event.container_id)
        if worker is None:
            return
        reason = f"container exited with code {event.exit_code}"
        if oom:
            reason += " (killed: out of memory)"
        worker.post(Died(str(event.container_id), reason))

    def _by_container(self, container_id: str | None) -> Worker | None:
        for worker in self.workers.values():
            if container_id and worker.status.container_id == container_id:
                return worker
        return None

    async def _resync(self) -> None:
        """After the event stream was down: anything that died meanwhile is a crash."""
        try:
            running = {c.id for c in await self.engine.list_containers() if c.running}
        except EngineError as exc:
            log.warning("could not re-list containers", error=str(exc))
            return
        for worker in self.workers.values():
            container_id = worker.status.container_id
            if worker.entry.managed and container_id and container_id not in running:
                worker.post(Died(container_id, "container stopped while Docker events were down"))

    # -- sessions -----------------------------------------------------------------------------

    def _capabilities_changed(self, change: Change) -> None:
        """A worker that left the warm set takes its sessions with it, at once."""
        self.metrics.capabilities_warm.set(len(self.registry))
        for capability in change.withdrawn:
            worker = self.workers.get(capability.worker_id)
            if worker is None or not self.sessions.in_use(capability.worker_id):
                continue
            reason = (
                EndReason.UNHEALTHY
                if worker.status.state is State.UNHEALTHY
                else EndReason.REMOVED
                if worker.status.state in (State.STOPPING, State.STOPPED)
                else EndReason.CRASHED
            )
            self.proxy.end_worker_sessions(
                capability.worker_id, reason, worker.status.reason or None
            )

    def _sessions_counted(self, worker_id: str, in_use: int) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.set_in_use(in_use)

    def _session_ended(self, session: Session) -> None:
        self.metrics.sessions_ended.labels(
            session.pipeline, session.model_id, str(session.end_reason)
        ).inc()

    # -- reporting ----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for worker in self.workers.values():
            states[str(worker.status.state)] = states.get(str(worker.status.state), 0) + 1
        return {
            "ready": self.ready,
            "instance": self.settings.instance,
            "workers": len(self.workers),
            "warm": len(self.registry),
            "states": states,
        }
