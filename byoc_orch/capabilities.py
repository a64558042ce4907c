"""The capability registry: the set of warm `pipeline/model_id` capabilities.

One capability per aiModels.json entry, warm while at least one of its replicas is warm and
taking sessions; its capacity is the sum over those replicas. Entries report every change of
their replicas here synchronously, so a capability (or a replica's share of it) leaves the set in
the same loop iteration as the event that withdrew it; advertisers subscribe to the changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from byoc_orch.offer import Offer

log = structlog.get_logger("byoc_orch.capabilities")


@dataclass(frozen=True)
class ReplicaShare:
    """One warm replica taking sessions: what Live Runner advertises per replica."""

    worker_id: str
    index: int
    url: str
    capacity: int
    in_use: int = 0
    gpu: dict[str, Any] | None = None
    """go-livepeer's LiveRunnerGPU shape (`id`, `name`, `vram_mb`) when the replica has one GPU."""
    session_ids: tuple[str, ...] = ()
    draining: bool = False
    """Takes no new sessions but still holds some (Live Runner's view only): its capacity is
    the sessions it holds, so the orchestrator reserves nothing more on it."""

    @property
    def free(self) -> int:
        return max(self.capacity - self.in_use, 0)


@dataclass(frozen=True)
class Capability:
    """One warm capability as it is advertised: an entry and its warm replicas."""

    entry_id: str
    pipeline: str
    model_id: str
    url: str
    capacity: int
    offer: Offer = field(default_factory=Offer)
    warm_since: float = 0.0
    in_use: int = 0
    replicas: tuple[ReplicaShare, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.pipeline}/{self.model_id}"

    def shares(self) -> tuple[ReplicaShare, ...]:
        """Its warm replicas; a capability built without them stands for one replica."""
        if self.replicas:
            return self.replicas
        return (ReplicaShare(self.entry_id, 0, self.url, self.capacity, self.in_use),)

    @property
    def free(self) -> int:
        """Session slots still open over its warm replicas."""
        return max(self.capacity - self.in_use, 0)

    def as_aimodels_entry(self, *, with_free: bool = False) -> dict[str, Any]:
        """The entry in go-livepeer's aiModels.json shape, pointing at byoc-orch; `with_free`
        adds `free_capacity` (go-livepeer ignores unknown keys)."""
        entry: dict[str, Any] = {
            "pipeline": self.pipeline,
            "model_id": self.model_id,
            "url": self.url,
            "warm": True,
            "capacity": self.capacity,
        }
        if with_free:
            entry["free_capacity"] = self.free
        return {**entry, **self.offer.aimodels_fields()}


@dataclass(frozen=True)
class Change:
    """What changed in the warm set. A capability whose details changed while it stayed warm
    (its free slots, say) appears in both `removed` (old) and `added` (new)."""

    added: tuple[Capability, ...] = ()
    removed: tuple[Capability, ...] = ()

    @property
    def withdrawn(self) -> tuple[Capability, ...]:
        """Capabilities that left the warm set."""
        kept = {c.entry_id for c in self.added}
        return tuple(c for c in self.removed if c.entry_id not in kept)

    @property
    def appeared(self) -> tuple[Capability, ...]:
        """Capabilities that joined the warm set."""
        known = {c.entry_id for c in self.removed}
        return tuple(c for c in self.added if c.entry_id not in known)


Subscriber = Callable[[Change], None]


class CapabilityRegistry:
    def __init__(self) -> None:
        self._warm: dict[str, Capability] = {}
        self._subscribers: list[Subscriber] = []

    def warm(self) -> list[Capability]:
        return sorted(self._warm.values(), key=lambda c: c.name)

    def __len__(self) -> int:
        return len(self._warm)

    def is_warm(self, entry_id: str) -> bool:
        return entry_id in self._warm

    def get(self, entry_id: str) -> Capability | None:
        return self._warm.get(entry_id)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` on every change; returns the function that unsubscribes."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    def set_warm(self, capability: Capability) -> None:
        if self._warm.get(capability.entry_id) == capability:
            return
        previous = self._warm.get(capability.entry_id)
        self._warm[capability.entry_id] = capability
        self._notify(Change(added=(capability,), removed=(previous,) if previous else ()))

    def withdraw(self, entry_id: str) -> None:
        removed = self._warm.pop(entry_id, None)
        if removed is not None:
            self._notify(Change(removed=(removed,)))

    def withdraw_all(self) -> None:
        removed, self._warm = tuple(self._warm.values()), {}
        if removed:
            self._notify(Change(removed=removed))

    def _notify(self, change: Change) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(change)
            except Exception:
                log.exception("capability subscriber failed")
