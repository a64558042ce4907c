"""Sessions as the orchestrator's Live Runner registry knows them: who a proxied call belongs to,
and telling the registry when a session ended on byoc-orch's side.

go-livepeer's reverse proxy (`proxyLiveRunner`, server/ai_http.go) sets four headers on every
call it forwards to a runner: `Livepeer-Runner-Route` (the runner id, or a static runner's
label), `Livepeer-Session-Id`, `Livepeer-Session-Token` (a secret scoped to the session) and
`Livepeer-Session-Control` (`{runner-facing orchestrator URL}/runner/{route}/session/{id}`).
livepeer/node sets the same four. The token and the control URL are credentials: they are kept
here and in the state file, never logged, listed or returned.

When a session ends on byoc-orch's side for a reason the orchestrator did not cause (the worker
crashed or went idle, a drain timed out, an operator restarted the replica, the entry was
removed, the start failed), the registry would otherwise keep it reserved and sold (go-livepeer
#4016, #4004). `ReleaseSender` calls `POST {control}/stop` with the token at once (go-livepeer:
`StopLiveRunnerSessionInternal` → 204; livepeer/node → 200), retrying with back-off while the
orchestrator does not answer; 404 means it is already gone, 401/403 that the token no longer
names a session there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import unquote, urlsplit

import httpx
import structlog

LOGGER = "byoc_orch.orchestrator_sessions"

ROUTE_HEADER = "livepeer-runner-route"
SESSION_HEADER = "livepeer-session-id"
TOKEN_HEADER = "livepeer-session-token"
CONTROL_HEADER = "livepeer-session-control"
MAX_HEADER_VALUE = 2048
RETRY_INITIAL = 0.5
RETRY_MAX = 30.0
GIVE_UP_AFTER = 600.0
"""Seconds a release is retried while the orchestrator cannot be reached: longer than any
registry's heartbeat TTL, after which the runner (and so the session) is gone there anyway."""
CALL_TIMEOUT = 5.0


@dataclass(frozen=True)
class RegistrySession:
    """One session's identity at the orchestrator, from the headers its proxy set."""

    session_id: str
    route: str
    control_url: str = field(repr=False)
    token: str = field(repr=False)

    def describe(self) -> dict[str, str]:
        """What may be shown: never the token or the control URL."""
        return {"orchestrator_session": self.session_id, "runner_route": self.route}


class NotFromRegistry(Exception):
    """Headers that name a registry session but cannot be one; the message says which header."""


def from_headers(headers: Mapping[str, str]) -> RegistrySession | None:
    """The registry session a call belongs to, None when it carries no `Livepeer-Session-Id`.

    The control URL must be an absolute http(s) URL ending in `/runner/{route}/session/{id}`
    for this call's own route and id: byoc-orch POSTs the session token to it, so a forged
    header cannot make it send anything elsewhere than to that session's own control route."""
    session_id = headers.get(SESSION_HEADER, "").strip()
    if not session_id:
        return None
    route = headers.get(ROUTE_HEADER, "").strip()
    token = headers.get(TOKEN_HEADER, "").strip()
    control = headers.get(CONTROL_HEADER, "").strip()
    for name, value in (
        ("Livepeer-Session-Id", session_id),
        ("Livepeer-Runner-Route", route),
        ("Livepeer-Session-Token", token),
        ("Livepeer-Session-Control", control),
    ):
        if not value:
            raise NotFromRegistry(f"{name} is missing beside Livepeer-Session-Id")
        if len(value) > MAX_HEADER_VALUE or not value.isprintable():
            raise NotFromRegistry(f"{name} is not a value an orchestrator sets")
    try:
        parts = urlsplit(control)
    except ValueError:
        raise NotFromRegistry("Livepeer-Session-Control is not a URL") from None
    segments = [unquote(s) for s in parts.path.rstrip("/").split("/")]
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or segments[-4:] != ["runner", route, "session", session_id]
    ):
        raise NotFromRegistry(
            "Livepeer-Session-Control is not this session's control URL "
            "(…/runner/{Livepeer-Runner-Route}/session/{Livepeer-Session-Id})"
        )
    return RegistrySession(session_id, route, control.rstrip("/"), token)


class ReleaseResult(StrEnum):
    """How a release ended, as counted in byoc_orch_orchestrator_releases_total."""

    RELEASED = "released"
    ALREADY_GONE = "already_gone"
    REFUSED = "refused"
    GAVE_UP = "gave_up"


@dataclass(frozen=True)
class Release:
    """One session to release at the orchestrator, and why (an end reason)."""

    session: RegistrySession
    reason: str
    pipeline: str
    model_id: str
    worker_id: str


Observer = Callable[[Release, ReleaseResult, float], None]
"""Told how each release ended and after how many seconds."""


class ReleaseSender:
    """Releases sessions at the orchestrator in the background, one task per session, each
    retried with back-off until answered or `give_up_after` seconds have passed."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        observe: Observer | None = None,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
        give_up_after: float = GIVE_UP_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = structlog.get_logger(LOGGER)
        self._http = http
        self.observe = observe
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._give_up_after = give_up_after
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def release(self, release: Release) -> None:
        """Start releasing at once (a second release of the same session is a no-op)."""
        key = release.session.control_url
        if key in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(
            self._release(release), name=f"release-{release.session.session_id}"
        )
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    async def _release(self, release: Release) -> None:
        began = self._clock()
        delay = self._retry_initial
        session = release.session
        bound = self._log.bind(
            orchestrator_session=session.session_id,
            runner_route=session.route,
            worker_id=release.worker_id,
            pipeline=release.pipeline,
            model_id=release.model_id,
            reason=release.reason,
        )
        warned = False
        while True:
            status, error = await self._call(session)
            result = _result(status)
            if result is not None:
                elapsed = self._clock() - began
                if result is ReleaseResult.REFUSED:
                    bound.warning(
                        "the orchestrator refused this session's token; it no longer holds "
                        "the session under it",
                        status=status,
                    )
                else:
                    bound.info(
                        "session released at the orchestrator"
                        if result is ReleaseResult.RELEASED
                        else "session was already released at the orchestrator",
                        seconds=round(elapsed, 3),
                    )
                self._observed(release, result, elapsed)
                return
            if self._clock() - began + delay > self._give_up_after:
                bound.error(
                    "gave up releasing a session at the orchestrator; it stays reserved there "
                    "until the orchestrator drops it",
                    error=error,
                    after_seconds=round(self._clock() - began),
                )
                self._observed(release, ReleaseResult.GAVE_UP, self._clock() - began)
                return
            if not warned:
                bound.warning(
                    "could not release a session at the orchestrator; retrying with back-off",
                    error=error,
                    retry_in=delay,
                )
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def _call(self, session: RegistrySession) -> tuple[int | None, str | None]:
        try:
            response = await self._http.post(
                session.control_url + "/stop",
                headers={"Livepeer-Session-Token": session.token},
                timeout=CALL_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}".strip()
        return response.status_code, None if response.status_code < 500 else response.text[:200]

    def _observed(self, release: Release, result: ReleaseResult, seconds: float) -> None:
        if self.observe is not None:
            self.observe(release, result, seconds)

    async def aclose(self, timeout: float = 2.0) -> None:
        """Shutdown: let releases in flight finish briefly, then cancel the rest."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _result(status: int | None) -> ReleaseResult | None:
    """None: retry (no answer, or the orchestrator failed)."""
    if status is None or status >= 500 or status == 429:
        return None
    if status < 300:
        return ReleaseResult.RELEASED
    if status == 404:
        return ReleaseResult.ALREADY_GONE
    return ReleaseResult.REFUSED
