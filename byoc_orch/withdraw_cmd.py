"""`byoc-orch withdraw`: take a host out of service without cutting a session.

Every replica drains (no new sessions or requests; BYOC capabilities and idle Live Runner
runners leave the orchestrator at once, runners still holding sessions stay registered and
`ready` until their last session ends, so the orchestrator releases nothing that is running).
`--wait` returns when every session has ended (exit 0) or `--timeout` passed (exit 3, the
sessions left named); `--stop` then stops the daemon; `--cancel` puts the host back in service.
The withdrawal is kept across restarts until cancelled.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from byoc_orch.console import DaemonClient, DaemonUnreachable
from byoc_orch.exit_codes import EXIT_DEGRADED, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE
from byoc_orch.settings import Settings

POLL_SECONDS = 0.5


def withdraw(
    settings: Settings,
    *,
    wait: bool,
    timeout: float,
    stop: bool,
    cancel: bool,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    client = DaemonClient(settings)
    try:
        reply = client.call("POST", "/withdraw" + ("?cancel=true" if cancel else ""))
        if reply.status_code != 202:
            print(f"byoc-orch: withdraw refused: {reply.text}", file=sys.stderr)
            return EXIT_INVALID
        body = reply.json()
        if cancel:
            print(f"back in service: {len(body['workers'])} replicas take sessions", file=out)
            return EXIT_OK
        print(
            f"withdrawn: {len(body['workers'])} replicas take no new sessions; "
            f"{body['sessions']} running session(s) go on",
            file=out,
        )
        if not (wait or stop):
            return EXIT_OK
        left = _wait_for_sessions(client, timeout, out)
        if left:
            print(
                f"byoc-orch: {len(left)} session(s) still running after {timeout:g} s: "
                + ", ".join(left[:10]),
                file=sys.stderr,
            )
            if not stop:
                return EXIT_DEGRADED
        if stop:
            client.call("POST", "/shutdown")
            print(
                "byoc-orch is stopping (with socket activation, stop byoc-orch.socket too, or "
                "the next connection starts it again)",
                file=out,
            )
        return EXIT_DEGRADED if left else EXIT_OK
    except DaemonUnreachable as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _wait_for_sessions(client: DaemonClient, timeout: float, out: TextIO) -> list[str]:
    """The sessions still live once they all ended or `timeout` passed."""
    deadline = time.monotonic() + timeout
    reported = -1
    while True:
        live = [s["id"] for s in client.json("/sessions?include_ended=false")]
        if not live or time.monotonic() >= deadline:
            return live
        if len(live) != reported:
            print(f"waiting for {len(live)} session(s) to end…", file=out)
            reported = len(live)
        time.sleep(POLL_SECONDS)
