"""A byte-forwarding proxy in front of dockerd's socket that a test can cut.

Cutting the real connection is how the event stream's reconnect is exercised without
restarting the shared dockerd: the engine adapter sees exactly what it sees when dockerd
restarts (the stream ends, then connections are refused until it comes back).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path


class UnixProxy:
    def __init__(self, listen: Path, upstream: str) -> None:
        self.listen = listen
        self._upstream = upstream
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.held = 0
        """Requests waiting in the stalled proxy now: one per blocked Docker call, since a
        connection carries one request at a time."""

    @property
    def stalled(self) -> bool:
        """While set, connections are accepted and requests read, but none is forwarded, on
        new connections or kept-alive ones: a Docker API that hangs. Cleared, the requests held
        go on."""
        return not self._flowing.is_set()

    @stalled.setter
    def stalled(self, stalled: bool) -> None:
        if stalled:
            self._flowing.clear()
        else:
            self._flowing.set()

    @property
    def docker_host(self) -> str:
        return f"unix://{self.listen}"

    async def start(self) -> None:
        self.listen.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.listen))

    async def cut(self) -> None:
        """Drop every open connection and refuse new ones until `start` is called again."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        self.listen.unlink(missing_ok=True)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_unix_connection(self._upstream)
        self._writers.update((client_w, upstream_w))
        await asyncio.gather(
            self._pipe(client_r, upstream_w, holding=True),
            self._pipe(upstream_r, client_w),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, holding: bool = False
    ) -> None:
        """Copy bytes; `holding`: the requests' direction, held while stalled."""
        try:
            while data := await reader.read(65536):
                if holding and self.stalled:
                    self.held += 1
                    try:
                        await self._flowing.wait()
                    finally:
                        self.held -= 1
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
