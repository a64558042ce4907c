"""Replica ranges follow demand: which entry gets a replica more, which one fewer, and why.
Pure: each step is handed the time, every entry's demand and the pool; the caller starts and
drains containers.

The rules (README "Using all your GPUs" tells them to operators):

- **Up.** An entry below its ``min`` gets replicas at once (``below_min``). An entry whose free
  warm slots, counting the slots of replicas still starting, fall below its headroom gets one
  more replica (``headroom``) while it is under ``max`` and the pool has room. The headroom it
  keeps is the configured one plus the sessions expected to arrive while a replica starts (the
  recent arrival rate of starts, taken or refused, × the measured cold start, rounded), so
  the configured headroom is still there when the replica started for it is warm; a start
  refused as full wants one more slot even with headroom 0. A replica
  being drained away is taken back first: it is warm already.
- **The last GPU.** Entries wanting a replica are served one replica at a time: below-min
  entries first, then the one with the least free headroom (free slots minus the headroom it
  wants), then file order. One that does not fit gets ``no_gpu``; others whose replicas need
  less may still fit.
- **Down.** An entry with at least headroom + one replica's capacity free (so the headroom
  holds without that replica), nothing starting, and more than ``min`` replicas, retires one
  once that has lasted ``scale_down_after`` seconds (``idle``), and one more at each later look
  while it still holds without the replicas already draining away: a spell of idleness ends in
  one go, but never takes the headroom with it. An
  entry above its ``max`` (a reload lowered it) retires at once (``above_max``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from byoc_orch.aimodels.packing import Need, PoolState


class Action(StrEnum):
    UP = "up"
    """Start a replica on the devices given."""
    RECLAIM = "reclaim"
    """Take back a replica being drained away."""
    DOWN = "down"
    """Drain one replica and remove it once empty."""
    NO_GPU = "no_gpu"
    """A replica is wanted but the pool has no room for it."""


class Reason(StrEnum):
    BELOW_MIN = "below_min"
    HEADROOM = "headroom"
    IDLE = "idle"
    ABOVE_MAX = "above_max"


@dataclass(frozen=True, slots=True)
class Demand:
    """One ranged entry as the scaler sees it now."""

    entry_id: str
    order: int
    """Its position in aiModels.json: the last tie-break."""
    min: int
    max: int
    headroom: int
    capacity: int
    """Sessions one replica takes."""
    scale_down_after: float
    replicas: int
    """Replicas it means to keep (starting, warm or failing; not those being drained away)."""
    starting: int
    """Of those, the ones on their way to warm (pulling, starting)."""
    free: int
    """Free session slots on its warm replicas that take sessions."""
    retiring: int = 0
    """Replicas being drained away, which a rise in demand takes back."""
    need: Need = field(default_factory=Need)
    arrival_rate: float = 0.0
    """Session starts per second, lately."""
    cold_start: float | None = None
    """Median seconds from container start to warm, when measured."""
    refused: int = 0
    """Session starts refused as full since the last look."""

    def wanted_headroom(self) -> int:
        """The configured headroom plus what arrives while a replica starts (at least one slot
        once a start was refused for want of one, even with headroom 0); never more than
        ``max`` replicas could hold."""
        expected = 0
        if self.cold_start is not None and self.arrival_rate > 0:
            expected = math.floor(self.arrival_rate * self.cold_start + 0.5)
        wanted = max(self.headroom + expected, 1 if self.refused else 0)
        return min(wanted, self.max * self.capacity)

    def expected_free(self) -> int:
        return self.free + self.starting * self.capacity


@dataclass(frozen=True, slots=True)
class Decision:
    entry_id: str
    action: Action
    reason: Reason
    detail: str
    devices: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        return {
            "action": str(self.action),
            "reason": str(self.reason),
            "detail": self.detail,
            "devices": list(self.devices),
        }


class Scaler:
    """Decides each step; remembers only since when each entry has had a surplus."""

    def __init__(self) -> None:
        self._surplus_since: dict[str, float] = {}

    def forget(self, entry_id: str) -> None:
        self._surplus_since.pop(entry_id, None)

    def surplus_since(self, entry_id: str) -> float | None:
        return self._surplus_since.get(entry_id)

    def step(self, now: float, demands: Sequence[Demand], pool: PoolState) -> list[Decision]:
        """This step's decisions, in the order to apply them. ``pool`` is not changed: the
        devices of each ``up`` were free in it when decided, in the order given."""
        room = pool.copy()
        decisions: list[Decision] = []
        grown: dict[str, int] = {d.entry_id: 0 for d in demands}
        for d in demands:
            if d.replicas > d.max:
                decisions += [
                    Decision(
                        d.entry_id,
                        Action.DOWN,
                        Reason.ABOVE_MAX,
                        f"{d.replicas} replicas, max {d.max}",
                    )
                ] * (d.replicas - d.max)
        decisions += self._grow(demands, room, grown)
        for d in demands:
            if grown[d.entry_id] or d.replicas > d.max:
                self._surplus_since.pop(d.entry_id, None)
                continue
            down = self._shrink(now, d)
            if down is not None:
                decisions.append(down)
        return decisions

    def _grow(
        self, demands: Sequence[Demand], room: PoolState, grown: dict[str, int]
    ) -> list[Decision]:
        decisions: list[Decision] = []
        reclaimed: dict[str, int] = {d.entry_id: 0 for d in demands}
        refused: set[str] = set()
        while True:
            wanting = [
                d for d in demands if d.entry_id not in refused and _wants(d, grown[d.entry_id])
            ]
            if not wanting:
                return decisions
            d = min(wanting, key=lambda d: _priority(d, grown[d.entry_id]))
            below_min = d.replicas + grown[d.entry_id] < d.min
            reason = Reason.BELOW_MIN if below_min else Reason.HEADROOM
            detail = _why(d, grown[d.entry_id])
            if reclaimed[d.entry_id] < d.retiring:
                reclaimed[d.entry_id] += 1
                grown[d.entry_id] += 1
                decisions.append(Decision(d.entry_id, Action.RECLAIM, reason, detail))
                continue
            holder = f"{d.entry_id}-scaling-{grown[d.entry_id]}"
            devices = room.claim(holder, d.entry_id, d.need)
            if devices is None:
                refused.add(d.entry_id)
                decisions.append(
                    Decision(
                        d.entry_id,
                        Action.NO_GPU,
                        reason,
                        f"{detail}; no room for {d.need.shown()} ({room.free_text()})",
                    )
                )
                continue
            grown[d.entry_id] += 1
            decisions.append(Decision(d.entry_id, Action.UP, reason, detail, devices))

    def _shrink(self, now: float, d: Demand) -> Decision | None:
        surplus = (
            d.replicas > d.min and d.starting == 0 and d.free >= d.wanted_headroom() + d.capacity
        )
        if not surplus:
            self._surplus_since.pop(d.entry_id, None)
            return None
        since = self._surplus_since.setdefault(d.entry_id, now)
        if now - since < d.scale_down_after:
            return None
        return Decision(
            d.entry_id,
            Action.DOWN,
            Reason.IDLE,
            f"{d.free} free warm slots for {now - since:.0f} s, headroom {d.wanted_headroom()} "
            f"+ one replica's {d.capacity}; {d.replicas} replicas, min {d.min}",
        )


def _wants(d: Demand, grown: int) -> bool:
    replicas = d.replicas + grown
    if replicas < d.min:
        return True
    if replicas >= d.max:
        return False
    return d.expected_free() + grown * d.capacity < d.wanted_headroom()


def _priority(d: Demand, grown: int) -> tuple[int, int, int]:
    below_min = d.replicas + grown < d.min
    short = d.expected_free() + grown * d.capacity - d.wanted_headroom()
    return (0 if below_min else 1, short, d.order)


def _why(d: Demand, grown: int) -> str:
    replicas = d.replicas + grown
    if replicas < d.min:
        return f"{replicas} replicas, min {d.min}"
    free = d.expected_free() + grown * d.capacity
    starting = f", {d.starting} starting" if d.starting else ""
    return (
        f"{free} free warm slots < headroom {d.wanted_headroom()} "
        f"({replicas} replicas{starting}, max {d.max})"
    )
