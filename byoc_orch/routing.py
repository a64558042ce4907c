"""Which replica takes a call: pure decisions over the replicas' states and slots.

A session start (and a batch request) goes to a warm replica that is not draining and has a free
slot: the least loaded, then the lowest index, so load spreads evenly and the choice is
repeatable. Calls about an existing session go to the replica holding it. Forwarding the bytes
is the proxy's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class RefusalReason(StrEnum):
    """Why byoc-orch turns a call down itself (a bounded metrics label)."""

    NOT_WARM = "not_warm"
    FULL = "full"


@dataclass(frozen=True)
class ReplicaLoad:
    """What routing needs to know about one replica."""

    worker_id: str
    index: int
    routable: bool
    """Warm and not draining: it may take new work."""
    in_use: int
    capacity: int

    @property
    def free(self) -> int:
        return max(self.capacity - self.in_use, 0)


@dataclass(frozen=True)
class Refusal:
    reason: RefusalReason
    routable: int
    """Replicas that could take work if they had room."""
    in_use: int
    capacity: int
    """Slots over the routable replicas."""


def choose(replicas: Sequence[ReplicaLoad]) -> ReplicaLoad | Refusal:
    """The replica for new work: routable, with a free slot, least loaded, lowest index."""
    routable = [r for r in replicas if r.routable]
    in_use = sum(r.in_use for r in routable)
    capacity = sum(r.capacity for r in routable)
    open_ = [r for r in routable if r.free > 0]
    if not open_:
        reason = RefusalReason.FULL if routable else RefusalReason.NOT_WARM
        return Refusal(reason, len(routable), in_use, capacity)
    return min(open_, key=lambda r: (r.in_use, r.index))
