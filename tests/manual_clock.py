"""A clock a test moves by hand, for code that takes a `clock` callable.

It also counts how often the code under test read it since it last moved, so a test can wait
until that code has looked at the new time (a pass of a loop that reads the clock once on
entry and once when it computes its next sleep) instead of sleeping and hoping.
"""

from __future__ import annotations

import asyncio


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.reads = 0
        """Reads since the last `advance`."""
        self._was_read = asyncio.Event()

    def __call__(self) -> float:
        self.reads += 1
        self._was_read.set()
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.reads = 0

    async def read(self, times: int = 1, within: float = 5.0) -> None:
        """Wait until the clock has been read `times` times since it last moved."""
        async with asyncio.timeout(within):
            while self.reads < times:
                self._was_read.clear()
                await self._was_read.wait()
