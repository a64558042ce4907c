"""`byoc-orch status --watch`: keep looking, show what changed.

On a terminal the view is redrawn in place (cursor home, each line cleared to its end, the
rest of the screen cleared once: no blank frame between two, so no flicker), each time what it
shows changes — the ages in SINCE included. To a pipe or a file a new block, headed by the time,
is printed only when what it shows changed other than by time passing (an age, the next
retry's countdown), with no terminal codes at all, so `status --watch | tee` or a log keeps
one block per change. With `--json` each change is one JSON line (a probe's latency and
timestamps left out of the comparison). Ctrl-C ends it with the exit code the last view had.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from byoc_orch.console import (
    DaemonClient,
    DaemonUnreachable,
    fetch_status,
    render_status,
    status_code,
    status_document,
)
from byoc_orch.exit_codes import EXIT_UNAVAILABLE
from byoc_orch.settings import Settings

VOLATILE = frozenset({"last_health", "consecutive_probe_failures", "at", "last_heartbeat_at"})
"""Fields that move on every look without anything having changed for an operator."""

AGES = re.compile(r"\b\d+[smhd] ago\b|next in \d+[smhd]")
"""What moves in the text by itself as time passes."""

HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def watch(
    settings: Settings,
    *,
    as_json: bool,
    interval: float,
    out: TextIO | None = None,
    looks: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """`looks` bounds the loop (tests); None: until interrupted."""
    out = out or sys.stdout
    tty = out.isatty() and not as_json
    client = DaemonClient(settings, timeout=max(interval, 2.0))
    last_key: str | None = None
    last_frame = ""
    code = EXIT_UNAVAILABLE
    count = 0
    try:
        while looks is None or count < looks:
            count += 1
            try:
                ready, entries = fetch_status(client)
            except DaemonUnreachable as exc:
                key, frame, code = "unreachable", f"byoc-orch: {exc}\n", EXIT_UNAVAILABLE
                document: dict[str, Any] = {"daemon": None, "error": str(exc)}
            else:
                code = status_code(ready, entries)
                document = status_document(client.base, ready, entries)
                frame = render_status(client.base, ready, entries)
                key = (
                    json.dumps(_stable(document), sort_keys=True)
                    if as_json
                    else AGES.sub("", frame)
                )
            if tty:
                if frame != last_frame:
                    _redraw(frame, out)
                    last_frame = frame
            elif key != last_key:
                if as_json:
                    out.write(json.dumps(document) + "\n")
                else:
                    stamp = datetime.now(UTC).isoformat(timespec="seconds")
                    out.write(f"--- {stamp} (exit {code})\n{frame}\n")
                out.flush()
            last_key = key
            if looks is None or count < looks:
                sleep(interval)
    except KeyboardInterrupt:
        pass
    return code


def _redraw(frame: str, out: TextIO) -> None:
    lines = frame.rstrip("\n").split("\n")
    out.write(HOME + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW)
    out.flush()


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value
