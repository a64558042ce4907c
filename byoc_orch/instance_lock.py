"""One daemon per instance id and Docker engine on a host.

Two daemons with the same BYOC_ORCH_INSTANCE against one engine would each take the other's
containers for their own: adopt, replace and remove them in turn. The lock is an abstract
unix socket bound for the daemon's lifetime: it needs no writable directory (the systemd unit
makes the file system read-only), and the kernel releases it when the process ends, however
it ends, so a crash never leaves a stale lock behind.

The engine is named by what it is, not by how it is written: its unix socket with symlinks
resolved (`/var/run/docker.sock` and `/run/docker.sock` are one engine), and, when the engine
answers, its own ID from `docker info` (the same engine reached over TCP, or through another
path). A daemon holds a lock on each name it has.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
from urllib.parse import urlsplit


class InstanceLocked(Exception):
    """Another byoc-orch already runs this instance against this engine on this host."""


class Lock:
    """Held until `close()` (or the process exits)."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []


def engine_names(docker_host: str, engine_id: str | None = None) -> list[str]:
    """Every name of one engine: its endpoint (a unix socket's real path), and its ID."""
    names = [_endpoint(docker_host)]
    if engine_id:
        names.append(f"id:{engine_id}")
    return names


def acquire(instance: str, docker_host: str, engine_id: str | None = None) -> Lock:
    """Hold the lock on every name of the engine; InstanceLocked if another daemon of this
    instance holds one of them."""
    held: list[socket.socket] = []
    try:
        for name in engine_names(docker_host, engine_id):
            held.append(_bind(instance, name, docker_host))
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return Lock(held)


def _endpoint(docker_host: str) -> str:
    parts = urlsplit(docker_host)
    if parts.scheme in ("unix", "") and parts.path:
        with contextlib.suppress(OSError):
            return "unix:" + os.path.realpath(parts.path)
        return "unix:" + os.path.normpath(parts.path)
    return docker_host


def _bind(instance: str, name: str, docker_host: str) -> socket.socket:
    key = hashlib.sha256(name.encode()).hexdigest()[:16]
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        lock.bind(f"\0byoc-orch/{instance}/{key}")
    except OSError as exc:
        lock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InstanceLocked(
                f"another byoc-orch already runs instance {instance!r} against this Docker "
                f"engine ({docker_host}) on this host — stop it, or give this one its own "
                "BYOC_ORCH_INSTANCE"
            ) from None
        raise
    return lock
