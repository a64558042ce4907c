"""Many cheap external workers in one process: `python -m tests.bench.farm COUNT`.

Listens on COUNT loopback ports (chosen by the kernel) and answers `GET /health` with
`{"status":"IDLE"}` over keep-alive HTTP/1.1, as a warm pytrickle worker would. It runs apart
from byoc-orch so that the scale benchmark's /proc figures are the daemon's alone. Prints the
ports as one JSON line, then serves until SIGTERM. `GET /_count` on any port answers how many
health requests all ports have served, so the benchmark can check the probe rate.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

HEALTH = b'{"status":"IDLE"}'


class _Counter:
    health = 0


def _response(body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class HealthProtocol(asyncio.Protocol):
    """Just enough HTTP/1.1: bodiless requests, pipelining tolerated, keep-alive."""

    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
            if target.startswith(b"/_count"):
                self._transport.write(_response(json.dumps({"health": _Counter.health}).encode()))
            else:
                _Counter.health += 1
                self._transport.write(_response(HEALTH))


async def serve(count: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(HealthProtocol, "127.0.0.1", 0, backlog=64) for _ in range(count)
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    sys.stdout.write(json.dumps(ports) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
