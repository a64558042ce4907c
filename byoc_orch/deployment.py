"""One aiModels.json entry at run time: its replicas, the capability they make up, and changes
rolled out one replica at a time.

Each replica is a `Worker` (one container, its own supervision). The entry is advertised while at
least one replica is warm and not draining, with the capacity of exactly those replicas, so a
replica's crash withdraws only its share. A reload that changes a replicated entry's containers,
or lowers its replica count, acts on one replica at a time: stop routing new sessions to it
(draining), wait until its sessions end or the drain timeout passes, stop it, start its
successor and wait until that is warm before the next. Replicas that serve nothing are replaced
first, so with two or more replicas the capability stays listed throughout. An entry without
replicas keeps the behaviour it had before replicas existed: a change replaces its one container
at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from byoc_orch.aimodels import ModelEntry
from byoc_orch.capabilities import Capability, CapabilityRegistry, ReplicaShare
from byoc_orch.container_spec import ContainerSpec
from byoc_orch.entry_health import Replica, entry_health
from byoc_orch.gpu import GpuInfo
from byoc_orch.routing import ReplicaLoad
from byoc_orch.sessions import EndReason
from byoc_orch.worker import Worker
from byoc_orch.worker_state import Adopt, Launch, Policy, State, Stop

log = structlog.get_logger("byoc_orch.deployment")

Specs = Mapping[int, ContainerSpec | None]
"""The container each replica index wants (None for an external entry's one upstream)."""

SETTLED = frozenset({State.WARM, State.BACKOFF, State.FAILED, State.STOPPED})
"""States a new replica can rest in; only WARM lets a rollout go on."""

COLD_START_SAMPLES = 9
"""Launches the cold-start median is taken over."""
COLD_START_RULE = 10.0
"""The network's rule: a worker slower than this to serve is deprioritised."""
WITH_CONTAINER = frozenset(
    {State.PULLING, State.STARTING, State.WARM, State.UNHEALTHY, State.STOPPING}
)


class Host(Protocol):
    """What an entry needs from the daemon that runs it."""

    registry: CapabilityRegistry
    runners: CapabilityRegistry
    """What Live Runner advertises (Deployment.runners): the warm set and draining replicas
    still holding sessions."""

    def new_worker(
        self, entry: ModelEntry, spec: ContainerSpec | None, index: int, deployment: Deployment
    ) -> Worker: ...

    def forget_worker(self, worker: Worker) -> None: ...

    def end_sessions(self, worker: Worker, reason: EndReason, detail: str | None) -> None: ...

    def session_ids(self, worker_id: str) -> tuple[str, ...]: ...

    def entry_url(self, entry_id: str) -> str: ...

    def capacity_changed(self, entry: ModelEntry, capacity: int) -> None: ...

    def cold_start_measured(self, entry: ModelEntry, median: float) -> None: ...

    def demand_unmet(self, deployment: Deployment) -> None: ...

    def replica_changed(self, worker: Worker) -> None: ...

    def policy_for(self, entry: ModelEntry) -> Policy: ...

    def recover_sessions(self, worker: Worker) -> None: ...

    def worker_idle(self, worker: Worker) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    drain: float
    """Seconds a draining replica's sessions may run on before they are ended."""
    stop: float
    """Seconds a container may take to stop and be removed."""


@dataclass
class Rollout:
    """What the last change to the entry's containers is doing, for /entries and status."""

    state: str  # rolling, done, halted
    detail: str = ""
    started_at: float = 0.0
    finished_at: float | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "detail": self.detail or None,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def end_reason(state: State) -> EndReason:
    """Why a replica's sessions end when it leaves WARM in `state`."""
    if state is State.UNHEALTHY:
        return EndReason.UNHEALTHY
    if state in (State.STOPPING, State.STOPPED):
        return EndReason.REMOVED
    return EndReason.CRASHED


class Deployment:
    def __init__(
        self,
        entry: ModelEntry,
        specs: Specs,
        host: Host,
        *,
        timeouts: Timeouts,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.entry = entry
        self.entry_id = entry.worker_id
        self.workers: dict[int, Worker] = {}
        self.rollout: Rollout | None = None
        self._specs = dict(specs)
        self._host = host
        self._timeouts = timeouts
        self._clock = clock
        self._warm_since: float | None = None
        self._last_state: dict[str, State] = {}
        self._task: asyncio.Task[None] | None = None
        self._current_step: asyncio.Task[None] | None = None
        self._retiring: dict[int, asyncio.Task[None]] = {}
        """Replicas a replica range is draining away, by index, until they are gone."""
        self._stopping: set[int] = set()
        """Of those, the ones empty and being stopped: too late to take back."""
        self._cold_starts: deque[float] = deque(maxlen=COLD_START_SAMPLES)
        self._starts_gone = 0
        self._unmet = 0
        self.last_scale: dict[str, Any] | None = None
        """The scaler's last decision on this entry, with its reason (for /entries)."""
        self.pool_full = False
        """A replica is wanted but the pool has no room: a refused start is `no_gpu`."""
        self._log = log.bind(
            entry_id=self.entry_id, pipeline=entry.pipeline, model_id=entry.model_id
        )

    # -- reading --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._host.entry_url(self.entry_id)

    def wanted_specs(self) -> Specs:
        """The containers the entry's replicas should run (what the last change asked for)."""
        return dict(self._specs)

    def replicas(self) -> list[Worker]:
        return [self.workers[index] for index in sorted(self.workers)]

    @property
    def bounds(self) -> tuple[int, int]:
        """(min, max) replicas: the range, or the fixed count for both."""
        replica_range = self.entry.replica_range
        if replica_range is not None:
            return replica_range.min, replica_range.max
        return len(self._specs), len(self._specs)

    def running(self) -> int:
        """Replicas with a container now, those being drained away included."""
        return sum(w.status.state in WITH_CONTAINER for w in self.workers.values())

    @property
    def busy(self) -> bool:
        """A rollout is changing the replicas: the scaler leaves the entry alone meanwhile."""
        return self._task is not None

    def kept(self) -> list[Worker]:
        """The replicas the entry means to keep (not those being drained away)."""
        return [w for i, w in sorted(self.workers.items()) if i in self._specs]

    def demand_unmet(self) -> None:
        """A start found every replica full: a replica range looks at its demand at once."""
        self._unmet += 1
        if self.entry.ranged:
            self._host.demand_unmet(self)

    @property
    def unmet(self) -> int:
        """Starts refused as full, ever."""
        return self._unmet

    def reclaimable(self) -> list[int]:
        return sorted(i for i in self._retiring if i not in self._stopping)

    def starts_total(self) -> int:
        """Session starts asked of it, ever: those its replicas took (removed replicas'
        included) and those refused as full — demand, not only what was served."""
        return self._unmet + self._starts_gone + sum(w.starts for w in self.workers.values())

    def cold_start_median(self) -> float | None:
        """Median seconds from container start to warm over the last launches."""
        if not self._cold_starts:
            return None
        return round(statistics.median(self._cold_starts), 3)

    def loads(self, only: Worker | None = None) -> list[ReplicaLoad]:
        """Routing's view of the replicas (or of one of them)."""
        chosen = [only] if only is not None else self.replicas()
        return [w.load for w in chosen]

    def capability(self) -> Capability | None:
        """The entry as advertised now, or None while no replica may take sessions."""
        shares = self._taking()
        if not shares:
            return None
        return self._advertised(tuple(shares))

    def _taking(self) -> list[ReplicaShare]:
        """The replicas taking sessions, each with the capacity it may advertise: its own, or
        under a per-GPU session budget its sessions plus the free slots the budget leaves it
        (`GpuBudget.free_shares`); one left none is not advertised."""
        routable = [w for w in self.replicas() if w.routable]
        budget = next((w.gpu_budget for w in routable if w.gpu_budget is not None), None)
        if budget is None:
            return [self._share(w) for w in routable]
        free = budget.free_shares(routable)
        shares = []
        for w in routable:
            capacity = w.in_use + free[w.worker_id]
            if capacity > 0:
                shares.append(replace(self._share(w), capacity=capacity))
        return shares

    def runners(self) -> Capability | None:
        """The entry as Live Runner advertises it: a runner per replica taking sessions, and
        one per draining replica still holding some (its capacity those sessions, so the
        registry reserves nothing new on it and releases nothing it holds); None when neither
        is left."""
        shares = self._taking()
        for w in self.replicas():
            if not w.routable and (
                w.status.state is State.WARM and w.sessions_known and w.sessions > 0
            ):
                shares.append(replace(self._share(w), capacity=w.sessions, draining=True))
        if not shares:
            return None
        shares.sort(key=lambda share: share.index)
        return self._advertised(tuple(shares))

    def free_slots(self) -> int:
        """Free session slots it offers now (what the scaler holds against the headroom)."""
        return sum(max(share.capacity - share.in_use, 0) for share in self._taking())

    def _share(self, w: Worker) -> ReplicaShare:
        return ReplicaShare(
            worker_id=w.worker_id,
            index=w.replica,
            url=w.proxy_url,
            capacity=w.entry.capacity,
            in_use=w.in_use,
            gpu=live_runner_gpu(w),
            session_ids=self._host.session_ids(w.worker_id),
        )

    def _advertised(self, shares: tuple[ReplicaShare, ...]) -> Capability:
        entry = self.entry
        return Capability(
            entry_id=self.entry_id,
            pipeline=entry.pipeline,
            model_id=entry.model_id,
            url=self.url,
            capacity=sum(share.capacity for share in shares),
            offer=entry.offer,
            warm_since=self._warm_since or self._clock(),
            in_use=sum(share.in_use for share in shares),
            replicas=shares,
        )

    def describe(self) -> dict[str, Any]:
        replicas = self.replicas()
        capability = self.capability()
        return {
            "entry_id": self.entry_id,
            "pipeline": self.entry.pipeline,
            "model_id": self.entry.model_id,
            "capability": self.entry.capability,
            "url": self.url,
            "kind": "managed" if self.entry.managed else "external",
            "wants_warm": self.entry.warm,
            "warm": capability is not None,
            "health": str(self.health()),
            "replicas_drained": sum(w.held for w in replicas),
            "replicas_wanted": len(self._specs),
            "replicas_warm": sum(w.status.state is State.WARM for w in replicas),
            "replicas_min": self.bounds[0],
            "replicas_max": self.bounds[1],
            "replicas_desired": len(self._specs),
            "replicas_running": self.running(),
            "replicas_retiring": len(self._retiring),
            "scale": self.last_scale,
            "cold_start_median_s": self.cold_start_median(),
            "cold_start_samples": len(self._cold_starts),
            "capacity": capability.capacity if capability else 0,
            "in_use": capability.in_use if capability else 0,
            "rollout": self.rollout.describe() if self.rollout else None,
            "replicas": [w.worker_id for w in replicas],
        }

    def health(self) -> str:
        """warm, cold, starting, drained, degraded or down (entry_health.py says which page)."""
        return entry_health(
            self.entry.warm,
            [
                Replica(w.status.state, w.routable, w.held, w.status.restart_cause)
                for w in self.replicas()
            ],
            len(self._specs),
        )

    # -- running --------------------------------------------------------------------------------

    def start(self, adopt: Mapping[str, str]) -> None:
        """Follow every replica: adopt the running containers named in `adopt` (replica id →
        container id), launch the rest when the entry is warm."""
        for index, spec in sorted(self._specs.items()):
            worker = self._add(index, spec, self.entry, launch=False)
            container_id = adopt.get(worker.worker_id)
            if container_id is not None:
                worker.sessions_known = False
                worker.post(Adopt(container_id))
            elif self.entry.warm:
                # An external worker may be running streams started before byoc-orch restarted.
                worker.sessions_known = self.entry.managed
                worker.post(Launch())

    def worker_changed(self, worker: Worker) -> None:
        """A replica reported a change: end its sessions if it just left WARM (or says it is
        idle while byoc-orch counts streams on it), learn what an adopted container runs once
        it answers, then publish."""
        state = worker.status.state
        before = self._last_state.get(worker.worker_id)
        self._last_state[worker.worker_id] = state
        if worker.cold_start is not None:
            self._note_cold_start(worker, worker.cold_start)
            worker.cold_start = None
        self._host.replica_changed(worker)
        if before is State.WARM and state is not State.WARM:
            self._host.end_sessions(worker, end_reason(state), worker.status.reason or None)
        if state is State.PULLING:
            worker.sessions_known = True  # a new container runs nothing yet
        elif state is State.WARM:
            if not worker.sessions_known:
                self._host.recover_sessions(worker)
            elif worker.sessions and worker.reports_idle:
                self._host.worker_idle(worker)
        self.publish()

    def _note_cold_start(self, worker: Worker, seconds: float) -> None:
        self._cold_starts.append(seconds)
        median = self.cold_start_median()
        self._host.cold_start_measured(self.entry, median or 0.0)
        if seconds > COLD_START_RULE:
            self._log.warning(
                "cold start slower than the network's 10 s rule",
                worker_id=worker.worker_id,
                seconds=round(seconds, 2),
                median=median,
            )

    def publish(self) -> None:
        runners = self.runners()
        if runners is None:
            self._host.runners.withdraw(self.entry_id)
        else:
            self._host.runners.set_warm(runners)
        capability = self.capability()
        if capability is None:
            self._warm_since = None
            self._host.registry.withdraw(self.entry_id)
            self._host.capacity_changed(self.entry, 0)
            return
        if self._warm_since is None:
            self._warm_since = self._clock()
            capability = self.capability()
            assert capability is not None
        self._host.registry.set_warm(capability)
        self._host.capacity_changed(self.entry, capability.capacity)

    def halt(self) -> list[asyncio.Task[Any]]:
        """Shutdown: cancel every task at once; nothing is published after this."""
        tasks: list[asyncio.Task[Any]] = []
        if self._task is not None:
            self._task.cancel()
            tasks.append(self._task)
        for task in self._retiring.values():
            task.cancel()
            tasks.append(task)
        for worker in self.workers.values():
            tasks += worker.halt()
        return tasks

    # -- changing -------------------------------------------------------------------------------

    def update(self, entry: ModelEntry) -> None:
        """An entry change that leaves every container as it is (price, capacity, token…)."""
        self.entry = entry
        for worker in self.workers.values():
            worker.update_entry(entry, self._host.policy_for(entry))
        self.publish()

    async def reconfigure(self, entry: ModelEntry, specs: Specs) -> None:
        """Move to a changed entry whose containers (or number of them) differ.

        An entry without replicas, before and after, is replaced at once, as before replicas
        existed; this returns when the old container is gone. Otherwise the change is rolled out
        in the background, one replica at a time, and this returns at once.
        """
        await self._cancel_rollout()
        await self._settle_retiring()
        old_entry = self.entry
        self.entry, self._specs = entry, dict(specs)
        changed = sorted(
            index
            for index, worker in self.workers.items()
            if index in specs and not _same(worker, specs[index], old_entry, entry)
        )
        added = sorted(set(specs) - set(self.workers))
        removed = sorted(set(self.workers) - set(specs))
        for index in set(self.workers) - set(changed) - set(removed):
            self.workers[index].set_draining(False)
            self.workers[index].update_entry(entry, self._host.policy_for(entry))
        if not (old_entry.replicated or entry.replicated):
            await asyncio.gather(
                *(self._retire(self.workers[i], EndReason.REPLACED) for i in changed),
                *(self._retire(self.workers[i], EndReason.REMOVED) for i in removed),
            )
            for index in (*changed, *added):
                self._add(index, specs[index], entry, launch=entry.warm)
            self.publish()
            return
        self.rollout = Rollout("rolling", started_at=self._clock())
        self._task = asyncio.create_task(
            self._roll(entry, added, changed, removed), name=f"rollout-{self.entry_id}"
        )

    async def retire(self, reason: EndReason) -> None:
        """The entry is going away: replicas drain first (replicated entries only, bounded by
        the drain timeout), then every container stops."""
        await self._cancel_rollout()
        await self._settle_retiring()
        workers = self.replicas()
        if self.entry.replicated:
            await asyncio.gather(*(self._drain(w) for w in workers))
        await asyncio.gather(*(self._retire(w, reason) for w in workers))
        self._host.registry.withdraw(self.entry_id)
        self._host.runners.withdraw(self.entry_id)

    async def drain_all(self) -> None:
        """Shutdown with containers stopping: let sessions finish (bounded), nothing new."""
        await asyncio.gather(*(self._drain(w) for w in self.replicas()))

    async def _roll(
        self, entry: ModelEntry, added: list[int], changed: list[int], removed: list[int]
    ) -> None:
        rollout = self.rollout
        assert rollout is not None
        self._log.info(
            "rolling out a change",
            added=added or None,
            replacing=changed or None,
            removing=removed or None,
        )
        try:
            for index in added:
                self._add(index, self._specs[index], entry, launch=entry.warm)
            # Replicas that serve nothing go first: replacing them costs no capacity.
            order = sorted(changed, key=lambda i: (self.workers[i].routable, i))
            for index in order:
                old = self.workers[index]
                rollout.detail = f"replacing replica {index}"
                await self._drain(old)
                await self._step(self._retire(old, EndReason.REPLACED))
                successor = self._add(index, self._specs[index], entry, launch=entry.warm)
                if entry.warm and not await self._became_warm(successor):
                    rollout.state, rollout.finished_at = "halted", self._clock()
                    rollout.detail = (
                        f"replica {index} did not become warm ({successor.status.state}: "
                        f"{successor.status.reason or 'no reason given'}); the replicas not yet "
                        "replaced keep their old containers"
                    )
                    self._log.error("rollout halted", reason=rollout.detail)
                    return
            if removed:
                rollout.detail = f"removing replicas {', '.join(map(str, removed))}"
                leaving = [self.workers[i] for i in removed]
                await asyncio.gather(*(self._drain(w) for w in leaving))
                await self._step(self._retire_all(leaving, EndReason.REMOVED))
            rollout.state, rollout.detail, rollout.finished_at = "done", "", self._clock()
            self._log.info("rollout done", replicas=len(self.workers))
        finally:
            self._task = None

    # -- replica ranges (the scaler's hands) -----------------------------------------------------

    def scale_up(self, index: int, spec: ContainerSpec) -> Worker:
        """Start one more replica, at `index` with `spec` (its port and placed GPUs)."""
        self._specs[index] = spec
        worker = self._add(index, spec, self.entry, launch=True)
        self.publish()
        return worker

    def scale_down(self, worker: Worker) -> None:
        """Drain `worker` away: it takes nothing new, keeps its sessions until they end (no
        timeout: nothing is cut) and is removed once empty, unless `reclaim` takes it back."""
        self._specs.pop(worker.replica, None)
        self._retiring[worker.replica] = asyncio.create_task(
            self._scale_in(worker), name=f"scale-in-{worker.worker_id}"
        )

    def reclaim(self) -> Worker | None:
        """Take back a replica being drained away (warm already), or None if none can be."""
        indexes = self.reclaimable()
        if not indexes:
            return None
        index = max(indexes, key=lambda i: (self.workers[i].in_use, -i))
        self._retiring.pop(index).cancel()
        worker = self.workers[index]
        assert worker.spec is not None
        self._specs[index] = worker.spec
        worker.set_draining(False)
        return worker

    async def _scale_in(self, worker: Worker) -> None:
        index = worker.replica
        try:
            worker.set_draining(True)
            while worker.in_use and worker.status.state is State.WARM:
                with contextlib.suppress(TimeoutError):
                    await worker.wait_until(
                        lambda: worker.in_use == 0 or worker.status.state is not State.WARM,
                        3600.0,
                    )
            self._stopping.add(index)
            await asyncio.shield(self._retire(worker, EndReason.REMOVED))
        finally:
            if self._retiring.get(index) is asyncio.current_task():
                del self._retiring[index]
            self._stopping.discard(index)

    async def _settle_retiring(self) -> None:
        """Before a rollout or removal: replicas still draining away stay draining (the
        rollout removes them), those already stopping are waited for."""
        waiting = [t for i, t in self._retiring.items() if i in self._stopping]
        for index in self.reclaimable():
            self._retiring.pop(index).cancel()
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    async def _retire_all(self, workers: list[Worker], reason: EndReason) -> None:
        await asyncio.gather(*(self._retire(w, reason) for w in workers))

    async def _step(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a step that changes containers to its end even if the rollout is superseded
        meanwhile: a replica is never left half stopped. `_cancel_rollout` waits for it."""
        self._current_step = asyncio.create_task(work)
        await asyncio.shield(self._current_step)

    async def _became_warm(self, worker: Worker) -> bool:
        timeout = worker.policy.startup_timeout + self._timeouts.stop
        with contextlib.suppress(TimeoutError):
            await worker.wait_for(lambda s: s.state in SETTLED, timeout)
        return worker.status.state is State.WARM

    async def _drain(self, worker: Worker) -> None:
        """Take no new sessions on `worker` and wait (bounded) for its sessions to end."""
        worker.set_draining(True)
        if worker.in_use == 0 or worker.status.state is not State.WARM:
            return
        self._log.info(
            "draining replica",
            worker_id=worker.worker_id,
            sessions=worker.in_use,
            timeout=self._timeouts.drain,
        )
        try:
            await worker.wait_until(
                lambda: worker.in_use == 0 or worker.status.state is not State.WARM,
                self._timeouts.drain,
            )
        except TimeoutError:
            self._log.warning(
                "drain timed out; ending the replica's sessions",
                worker_id=worker.worker_id,
                sessions=worker.in_use,
                timeout=self._timeouts.drain,
            )

    async def _retire(self, worker: Worker, reason: EndReason) -> None:
        """End the replica's sessions, stop its container and stop following it."""
        self._host.end_sessions(worker, reason, "aiModels.json changed")
        worker.post(Stop())
        try:
            await worker.wait_for(lambda s: s.state is State.STOPPED, self._timeouts.stop)
        except TimeoutError:
            self._log.warning(
                "worker did not stop in time; left to the next reconcile",
                worker_id=worker.worker_id,
            )
        await worker.close()
        if self.workers.get(worker.replica) is worker:
            del self.workers[worker.replica]
            self._starts_gone += worker.starts
        self._last_state.pop(worker.worker_id, None)
        self._host.forget_worker(worker)
        self.publish()

    def _add(
        self, index: int, spec: ContainerSpec | None, entry: ModelEntry, *, launch: bool
    ) -> Worker:
        worker = self._host.new_worker(entry, spec, index, self)
        self.workers[index] = worker
        worker.start()
        if launch:
            worker.post(Launch())
        return worker

    async def _cancel_rollout(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        step, self._current_step = self._current_step, None
        if step is not None and not step.done():
            with contextlib.suppress(Exception):
                await step
            if self.rollout is not None and self.rollout.state == "rolling":
                self.rollout.state = "superseded"
                self.rollout.finished_at = self._clock()


def _same(worker: Worker, spec: ContainerSpec | None, old: ModelEntry, new: ModelEntry) -> bool:
    """Whether a replica can stay as it is under the new entry (an external one follows a
    changed url in place)."""
    old_hash = worker.spec.spec_hash if worker.spec is not None else None
    new_hash = spec.spec_hash if spec is not None else None
    return old.managed == new.managed and old_hash == new_hash and old.warm == new.warm


def live_runner_gpu(worker: Worker) -> dict[str, Any] | None:
    """go-livepeer's LiveRunnerGPU for a replica given exactly one GPU: from NVML when it knows
    the device, else just the device id the replica was placed on."""
    gpus: list[GpuInfo] | None = worker.gpus
    if not gpus:
        request = worker.spec.gpus if worker.spec is not None else None
        if request is not None and len(request.device_ids) == 1:
            return {"id": request.device_ids[0]}
        return None
    if len(gpus) != 1:
        return None
    (gpu,) = gpus
    shown: dict[str, Any] = {"id": gpu.uuid or str(gpu.index)}
    if gpu.name:
        shown["name"] = gpu.name
    if gpu.memory_total_bytes:
        shown["vram_mb"] = gpu.memory_total_bytes // (1024 * 1024)
    return shown
