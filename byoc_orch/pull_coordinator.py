"""Share one in-flight image pull among every caller that wants the same image.

Eight aiModels.json entries on one image must cost one pull, not eight racing ones; a caller
that gives up (is cancelled) must not cancel the pull the others are waiting on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Shared(Generic[T]):
    """A pull's result, and whether this caller joined a pull another caller started."""

    value: T
    joined: bool


class PullCoordinator(Generic[T]):
    """Runs at most one pull per key (the image's canonical reference) at a time."""

    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Future[T]] = {}
        self.pulls_started = 0

    def in_flight(self) -> list[str]:
        return sorted(self._in_flight)

    async def pull(self, key: str, start: Callable[[], Awaitable[T]]) -> Shared[T]:
        """Await the pull of `key` already in flight, or call `start` to begin one."""
        future = self._in_flight.get(key)
        joined = future is not None
        if future is None:
            self.pulls_started += 1
            future = asyncio.ensure_future(start())
            self._in_flight[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        return Shared(await asyncio.shield(future), joined)

    def _finished(self, key: str, future: asyncio.Future[T]) -> None:
        self._in_flight.pop(key, None)
        if not future.cancelled():
            future.exception()  # every waiter may have been cancelled; don't warn about it
