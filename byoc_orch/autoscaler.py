"""Replica ranges at run time: reads each ranged entry's demand, asks `scaling` what to do and
does it through the entry's `Deployment` (start a replica on the GPUs chosen, take back or
drain one away). Every decision is logged with its reason and kept for /entries and status.

The GPU pool is derived, never bookkept: each look starts from the layout static entries
hold (`packing.PoolLayout`) and adds the devices every ranged replica's container has, those
being drained away included, so a replica's GPUs are free again exactly when it is gone.
Replica *i* listens on url port + *i* (the lowest index free is taken), and its devices are a
label on its container, so a restart adopts it where it was (`adoptable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from byoc_orch.aimodels import GpuRequest, ModelEntry
from byoc_orch.aimodels.packing import Claim, PoolLayout, PoolState
from byoc_orch.aimodels.placement import ReplicaSlot, replica_need
from byoc_orch.container_spec import (
    LABEL_ENTRY,
    LABEL_GPUS,
    LABEL_REPLICA,
    ContainerSpec,
    build_container_spec,
)
from byoc_orch.deployment import Deployment
from byoc_orch.engine import ContainerInfo
from byoc_orch.metrics import Metrics
from byoc_orch.scaling import Action, Decision, Demand, Scaler
from byoc_orch.worker import Worker
from byoc_orch.worker_state import State

log = structlog.get_logger("byoc_orch.autoscaler")

ARRIVAL_WINDOW = 10.0
"""Seconds over which the arrival rate of session starts (taken or refused) is measured: short,
so a burst raises the headroom while it is still beginning."""
ON_THE_WAY = frozenset({State.COLD, State.PULLING, State.STARTING})


def slot_for(entry: ModelEntry, index: int, devices: tuple[str, ...]) -> ReplicaSlot:
    """Replica `index` of a range: url port + index, on `devices` (none for gpus "none")."""
    assert entry.host_port is not None
    request = GpuRequest(count=None, device_ids=devices) if replica_need(entry).gpus else None
    return ReplicaSlot(index, entry.host_port + index, request)


def adoptable(
    entry: ModelEntry,
    instance: str,
    containers: Iterable[ContainerInfo],
    pool: PoolState,
) -> dict[int, ContainerSpec]:
    """The running containers of a ranged entry a restart can adopt as they are, by replica
    index: the spec rebuilt on the devices its label records must hash as the container does,
    and those devices must still have room (claimed in `pool`)."""
    replica_range = entry.replica_range
    assert replica_range is not None
    need = replica_need(entry)
    found: dict[int, ContainerSpec] = {}
    ours = [c for c in containers if c.labels.get(LABEL_ENTRY) == entry.worker_id and c.running]
    for container in sorted(ours, key=lambda c: c.labels.get(LABEL_REPLICA, "")):
        try:
            index = int(container.labels.get(LABEL_REPLICA, ""))
        except ValueError:
            continue
        if not 0 <= index < replica_range.max or index in found:
            continue
        devices = tuple(d for d in container.labels.get(LABEL_GPUS, "").split(",") if d)
        spec = build_container_spec(entry, instance, slot_for(entry, index, devices))
        if spec.spec_hash != container.spec_hash:
            continue
        if need.gpus and pool.claim(spec.worker_id, entry.worker_id, need, devices) is None:
            continue
        found[index] = spec
    return found


class Autoscaler:
    def __init__(
        self,
        *,
        deployments: Callable[[], Mapping[str, Deployment]],
        layout: PoolLayout,
        instance: str,
        metrics: Metrics,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.layout = layout
        self.scaler = Scaler()
        self._deployments = deployments
        self._instance = instance
        self._metrics = metrics
        self._interval = interval
        self._clock = clock
        self._wake = asyncio.Event()
        self._arrivals: dict[str, deque[tuple[float, int]]] = {}
        self._unmet_seen: dict[str, int] = {}
        self._refusing: dict[str, str] = {}
        """Entries whose last look ended in no_gpu, with its detail (logged once a spell)."""
        self.stopped = False

    # -- the pool -------------------------------------------------------------------------------

    def pool(self) -> PoolState:
        """The pool now: the static layout plus every ranged replica's devices."""
        pool = self.layout.state()
        for d in self._ranged():
            need = replica_need(d.entry)
            if not need.gpus:
                continue
            for spec in self._held_specs(d):
                for device in spec.gpus.device_ids if spec.gpus is not None else ():
                    pool.add(Claim(spec.worker_id, d.entry_id, device, need.vram_mb))
        return pool

    @staticmethod
    def _held_specs(d: Deployment) -> list[ContainerSpec]:
        specs = {s.worker_id: s for s in d.wanted_specs().values() if s is not None}
        for worker in d.workers.values():
            if worker.spec is not None:
                specs.setdefault(worker.spec.worker_id, worker.spec)
        return list(specs.values())

    def _ranged(self) -> list[Deployment]:
        return [d for d in self._deployments().values() if d.entry.ranged and d.entry.managed]

    # -- looking --------------------------------------------------------------------------------

    def nudge(self) -> None:
        """Look again now (a session start was refused, say), not at the next interval."""
        self._wake.set()

    async def run(self) -> None:
        while not self.stopped:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            if not self.stopped:
                self.step()

    def step(self) -> list[Decision]:
        """Look once: decide and act; returns what was decided."""
        now = self._clock()
        order = {entry_id: i for i, entry_id in enumerate(self._deployments())}
        active = [d for d in self._ranged() if d.entry.warm and not d.busy]
        demands = [self._demand(d, order[d.entry_id], now) for d in active]
        for d in active:
            self._unmet_seen[d.entry_id] = d.unmet
        decisions = self.scaler.step(now, demands, self.pool())
        by_id = {d.entry_id: d for d in active}
        refusing: dict[str, str] = {}
        for decision in decisions:
            d = by_id[decision.entry_id]
            if decision.action is Action.NO_GPU:
                refusing[d.entry_id] = decision.detail
            self._apply(d, decision, now)
        for d in active:
            d.pool_full = d.entry_id in refusing
            self._metrics.entry_replicas.labels(d.entry.pipeline, d.entry.model_id).set(
                len(d.wanted_specs())
            )
            self._metrics.entry_replicas_running.labels(d.entry.pipeline, d.entry.model_id).set(
                d.running()
            )
        self._refusing = refusing
        return decisions

    def _demand(self, d: Deployment, order: int, now: float) -> Demand:
        replica_range = d.entry.replica_range
        assert replica_range is not None
        kept = d.kept()
        return Demand(
            entry_id=d.entry_id,
            order=order,
            min=replica_range.min,
            max=replica_range.max,
            headroom=d.entry.headroom,
            capacity=d.entry.capacity,
            scale_down_after=d.entry.scale_down_after,
            replicas=len(d.wanted_specs()),
            starting=sum(w.status.state in ON_THE_WAY for w in kept),
            free=d.free_slots(),
            retiring=len(d.reclaimable()),
            need=replica_need(d.entry),
            arrival_rate=self._arrival_rate(d, now),
            cold_start=d.cold_start_median(),
            refused=d.unmet - self._unmet_seen.get(d.entry_id, 0),
        )

    def _arrival_rate(self, d: Deployment, now: float) -> float:
        """Starts per second over the last ARRIVAL_WINDOW (over the whole window even before
        it has passed, so a daemon just started does not read one start as a burst)."""
        seen = self._arrivals.setdefault(d.entry_id, deque())
        seen.append((now, d.starts_total()))
        while len(seen) > 2 and now - seen[1][0] >= ARRIVAL_WINDOW:
            seen.popleft()
        (_, before), (_, after) = seen[0], seen[-1]
        return (after - before) / ARRIVAL_WINDOW

    # -- acting ---------------------------------------------------------------------------------

    def _apply(self, d: Deployment, decision: Decision, now: float) -> None:
        entry = d.entry
        fields: dict[str, Any] = {
            "entry_id": d.entry_id,
            "model_id": entry.model_id,
            "action": str(decision.action),
            "reason": str(decision.reason),
            "detail": decision.detail,
        }
        if decision.action is Action.NO_GPU:
            if self._refusing.get(d.entry_id) is None:
                log.warning("replica wanted but the GPU pool has no room", **fields)
                self._count(d, decision)
            d.last_scale = {**decision.describe(), "at": now}
            return
        if decision.action is Action.UP:
            worker = self._start(d, decision.devices)
            fields.update(worker_id=worker.worker_id, devices=list(decision.devices) or None)
            log.info("replica started for demand", **fields)
        elif decision.action is Action.RECLAIM:
            taken = d.reclaim()
            if taken is None:
                return
            fields.update(worker_id=taken.worker_id)
            log.info("replica taken back from draining", **fields)
        else:
            chosen = _to_retire(d)
            if chosen is None:
                return
            d.scale_down(chosen)
            fields.update(worker_id=chosen.worker_id, sessions=chosen.in_use)
            log.info("replica draining away", **fields)
        self._count(d, decision)
        d.last_scale = {**decision.describe(), "at": now}

    def _count(self, d: Deployment, decision: Decision) -> None:
        self._metrics.scale_events.labels(
            d.entry.pipeline, d.entry.model_id, str(decision.action), str(decision.reason)
        ).inc()

    def _start(self, d: Deployment, devices: tuple[str, ...]) -> Worker:
        replica_range = d.entry.replica_range
        assert replica_range is not None
        taken = set(d.wanted_specs()) | set(d.workers)
        index = next(i for i in range(replica_range.max) if i not in taken)
        spec = build_container_spec(d.entry, self._instance, slot_for(d.entry, index, devices))
        return d.scale_up(index, spec)

    def forget(self, entry_id: str) -> None:
        self.scaler.forget(entry_id)
        self._arrivals.pop(entry_id, None)
        self._unmet_seen.pop(entry_id, None)
        self._refusing.pop(entry_id, None)


def _to_retire(d: Deployment) -> Worker | None:
    """The replica to drain away: above max first, then one that is not taking sessions, then
    the one with the fewest in use, the highest index last in."""
    kept = d.kept()
    if not kept:
        return None
    top = d.bounds[1]
    return min(kept, key=lambda w: (w.replica < top, w.routable, w.in_use, -w.replica))
