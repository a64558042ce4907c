"""The daemon: reconcile at start-up, run one Deployment per entry (one Worker per replica),
and compose the collaborators that route Docker events to them (engine_events) and sweep
containers nothing tracks (dangling).

Order at start-up matters: the Docker event stream is opened before containers are listed, so
a container that dies between the two is still seen; adoption keeps warm containers running
across a daemon restart; `ready` turns true only once every entry has been set on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

import structlog

from byoc_orch import __version__
from byoc_orch.advertisers import build_advertisers
from byoc_orch.advertisers.base import Advertiser
from byoc_orch.advertisers.heartbeat import LiveRunnerHeartbeatAdvertiser
from byoc_orch.aimodels import ModelEntry, ModelsFile, ModelsFileError, Problem
from byoc_orch.aimodels.devices import gpu_request_warnings, gpus_given
from byoc_orch.aimodels.host import ModelsLoader
from byoc_orch.auth import Guard
from byoc_orch.autoscaler import Autoscaler, adoptable, slot_for
from byoc_orch.build_info import commit
from byoc_orch.capabilities import CapabilityRegistry, Change
from byoc_orch.container_spec import ContainerSpec, build_container_spec
from byoc_orch.dangling import DanglingSweeper
from byoc_orch.deployment import Deployment, Timeouts
from byoc_orch.engine import Engine, EngineError
from byoc_orch.engine_events import EngineEvents, EngineReachability
from byoc_orch.engine_port import ContainerEngine, EventSource
from byoc_orch.entry_diff import entry_changes
from byoc_orch.forwarding import Unreachable, WorkerConnections
from byoc_orch.gpu import GpuCollector, GpuInfo, GpuReader
from byoc_orch.gpu_budget import GpuBudget
from byoc_orch.http_client import shared_client
from byoc_orch.live_runner_sessions import LiveRunnerSessions
from byoc_orch.metrics import Metrics
from byoc_orch.orchestrator_sessions import ReleaseSender
from byoc_orch.passthrough import Passthrough
from byoc_orch.proxy import SessionProxy
from byoc_orch.proxy_target import Target
from byoc_orch.reconcile import ReloadPlan, Running, plan, plan_reload
from byoc_orch.routes import proxy_url
from byoc_orch.sd_notify import Notifier
from byoc_orch.session_lifecycle import SessionLifecycle
from byoc_orch.session_routes import ContainerRoutes
from byoc_orch.sessions import EndReason
from byoc_orch.settings import Settings
from byoc_orch.state_file import DaemonState, StateFile
from byoc_orch.worker import Worker
from byoc_orch.worker_calls import WorkerCalls
from byoc_orch.worker_state import Launch, Policy, State, Status

log = structlog.get_logger("byoc_orch.daemon")
T = TypeVar("T")


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


@dataclass(frozen=True)
class Wanted:
    """What one entry of a loaded aiModels.json asks to run."""

    entry: ModelEntry
    specs: dict[int, ContainerSpec | None]

    @property
    def running(self) -> Running:
        hashes = tuple(
            (index, spec.spec_hash if spec is not None else None)
            for index, spec in sorted(self.specs.items())
        )
        return Running(self.entry, hashes if self.entry.managed else None, self.entry.warm)


class _ByocMemory:
    """The BYOC advertiser's registrations, remembered in the daemon's state file."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def restored(self) -> dict[str, str]:
        return dict(self._daemon._byoc)

    def changed(self, registered: dict[str, str]) -> None:
        if registered != self._daemon._byoc:
            self._daemon._byoc = dict(registered)
            self._daemon._state_changed()


def _settled(worker: Worker) -> bool:
    """Probed since it was adopted, and (when warm) its running streams known. COLD is where a
    replica waits until its own task has taken the adoption in hand."""
    state = worker.status.state
    if state in (State.COLD, State.STARTING):
        return False
    return state is not State.WARM or worker.sessions_known


class Daemon:
    def __init__(
        self,
        settings: Settings,
        models: ModelsFile,
        *,
        engine: ContainerEngine | None = None,
        gpu_reader: GpuReader | None = None,
        loader: ModelsLoader | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.models = models
        self.engine: ContainerEngine = engine or engine_for(settings)
        self.registry = CapabilityRegistry()
        self.runners = CapabilityRegistry()
        """What Live Runner advertises: the warm set plus draining replicas holding sessions."""
        self.policy = policy_from(settings)
        self.deployments: dict[str, Deployment] = {}
        self.workers: dict[str, Worker] = {}
        """Every replica of every entry, by worker id."""
        self.ready = False
        self.reconciled = False
        """True once the first reconcile knows every worker (stays True through shutdown)."""
        self.request_exit: Callable[[], None] | None = None
        """Asks the process to stop as SIGTERM does (set by the server)."""
        self.notifier: Notifier | None = None
        """systemd's notify socket, when run as a service (set by the server)."""
        self.started_at = clock()
        self.adopted: list[str] = []
        self._clock = clock
        self.metrics = Metrics()
        self.reachability = EngineReachability(settings.docker_host, self.metrics)
        self._http = shared_client()
        self._workers_http = WorkerConnections()
        calls = WorkerCalls(
            self._workers_http,
            connect_timeout=settings.proxy_connect_timeout,
            timeout=settings.proxy_timeout,
        )
        self.routes = ContainerRoutes(calls)
        self.lifecycle = SessionLifecycle(
            workers=self.workers.get,
            ask_status=self.routes.status,
            spawn=self._spawn_background,
            metrics=self.metrics,
            clock=clock,
        )
        self.sessions = self.lifecycle.table
        """The session table, for reading; sessions change through `lifecycle`."""
        self.state_file = StateFile(settings.state_directory, settings.instance)
        self.releases = ReleaseSender(self._http)
        self.live_runner_sessions = LiveRunnerSessions(
            self.lifecycle,
            self.releases,
            workers=self.workers.get,
            stop_stream=self._stop_stream,
            spawn=self._spawn_background,
            metrics=self.metrics,
            changed=self._state_changed,
        )
        self.releases.observe = self.live_runner_sessions.observe_release
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.guard = Guard(token or None, settings.trusted)
        self.proxy = SessionProxy(
            resolve=self.target,
            deployments=lambda: self.deployments,
            lifecycle=self.lifecycle,
            live_runner=self.live_runner_sessions,
            calls=calls,
            routes=self.routes,
            passthrough=Passthrough(
                calls, self.metrics, max_body_bytes=settings.max_passthrough_bytes
            ),
            metrics=self.metrics,
            max_body_bytes=settings.max_body_bytes,
            guard=self.guard,
            reconciled=lambda: self.reconciled,
        )
        self.registry.subscribe(self._capabilities_changed)
        self._events: EventSource | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._note_config_applied()
        self.advertisers: list[Advertiser] = build_advertisers(
            settings,
            self.registry,
            self._http,
            self.metrics,
            runners=self.runners,
            hooks=self.live_runner_sessions,
            remembered=_ByocMemory(self),
        )
        self.loader = loader or ModelsLoader.from_settings(settings)
        """What loaded `models`, and loads aiModels.json again on reload (with the GPUs read at
        start-up: NVML is not asked again)."""
        self.gpu_inventory: list[GpuInfo] = list(self.loader.gpus.inventory)
        self._gpus = (gpu_reader or GpuReader()) if settings.gpu_metrics else None
        if self._gpus is not None:
            self.metrics.register(GpuCollector(self._gpus))
        self._own_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="byoc-orch")
        self._drained: set[str] = set()
        """Worker ids the operator drained; kept in the state file until `undrain`."""
        self._byoc: dict[str, str] = {}
        """BYOC capabilities registered (name → digest), kept in the state file."""
        self._sweeper = DanglingSweeper(
            self.engine.list_containers,
            self.engine.remove,
            tracked=lambda: (w.status.container_id for w in self.workers.values()),
            creating=lambda: (w.worker_id for w in self.workers.values() if w.creating),
            clock=clock,
            enabled=lambda: self._events is not None,
        )
        self._background: set[asyncio.Task[None]] = set()
        self._timeouts = Timeouts(
            drain=settings.drain_timeout, stop=settings.stop_timeout + settings.docker_timeout
        )
        self.gpu_budget = (
            GpuBudget(settings.gpu_sessions, lambda: self.workers.values())
            if settings.gpu_sessions is not None
            else None
        )
        self.autoscaler = Autoscaler(
            deployments=lambda: self.deployments,
            layout=models.pool,
            instance=settings.instance,
            metrics=self.metrics,
            interval=settings.scale_interval,
            clock=clock,
        )

    @property
    def engine_up(self) -> bool | None:
        """Whether Docker answers; None while byoc-orch has had no need of it."""
        return self.reachability.up

    async def off_loop(self, work: Callable[[], T]) -> T:
        """Blocking work of byoc-orch's own (reading aiModels.json, NVML, rendering metrics) on
        threads of its own: Docker calls have theirs, so a stalled Docker API that ties those
        up delays none of this."""
        return await asyncio.get_running_loop().run_in_executor(self._own_threads, work)

    async def render_metrics(self) -> bytes:
        return await self.off_loop(self.metrics.render)

    # -- start and stop -------------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile with the engine and start every entry; raises EngineError if Docker is out
        of reach, leaving nothing running."""
        await self._read_gpus()
        self._warn_gpu_requests(self.models)
        state = await self.off_loop(self.state_file.load)
        self.live_runner_sessions.restore(state.runners, state.sessions)
        self._drained = set(state.drained)
        self._byoc = dict(state.byoc)
        wanted = self._wanted(self.models)
        managed = [w for w in wanted.values() if w.entry.managed]
        if managed:
            await self._follow_engine()
            containers = await self.engine.list_containers()
        else:
            containers = []
        pool = self.autoscaler.layout.state()
        for each in managed:
            if each.entry.ranged and each.entry.warm:
                found = adoptable(each.entry, self.settings.instance, containers, pool)
                each.specs.update(found)
        hashes = {
            spec.worker_id: spec.spec_hash
            for w in managed
            if w.entry.warm
            for spec in w.specs.values()
            if spec is not None
        }
        the_plan = plan(hashes, containers)
        for container_id in the_plan.remove:
            log.info("removing container no entry wants as it is", container_id=container_id[:12])
            try:
                await self.engine.remove(container_id)
            except EngineError as exc:
                log.warning(
                    "could not remove container", container_id=container_id[:12], error=str(exc)
                )
        for each in wanted.values():
            self._deploy(each).start(the_plan.adopt)
        self.autoscaler.step()  # replica ranges: their minimum, on the pool
        self._spawn_background(self.autoscaler.run(), "autoscaler")
        self.adopted = sorted(the_plan.adopt)
        for worker_id in set(self.workers) - set(the_plan.adopt):
            self.live_runner_sessions.forget_restored(worker_id)  # a new container runs nothing
        self.live_runner_sessions.forget_restored(None)
        for advertiser in self.advertisers:
            await advertiser.start()
        self._spawn_background(
            self._sweeper.every(self.settings.reconcile_interval), "dangling-containers"
        )
        self.ready = True
        self.reconciled = True
        replicas = sum(len(w.specs) for w in wanted.values() if w.entry.warm)
        log.info(
            "reconciled",
            entries=len(wanted),
            replicas=sum(len(w.specs) for w in wanted.values()),
            adopted=len(the_plan.adopt),
            launched=replicas - len(the_plan.adopt),
            removed=len(the_plan.remove),
            cold=sum(1 for w in wanted.values() if not w.entry.warm),
        )

    async def settled(self, timeout: float) -> list[str]:
        """Wait (at most `timeout` seconds) until every adopted replica has been probed and, if
        warm, its streams are known: a process handed its listening socket by systemd serves
        nothing before that, so no call meets a worker it does not know yet. Returns the ids of
        those still unsettled."""

        waiting = [w for w in self.workers.values() if w.worker_id in self.adopted]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for worker in waiting:
                    await worker.wait_until(functools.partial(_settled, worker), timeout)
        return [w.worker_id for w in waiting if not _settled(w)]

    async def _follow_engine(self) -> None:
        """Connect to Docker and open the event stream, once; events come before listing."""
        if self._events is not None:
            return
        info = await self.engine.connect()
        log.info("docker engine", version=info.server_version, host=self.settings.docker_host)
        self.reachability.reached()
        self._events = self.engine.events()
        router = EngineEvents(
            self._events,
            workers=lambda: self.workers.values(),
            list_containers=self.engine.list_containers,
            on_lost=self.reachability.stream_lost,
            on_restored=self.reachability.stream_restored,
            inspect=self.engine.inspect,
        )
        self._dispatcher = asyncio.create_task(router.run(), name="docker-events")

    async def _read_gpus(self) -> None:
        """Say which GPUs the loader read at start-up; the metrics' reader is not asked."""
        if self._gpus is None:
            return
        failure = self.loader.gpus.failure
        if failure is not None:
            log.info("no GPU inventory: GPU ids are not checked, no GPU metrics", reason=failure)
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

    async def stop(self) -> None:
        """Withdraw every capability first, then stop following workers; by default the
        containers keep running so the next start adopts them."""
        self.ready = False
        self.autoscaler.stopped = True
        if self.settings.stop_containers_on_exit:
            await self._drain_for_exit()
        halted = [task for d in self.deployments.values() for task in d.halt()]
        halted += list(self._background)
        for task in self._background:
            task.cancel()
        if self.settings.stop_containers_on_exit:
            for worker in self.workers.values():
                self.end_sessions(worker, EndReason.SHUTDOWN, "byoc-orch stopped its containers")
        elif running := len(self.sessions.live()):
            # The containers keep running, and so do their streams; the next start finds them.
            log.info("leaving sessions running in their containers", sessions=running)
        leaving = self.settings.stop_containers_on_exit
        await asyncio.gather(
            *(
                # What the next process will adopt stays advertised where that survives it;
                # closed first, so the withdrawal below is not mirrored to the orchestrator.
                advertiser.aclose(unregister=leaving or not advertiser.survives_restart)
                for advertiser in self.advertisers
            ),
            return_exceptions=True,
        )
        self.registry.withdraw_all()
        await asyncio.gather(*halted, return_exceptions=True)
        await self.releases.aclose()
        self._save_state_now()
        await self.state_file.flush()
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
        await self._workers_http.aclose()
        await self.engine.close()
        if self._gpus is not None:
            await self.off_loop(self._gpus.close)
        self._own_threads.shutdown(wait=False)
        log.info("stopped", containers_left_running=not self.settings.stop_containers_on_exit)

    async def _drain_for_exit(self) -> None:
        """Containers will stop: replicated entries let their sessions finish first (bounded)."""
        draining = [d.drain_all() for d in self.deployments.values() if d.entry.replicated]
        if draining:
            await asyncio.gather(*draining, return_exceptions=True)

    async def _stop_container(self, status: Status) -> None:
        assert status.container_id
        try:
            await self.engine.stop(status.container_id, self.settings.stop_timeout)
            await self.engine.remove(status.container_id)
        except EngineError as exc:
            log.warning(
                "could not stop container", container_id=status.container_id[:12], error=str(exc)
            )

    # -- entries and their replicas -------------------------------------------------------------

    def _wanted(self, models: ModelsFile) -> dict[str, Wanted]:
        """Every entry with the container each of its replicas wants."""
        instance = self.settings.instance
        wanted: dict[str, Wanted] = {}
        for entry in models.entries:
            specs: dict[int, ContainerSpec | None]
            if not entry.managed:
                specs = {0: None}
            elif entry.ranged:
                specs = dict(self._ranged_specs(entry))
            else:
                slots = models.replicas.get(entry.worker_id) or (None,)
                specs = {}
                for slot in slots:
                    spec = build_container_spec(entry, instance, slot)
                    specs[spec.replica] = spec
            wanted[entry.worker_id] = Wanted(entry, specs)
        return wanted

    def _ranged_specs(self, entry: ModelEntry) -> dict[int, ContainerSpec | None]:
        """A replica range's containers: those it runs now (a reload rebuilds them on the
        GPUs they have, so only a change of the container itself replaces them; a lower max
        leaves the scaler to drain the replicas above it away, never cutting a session), none
        for a new entry; the scaler starts its minimum and places each on the pool."""
        running = self.deployments.get(entry.worker_id)
        replica_range = entry.replica_range
        if running is None or not running.entry.managed or replica_range is None:
            return {}
        specs: dict[int, ContainerSpec | None] = {}
        for index, spec in running.wanted_specs().items():
            if spec is None:
                continue
            devices = spec.gpus.device_ids if spec.gpus is not None else ()
            specs[index] = build_container_spec(
                entry, self.settings.instance, slot_for(entry, index, devices)
            )
        return specs

    def _deploy(self, wanted: Wanted) -> Deployment:
        entry = wanted.entry
        self.metrics.add_entry(
            entry.pipeline, entry.model_id, len(wanted.specs), managed=entry.managed
        )
        deployment = Deployment(
            entry, wanted.specs, self, timeouts=self._timeouts, clock=self._clock
        )
        self.deployments[deployment.entry_id] = deployment
        return deployment

    def policy_for(self, entry: ModelEntry) -> Policy:
        if entry.startup_timeout is None:
            return self.policy
        return replace(self.policy, startup_timeout=entry.startup_timeout)

    def new_worker(
        self, entry: ModelEntry, spec: ContainerSpec | None, index: int, deployment: Deployment
    ) -> Worker:
        """A replica's Worker, registered and with its series at zero; not started."""
        worker_id = spec.worker_id if spec is not None else entry.worker_id
        self.metrics.add_replica(entry.pipeline, entry.model_id, str(index), entry.capacity)
        worker = Worker(
            entry,
            spec=spec,
            engine=self.engine,
            policy=self.policy_for(entry),
            proxy_url=proxy_url(self.settings.public_base_url, worker_id),
            probe_timeout=self.settings.probe_timeout,
            stop_timeout=self.settings.stop_timeout,
            worker_id=worker_id,
            replica=index,
            on_change=deployment.worker_changed,
            metrics=self.metrics,
            clock=self._clock,
        )
        if spec is not None and spec.gpus is not None:
            worker.gpus = gpus_given(spec.gpus, self.gpu_inventory)
        worker.gpu_budget = self.gpu_budget
        self.metrics.set_worker_gpus(entry.pipeline, entry.model_id, str(index), worker.gpus)
        self.workers[worker_id] = worker
        if worker_id in self._drained:
            worker.held = True  # drained by the operator before a restart or a replacement
        return worker

    def gpu_devices(self, entry: ModelEntry) -> list[dict[str, Any]] | None:
        """The host GPUs an entry without replicas is given, when that can be known."""
        request = entry.gpu_request() if entry.managed else None
        given = None if request is None else gpus_given(request, self.gpu_inventory)
        return None if given is None else [g.described() for g in given]

    def forget_worker(self, worker: Worker) -> None:
        if self.workers.get(worker.worker_id) is worker:
            del self.workers[worker.worker_id]
        self.routes.forget(worker.worker_id)
        entry = worker.entry
        still = self.deployments.get(worker.entry_id)
        if still is None and worker.worker_id in self._drained:
            self._drained.discard(worker.worker_id)  # its entry is gone: nothing to keep drained
            self._state_changed()
        if still is None or worker.replica not in still.workers:
            self.metrics.remove_replica(entry.pipeline, entry.model_id, str(worker.replica))

    # -- containers nothing tracks ---------------------------------------------------------------

    def _spawn_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def sweep(self) -> list[str]:
        """Remove this instance's containers that no worker tracks or is creating, once seen so
        twice the sweeper's grace apart. Runs periodically and after every reload; returns the
        ids removed. A daemon that never needed Docker (external entries only) does not ask
        it."""
        return await self._sweeper.sweep()

    # -- what entries ask of the daemon (deployment.Host); sessions are the lifecycle's ---------

    def recover_sessions(self, worker: Worker) -> None:
        self.lifecycle.recover(worker)

    def worker_idle(self, worker: Worker) -> None:
        self.lifecycle.worker_idle(worker)

    def end_sessions(self, worker: Worker, reason: EndReason, detail: str | None) -> None:
        self.lifecycle.end_worker(worker.worker_id, reason, detail)
        self.routes.forget(worker.worker_id)

    def session_ids(self, worker_id: str) -> tuple[str, ...]:
        return self.sessions.live_ids(worker_id)

    def entry_url(self, entry_id: str) -> str:
        return proxy_url(self.settings.public_base_url, entry_id)

    def capacity_changed(self, entry: ModelEntry, capacity: int) -> None:
        self.metrics.capability_capacity.labels(entry.pipeline, entry.model_id).set(capacity)

    def cold_start_measured(self, entry: ModelEntry, median: float) -> None:
        self.metrics.entry_cold_start.labels(entry.pipeline, entry.model_id).set(median)

    def demand_unmet(self, deployment: Deployment) -> None:
        self.autoscaler.nudge()

    def replica_changed(self, worker: Worker) -> None:
        """A replica's load or state changed: entries sharing its GPUs' session budget
        advertise again what is left for them."""
        if self.gpu_budget is None:
            return
        for entry_id in self.gpu_budget.neighbours(worker):
            neighbour = self.deployments.get(entry_id)
            if neighbour is not None:
                neighbour.publish()

    def target(self, some_id: str) -> Target | None:
        """What `/proxy/<id>` reaches: an entry (routed over its replicas) or one replica."""
        deployment = self.deployments.get(some_id)
        if deployment is not None:
            return Target(deployment, None)
        worker = self.workers.get(some_id)
        if worker is None:
            return None
        owner = self.deployments.get(worker.entry_id)
        return None if owner is None else Target(owner, worker)

    # -- reload ---------------------------------------------------------------------------------

    async def reload(
        self, models: ModelsFile | None = None, *, dry_run: bool = False
    ) -> ReloadPlan:
        """Re-read aiModels.json (or take `models`) and apply only the difference.

        An invalid file raises ReloadRejected and changes nothing. Untouched entries keep their
        containers and sessions; an entry whose containers are unaffected is updated in place;
        removed and changed entries are withdrawn (replicated ones drain and roll over one
        replica at a time, in the background). `dry_run` returns the plan, changing nothing.
        """
        async with self._reload_lock:
            if models is None:
                try:
                    models = await self.off_loop(self.loader.load)
                except ModelsFileError as exc:
                    if dry_run:
                        raise ReloadRejected(exc.problems) from None
                    self.metrics.config_reloads.labels("rejected").inc()
                    for problem in exc.problems:
                        log.error(
                            "reload rejected; running configuration kept", problem=str(problem)
                        )
                    raise ReloadRejected(exc.problems) from None
            if dry_run:
                return self._plan(self._wanted(models))
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
            self._spawn_background(self._sweeper.now_and_after_grace(), "sweep-after-reload")
            log.info("reloaded", **{k: len(v) for k, v in the_plan.summary().items()})
            return the_plan

    def _plan(self, wanted: dict[str, Wanted]) -> ReloadPlan:
        current = {
            entry_id: Wanted(d.entry, dict(d.wanted_specs())).running
            for entry_id, d in self.deployments.items()
        }
        the_plan = plan_reload(current, {k: w.running for k, w in wanted.items()})
        changes = {}
        for entry_id in (*the_plan.replace, *the_plan.scale, *the_plan.update):
            deployment, new = self.deployments[entry_id], wanted[entry_id]
            counts = (len(deployment.wanted_specs()), len(new.specs))
            changes[entry_id] = entry_changes(deployment.entry, new.entry, replicas=counts)
        return replace(the_plan, changes=changes)

    async def _apply(self, models: ModelsFile) -> ReloadPlan:
        wanted = self._wanted(models)
        the_plan = self._plan(wanted)
        if not the_plan.changed:
            self.models = models
            return the_plan
        if any(w.entry.managed for w in wanted.values()):
            await self._follow_engine()
        await asyncio.gather(
            *(self.deployments[i].retire(EndReason.REMOVED) for i in the_plan.remove)
        )
        for entry_id in the_plan.remove:
            gone = self.deployments.pop(entry_id)
            self.metrics.remove_entry(gone.entry.pipeline, gone.entry.model_id)
            self.autoscaler.forget(entry_id)
        for entry_id in the_plan.update:
            self.deployments[entry_id].update(wanted[entry_id].entry)
        for entry_id in the_plan.reconfigured:
            deployment, new = self.deployments[entry_id], wanted[entry_id]
            self.metrics.entry_replicas.labels(new.entry.pipeline, new.entry.model_id).set(
                len(new.specs)
            )
            await deployment.reconfigure(new.entry, new.specs)
        for entry_id in the_plan.add:
            self._deploy(wanted[entry_id]).start({})
        self.deployments = {entry_id: self.deployments[entry_id] for entry_id in wanted}
        self.models = models
        self.autoscaler.layout = models.pool
        self.autoscaler.step()
        return the_plan

    def _note_config_applied(self) -> None:
        with contextlib.suppress(OSError):
            self.metrics.config_loaded_timestamp.set(self.settings.models_path.stat().st_mtime)
        self.metrics.config_last_reload_timestamp.set(self._clock())

    async def reload_reported(self, *, dry_run: bool = False) -> ReloadPlan:
        """`reload`, told to systemd: RELOADING=1, then READY=1 with a STATUS= line that keeps
        saying the reload was rejected (or failed) until the next change of the warm set."""
        if dry_run:
            return await self.reload(dry_run=True)
        notifier = self.notifier
        if notifier is not None:
            notifier.reloading()
        outcome = ""
        try:
            return await self.reload()
        except ReloadRejected:
            outcome = f"reload rejected: {self.settings.models_path} is invalid, nothing changed; "
            raise
        except EngineError as exc:
            outcome = f"reload failed: {exc}; "
            raise
        finally:
            if notifier is not None:
                notifier.ready(outcome + self.status_line())

    def status_line(self) -> str:
        """What `systemctl status` shows, e.g. "5/6 warm, 2 sessions"."""
        summary = self.summary()
        line = f"{summary['warm']}/{summary['entries']} warm"
        if summary["engine"] == "unreachable":
            line += ", Docker unreachable"
        sessions = len(self.sessions.live())
        if sessions:
            line += f", {sessions} session{'s' if sessions != 1 else ''}"
        return line

    # -- what an operator asks for -------------------------------------------------------------

    def replicas_named(self, name: str) -> list[Worker]:
        """The replicas a worker id, an entry id or a model_id names."""
        if name in self.workers:
            return [self.workers[name]]
        if name in self.deployments:
            return self.deployments[name].replicas()
        return [
            w for d in self.deployments.values() if d.entry.model_id == name for w in d.replicas()
        ]

    def restart(self, workers: list[Worker]) -> None:
        """Start these replicas afresh: their sessions end (`restarted`), a new container (or,
        for an external worker, new probing) replaces the old one."""
        for worker in workers:
            self.end_sessions(worker, EndReason.RESTARTED, "restarted by the operator")
            log.info("restarting worker at the operator's request", worker_id=worker.worker_id)
            worker.post(Launch())

    def drain(self, workers: list[Worker], draining: bool) -> None:
        """Stop (or resume) routing new sessions and requests to these replicas and advertising
        them; running sessions go on. An operator's drain is state: it survives a restart."""
        for worker in workers:
            worker.hold(draining)
            if draining:
                self._drained.add(worker.worker_id)
            else:
                self._drained.discard(worker.worker_id)
        self._state_changed()

    def withdraw(self, *, cancel: bool = False) -> list[Worker]:
        """Take the host out of service (or, with `cancel`, back in): every replica drains as
        an operator's drain does — BYOC capabilities and idle Live Runner runners leave at once,
        runners holding sessions stay until their last session ends — and the drain is kept
        across restarts until cancelled."""
        workers = list(self.workers.values())
        self.drain(workers, not cancel)
        log.warning(
            "host withdrawn: no new sessions or requests; running sessions go on"
            if not cancel
            else "withdrawal cancelled: taking sessions again",
            replicas=len(workers),
            sessions=len(self.sessions.live()),
        )
        return workers

    # -- the warm set ---------------------------------------------------------------------------

    def describe_worker(self, worker: Worker) -> dict[str, Any]:
        """/workers: the replica, and its Live Runner runner when heartbeats are on."""
        described = worker.describe()
        runner = next(
            (
                found
                for a in self.advertisers
                if isinstance(a, LiveRunnerHeartbeatAdvertiser)
                and (found := a.runner_of(worker.worker_id)) is not None
            ),
            None,
        )
        if runner is not None:
            synced = self.live_runner_sessions.describe(worker.worker_id) or {}
            described["live_runner"] = {**runner, "mismatched": synced.get("mismatched", 0)}
        return described

    # -- what survives a restart ----------------------------------------------------------------

    def _snapshot(self) -> DaemonState:
        return DaemonState(
            runners=self.live_runner_sessions.runner_records(),
            sessions=self.live_runner_sessions.records(),
            drained=set(self._drained),
            byoc=dict(self._byoc),
        )

    def _state_changed(self) -> None:
        self.state_file.save_soon(self._snapshot, self.off_loop)

    def _save_state_now(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.state_file.save_soon(self._snapshot, self.off_loop)

    async def _stop_stream(self, worker: Worker, session_id: str) -> bool:
        """Stop a stream whose session ended elsewhere (the orchestrator released it)."""
        answer = await self.routes.stop(worker, session_id)
        return not isinstance(answer, Unreachable)

    def _capabilities_changed(self, change: Change) -> None:
        self.metrics.capabilities_warm.set(len(self.registry))

    # -- reporting ------------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for worker in self.workers.values():
            states[str(worker.status.state)] = states.get(str(worker.status.state), 0) + 1
        return {
            "version": __version__,
            "commit": commit(),
            "ready": self.ready and self.engine_up is not False,
            "engine": {None: "not used", True: "reachable", False: "unreachable"}[self.engine_up],
            "instance": self.settings.instance,
            "entries": len(self.deployments),
            "workers": len(self.workers),
            "warm": len(self.registry),
            "states": states,
        }
