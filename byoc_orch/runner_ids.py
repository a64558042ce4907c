"""The Live Runner id byoc-orch proposes for each replica: the same across restarts of byoc-orch,
different on every host, instance and replica.

Both registries take a proposed `runner_id` as is when they do not know it (go-livepeer
`Heartbeat`; livepeer/node `validRouteID`: `[A-Za-z0-9_-]`, at most 128 bytes), so a replica keeps
its runner — and the URL clients reserve sessions at — across a restart, and a state file lost
between two starts costs at most one TTL: the old runner, whose heartbeat secret is gone,
expires and its id is taken again.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path

MAX_RUNNER_ID = 128
MACHINE_ID = Path("/etc/machine-id")
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]+")


def host_id(machine_id: Path = MACHINE_ID) -> str:
    """Eight hex digits naming this host: from systemd's machine id, else the host name."""
    try:
        seed = machine_id.read_text().strip()
    except OSError:
        seed = ""
    return hashlib.sha256((seed or socket.gethostname()).encode()).hexdigest()[:8]


def runner_id(host: str, instance: str, worker_id: str) -> str:
    """`byoc-<host>-<instance>-<worker id>`, made route-safe; a hash keeps it unique when it
    must be shortened to 128 bytes."""
    raw = f"byoc-{host}-{instance}-{worker_id}"
    safe = _NOT_ALLOWED.sub("_", raw)
    if len(safe) <= MAX_RUNNER_ID and safe == raw:
        return safe
    digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
    return f"{safe[: MAX_RUNNER_ID - len(digest) - 1]}-{digest}"
