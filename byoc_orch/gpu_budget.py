"""A per-GPU session budget shared by every entry whose replicas sit on that GPU
(BYOC_ORCH_GPU_SESSIONS), so a GPU is never promised twice (go-livepeer #4015: Live Runner
counts capacity per registration, never per GPU).

A replica placed on devices may take at most what is left of the budget of each of them, on
top of its own capacity: its *effective* capacity is min(capacity, in use + the least room on
its GPUs). Routing and both advertisers read that, so a session started on one entry lowers what
the others on its GPU offer, in /capabilities, at go-livepeer's BYOC registry and in Live
Runner heartbeats. Replicas not placed on named devices (gpus "all", a count Docker picks,
"none") are outside the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byoc_orch.worker import Worker


def devices_of(worker: Worker) -> tuple[str, ...]:
    spec = worker.spec
    return spec.gpus.device_ids if spec is not None and spec.gpus is not None else ()


class GpuBudget:
    def __init__(self, limit: int, workers: Callable[[], Iterable[Worker]]) -> None:
        self.limit = limit
        self._workers = workers

    def in_use(self, device: str) -> int:
        """Slots taken on `device` by every replica placed on it."""
        return sum(w.in_use for w in self._workers() if device in devices_of(w))

    def room_on(self, device: str) -> int:
        return max(self.limit - self.in_use(device), 0)

    def room(self, worker: Worker) -> int | None:
        """What the budget leaves for new work on `worker`, or None when it is outside it."""
        devices = devices_of(worker)
        if not devices:
            return None
        return min(self.room_on(d) for d in devices)

    def free_shares(self, workers: Iterable[Worker]) -> dict[str, int]:
        """Free slots each of an entry's replicas may advertise (by worker id): its own free
        slots, but over all of them no more on one GPU than the budget leaves there, so the
        entry never offers more than its GPUs can serve at once. Lower indexes first."""
        remaining: dict[str, int] = {}
        shares: dict[str, int] = {}
        for w in workers:
            free = max(w.entry.capacity - w.in_use, 0)
            devices = devices_of(w)
            for d in devices:
                free = min(free, remaining.setdefault(d, self.room_on(d)))
            for d in devices:
                remaining[d] -= free
            shares[w.worker_id] = free
        return shares

    def neighbours(self, worker: Worker) -> set[str]:
        """Entry ids of the other entries with a replica on one of `worker`'s GPUs."""
        mine = set(devices_of(worker))
        if not mine:
            return set()
        return {
            w.entry_id
            for w in self._workers()
            if w.entry_id != worker.entry_id and mine & set(devices_of(w))
        }

    def describe(self) -> dict[str, object]:
        devices = sorted({d for w in self._workers() for d in devices_of(w)})
        return {"sessions_per_gpu": self.limit, "in_use": {d: self.in_use(d) for d in devices}}
