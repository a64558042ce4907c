"""What systemd does for a `.socket` unit, for tests and benchmarks: hold a listening socket and
start `byoc-orch run` with it as fd 3, announced by LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


class SocketHolder:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(4096)
        self.port = port

    def spawn(
        self,
        env: dict[str, str],
        *,
        argv: list[str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """`byoc-orch run` (or `argv`) with the socket on fd 3; LISTEN_PID is the process's own
        pid because the launcher execs it."""
        fd = self.sock.fileno()
        command = argv or [sys.executable, "-m", "byoc_orch", "run"]
        launcher = (
            "import os, sys; "
            # The held socket may itself be fd 3 (a process with little open): then it stays.
            + ("" if fd == 3 else f"os.dup2({fd}, 3); os.close({fd}); ")
            + "os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execvp(sys.argv[1], sys.argv[1:])"
        )
        output = log.open("ab") if log is not None else subprocess.PIPE
        try:
            return subprocess.Popen(
                [sys.executable, "-c", launcher, *command],
                env={**env, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "byoc-orch.socket"},
                pass_fds=(fd,),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            if log is not None and not isinstance(output, int):
                output.close()

    def close(self) -> None:
        self.sock.close()


def environment_without_activation() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
