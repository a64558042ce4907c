"""Reading a worker's /health answer, and asking for it.

pytrickle answers 200 for LOADING and ERROR too, so the status code alone never decides: the
body's `status` does. `ok`/`OK`/`IDLE` (any case) is warm, `LOADING` is still starting,
`ERROR` is broken, and anything else (non-200, timeout, refused, unreadable body) is a failed
probe.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from enum import StrEnum

import httpx

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


async def probe(client: httpx.AsyncClient, url: str, timeout: float) -> ProbeResult:
    """One GET of the health URL; never raises."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):  # httpx's timeout is per step, not per request
            reply = await client.get(url, timeout=timeout)
            body = reply.content
    except (httpx.TimeoutException, TimeoutError):
        return _failed(f"no answer within {timeout:g} s", started)
    except httpx.ConnectError:
        return _failed("connection refused", started)
    except httpx.HTTPError as exc:
        return _failed(f"{type(exc).__name__}: {exc}"[:120], started)
    verdict, detail, reported = classify(reply.status_code, body)
    return ProbeResult(
        verdict,
        detail,
        latency=time.perf_counter() - started,
        http_status=reply.status_code,
        reported=reported,
        at=time.time(),
    )


def _failed(detail: str, started: float) -> ProbeResult:
    return ProbeResult(
        Verdict.FAILED, detail, latency=time.perf_counter() - started, at=time.time()
    )
