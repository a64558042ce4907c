"""Start-up reconcile: which of our containers to adopt, replace or remove. Pure.

A running container whose spec hash matches what its entry wants is adopted as it is (no cold
start); one whose spec changed, or that is not running, is replaced; ours that no warm entry
wants are removed. More than one container for a worker keeps at most the adopted one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


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
