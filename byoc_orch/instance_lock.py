"""One daemon per instance id and Docker engine on a host.

Two daemons with the same BYOC_ORCH_INSTANCE against one engine would each take the other's
containers for their own: adopt, replace and remove them in turn. The lock is an abstract
unix socket bound for the daemon's lifetime: it needs no writable directory (the systemd unit
makes the file system read-only), and the kernel releases it when the process ends, however
it ends, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import hashlib
import socket


class InstanceLocked(Exception):
    """Another byoc-orch already runs this instance against this engine on this host."""


def acquire(instance: str, docker_host: str) -> socket.socket:
    """Hold the lock until the returned socket is closed (or the process exits)."""
    engine = hashlib.sha256(docker_host.encode()).hexdigest()[:16]
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        lock.bind(f"\0byoc-orch/{instance}/{engine}")
    except OSError as exc:
        lock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InstanceLocked(
                f"another byoc-orch already runs instance {instance!r} against {docker_host} "
                "on this host — stop it, or give this one its own BYOC_ORCH_INSTANCE"
            ) from None
        raise
    return lock
