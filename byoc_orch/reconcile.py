"""Reconcile decisions, pure: at start-up, which of our containers to adopt, replace or
remove; on reload, which workers to add, remove, replace or update in place.

A running container whose spec hash matches what its entry wants is adopted as it is (no cold
start); one whose spec changed, or that is not running, is replaced; ours that no warm entry
wants are removed. More than one container for a worker keeps at most the adopted one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class ContainerLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def worker_id(self) -> str: ...
    @property
    def spec_hash(self) -> str: ...
    @property
    def running(self) -> bool: ...


@dataclass(frozen=True)
class Plan:
    adopt: dict[str, str] = field(default_factory=dict)  # worker_id -> container id
    launch: tuple[str, ...] = ()  # worker ids to start fresh
    remove: tuple[str, ...] = ()  # container ids


def plan(wanted: Mapping[str, str], existing: Iterable[ContainerLike]) -> Plan:
    """`wanted` maps each worker that should run to its spec hash."""
    adopt: dict[str, str] = {}
    remove: list[str] = []
    for container in existing:
        want_hash = wanted.get(container.worker_id)
        if (
            want_hash is not None
            and container.running
            and container.spec_hash == want_hash
            and container.worker_id not in adopt
        ):
            adopt[container.worker_id] = container.id
        else:
            remove.append(container.id)
    launch = tuple(worker for worker in wanted if worker not in adopt)
    return Plan(adopt=adopt, launch=launch, remove=tuple(remove))


@dataclass(frozen=True)
class Running:
    """What the daemon runs for one worker, as far as a reload is concerned."""

    entry: object  # compared by value
    spec_hash: object  # what its containers are, compared by value; None: external worker
    warm: bool


@dataclass(frozen=True)
class ReloadPlan:
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()  # the container (or kind of worker) must change
    update: tuple[str, ...] = ()  # only what byoc-orch advertises changed: no restart
    keep: tuple[str, ...] = ()
    scale: tuple[str, ...] = ()
    """Only the number of replicas changed: the replicas both counts share stay as they are,
    the extra ones start (scale up) or drain and stop (scale down)."""
    changes: Mapping[str, Sequence[Mapping[str, str]]] = field(default_factory=dict)
    """Per changed entry, each field that changes (entry_diff.py), when the caller knows."""

    @property
    def changed(self) -> bool:
        return bool(self.add or self.remove or self.replace or self.update or self.scale)

    @property
    def reconfigured(self) -> tuple[str, ...]:
        """Entries whose containers (or their number) change."""
        return self.replace + self.scale

    def summary(self) -> dict[str, list[str]]:
        return {
            "added": list(self.add),
            "removed": list(self.remove),
            "replaced": list(self.replace),
            "scaled": list(self.scale),
            "updated": list(self.update),
            "unchanged": list(self.keep),
        }

    def report(self) -> dict[str, Any]:
        """summary() with the field changes and each scaled entry's replica counts."""
        return {**self.summary(), "changes": {k: list(v) for k, v in self.changes.items()}}


def plan_reload(current: Mapping[str, Running], wanted: Mapping[str, Running]) -> ReloadPlan:
    """Apply only the difference: untouched entries keep their containers and sessions, and
    a change that leaves the container as it is (price, capacity, health path, token) is
    applied in place rather than by a restart."""
    add, remove, replace, update, keep, scale = [], [], [], [], [], []
    for worker_id, new in wanted.items():
        old = current.get(worker_id)
        if old is None:
            add.append(worker_id)
        elif old.entry == new.entry:
            keep.append(worker_id)
        elif old.spec_hash == new.spec_hash and old.warm == new.warm:
            update.append(worker_id)
        elif _only_scaled(old, new):
            scale.append(worker_id)
        else:
            replace.append(worker_id)
    remove = [worker_id for worker_id in current if worker_id not in wanted]
    return ReloadPlan(
        tuple(add), tuple(remove), tuple(replace), tuple(update), tuple(keep), tuple(scale)
    )


def _only_scaled(old: Running, new: Running) -> bool:
    """The replica count changed and every replica both have keeps its container."""
    if old.warm != new.warm or not (
        isinstance(old.spec_hash, tuple) and isinstance(new.spec_hash, tuple)
    ):
        return False
    before, after = dict(old.spec_hash), dict(new.spec_hash)
    shared = before.keys() & after.keys()
    return len(before) != len(after) and bool(shared) and all(before[i] == after[i] for i in shared)
