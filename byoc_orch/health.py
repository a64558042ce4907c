"""Reading a worker's /health answer (asking for it is prober.py's job).

pytrickle answers 200 for LOADING and ERROR too, so the status code alone never decides: the
body's `status` does. `ok`/`OK`/`IDLE` (any case) is warm, `LOADING` is still starting,
`ERROR` is broken, and anything else (non-200, timeout, refused, unreadable body) is a failed
probe.

The words are matched strictly, because a worker that is not warm must never be routed to:
the body must be UTF-8 JSON, an object whose `status` key appears once (a duplicated key is
ambiguous — parsers disagree on which value wins — so the body counts as unreadable), and the
status string, with ASCII whitespace stripped from its ends, must be exactly one of the words
in ASCII letters of either case. Case folding is done only on ASCII: Python's `str.lower()`
would turn a Kelvin sign into `k` ("oK" written with U+212A) and `strip()` would remove
no-break spaces, so neither is applied to anything else; fullwidth letters, look-alikes and any
other non-ASCII status are simply an unknown status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

WARM_STATUSES = frozenset({"ok", "idle"})
ASCII_WHITESPACE = " \t\n\r\x0b\x0c"


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


class _Object(dict[str, Any]):
    """A decoded JSON object that remembers whether its `status` key came more than once."""

    status_repeated = False


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    decoded = _Object(pairs)
    decoded.status_repeated = sum(1 for key, _ in pairs if key == "status") > 1
    return decoded


def status_word(reported: str) -> str | None:
    """The status in lower case when it is plain ASCII once ASCII whitespace is stripped from
    its ends; None for anything else (which then matches no known word)."""
    word = reported.strip(ASCII_WHITESPACE)
    return word.lower() if word.isascii() else None


_UNREADABLE = 'unreadable body (want JSON {"status": ...})'


def classify(http_status: int, body: bytes) -> Judgement:
    """Verdict, a short reason, the body's status field, and the failure if it is one."""
    try:
        payload = json.loads(body.decode("utf-8"), object_pairs_hook=_object)
    except (ValueError, UnicodeDecodeError, RecursionError):
        payload = None
    if isinstance(payload, _Object) and payload.status_repeated:
        return Judgement(
            Verdict.FAILED,
            'ambiguous body: "status" given more than once',
            None,
            ProbeFailure.BAD_BODY,
        )
    reported = payload.get("status") if isinstance(payload, dict) else None
    if isinstance(reported, str):
        word = status_word(reported)
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
        return Judgement(Verdict.FAILED, _UNREADABLE, None, ProbeFailure.BAD_BODY)
    return Judgement(
        Verdict.FAILED,
        f"unknown status {str(reported)[:40]!r}",
        str(reported),
        ProbeFailure.BAD_BODY,
    )
