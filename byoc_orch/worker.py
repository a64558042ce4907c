"""One worker's runner: feeds events to the pure state machine and performs its actions.

A worker is one replica of an aiModels.json entry: one container (or, for an external entry,
one upstream URL) with its own supervision. Probes run as their own tasks so that a slow
/health never delays a Docker `die` event; container actions (discard, pull, run, stop) run one
after another on a second task so a replacement is always removed before its successor starts.
Every change is reported to the owning entry (`on_change`) before the next event is read, so
the entry's advertised capability follows in the same loop iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from byoc_orch.aimodels import ModelEntry
from byoc_orch.container_spec import ContainerSpec
from byoc_orch.engine import EngineError, EngineUnavailable
from byoc_orch.engine_port import ContainerEngine
from byoc_orch.gpu import GpuInfo
from byoc_orch.gpu_budget import GpuBudget
from byoc_orch.health import ProbeFailure, ProbeResult, Verdict
from byoc_orch.metrics import Metrics
from byoc_orch.prober import HealthProber
from byoc_orch.redact import display_url
from byoc_orch.routing import ReplicaLoad
from byoc_orch.worker_state import (
    Action,
    Discard,
    Event,
    Policy,
    Probe,
    Probed,
    Pull,
    Pulled,
    PullFailed,
    Run,
    Started,
    StartFailed,
    State,
    Status,
    StopContainer,
    Stopped,
    Tick,
    decide,
    initial,
)

log = structlog.get_logger("byoc_orch.worker")


class Worker:
    def __init__(
        self,
        entry: ModelEntry,
        *,
        spec: ContainerSpec | None,
        engine: ContainerEngine,
        policy: Policy,
        proxy_url: str,
        probe_timeout: float,
        stop_timeout: float,
        worker_id: str | None = None,
        replica: int = 0,
        on_change: Callable[[Worker], None] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.entry = entry
        self.spec = spec
        self.worker_id = worker_id or entry.worker_id
        self.replica = replica
        self.policy = policy
        self.proxy_url = proxy_url
        self.image_digest: str | None = None
        self.sessions = 0
        self.requests = 0
        """Pass-through (batch) requests in flight: each holds a slot, as a session does."""
        self.draining = False
        """Being replaced or removed: no new work; set and cleared by rollouts."""
        self.held = False
        """Drained by the operator (`byoc-orch drain`): no new work until `undrain`."""
        self.sessions_known = True
        """False from adopting a running container until the streams it runs are known, so
        no start is sent to a worker that may already be busy."""
        self.gpus: list[GpuInfo] | None = None
        """The host GPUs its container is given, when known (listed devices, or all)."""
        self.metrics = metrics or Metrics()
        self.starts = 0
        """Sessions this worker has taken on, ever (the scaler's arrival rate)."""
        self.gpu_budget: GpuBudget | None = None
        """The per-GPU session budget its GPUs share with other entries' replicas, if any."""
        self.cold_start: float | None = None
        """Seconds its last launch took from container start to warm, until its entry takes
        it (`Deployment.worker_changed`)."""
        self._launched_at: float | None = None
        self._container_started_at: float | None = None
        self._engine = engine
        self._on_change = on_change
        self._probe_timeout = probe_timeout
        self._stop_timeout = stop_timeout
        self._clock = clock
        self.status: Status = initial(clock(), managed=entry.managed)
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._actions: asyncio.Queue[Action] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: asyncio.Task[None] | None = None
        self._acting: asyncio.Task[None] | None = None
        self._acting_run = False
        self._publish_pending = False
        self._created: str | None = None
        self.last_failure_log: FailureLog | None = None
        """The last container this worker created (whether or not its Started was applied)."""
        self._prober: HealthProber | None = None
        self._status_waiters: list[asyncio.Future[None]] = []
        self._log = log.bind(
            worker_id=self.worker_id, pipeline=entry.pipeline, model_id=entry.model_id
        )

    @property
    def labels(self) -> tuple[str, str, str]:
        """The metrics labels of this replica: pipeline, model_id, replica index."""
        return (self.entry.pipeline, self.entry.model_id, str(self.replica))

    @property
    def gpu_devices(self) -> list[dict[str, Any]] | None:
        return None if self.gpus is None else [g.described() for g in self.gpus]

    @property
    def entry_id(self) -> str:
        return self.entry.worker_id

    @property
    def routable(self) -> bool:
        """Warm, not draining, its running streams known: it may take new work."""
        return (
            self.status.state is State.WARM
            and not self.draining
            and not self.held
            and self.sessions_known
        )

    @property
    def reports_idle(self) -> bool:
        """Its last health answer says it runs no stream (pytrickle's and ai-runner's IDLE)."""
        probe = self.status.last_probe
        word = (probe.reported or "").strip(" \t\r\n\x0b\x0c") if probe is not None else ""
        return word.isascii() and word.upper() == "IDLE"

    @property
    def upstream_url(self) -> str:
        """Where the worker's own HTTP server answers (its published loopback port when
        managed)."""
        if self.spec is not None:
            return f"http://127.0.0.1:{self.spec.host_port}"
        return (self.entry.url or "").rstrip("/")

    @property
    def health_url(self) -> str:
        return f"{self.upstream_url}{self.entry.health_path}"

    def update_entry(self, entry: ModelEntry, policy: Policy) -> None:
        """Apply an entry change that leaves the container as it is (price, capacity, token,
        health path): the worker keeps running, its sessions too."""
        self.entry, self.policy = entry, policy
        self._log = log.bind(
            worker_id=self.worker_id, pipeline=entry.pipeline, model_id=entry.model_id
        )
        self.metrics.worker_capacity.labels(*self.labels).set(entry.capacity)
        self._publish()

    @property
    def in_use(self) -> int:
        """Slots taken: live sessions and pass-through requests in flight."""
        return self.sessions + self.requests

    @property
    def effective_capacity(self) -> int:
        """Its capacity, lowered to what a shared GPU's session budget leaves (in use + room)."""
        room = self.gpu_budget.room(self) if self.gpu_budget is not None else None
        if room is None:
            return self.entry.capacity
        return min(self.entry.capacity, self.in_use + room)

    @property
    def load(self) -> ReplicaLoad:
        """Routing's view of this replica, as it is now."""
        return ReplicaLoad(
            self.worker_id, self.replica, self.routable, self.in_use, self.effective_capacity
        )

    def set_sessions(self, sessions: int) -> None:
        """Sessions now live on this worker; re-publishes its free capacity."""
        if sessions != self.sessions:
            self.starts += max(sessions - self.sessions, 0)
            self.sessions = sessions
            self.metrics.sessions_active.labels(*self.labels).set(sessions)
            self._publish_soon()

    def add_request(self, delta: int) -> None:
        """A pass-through request took (+1) or gave back (-1) a slot."""
        self.requests += delta
        self.metrics.requests_in_flight.labels(*self.labels).set(self.requests)
        self._publish_soon()

    def _publish_soon(self) -> None:
        """Publish a change of slots in use once the call that made it has answered: routing
        reads `in_use` directly, so only what is advertised waits for the next loop turn, and
        a burst of changes is published once."""
        if self.gpu_budget is not None:
            # Under a shared GPU budget the other entries on its GPUs must advertise less at
            # once: between this change and the next loop turn they would promise it twice.
            self._publish()
            return
        if not self._publish_pending:
            self._publish_pending = True
            asyncio.get_running_loop().call_soon(self._publish_now)

    def _publish_now(self) -> None:
        self._publish_pending = False
        self._publish()

    def hold(self, held: bool) -> None:
        """The operator's drain (True) or undrain (False)."""
        if held != self.held:
            self.held = held
            self._log.info("worker drained by the operator" if held else "worker undrained")
            self._publish()

    def _retry_in(self) -> dict[str, float]:
        """`next_attempt_in` for a log line, when a retry is scheduled."""
        if self.status.state in (State.BACKOFF, State.FAILED) and self.status.next_attempt_at:
            return {"next_attempt_in": round(self.status.next_attempt_at - self._clock(), 1)}
        return {}

    def notify(self) -> None:
        """Something routing depends on changed outside the worker (its streams became known):
        publish again."""
        self._publish()

    def set_draining(self, draining: bool) -> None:
        """Draining: keep its sessions, take no new ones, and leave the advertised set."""
        if draining != self.draining:
            self.draining = draining
            self._log.info("worker draining" if draining else "worker taking sessions again")
            self._publish()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._react(), name=f"worker-{self.worker_id}"),
            asyncio.create_task(self._act(), name=f"worker-actions-{self.worker_id}"),
        ]

    def post(self, event: Event) -> None:
        self._events.put_nowait(event)

    def halt(self) -> list[asyncio.Task[None]]:
        """Cancel the worker's tasks at once: no state change is published after this."""
        tasks = [*self._tasks, *([self._probe] if self._probe else [])]
        for task in tasks:
            task.cancel()
        self._tasks, self._probe = [], None
        if self._prober is not None:
            self._prober.close()
        return tasks

    async def close(self, settle: float = 60.0) -> None:
        """Stop following the worker; its known container is left as it is. An action in
        flight is let finish (within `settle` seconds), and a container it created that the
        worker never took in is removed."""
        for task in self.halt():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        acting = self._acting
        if acting is not None and not acting.done():
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(acting), settle)
        created = self._created
        if created is not None and created != self.status.container_id:
            self._log.info(
                "removing a container created as the worker was closed", container_id=created[:12]
            )
            try:
                await self._engine.remove(created)
            except EngineError as exc:
                self._log.warning("could not remove container", error=str(exc))

    async def wait_for(self, predicate: Callable[[Status], bool], timeout: float) -> Status:
        """Wait until the status satisfies `predicate` (used by reload and tests)."""
        await self.wait_until(lambda: predicate(self.status), timeout)
        return self.status

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait until `condition` holds; woken by each change the worker reports (state,
        sessions, draining), not by polling. TimeoutError names the state it was left in."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    changed = asyncio.get_running_loop().create_future()
                    self._status_waiters.append(changed)
                    await changed
        except TimeoutError:
            raise TimeoutError(f"{self.worker_id} still {self.status.state}") from None

    # -- the loop -------------------------------------------------------------------------------

    async def _react(self) -> None:
        while True:
            wake = self.status.next_wake()
            try:
                if wake is None:
                    event = await self._events.get()
                else:
                    async with asyncio.timeout(max(0.0, wake - self._clock())):
                        event = await self._events.get()
            except TimeoutError:
                event = Tick()
            self._apply(event)

    def _apply(self, event: Event) -> None:
        before = self.status
        self.status, actions = decide(before, event, self._clock(), self.policy)
        if self.status.container_id and self.status.container_id != before.container_id:
            self._log = self._log.bind(container_id=self.status.container_id[:12])
        if self.status.state is not before.state:
            self._observe(before)
            state = self.status.state
            relaunched = self.status.restarts > before.restarts and before.state in RUNNING
            self._log.log(
                logging.WARNING if relaunched else state_severity(before.state, state),
                "worker recovered"
                if state is State.WARM and before.state in TROUBLE
                else "worker failed; starting it again at once"
                if relaunched
                else "worker state",
                state=str(state),
                previous=str(before.state),
                reason=self.status.reason or None,
                container_id=(self.status.container_id or before.container_id or "")[:12] or None,
                restarts=self.status.restarts,
                **self._retry_in(),
            )
        self._publish()
        for action in actions:
            if isinstance(action, Probe):
                self._probe = asyncio.create_task(self._run_probe())
            else:
                self._actions.put_nowait(action)

    def _publish(self) -> None:
        self._publish_pending = False
        if self._on_change is not None:
            self._on_change(self)
        waiters, self._status_waiters = self._status_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _observe(self, before: Status) -> None:
        """Metrics of a state change: the state series, restarts, time to warm."""
        labels = self.labels
        now, state = self._clock(), self.status.state
        self.metrics.set_state(*labels, str(state))
        if self.status.restarts > before.restarts and before.state is not State.FAILED:
            # A retry after a failed pull or start relaunches no container: not a restart.
            self.metrics.container_restarts.labels(*labels).inc(
                self.status.restarts - before.restarts
            )
        if state in (State.PULLING, State.STARTING) and before.state not in (
            State.PULLING,
            State.STARTING,
        ):
            self._launched_at = now
        if state is State.STARTING and before.state is not State.STARTING:
            self._container_started_at = now
        if state is State.WARM and self._container_started_at is not None:
            self.cold_start = max(now - self._container_started_at, 0.0)
            self._container_started_at = None
        if state is State.WARM and self._launched_at is not None:
            self.metrics.time_to_warm.labels(*labels).observe(max(now - self._launched_at, 0.0))
            self._launched_at = None

    async def _run_probe(self) -> None:
        target = self.status.container_id
        try:
            url = self.health_url
            if self._prober is None or self._prober.url != url:
                if self._prober is not None:
                    self._prober.close()
                self._prober = HealthProber(url)
            result = await self._prober.probe(self._probe_timeout)
        except Exception as exc:  # a probe must always answer, or probing would stop
            result = ProbeResult(
                Verdict.FAILED, f"probe error: {type(exc).__name__}", failure=ProbeFailure.OTHER
            )
        labels = self.labels
        self.metrics.probe_duration.labels(*labels).observe(result.latency)
        if result.failure is not None:
            self.metrics.probe_failures.labels(*labels, str(result.failure)).inc()
        self.post(Probed(result, target))

    @property
    def creating(self) -> bool:
        """A container for this worker is being pulled for, created or started right now."""
        return self._acting is not None and not self._acting.done() and self._acting_run

    async def _act(self) -> None:
        while True:
            action = await self._actions.get()
            # Each action runs as a task of its own that the worker's cancellation does not
            # reach: a create/start already sent to Docker finishes, and close() cleans up
            # what it made, so no container is ever left behind untracked.
            self._acting_run = isinstance(action, Pull | Run)
            self._acting = asyncio.create_task(self._perform_logged(action))
            await asyncio.shield(self._acting)

    async def _perform_logged(self, action: Action) -> None:
        try:
            await self._perform(action)
        except Exception:
            self._log.exception("worker action failed", action=type(action).__name__)

    async def _perform(self, action: Action) -> None:
        spec = self.spec
        if spec is None:
            return
        match action:
            case Discard(container_id, failed):
                if failed:
                    await self._keep_last_lines(container_id)
                try:
                    await self._engine.remove(container_id)
                except EngineError as exc:
                    self._log.warning("could not remove container", error=str(exc))
            case Pull():
                started = time.monotonic()
                try:
                    result = await self._engine.ensure_image(spec.image, self.entry.pull)
                except EngineError as exc:
                    self.metrics.image_pulls.labels("failed").inc()
                    self.post(PullFailed(str(exc), isinstance(exc, EngineUnavailable)))
                    return
                if not result.pulled:
                    self.metrics.image_pulls.labels("present").inc()
                elif result.joined:
                    self.metrics.image_pulls.labels("shared").inc()
                else:
                    self.metrics.image_pulls.labels("pulled").inc()
                    self.metrics.image_pull_duration.observe(time.monotonic() - started)
                self.image_digest = result.image.digest
                self.post(Pulled())
            case Run():
                try:
                    info = await self._engine.run(spec)
                except EngineError as exc:
                    self.post(StartFailed(str(exc), isinstance(exc, EngineUnavailable)))
                    return
                self._created = info.id
                self.post(Started(info.id))
            case StopContainer(container_id):
                try:
                    await self._engine.stop(container_id, self._stop_timeout)
                    await self._engine.remove(container_id)
                except EngineError as exc:
                    self._log.warning("could not stop container", error=str(exc))
                self.post(Stopped())

    async def _keep_last_lines(self, container_id: str) -> None:
        """A failed container's last log lines, read before it is removed: they usually say
        why (the traceback of a crash), and `docker logs` cannot once it is gone."""
        try:
            lines = await self._engine.logs(container_id, tail=CRASH_LOG_LINES)
        except EngineError as exc:
            self._log.warning("could not read the failed container's log", error=str(exc))
            return
        self.last_failure_log = FailureLog(
            container_id, self.status.last_failure, self._clock(), tuple(lines)
        )
        self._log.warning(
            "failed container's last log lines",
            container_id=container_id[:12],
            reason=self.status.last_failure or None,
            last_lines=lines[-12:],
        )

    # -- reporting ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What /workers shows for this worker."""
        status, entry, spec = self.status, self.entry, self.spec
        probe_result = status.last_probe
        gpus = spec.gpus if spec is not None else None
        return {
            "worker_id": self.worker_id,
            "entry_id": self.entry_id,
            "replica": self.replica,
            "pipeline": entry.pipeline,
            "model_id": entry.model_id,
            "capability": entry.capability,
            "kind": "managed" if entry.managed else "external",
            "state": str(status.state),
            "draining": self.draining or self.held,
            "drained_by_operator": self.held,
            "since": _iso(status.since),
            "reason": status.reason or None,
            "last_failure": status.last_failure or None,
            "restart_cause": status.restart_cause or None,
            "last_failure_log": self.last_failure_log.describe() if self.last_failure_log else None,
            "advertised": status.advertised,
            "url": self.proxy_url,
            "upstream": display_url(self.upstream_url),
            "container_id": status.container_id,
            "container_name": spec.name if spec else None,
            "image": str(spec.image) if spec else None,
            "image_digest": self.image_digest,
            "host_port": spec.host_port if spec else None,
            "gpus": None if gpus is None else gpus.shown,
            "gpu_devices": self.gpu_devices,
            "capacity": entry.capacity,
            "in_use": self.in_use,
            "sessions": self.sessions,
            "requests_in_flight": self.requests,
            "free": max(entry.capacity - self.in_use, 0) if self.routable else 0,
            "restarts": status.restarts,
            "crash_streak": status.crash_streak,
            "next_restart_at": _iso(status.next_attempt_at)
            if status.state in (State.BACKOFF, State.FAILED)
            else None,
            "consecutive_probe_failures": status.failures,
            "last_health": None
            if probe_result is None
            else {
                "verdict": str(probe_result.verdict),
                "status": probe_result.reported,
                "detail": probe_result.detail,
                "http_status": probe_result.http_status,
                "latency_ms": round(probe_result.latency * 1000, 2),
                "at": _iso(probe_result.at),
            },
        }


TROUBLE = frozenset({State.UNHEALTHY, State.BACKOFF, State.FAILED})
RUNNING = frozenset({State.STARTING, State.WARM, State.UNHEALTHY})
CRASH_LOG_LINES = 40


@dataclass(frozen=True)
class FailureLog:
    """What a failed container last wrote, kept after it was removed."""

    container_id: str
    reason: str
    at: float
    lines: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {
            "container_id": self.container_id,
            "reason": self.reason or None,
            "at": _iso(self.at),
            "lines": list(self.lines),
        }


def state_severity(before: State, after: State) -> int:
    """How loud a state change is: a worker failing is an error (FAILED: the image or the
    container cannot be had) or a warning (crashed, unhealthy); everything else, recovering
    included, is info."""
    if after is State.FAILED:
        return logging.ERROR
    if after in TROUBLE:
        return logging.WARNING
    return logging.INFO


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
