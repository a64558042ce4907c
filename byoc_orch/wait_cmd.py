"""`restart --wait` and `drain --wait`: return when what a person waits for has happened.

`restart NAME --wait` returns once every replica named is warm again — warm *since* the restart
(the daemon says when it took the restart, so the old container's WARM never counts) — exit 0,
or exit 3 at `--timeout` with each replica's state and reason. `drain NAME --wait` returns once
the replicas' sessions and pass-through requests have ended (exit 0) or `--timeout` passed
(exit 3, the sessions left named; they go on, as a drain lets them). Progress goes to stdout
one line per change, so a pipe or a log shows it too.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any, TextIO

from byoc_orch.console import DaemonClient, DaemonUnreachable, act_reply
from byoc_orch.exit_codes import EXIT_DEGRADED, EXIT_OK, EXIT_UNAVAILABLE
from byoc_orch.settings import Settings

POLL_SECONDS = 0.25


def restart_and_wait(
    settings: Settings, name: str, *, timeout: float | None, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    limit = settings.startup_timeout if timeout is None else timeout
    client = DaemonClient(settings)
    try:
        body, code = act_reply(client, "restart", name, out)
        if body is None:
            return code
        at = body.get("at")
        began = time.monotonic()
        since = datetime.fromisoformat(at) if at else None
        ids = list(body["workers"])
        shown: dict[str, tuple[str, str]] = {}
        while True:
            workers = {w["worker_id"]: w for w in client.json("/workers")}
            left = [i for i in ids if not _warm_again(workers.get(i), since)]
            for worker_id in ids:
                if worker_id in left or worker_id in shown:
                    _report(worker_id, workers.get(worker_id), shown, out)
            if not left:
                print(
                    f"warm again after {time.monotonic() - began:.1f} s: " + ", ".join(ids),
                    file=out,
                )
                return EXIT_OK
            if time.monotonic() - began >= limit:
                for worker_id in left:
                    state, reason = _state(workers.get(worker_id))
                    print(
                        f"byoc-orch: {worker_id} is not warm after {limit:g} s: {state}"
                        + (f" — {reason}" if reason else "")
                        + f" (byoc-orch status; byoc-orch logs {worker_id})",
                        file=sys.stderr,
                    )
                return EXIT_DEGRADED
            time.sleep(POLL_SECONDS)
    except DaemonUnreachable as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def drain_and_wait(
    settings: Settings, name: str, *, timeout: float | None, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    limit = settings.drain_timeout if timeout is None else timeout
    client = DaemonClient(settings)
    try:
        body, code = act_reply(client, "drain", name, out)
        if body is None:
            return code
        ids = set(body["workers"])
        began = time.monotonic()
        reported = -1
        while True:
            workers = [w for w in client.json("/workers") if w["worker_id"] in ids]
            in_use = sum(w["in_use"] for w in workers)
            if not in_use:
                print(
                    f"drained: no session or request left after "
                    f"{time.monotonic() - began:.1f} s",
                    file=out,
                )
                return EXIT_OK
            if time.monotonic() - began >= limit:
                sessions = [
                    s["id"]
                    for s in client.json("/sessions?include_ended=false")
                    if s["worker_id"] in ids
                ]
                print(
                    f"byoc-orch: drain timeout: {in_use} session(s)/request(s) still running "
                    f"after {limit:g} s"
                    + (": " + ", ".join(sessions[:10]) if sessions else "")
                    + " — they go on; `byoc-orch restart` ends them",
                    file=sys.stderr,
                )
                return EXIT_DEGRADED
            if in_use != reported:
                print(f"waiting for {in_use} session(s)/request(s) to end…", file=out)
                reported = in_use
            time.sleep(POLL_SECONDS)
    except DaemonUnreachable as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _warm_again(worker: dict[str, Any] | None, since: datetime | None) -> bool:
    if worker is None or worker["state"] != "warm":
        return False
    if since is None:
        return True
    return bool(worker.get("since")) and datetime.fromisoformat(worker["since"]) >= since


def _state(worker: dict[str, Any] | None) -> tuple[str, str]:
    if worker is None:
        return "gone", "no longer in /workers (removed by a reload?)"
    reason = worker.get("restart_cause") or worker.get("reason") or ""
    return str(worker["state"]), str(reason)


def _report(
    worker_id: str,
    worker: dict[str, Any] | None,
    shown: dict[str, tuple[str, str]],
    out: TextIO,
) -> None:
    """One line per change of state or reason (not the old container's WARM)."""
    now = _state(worker)
    if now[0] == "warm" and worker_id not in shown:
        return
    if shown.get(worker_id) != now:
        shown[worker_id] = now
        print(f"{worker_id}: {now[0]}" + (f" ({now[1]})" if now[1] else ""), file=out)
