"""The per-worker state machine: pure decisions from (status, event, now) to (status, actions).

No I/O and no clock of its own, so every transition is testable in microseconds. The runner
(worker.py) feeds it events (probe results, Docker events, timer ticks, results of the actions
it performed) and performs the actions it returns.

Only WARM is advertised. Policy follows kubelet where it is better than go-livepeer's
(5 s polls, 2 failures, restart at once): N consecutive failed probes to go unhealthy and one
good one to come back; crash-loop back-off with the first restart immediate, then doubling from
`backoff_initial` to `backoff_max`, forgotten after `backoff_reset_after` seconds warm; LOADING
past the start-up timeout is a failure; ERROR restarts at once (through the back-off, whose
first step is immediate).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from byoc_orch.health import ProbeResult, Verdict


class State(StrEnum):
    COLD = "cold"
    PULLING = "pulling"
    STARTING = "starting"
    WARM = "warm"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


PROBED_STATES = frozenset({State.STARTING, State.WARM, State.UNHEALTHY})


@dataclass(frozen=True)
class Policy:
    startup_probe_interval: float = 0.1
    probe_interval: float = 1.0
    failure_threshold: int = 3
    unhealthy_restart_after: float = 30.0
    startup_timeout: float = 600.0
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    backoff_reset_after: float = 600.0


def backoff_delay(streak: int, policy: Policy) -> float:
    """Delay before restart number `streak` of an unbroken run of failures (1-based)."""
    if streak <= 1:
        return 0.0
    return float(min(policy.backoff_initial * 2 ** (streak - 2), policy.backoff_max))


@dataclass(frozen=True)
class Status:
    state: State
    since: float
    managed: bool = True
    reason: str = ""
    last_failure: str = ""
    container_id: str | None = None
    restarts: int = 0
    crash_streak: int = 0
    next_attempt_at: float | None = None
    failures: int = 0
    probing: bool = False
    next_probe_at: float | None = None
    started_at: float | None = None
    warm_since: float | None = None
    unhealthy_since: float | None = None
    last_probe: ProbeResult | None = None
    waiting_for_engine: bool = False
    """The last attempt failed only because Docker could not be reached: retried as soon as
    it answers again, and not counted as a crash."""
    restart_cause: str = ""
    """The failure that set off the restart in progress, kept through the pull and start that
    follow (whose own reasons, e.g. "worker reports LOADING", replace `reason`) until the worker
    is warm again: what an operator needs to see while it comes back, and what tells a restart
    after a failure from a planned start."""

    @property
    def advertised(self) -> bool:
        return self.state is State.WARM

    def next_wake(self) -> float | None:
        """When a Tick is next needed, or None when only an event can change anything."""
        times = [self.next_attempt_at] if self.state in (State.BACKOFF, State.FAILED) else []
        has_target = self.container_id is not None or not self.managed
        if self.state in PROBED_STATES and not self.probing and has_target:
            times.append(self.next_probe_at)
        return min((t for t in times if t is not None), default=None)


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """Run this worker (start-up, reload, or a retry falling due)."""


@dataclass(frozen=True)
class Adopt:
    """A running container with the wanted spec exists: follow it instead of starting one."""

    container_id: str


@dataclass(frozen=True)
class Pulled:
    pass


@dataclass(frozen=True)
class PullFailed:
    reason: str
    engine_down: bool = False


@dataclass(frozen=True)
class Started:
    container_id: str


@dataclass(frozen=True)
class StartFailed:
    reason: str
    engine_down: bool = False


@dataclass(frozen=True)
class EngineBack:
    """Docker answers again after an outage."""


@dataclass(frozen=True)
class Probed:
    """A probe's result; `container_id` says which container it was taken of, so a result
    about a container already replaced is dropped (None: not known, accepted)."""

    result: ProbeResult
    container_id: str | None = None


@dataclass(frozen=True)
class Died:
    container_id: str
    reason: str


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Stopped:
    pass


Event = (
    Launch
    | Adopt
    | Pulled
    | PullFailed
    | Started
    | StartFailed
    | Probed
    | Died
    | Tick
    | Stop
    | Stopped
    | EngineBack
)

# -- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pull:
    pass


@dataclass(frozen=True)
class Run:
    pass


@dataclass(frozen=True)
class Probe:
    pass


@dataclass(frozen=True)
class Discard:
    """Stop (briefly) and remove a container that is being replaced."""

    container_id: str
    failed: bool = field(default=False, compare=False)
    """It crashed or was judged broken: keep its last log lines before it goes (a hint for
    the runner, not part of what is decided)."""


@dataclass(frozen=True)
class StopContainer:
    container_id: str


Action = Pull | Run | Probe | Discard | StopContainer


def initial(now: float, *, managed: bool) -> Status:
    return Status(State.COLD, since=now, managed=managed)


def decide(status: Status, event: Event, now: float, policy: Policy) -> tuple[Status, list[Action]]:
    """The next status and the actions to perform, in order."""
    match event:
        case Launch():
            return _launch(status, now)
        case Adopt(container_id):
            return _starting(status, now, container_id, reason="adopted running container")
        case Pulled() if status.state is State.PULLING:
            return _move(status, State.STARTING, now, reason=""), [Run()]
        case PullFailed(reason, engine_down) if status.state is State.PULLING:
            return _failure(status, now, policy, reason, state=State.FAILED, engine=engine_down)
        case Started(container_id) if status.state is State.STARTING and not status.container_id:
            return _starting(status, now, container_id, reason="")
        case Started(container_id):
            return status, [Discard(container_id)]  # stopped or replaced while it started
        case StartFailed(reason, engine_down) if status.state is State.STARTING:
            return _failure(status, now, policy, reason, state=State.FAILED, engine=engine_down)
        case EngineBack() if status.waiting_for_engine and status.state in (
            State.BACKOFF,
            State.FAILED,
        ):
            return _launch(replace(status, restarts=status.restarts + 1), now)
        case Probed(result, container_id):
            if status.managed and container_id is not None and container_id != status.container_id:
                return status, []
            return _probed(replace(status, probing=False, last_probe=result), result, now, policy)
        case Died(container_id, reason) if container_id == status.container_id:
            return _died(status, now, policy, reason)
        case Tick():
            return _tick(status, now, policy)
        case Stop():
            if status.container_id and status.managed:
                return _move(status, State.STOPPING, now), [StopContainer(status.container_id)]
            return _move(status, State.STOPPED, now, container_id=None), []
        case Stopped():
            return _move(status, State.STOPPED, now, container_id=None), []
    return status, []


def _launch(status: Status, now: float) -> tuple[Status, list[Action]]:
    if not status.managed:
        return _starting(status, now, None, reason="")
    actions: list[Action] = []
    if status.container_id:
        actions.append(Discard(status.container_id))
    pulling = _move(
        status,
        State.PULLING,
        now,
        container_id=None,
        waiting_for_engine=False,
        next_attempt_at=None,
        started_at=None,
        next_probe_at=None,
        probing=False,
        failures=0,
    )
    return pulling, [*actions, Pull()]


def _starting(
    status: Status, now: float, container_id: str | None, reason: str
) -> tuple[Status, list[Action]]:
    moved = _move(
        status,
        State.STARTING,
        now,
        reason=reason,
        container_id=container_id,
        started_at=now,
        failures=0,
        probing=True,
        next_probe_at=now,
    )
    return moved, [Probe()]


def _probed(
    status: Status, result: ProbeResult, now: float, policy: Policy
) -> tuple[Status, list[Action]]:
    if status.state not in PROBED_STATES:
        return status, []
    after, actions = _judge(status, result, now, policy)
    if after.state in PROBED_STATES:
        interval = (
            policy.startup_probe_interval
            if after.state is State.STARTING
            else policy.probe_interval
        )
        after = replace(after, next_probe_at=now + interval)
    return after, actions


def _judge(
    status: Status, result: ProbeResult, now: float, policy: Policy
) -> tuple[Status, list[Action]]:
    verdict = result.verdict
    if verdict is Verdict.WARM:
        return _healthy(status, now, policy), []
    if verdict is Verdict.ERROR and status.managed:
        return _failure(status, now, policy, result.detail)
    if status.state is State.STARTING:
        return _still_starting(status, result, now, policy)
    failures = status.failures + 1
    if status.state is State.WARM:
        if failures < policy.failure_threshold:
            return replace(status, failures=failures), []
        reason = f"{failures} failed health probes: {result.detail}"
        return _move(
            status, State.UNHEALTHY, now, reason=reason, failures=failures, unhealthy_since=now
        ), []
    unhealthy_for = now - _or(status.unhealthy_since, now)
    if status.managed and unhealthy_for >= policy.unhealthy_restart_after:
        return _failure(
            status, now, policy, f"unhealthy for {unhealthy_for:.0f} s: {result.detail}"
        )
    return replace(
        status, failures=failures, reason=f"{failures} failed health probes: {result.detail}"
    ), []


def _healthy(status: Status, now: float, policy: Policy) -> Status:
    if status.state is State.WARM:
        warm_for = now - _or(status.warm_since, now)
        streak = 0 if warm_for >= policy.backoff_reset_after else status.crash_streak
        return replace(status, failures=0, crash_streak=streak)
    return _move(
        status,
        State.WARM,
        now,
        reason="",
        restart_cause="",
        failures=0,
        warm_since=now,
        unhealthy_since=None,
    )


def _still_starting(
    status: Status, result: ProbeResult, now: float, policy: Policy
) -> tuple[Status, list[Action]]:
    waited = now - _or(status.started_at, now)
    if status.managed and waited > policy.startup_timeout:
        return _failure(
            status,
            now,
            policy,
            f"not healthy {policy.startup_timeout:g} s after start (last: {result.detail})",
        )
    return replace(status, reason=result.detail), []


def _died(status: Status, now: float, policy: Policy, reason: str) -> tuple[Status, list[Action]]:
    if status.state is State.STOPPING:
        return status, []  # the stop action's own Stopped follows once it is removed
    if status.state in (State.STARTING, State.WARM, State.UNHEALTHY):
        return _failure(status, now, policy, reason)
    return status, []


def _failure(
    status: Status,
    now: float,
    policy: Policy,
    reason: str,
    state: State = State.BACKOFF,
    *,
    engine: bool = False,
) -> tuple[Status, list[Action]]:
    """Withdraw, discard the container, and schedule the next attempt on the back-off. A
    failure of Docker itself (`engine`) is not the worker's: its back-off does not grow, and
    it is retried every `backoff_initial` seconds and at once when Docker answers again."""
    streak = status.crash_streak if engine else status.crash_streak + 1
    delay = policy.backoff_initial if engine else backoff_delay(streak, policy)
    actions: list[Action] = (
        [Discard(status.container_id, failed=True)] if status.container_id else []
    )
    failed = _move(
        status,
        state,
        now,
        reason=reason,
        last_failure=reason,
        restart_cause=reason,
        container_id=None,
        crash_streak=streak,
        next_attempt_at=now + delay,
        probing=False,
        failures=0,
        waiting_for_engine=engine,
    )
    if delay == 0:
        relaunched, more = _launch(replace(failed, restarts=failed.restarts + 1), now)
        return replace(relaunched, reason=reason), [*actions, *more]
    return failed, actions


def _tick(status: Status, now: float, policy: Policy) -> tuple[Status, list[Action]]:
    if status.state in (State.BACKOFF, State.FAILED):
        if status.next_attempt_at is not None and now >= status.next_attempt_at:
            return _launch(replace(status, restarts=status.restarts + 1), now)
        return status, []
    due = status.next_probe_at is not None and now >= status.next_probe_at
    has_target = status.container_id is not None or not status.managed
    if status.state in PROBED_STATES and not status.probing and due and has_target:
        return replace(status, probing=True), [Probe()]
    return status, []


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _move(status: Status, state: State, now: float, **changes: object) -> Status:
    since = now if state is not status.state else status.since
    return replace(status, state=state, since=since, **changes)  # type: ignore[arg-type]
