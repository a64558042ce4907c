"""systemd socket activation (sd_listen_fds(3)), without libsystemd: the listening sockets a
service manager passes from fd 3 on, announced by LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES.

With `byoc-orch.socket` the listening socket outlives the process: during a restart, calls wait
in the kernel's backlog instead of meeting a closed port, so an upgrade or a crash costs the
orchestrator no refused connection.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

FIRST_FD = 3
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


class ActivationError(Exception):
    """The passed descriptors cannot be served; the message says which and why."""


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    name: str

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def shown(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def inherited(environ: MutableMapping[str, str] | None = None) -> list[Listener]:
    """The listening TCP sockets passed to this process, [] when none were. The variables are
    removed from the environment, as sd_listen_fds(1) does, so no child inherits them."""
    env = os.environ if environ is None else environ
    pid, count, names = (env.pop(name, None) for name in VARIABLES)
    if pid is None or count is None:
        return []
    if not pid.isdigit() or int(pid) != os.getpid():
        return []  # meant for another process (a parent that did not clean up)
    if not count.isdigit() or int(count) == 0:
        raise ActivationError(f"LISTEN_FDS={count!r} names no socket")
    labels = (names or "").split(":")
    listeners = []
    for offset in range(int(count)):
        fd = FIRST_FD + offset
        label = labels[offset] if offset < len(labels) and labels[offset] else f"fd{fd}"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"fd {fd} ({label}) is not a socket: {exc.strerror}") from None
        if sock.type != socket.SOCK_STREAM or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            sock.detach()
            raise ActivationError(
                f"fd {fd} ({label}) is not a TCP socket: give the socket unit a ListenStream= "
                "with an address and port"
            )
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise ActivationError(f"fd {fd} ({label}) is not listening (use Accept=no)")
        sock.set_inheritable(False)
        listeners.append(Listener(sock, label))
    return listeners


def disagreement(listeners: list[Listener], host: str, port: int) -> str | None:
    """What to say when the passed sockets do not listen where BYOC_ORCH_HOST/PORT say; the
    sockets win (they are what clients already reach)."""
    want = host.strip("[]")
    for listener in listeners:
        got_host, got_port = listener.address
        if got_port == port and (got_host == want or want in ("0.0.0.0", "::")):
            return None
    shown = ", ".join(listener.shown() for listener in listeners)
    return (
        f"systemd passed a socket listening on {shown}, but BYOC_ORCH_HOST/BYOC_ORCH_PORT say "
        f"{host}:{port}: serving the socket's address (the socket unit's ListenStream= wins); "
        "make them agree — `byoc-orch status`, `reload` and the readiness URLs in "
        "BYOC_ORCH_PUBLIC_URL use BYOC_ORCH_HOST/PORT"
    )
