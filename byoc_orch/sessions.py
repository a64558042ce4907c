"""The session table: which worker runs which stream, since when, with which params.

Pure bookkeeping, no I/O, no decisions: which worker may take a start is routing's choice
(session_lifecycle.py makes it and the reservation in one step). A start reserves its slot
before it is forwarded and releases it if the worker refuses. Every change to a worker's slots
in use is reported through `on_count`, which keeps the advertised free capacity current; every
end through `on_end`. Ended sessions are kept (bounded) so their end reason can still be read.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from byoc_orch.orchestrator_sessions import RegistrySession


class SessionState(StrEnum):
    STARTING = "starting"
    ACTIVE = "active"
    ENDED = "ended"


class EndReason(StrEnum):
    STOPPED = "stopped"
    RESTARTED = "restarted"
    ENDED_BY_WORKER = "ended_by_worker"
    """The worker reports itself idle: the stream ended without a stop call reaching it (go-
    livepeer ends streams by closing their trickle channels when payment or input stops)."""
    CRASHED = "crashed"
    UNHEALTHY = "unhealthy"
    REPLACED = "replaced"
    REMOVED = "removed"
    SHUTDOWN = "shutdown"
    RELEASED_BY_ORCHESTRATOR = "released_by_orchestrator"
    """The orchestrator's Live Runner registry no longer holds the session (the client released
    it, its payment failed, it expired): byoc-orch stopped the stream on the worker."""
    REFUSED = "refused"
    """The start never ran: byoc-orch or the worker turned it down (used for registry sessions
    that must be released)."""


@dataclass(frozen=True)
class Session:
    id: str
    worker_id: str
    """The replica running it."""
    pipeline: str
    model_id: str
    started_at: float
    entry_id: str = ""
    recovered: bool = False
    """Found running in an adopted container after byoc-orch restarted, not started by it."""
    state: SessionState = SessionState.STARTING
    params: Any = None
    params_updated_at: float | None = None
    ended_at: float | None = None
    end_reason: EndReason | None = None
    end_detail: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    registry: RegistrySession | None = field(default=None, repr=False)
    """Its identity at the orchestrator's Live Runner registry, when it came through one: the
    session id is shown, the token and control URL never."""

    def describe(self, *, with_urls: bool = True) -> dict[str, Any]:
        """`with_urls` False hides the stream's trickle URLs: whoever has them can watch or
        feed the stream."""
        return {
            "id": self.id,
            "entry_id": self.entry_id or self.worker_id,
            "worker_id": self.worker_id,
            "pipeline": self.pipeline,
            "model_id": self.model_id,
            "state": str(self.state),
            "recovered": self.recovered,
            "started_at": self.started_at,
            "params": self.params,
            "params_updated_at": self.params_updated_at,
            "ended_at": self.ended_at,
            "end_reason": None if self.end_reason is None else str(self.end_reason),
            "end_detail": self.end_detail,
            "request": self.request if with_urls else {k: "[hidden]" for k in self.request},
            **(self.registry.describe() if self.registry is not None else {}),
        }


class Refused(Exception):
    """A start the table cannot record; `reason` is a bounded label ("duplicate")."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


CountListener = Callable[[str, int], None]
EndListener = Callable[[Session, bool], None]
"""Called with every ended session and whether the worker had accepted it (a start still in
flight had not)."""


class SessionTable:
    def __init__(
        self,
        *,
        on_count: CountListener | None = None,
        on_end: EndListener | None = None,
        keep_ended: int = 256,
    ) -> None:
        self._live: OrderedDict[str, Session] = OrderedDict()
        self._by_worker: dict[str, dict[str, None]] = {}
        """worker id → its live session ids, in start order."""
        self._by_registry: dict[str, str] = {}
        """orchestrator session id → byoc-orch session id, for live registry sessions."""
        self._ended: deque[Session] = deque(maxlen=keep_ended)
        self._on_count = on_count
        self._on_end = on_end

    # -- reading ------------------------------------------------------------------------------

    def get(self, session_id: str) -> Session | None:
        found = self._live.get(session_id)
        if found is not None:
            return found
        for session in reversed(self._ended):
            if session.id == session_id:
                return session
        return None

    def live(self, worker_id: str | None = None) -> list[Session]:
        """Starting and active sessions, oldest first."""
        if worker_id is None:
            return list(self._live.values())
        return [self._live[i] for i in self._by_worker.get(worker_id, ())]

    def live_ids(self, worker_id: str) -> tuple[str, ...]:
        return tuple(self._by_worker.get(worker_id, ()))

    def ended(self) -> list[Session]:
        return list(reversed(self._ended))

    def in_use(self, worker_id: str) -> int:
        return len(self._by_worker.get(worker_id, ()))

    # -- changing -----------------------------------------------------------------------------

    def reserve(
        self,
        session_id: str,
        *,
        worker_id: str,
        pipeline: str,
        model_id: str,
        now: float,
        params: Any = None,
        request: dict[str, Any] | None = None,
        entry_id: str = "",
        registry: RegistrySession | None = None,
    ) -> Session:
        """Take a slot on `worker_id` (routing chose it) for a start about to be forwarded;
        raises Refused when the id is already live."""
        existing = self._live.get(session_id)
        if existing is not None:
            raise Refused(
                "duplicate",
                f"session {session_id!r} is already {existing.state} on {existing.worker_id}; "
                "stop it first or use a new gateway_request_id",
            )
        return self._add(
            Session(session_id, worker_id, pipeline, model_id, started_at=now),
            entry_id,
            params,
            request,
            registry,
        )

    def adopt(
        self,
        session_id: str,
        *,
        worker_id: str,
        entry_id: str,
        pipeline: str,
        model_id: str,
        now: float,
        params: Any = None,
        request: dict[str, Any] | None = None,
        registry: RegistrySession | None = None,
    ) -> Session | None:
        """Record a stream found running on a worker (after a restart): active at once, slot
        taken. None if the id is already live here."""
        if session_id in self._live:
            return None
        session = Session(
            session_id,
            worker_id,
            pipeline,
            model_id,
            started_at=now,
            state=SessionState.ACTIVE,
            recovered=True,
        )
        return self._add(session, entry_id, params, request, registry)

    def by_orchestrator_session(self, orchestrator_session: str) -> Session | None:
        """The live session the registry knows as `orchestrator_session`."""
        session_id = self._by_registry.get(orchestrator_session)
        return None if session_id is None else self._live.get(session_id)

    def _add(
        self,
        session: Session,
        entry_id: str,
        params: Any,
        request: dict[str, Any] | None,
        registry: RegistrySession | None,
    ) -> Session:
        """Record `session` (its identity and state) with what the start carried."""
        session = replace(
            session, entry_id=entry_id, params=params, request=request or {}, registry=registry
        )
        self._live[session.id] = session
        if session.registry is not None:
            self._by_registry[session.registry.session_id] = session.id
        self._by_worker.setdefault(session.worker_id, {})[session.id] = None
        self._count(session.worker_id)
        return session

    def confirm(self, session_id: str) -> Session | None:
        """The worker accepted the start."""
        session = self._live.get(session_id)
        if session is None:
            return None
        session = replace(session, state=SessionState.ACTIVE)
        self._live[session_id] = session
        return session

    def release(self, session_id: str) -> None:
        """The worker refused the start (or could not be reached): the slot is free again,
        and no session is recorded."""
        session = self._live.pop(session_id, None)
        if session is not None:
            self._unindex(session)
            self._count(session.worker_id)

    def set_params(self, session_id: str, params: Any, now: float) -> None:
        session = self._live.get(session_id)
        if session is not None:
            self._live[session_id] = replace(session, params=params, params_updated_at=now)

    def end(
        self, session_id: str, reason: EndReason, now: float, detail: str | None = None
    ) -> Session | None:
        session = self._live.pop(session_id, None)
        if session is None:
            return None
        self._unindex(session)
        ended = replace(
            session,
            state=SessionState.ENDED,
            ended_at=now,
            end_reason=reason,
            end_detail=detail,
        )
        self._ended.append(ended)
        self._count(session.worker_id)
        if self._on_end is not None:
            self._on_end(ended, session.state is SessionState.ACTIVE)
        return ended

    def end_worker(
        self, worker_id: str, reason: EndReason, now: float, detail: str | None = None
    ) -> list[Session]:
        """End every session on a worker that went away; nothing is left dangling."""
        return [
            ended
            for session in self.live(worker_id)
            if (ended := self.end(session.id, reason, now, detail)) is not None
        ]

    def _unindex(self, session: Session) -> None:
        registry = session.registry
        if registry is not None and self._by_registry.get(registry.session_id) == session.id:
            del self._by_registry[registry.session_id]
        held = self._by_worker.get(session.worker_id)
        if held is not None:
            held.pop(session.id, None)
            if not held:
                del self._by_worker[session.worker_id]

    def _count(self, worker_id: str) -> None:
        if self._on_count is not None:
            self._on_count(worker_id, self.in_use(worker_id))
