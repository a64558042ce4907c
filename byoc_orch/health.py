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
from typing import NamedTuple

WARM_STATUSES = frozenset({"ok", "idle"})


class Verdict(StrEnum):
    WARM = "warm"
    LOADING = "loading"
    ERROR = "error"
    FAILED = "failed"


class ProbeFailure(StrEnum):
    """Why a probe failed: a bounded label, set where the failure is seen."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    HTTP_STATUS = "http_status"
    BAD_BODY = "bad_body"
    ERROR_STATUS = "error_status"
    OTHER = "other"


@dataclass(frozen=True)
class ProbeResult:
    verdict: Verdict
    detail: str
    latency: float = 0.0
    http_status: int | None = None
    reported: str | None = None  # the body's status field, as the worker wrote it
    at: float = 0.0
    failure: ProbeFailure | None = None  # set for the FAILED and ERROR verdicts


class Judgement(NamedTuple):
    verdict: Verdict
    detail: str
    reported: str | None
    failure: ProbeFailure | None


def classify(http_status: int, body: bytes) -> Judgement:
    """Verdict, a short reason, the body's status field, and the failure if it is one."""
    try:
        payload = json.loads(body)
        reported = payload.get("status") if isinstance(payload, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        reported = None
    if isinstance(reported, str):
        word = reported.strip().lower()
        if word == "error":
            return Judgement(
                Verdict.ERROR, f"worker reports {reported}", reported, ProbeFailure.ERROR_STATUS
            )
        if word == "loading":
            return Judgement(Verdict.LOADING, f"worker reports {reported}", reported, None)
        if http_status == 200 and word in WARM_STATUSES:
            return Judgement(Verdict.WARM, reported, reported, None)
    if http_status != 200:
        return Judgement(
            Verdict.FAILED,
            f"HTTP {http_status}",
            reported if isinstance(reported, str) else None,
            ProbeFailure.HTTP_STATUS,
        )
    if reported is None:
        return Judgement(
            Verdict.FAILED,
            'unreadable body (want JSON {"status": ...})',
            None,
            ProbeFailure.BAD_BODY,
        )
    return Judgement(
        Verdict.FAILED,
        f"unknown status {str(reported)[:40]!r}",
        str(reported),
        ProbeFailure.BAD_BODY,
    )
