"""Reading a worker's /health answer (asking for it is prober.py's job).

pytrickle answers 200 for LOADING and ERROR too, so the status code alone never decides: the
body's `status` does. `ok`/`OK`/`IDLE` (any case) is warm, `LOADING` is still starting,
`ERROR` is broken, and anything else (non-200, timeout, refused, unreadable body) is a failed
probe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

WARM_STATUSES = frozenset({"ok", "idle"})


class Verdict(StrEnum):
    WARM = "warm"
    LOADING = "loading"
    ERROR = "error"
    FAILED = "failed"


@dataclass(frozen=True)
class ProbeResult:
    verdict: Verdict
    detail: str
    latency: float = 0.0
    http_status: int | None = None
    reported: str | None = None  # the body's status field, as the worker wrote it
    at: float = 0.0


def classify(http_status: int, body: bytes) -> tuple[Verdict, str, str | None]:
    """Verdict, a short reason, and the body's status field."""
    try:
        payload = json.loads(body)
        reported = payload.get("status") if isinstance(payload, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        reported = None
    if isinstance(reported, str):
        word = reported.strip().lower()
        if word == "error":
            return Verdict.ERROR, f"worker reports {reported}", reported
        if word == "loading":
            return Verdict.LOADING, f"worker reports {reported}", reported
        if http_status == 200 and word in WARM_STATUSES:
            return Verdict.WARM, reported, reported
    if http_status != 200:
        return (
            Verdict.FAILED,
            f"HTTP {http_status}",
            reported if isinstance(reported, str) else None,
        )
    if reported is None:
        return Verdict.FAILED, 'unreadable body (want JSON {"status": ...})', None
    return Verdict.FAILED, f"unknown status {str(reported)[:40]!r}", str(reported)
