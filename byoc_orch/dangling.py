"""Containers of this instance that no worker follows, found by sweeps and removed.

Shaped like nomad's docker driver's containerReconciler: handed the few calls it needs (list,
remove, what is tracked, what is being created, a clock) rather than the daemon, so the decision
is testable without Docker. A container is removed once it has been seen untracked twice
`grace` seconds apart: one whose create has just returned is not yet taken in by its worker.
Only what `list_containers` returns is looked at, and the engine lists this instance's
containers only: another daemon's, or an operator's own, are never swept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog

from byoc_orch.engine import ContainerInfo, EngineError

# The daemon's logger: these lines were the daemon's and operators' filters know them so.
log = structlog.get_logger("byoc_orch.daemon")

DANGLING_GRACE = 5.0
"""Seconds an untracked container of ours is left alone before it is removed as dangling."""


class DanglingSweeper:
    def __init__(
        self,
        list_containers: Callable[[], Awaitable[Sequence[ContainerInfo]]],
        remove: Callable[[str], Awaitable[None]],
        *,
        tracked: Callable[[], Iterable[str | None]],
        creating: Callable[[], Iterable[str]],
        clock: Callable[[], float],
        grace: float = DANGLING_GRACE,
        enabled: Callable[[], bool] = lambda: True,
    ) -> None:
        """`tracked`: the container ids workers follow; `creating`: the worker ids creating a
        container right now; `enabled`: whether Docker is in use at all (a daemon with only
        external entries never asks it)."""
        self._list = list_containers
        self._remove = remove
        self._tracked = tracked
        self._creating = creating
        self._clock = clock
        self.grace = grace
        self._enabled = enabled
        self._untracked: dict[str, float] = {}
        """Container id → when it was first seen untracked."""

    async def sweep(self) -> list[str]:
        """Look once; returns the ids removed."""
        if not self._enabled():
            return []
        try:
            containers = await self._list()
        except EngineError as exc:
            log.warning("could not list containers to find dangling ones", error=str(exc))
            return []
        tracked = set(self._tracked())
        creating = set(self._creating())
        now = self._clock()
        seen, self._untracked = self._untracked, {}
        removed = []
        for container in containers:
            if container.id in tracked or container.worker_id in creating:
                continue
            first = seen.get(container.id, now)
            if now - first < self.grace:
                self._untracked[container.id] = first
                continue
            log.warning(
                "removing a container of this instance that nothing tracks",
                container_id=container.id[:12],
                container=container.name,
                worker_id=container.worker_id or None,
            )
            try:
                await self._remove(container.id)
                removed.append(container.id)
            except EngineError as exc:
                log.warning(
                    "could not remove container", container_id=container.id[:12], error=str(exc)
                )
        return removed

    async def every(self, interval: float) -> None:
        """Sweep every `interval` seconds, for ever."""
        while True:
            await asyncio.sleep(interval)
            await self.sweep()

    async def now_and_after_grace(self) -> None:
        """After a reload: look now, and again once the grace has passed."""
        await self.sweep()
        await asyncio.sleep(self.grace)
        await self.sweep()
