"""The session lifecycle where it meets the orchestrator's Live Runner registry: both sides end
the same sessions.

go-livepeer's registry and byoc-orch each hold a session table, and either may end a session
behind the other's back (DESIGN §2.3):

* **Worker → orchestrator.** A session byoc-orch ends for any reason but the client's own stop
  or the registry's own release (a crash, the worker going idle, a drain that timed out, an
  operator's restart, the entry removed, a start that failed or was refused) is released at the
  registry at once through its runner callback (`ReleaseSender`), so the capacity it held is
  sold again. A client's stream stop (`/stream/stop` through the app) ends the stream, not the
  reservation: the client may start another stream in it and releases it itself.
* **Orchestrator → worker.** Each heartbeat answer carries the registry's own `session_ids` for
  that runner. A session byoc-orch runs under the registry's identity that the answer leaves
  out was released there (the client stopped it, its payment failed): its stream is stopped on
  the worker and the session ends `released_by_orchestrator`. Only sessions that were already
  open when the heartbeat was sent are judged — a reservation always precedes its start, so a
  session open then must be listed unless it was released.

Static runners send no heartbeats: the registry's releases reach byoc-orch only as the client's
stream stop (documented). Pure bookkeeping plus tasks handed to `spawn`; the calls are the
release sender's and `stop_stream`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from byoc_orch.metrics import Metrics
from byoc_orch.orchestrator_sessions import (
    RegistrySession,
    Release,
    ReleaseResult,
    ReleaseSender,
)
from byoc_orch.session_lifecycle import Ended, SessionLifecycle
from byoc_orch.sessions import EndReason, Session
from byoc_orch.state_file import RunnerRecord, SessionRecord

if TYPE_CHECKING:
    from byoc_orch.worker import Worker

LOGGER = "byoc_orch.live_runner_sessions"

KEPT_AT_THE_ORCHESTRATOR = frozenset({EndReason.STOPPED, EndReason.RELEASED_BY_ORCHESTRATOR})
"""End reasons after which the registry's reservation is left alone: the client stopped its own
stream (it holds the reservation and releases it), or the registry released it itself."""

LOST_IN_RESTART = "lost_in_restart"
"""Why a session recorded by the previous process is released: its worker no longer runs it."""

StopStream = Callable[["Worker", str], Awaitable[bool]]
"""Stop a worker's stream named by byoc-orch's session id; True once the worker answered."""
Spawn = Callable[[Coroutine[Any, Any, None], str], None]


@dataclass
class Listed:
    """What the last heartbeat answer said one replica's runner holds."""

    runner_id: str
    sessions: tuple[str, ...] = ()
    both: int = 0
    orchestrator_only: int = 0
    byoc_only: int = 0


@dataclass
class _Counts:
    by_worker: dict[str, Listed] = field(default_factory=dict)


class LiveRunnerSessions:
    def __init__(
        self,
        lifecycle: SessionLifecycle,
        releases: ReleaseSender,
        *,
        workers: Callable[[str], Worker | None],
        stop_stream: StopStream,
        spawn: Spawn,
        metrics: Metrics,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        """`changed` is told whenever the registry sessions to remember across a restart
        change (the state file is written from `records`)."""
        self._log = structlog.get_logger(LOGGER)
        self._lifecycle = lifecycle
        self._releases = releases
        self._workers = workers
        self._stop_stream = stop_stream
        self._spawn = spawn
        self._metrics = metrics
        self._changed = changed
        self._listed: dict[str, Listed] = {}
        self._stopping: set[str] = set()
        self._restored: dict[str, SessionRecord] = {}
        self._runners: dict[str, RunnerRecord] = {}
        lifecycle.on_end(self._ended)
        lifecycle.on_open(self._opened)
        lifecycle.on_recovered(self.forget_restored)
        lifecycle.identities = self.identity_for

    # -- worker → orchestrator ------------------------------------------------------------------

    def _opened(self, session: Session) -> None:
        if session.registry is not None:
            self._changed()

    def _ended(self, ended: Ended) -> None:
        session = ended.session
        self._stopping.discard(session.id)
        if session.registry is None:
            return
        self._changed()
        if ended.reason in KEPT_AT_THE_ORCHESTRATOR:
            return
        self.release(session.registry, session, str(ended.reason))

    def refused(
        self, registry: RegistrySession, worker_id: str, pipeline: str, model_id: str, why: str
    ) -> None:
        """A start under a registry session that never ran (byoc-orch refused it, or the
        worker failed it): its reservation would otherwise hold a slot there that no stream
        uses."""
        self._releases.release(Release(registry, why, pipeline, model_id, worker_id))

    def release(self, registry: RegistrySession, session: Session, reason: str) -> None:
        self._releases.release(
            Release(registry, reason, session.pipeline, session.model_id, session.worker_id)
        )

    def observe_release(self, release: Release, result: ReleaseResult, _seconds: float) -> None:
        """ReleaseSender's observer: counted by why and how it ended."""
        self._metrics.orchestrator_releases.labels(
            release.pipeline, release.model_id, release.reason, str(result)
        ).inc()

    # -- orchestrator → worker ------------------------------------------------------------------

    def sessions_mark(self, worker_id: str) -> frozenset[str]:
        """The registry sessions live on a replica now: taken before a heartbeat is sent, so
        its answer judges only these."""
        return frozenset(
            s.id for s in self._lifecycle.table.live(worker_id) if s.registry is not None
        )

    def sessions_listed(
        self, worker_id: str, runner_id: str, listed: list[str], mark: frozenset[str]
    ) -> None:
        self.listed(worker_id, runner_id, listed, mark)

    def listed(
        self, worker_id: str, runner_id: str, orchestrator: Iterable[str], mark: frozenset[str]
    ) -> list[str]:
        """A heartbeat answer for `worker_id`'s runner listed `orchestrator`: stop (on the
        worker) every session of that runner in `mark` it no longer holds. Returns the ids
        being stopped."""
        held = tuple(orchestrator)
        holds = set(held)
        ours = [
            s
            for s in self._lifecycle.table.live(worker_id)
            if s.registry is not None and s.registry.route == runner_id
        ]
        ours_ids = {s.registry.session_id for s in ours if s.registry is not None}
        view = Listed(
            runner_id,
            held,
            both=len(holds & ours_ids),
            orchestrator_only=len(holds - ours_ids),
            byoc_only=len(ours_ids - holds),
        )
        self._listed[worker_id] = view
        self._count_mismatches(worker_id)
        released = [
            s
            for s in ours
            if s.id in mark
            and s.registry is not None
            and s.registry.session_id not in holds
            and s.id not in self._stopping
        ]
        for session in released:
            self._stopping.add(session.id)
            self._log.info(
                "the orchestrator released a session; stopping its stream",
                session=session.id,
                orchestrator_session=session.registry.session_id if session.registry else None,
                runner_id=runner_id,
                worker_id=worker_id,
                pipeline=session.pipeline,
                model_id=session.model_id,
            )
            self._spawn(self._stop(worker_id, session.id), f"orchestrator-release-{session.id}")
        return [s.id for s in released]

    async def _stop(self, worker_id: str, session_id: str) -> None:
        worker = self._workers(worker_id)
        answered = False
        try:
            if worker is not None:
                answered = await self._stop_stream(worker, session_id)
        finally:
            detail = None if answered else "the worker did not answer the stop"
            self._lifecycle.end(session_id, EndReason.RELEASED_BY_ORCHESTRATOR, detail)
            self._stopping.discard(session_id)

    def runner_gone(self, worker_id: str) -> None:
        """A replica's runner left the registry: nothing is listed for it any more."""
        if self._listed.pop(worker_id, None) is not None:
            self._count_mismatches(worker_id)

    def _count_mismatches(self, worker_id: str) -> None:
        worker = self._workers(worker_id)
        if worker is None:
            return
        entry = worker.entry
        same = [
            view
            for other, view in self._listed.items()
            if (w := self._workers(other)) is not None and w.entry_id == worker.entry_id
        ]
        gauge = self._metrics.live_runner_sessions
        gauge.labels(entry.pipeline, entry.model_id, "both").set(sum(v.both for v in same))
        gauge.labels(entry.pipeline, entry.model_id, "orchestrator_only").set(
            sum(v.orchestrator_only for v in same)
        )
        gauge.labels(entry.pipeline, entry.model_id, "byoc_orch_only").set(
            sum(v.byoc_only for v in same)
        )

    def describe(self, worker_id: str) -> dict[str, Any] | None:
        view = self._listed.get(worker_id)
        if view is None:
            return None
        return {
            "runner_id": view.runner_id,
            "orchestrator_sessions": list(view.sessions),
            "mismatched": view.orchestrator_only + view.byoc_only,
        }

    # -- across a restart -----------------------------------------------------------------------

    def restored_runners(self) -> dict[str, RunnerRecord]:
        return dict(self._runners)

    def runners_changed(self, runners: dict[str, RunnerRecord]) -> None:
        """The heartbeat advertiser's registered runners (with their secrets) changed."""
        self._runners = dict(runners)
        self._changed()

    def runner_records(self) -> dict[str, RunnerRecord]:
        return dict(self._runners)

    def records(self) -> dict[str, SessionRecord]:
        """The identity of every live registry session, for the state file."""
        kept = {}
        for session in self._lifecycle.table.live():
            registry = session.registry
            if registry is None:
                continue
            kept[session.id] = SessionRecord(
                session.id,
                session.worker_id,
                registry.session_id,
                registry.route,
                registry.control_url,
                registry.token,
            )
        # Restored identities not yet matched to a recovered stream are kept until they are.
        return {**self._restored, **kept}

    def restore(self, runners: dict[str, RunnerRecord], sessions: dict[str, SessionRecord]) -> None:
        """What the previous process left (the state file), before anything starts."""
        self._runners = dict(runners)
        self._restored = dict(sessions)

    def identity_for(self, session_id: str, worker_id: str) -> RegistrySession | None:
        """A recovered stream's identity at the registry, as the previous process knew it."""
        record = self._restored.pop(session_id, None)
        if record is None or record.worker_id != worker_id:
            return None
        return RegistrySession(record.orch_session, record.route, record.control_url, record.token)

    def forget_restored(self, worker_id: str | None = None) -> None:
        """A replica came back without streams the previous process recorded on it (or, with
        None, no replica of that id came back at all): those sessions no longer run, so they
        are released at the registry, and their tokens leave the state file."""
        gone = [
            record
            for record in self._restored.values()
            if record.worker_id == worker_id
            or (worker_id is None and self._workers(record.worker_id) is None)
        ]
        for record in gone:
            del self._restored[record.session]
            worker = self._workers(record.worker_id)
            entry = worker.entry if worker is not None else None
            self._releases.release(
                Release(
                    RegistrySession(
                        record.orch_session, record.route, record.control_url, record.token
                    ),
                    LOST_IN_RESTART,
                    entry.pipeline if entry is not None else "",
                    entry.model_id if entry is not None else "",
                    record.worker_id,
                )
            )
        if gone:
            self._changed()
