"""The session lifecycle: open, confirm, find the holder, end with a reason, recover.

The one place a session changes. The HTTP layer (proxy.py) opens, confirms, abandons and stops
sessions and asks which replica holds the one a call names; the daemon, through
deployment.Host, ends a replica's sessions when it leaves WARM, ends those its IDLE says are
over, and has the streams an adopted worker runs recovered. Neither touches the table's
transitions itself.

Capacity is decided once per start: routing's choice over the replicas as they are now and
the reservation on the replica it chose happen in one synchronous step, so concurrent starts
never over-reserve and a refusal is routing's own. Every end, whoever causes it, reaches one
listener here: the metrics, the "session ended" line and the `on_end` subscribers see it with
its reason (Live Runner's stop callbacks plug in there). A start may carry what its caller
handed over to be known by (`Opening.registry`); the session keeps it for those subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from byoc_orch.forwarding import Answer, Unreachable
from byoc_orch.metrics import Metrics
from byoc_orch.orchestrator_sessions import RegistrySession
from byoc_orch.routing import Refusal, choose
from byoc_orch.session_body import SessionBody
from byoc_orch.sessions import EndReason, Refused, Session, SessionState, SessionTable

if TYPE_CHECKING:
    from byoc_orch.worker import Worker

log = structlog.get_logger("byoc_orch.session_lifecycle")

SESSION_HEADERS = ("x-gateway-request-id", "x-stream-id")
"""Headers naming a session: byoc-orch's own, and the one go-livepeer sends on every call."""
UNKNOWN_SESSION_PREFIX = "byoc-orch:unknown-stream:"
"""Id of the placeholder holding a worker busy when it runs a stream it cannot name."""
RECOVERY_CONCURRENCY = 16
"""Workers asked at once which streams they run (a restart with hundreds of workers asks them
in waves, not all together)."""
IDLE_GRACE = 5.0
"""Seconds a session must have run before a worker's IDLE ends it: a probe answered just
before the start reached the worker must not end the session it started."""

Streams = list[tuple[str, dict[str, Any]]]
"""Streams a worker runs: (gateway_request_id, trickle URLs) each."""
StatusAsker = Callable[["Worker"], Awaitable[Answer | Unreachable]]
Spawn = Callable[[Coroutine[Any, Any, None], str], None]


@dataclass(frozen=True)
class Opening:
    """A start about to be forwarded: the session it opens, and what its caller handed over."""

    session_id: str
    entry_id: str
    pipeline: str
    model_id: str
    params: Any = None
    request: dict[str, Any] = field(default_factory=dict)
    """The stream's trickle URLs."""
    registry: RegistrySession | None = None
    """Its identity at the orchestrator's Live Runner registry (from the proxy's headers);
    kept on the session, its credentials never described."""


@dataclass(frozen=True, slots=True)
class Opened:
    session: Session
    worker: Worker
    """The replica routing chose; the start goes there."""


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The session id is already live (a 409, not a capacity refusal)."""

    message: str


@dataclass(frozen=True, slots=True)
class Held:
    """Where a call about a session goes; `session_id` None when byoc-orch does not know the
    session and leaves the answer to the only replica there is."""

    worker: Worker
    session_id: str | None


@dataclass(frozen=True, slots=True)
class NotHeld:
    """No replica can be told apart for the call: byoc-orch's own 4xx answer."""

    status: int
    message: str
    fix: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ended:
    """A session that ended: `session` carries its reason and detail; `accepted` is False for
    a start still in flight (the worker had not accepted it yet)."""

    session: Session
    accepted: bool

    @property
    def reason(self) -> EndReason:
        assert self.session.end_reason is not None
        return self.session.end_reason


EndHook = Callable[[Ended], None]
OpenHook = Callable[[Session], None]
Identities = Callable[[str, str], RegistrySession | None]
"""(session id, worker id) → the registry identity a recovered stream had before a restart."""


class SessionLifecycle:
    def __init__(
        self,
        *,
        workers: Callable[[str], Worker | None],
        ask_status: StatusAsker,
        spawn: Spawn,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`workers` finds the current replica of an id (None once it is gone); `ask_status`
        fetches a worker's `/stream/status` answer; `spawn` runs a background task the owner
        cancels on shutdown."""
        self.table = SessionTable(on_count=self._counted, on_end=self._ended)
        self._workers = workers
        self._ask_status = ask_status
        self._spawn = spawn
        self._metrics = metrics
        self._clock = clock
        self._hooks: list[EndHook] = []
        self._open_hooks: list[OpenHook] = []
        self._recovered_hooks: list[Callable[[str], None]] = []
        self.identities: Identities = lambda _session, _worker: None
        """Set by whoever remembers registry identities across a restart."""
        self._recovering: set[str] = set()
        self._stopping: set[str] = set()
        """Sessions whose stop call is with their worker now: the worker's IDLE in between is
        that stop, not the worker ending the stream on its own."""
        self._recovery_slots = asyncio.Semaphore(RECOVERY_CONCURRENCY)

    # -- opening --------------------------------------------------------------------------------

    def open(self, opening: Opening, replicas: Sequence[Worker]) -> Opened | Refusal | Duplicate:
        """Choose the replica for a start and reserve its slot, as one decision: the loads are
        read here, now, and nothing awaits before the slot is taken."""
        choice = choose([w.load for w in replicas])
        if isinstance(choice, Refusal):
            return choice
        worker = next(w for w in replicas if w.worker_id == choice.worker_id)
        try:
            session = self.table.reserve(
                opening.session_id,
                worker_id=worker.worker_id,
                entry_id=opening.entry_id,
                pipeline=opening.pipeline,
                model_id=opening.model_id,
                now=self._clock(),
                params=opening.params,
                request=opening.request,
                registry=opening.registry,
            )
        except Refused as refused:
            return Duplicate(str(refused))
        return Opened(session, worker)

    def confirm(self, opened: Opened) -> Session | None:
        """The worker accepted the start (None: the session ended meanwhile)."""
        session = self.table.confirm(opened.session.id)
        if session is None:
            return None
        self._metrics.sessions_started.labels(session.pipeline, session.model_id).inc()
        for hook in self._open_hooks:
            hook(session)
        worker = opened.worker
        # Logged once the answer is on its way (the next loop turn), not before.
        asyncio.get_running_loop().call_soon(
            functools.partial(
                log.info,
                "session started",
                session=session.id,
                worker_id=worker.worker_id,
                pipeline=session.pipeline,
                model_id=session.model_id,
                replica=worker.replica,
                container_id=(worker.status.container_id or "")[:12] or None,
            )
        )
        return session

    def abandon(self, session_id: str) -> None:
        """The worker refused the start (or was not reached): its slot is free, no record."""
        self.table.release(session_id)

    def set_params(self, session_id: str, params: Any) -> None:
        self.table.set_params(session_id, params, self._clock())

    # -- calls about a session ------------------------------------------------------------------

    def holder(
        self, named: str | None, replicas: Sequence[Worker], *, op: str, target: str
    ) -> Held | NotHeld:
        """The replica a call about a session goes to, among `replicas` (those of `target`,
        named in errors), for the session the call names (see `named_session`)."""
        by_id = {w.worker_id: w for w in replicas}
        if named:
            session = self.table.get(named)
            if (
                session is not None
                and session.state is not SessionState.ENDED
                and session.worker_id in by_id
            ):
                return Held(by_id[session.worker_id], named)
            if len(replicas) == 1:
                return Held(replicas[0], None)
            return NotHeld(
                404,
                f"no live session {named!r} on {target}",
                "GET /sessions lists the live sessions and the replica holding each",
                {"session": named, "live": [s.id for w in replicas for s in self._live(w)]},
            )
        live = [s for w in replicas for s in self._live(w)]
        if len(live) == 1:
            return Held(by_id[live[0].worker_id], live[0].id)
        if len(live) > 1:
            return NotHeld(
                400,
                f"{len(live)} sessions are live on {target}; this {op} names none of them",
                "name the session: X-Gateway-Request-Id or X-Stream-Id header, or "
                "gateway_request_id in the query or the JSON body",
                {"sessions": [s.id for s in live]},
            )
        if len(replicas) == 1:
            return Held(replicas[0], None)
        return NotHeld(
            400,
            f"no session is live on {target} and this {op} names none",
            "name the session (X-Gateway-Request-Id or X-Stream-Id), or call one replica: "
            "/proxy/<worker id>/stream/...",
            {"replicas": sorted(by_id)},
        )

    def _live(self, worker: Worker) -> list[Session]:
        return self.table.live(worker.worker_id)

    # -- ending ---------------------------------------------------------------------------------

    def on_open(self, hook: OpenHook) -> None:
        """Call `hook` with every session a worker accepted or that was recovered from one."""
        self._open_hooks.append(hook)

    def on_recovered(self, hook: Callable[[str], None]) -> None:
        """Call `hook` with a worker's id once its streams were recovered after a restart."""
        self._recovered_hooks.append(hook)

    def on_end(self, hook: EndHook) -> None:
        """Call `hook` with every session that ends, once, whatever ends it. Hooks run inside
        the end: they must be quick and must not raise (I/O belongs in a task)."""
        self._hooks.append(hook)

    def end(self, session_id: str, reason: EndReason, detail: str | None = None) -> Session | None:
        return self.table.end(session_id, reason, self._clock(), detail)

    def end_worker(
        self, worker_id: str, reason: EndReason, detail: str | None = None
    ) -> list[Session]:
        """Every session on a replica that went away (or is being stopped)."""
        return self.table.end_worker(worker_id, reason, self._clock(), detail)

    def worker_idle(self, worker: Worker) -> None:
        """The worker says IDLE: sessions still counted there ended on its side."""
        for session in idle_ended(self.table.live(worker.worker_id), self._clock(), IDLE_GRACE):
            if session.id not in self._stopping:
                self.end(session.id, EndReason.ENDED_BY_WORKER, "the worker reports IDLE")

    @contextlib.contextmanager
    def stopping(self, session_id: str | None) -> Iterator[None]:
        """While a client's stop call is with the worker (its answer then ends the session as
        `stopped`; a failed call leaves it to the worker's next IDLE)."""
        if session_id is None:
            yield
            return
        self._stopping.add(session_id)
        try:
            yield
        finally:
            self._stopping.discard(session_id)

    def _ended(self, session: Session, accepted: bool) -> None:
        """The table's one end listener."""
        reason = str(session.end_reason)
        if accepted:
            self._metrics.sessions_ended.labels(session.pipeline, session.model_id, reason).inc()
        if session.end_reason is not EndReason.STOPPED:
            # A stop was asked for and is answered to its caller; this line is for the ends
            # nobody asked for.
            log.info(
                "session ended",
                session=session.id,
                reason=reason,
                detail=session.end_detail,
                worker_id=session.worker_id,
                pipeline=session.pipeline,
                model_id=session.model_id,
            )
        if self._hooks:
            ended = Ended(session, accepted)
            for hook in self._hooks:
                hook(ended)

    def _counted(self, worker_id: str, in_use: int) -> None:
        worker = self._workers(worker_id)
        if worker is not None:
            worker.set_sessions(in_use)

    # -- after a restart ------------------------------------------------------------------------

    def recover(self, worker: Worker) -> None:
        """Learn, once, in the background and a few workers at a time, which streams an
        adopted (or, after a restart, external) worker runs."""
        if worker.worker_id in self._recovering:
            return
        self._recovering.add(worker.worker_id)
        self._spawn(self._recover(worker), f"recover-{worker.worker_id}")

    async def _recover(self, worker: Worker) -> None:
        try:
            async with self._recovery_slots:
                found = await self.recover_now(worker)
        finally:
            self._recovering.discard(worker.worker_id)
        if self._workers(worker.worker_id) is not worker or worker.sessions_known:
            return
        worker.sessions_known = True
        worker.set_sessions(self.table.in_use(worker.worker_id))
        for hook in self._recovered_hooks:
            hook(worker.worker_id)
        worker.notify()
        if found:
            log.info(
                "recovered sessions",
                worker_id=worker.worker_id,
                sessions=found,
                container_id=(worker.status.container_id or "")[:12] or None,
            )

    async def recover_now(self, worker: Worker) -> list[str]:
        """Record the streams a worker runs that byoc-orch did not start (it restarted);
        returns the ids recorded."""
        answer = await self._ask_status(worker)
        entry = worker.entry
        recorded = []
        for session_id, request in streams_to_adopt(
            answer, worker.worker_id, reports_idle=worker.reports_idle
        ):
            adopted = self.table.adopt(
                session_id,
                worker_id=worker.worker_id,
                entry_id=worker.entry_id,
                pipeline=entry.pipeline,
                model_id=entry.model_id,
                now=self._clock(),
                request=request,
                registry=self.identities(session_id, worker.worker_id),
            )
            if adopted is not None:
                recorded.append(session_id)
                for hook in self._open_hooks:
                    hook(adopted)
        return recorded


# -- pure decisions -------------------------------------------------------------------------------


def named_session(
    headers: Mapping[str, str], query: Mapping[str, str], body: SessionBody
) -> str | None:
    """The session a call names: by header (ours or go-livepeer's X-Stream-Id), query, or a
    `gateway_request_id` in a JSON body. `headers` is case-insensitive (Starlette's) or has
    lower-case keys."""
    for header in SESSION_HEADERS:
        value = headers.get(header, "").strip()
        if value:
            return value
    named = query.get("gateway_request_id", "").strip()
    if named:
        return named
    return body.named()


def idle_ended(sessions: Sequence[Session], now: float, grace: float) -> list[Session]:
    """The sessions a worker's IDLE ends: those that started at least `grace` seconds ago."""
    started_before = now - grace
    return [s for s in sessions if s.started_at <= started_before]


def streams_to_adopt(
    answer: Answer | Unreachable, worker_id: str, *, reports_idle: bool
) -> Streams:
    """What a restarted byoc-orch records for a worker from its `/stream/status` answer: the
    streams it names; when it cannot tell and its health does not say IDLE, a placeholder that
    holds the worker busy until it does (or a stop reaches it), so no second start is sent to
    a worker that is already streaming."""
    running = running_streams(answer)
    if running is not None:
        return running
    return [] if reports_idle else [(UNKNOWN_SESSION_PREFIX + worker_id, {})]


def running_streams(answer: Answer | Unreachable) -> Streams | None:
    """The streams pytrickle's `/stream/status` answer says run; [] when it says none does (or
    the worker has no session routes: a batch worker); None when it cannot tell (no answer, a
    server error, or busy without saying with which stream)."""
    if isinstance(answer, Unreachable) or answer.status >= 500:
        return None
    if answer.status != 200:
        return []
    try:
        body = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    status = body.get("status")
    if isinstance(status, str) and status.isascii() and status.strip().upper() == "IDLE":
        return []  # pytrickle keeps an ended stream's params but reports IDLE
    if body.get("client_active") is False or body.get("active_streams") == 0:
        return []
    current = body.get("current_params")
    current = current if isinstance(current, dict) else {}
    session_id = current.get("gateway_request_id") or body.get("gateway_request_id")
    if not isinstance(session_id, str) or not session_id.strip():
        busy = body.get("client_active") is True or status in ("OK", "ok")
        return None if busy else []
    urls = {k: v for k, v in current.items() if k in ("subscribe_url", "publish_url")}
    return [(session_id.strip(), {k: v for k, v in urls.items() if isinstance(v, str)})]
