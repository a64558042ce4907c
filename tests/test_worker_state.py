"""The per-worker state machine: pure transitions, times injected as plain floats."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from byoc_orch.health import ProbeResult, Verdict
from byoc_orch.worker_state import (
    Action,
    Adopt,
    Died,
    Discard,
    Event,
    Launch,
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
    Stop,
    StopContainer,
    Stopped,
    Tick,
    backoff_delay,
    decide,
    initial,
)

POLICY = Policy(
    startup_probe_interval=0.5,
    probe_interval=2.0,
    failure_threshold=3,
    unhealthy_restart_after=30.0,
    startup_timeout=100.0,
    backoff_initial=10.0,
    backoff_max=300.0,
    backoff_reset_after=600.0,
)

WARM = ProbeResult(Verdict.WARM, "IDLE", http_status=200, reported="IDLE")
LOADING = ProbeResult(Verdict.LOADING, "worker reports LOADING", http_status=200)
ERROR = ProbeResult(Verdict.ERROR, "worker reports ERROR", http_status=200, reported="ERROR")
FAILED = ProbeResult(Verdict.FAILED, "connection refused")


def drive(
    status: Status, steps: Iterable[tuple[float, Event]], policy: Policy = POLICY
) -> tuple[Status, list[Action]]:
    """Apply each (now, event) in turn; the final status and every action, in order."""
    actions: list[Action] = []
    for now, event in steps:
        status, more = decide(status, event, now, policy)
        actions.extend(more)
    return status, actions


def warm_worker(at: float = 0.0, container: str = "c1") -> Status:
    """A managed worker launched at `at` and warm at `at + 2` in `container`."""
    status, _ = drive(
        initial(at, managed=True),
        [
            (at, Launch()),
            (at + 1, Pulled()),
            (at + 1, Started(container)),
            (at + 2, Probed(WARM)),
        ],
    )
    assert status.state is State.WARM
    return status


def external_warm(at: float = 0.0) -> Status:
    status, _ = drive(initial(at, managed=False), [(at, Launch()), (at + 1, Probed(WARM))])
    assert status.state is State.WARM
    return status


def assert_no_container_actions(actions: list[Action]) -> None:
    assert not [a for a in actions if isinstance(a, Pull | Run | Discard | StopContainer)]


# -- launching -------------------------------------------------------------------------------


def test_initial_is_cold_and_not_advertised() -> None:
    status = initial(5.0, managed=True)
    assert status.state is State.COLD
    assert status.since == 5.0
    assert status.managed
    assert not status.advertised
    assert status.next_wake() is None


def test_launch_from_cold_pulls() -> None:
    status, actions = decide(initial(0.0, managed=True), Launch(), 1.0, POLICY)
    assert status.state is State.PULLING
    assert status.since == 1.0
    assert actions == [Pull()]
    assert not status.advertised


def test_pulled_runs_the_container() -> None:
    status, actions = drive(initial(0.0, managed=True), [(0.0, Launch()), (3.0, Pulled())])
    assert status.state is State.STARTING
    assert actions == [Pull(), Run()]
    assert status.container_id is None
    assert not status.advertised


def test_pulled_outside_pulling_is_ignored() -> None:
    warm = warm_worker()
    status, actions = decide(warm, Pulled(), 10.0, POLICY)
    assert status == warm
    assert actions == []


def test_started_probes_at_once() -> None:
    status, actions = drive(
        initial(0.0, managed=True), [(0.0, Launch()), (1.0, Pulled()), (2.0, Started("c1"))]
    )
    assert status.state is State.STARTING
    assert status.container_id == "c1"
    assert status.probing
    assert status.started_at == 2.0
    assert actions == [Pull(), Run(), Probe()]
    assert status.next_wake() is None  # a probe is in flight


def test_loading_keeps_starting_and_is_never_advertised() -> None:
    status, _ = drive(
        initial(0.0, managed=True), [(0.0, Launch()), (1.0, Pulled()), (2.0, Started("c1"))]
    )
    for i in range(20):
        now = 3.0 + i
        status, actions = decide(status, Probed(LOADING), now, POLICY)
        assert status.state is State.STARTING
        assert not status.advertised
        assert actions == []
        assert status.reason == "worker reports LOADING"
        assert status.next_probe_at == now + POLICY.startup_probe_interval
        assert not status.probing


def test_warm_probe_makes_it_warm_and_advertised() -> None:
    status, actions = drive(
        initial(0.0, managed=True),
        [(0.0, Launch()), (1.0, Pulled()), (2.0, Started("c1")), (4.0, Probed(WARM))],
    )
    assert status.state is State.WARM
    assert status.advertised
    assert status.warm_since == 4.0
    assert status.since == 4.0
    assert status.reason == ""
    assert status.last_probe == WARM
    assert actions == [Pull(), Run(), Probe()]
    # The probe that made it warm was taken on the start-up interval; from then on the
    # steady interval applies.
    assert status.next_probe_at == 4.0 + POLICY.probe_interval
    status, actions = decide(status, Probed(WARM), 5.0, POLICY)
    assert status.next_probe_at == 5.0 + POLICY.probe_interval
    assert status.warm_since == 4.0
    assert actions == []


def test_adopt_follows_the_running_container() -> None:
    status, actions = decide(initial(0.0, managed=True), Adopt("c9"), 1.0, POLICY)
    assert status.state is State.STARTING
    assert status.container_id == "c9"
    assert status.probing
    assert actions == [Probe()]
    assert "adopted" in status.reason
    assert not status.advertised


# -- start-up timeout ------------------------------------------------------------------------


def test_loading_past_startup_timeout_is_a_failure() -> None:
    status, _ = drive(
        initial(0.0, managed=True), [(0.0, Launch()), (1.0, Pulled()), (2.0, Started("c1"))]
    )
    status, actions = decide(status, Probed(LOADING), 2.0 + POLICY.startup_timeout, POLICY)
    assert status.state is State.STARTING  # at the limit, not past it
    assert actions == []

    now = 2.0 + POLICY.startup_timeout + 0.5
    status, actions = decide(status, Probed(LOADING), now, POLICY)
    assert status.state is not State.STARTING
    assert not status.advertised
    # The first failure of a streak relaunches at once, discarding the old container first.
    assert actions == [Discard("c1"), Pull()]
    assert status.state is State.PULLING
    assert status.container_id is None
    assert status.restarts == 1
    assert status.crash_streak == 1
    assert "100 s" in status.reason
    assert "not healthy" in status.reason
    assert "worker reports LOADING" in status.reason


def test_startup_timeout_with_a_streak_backs_off() -> None:
    status = Status(
        State.STARTING,
        since=10.0,
        container_id="c2",
        started_at=10.0,
        crash_streak=1,
        restarts=1,
    )
    status, actions = decide(status, Probed(FAILED), 160.0, POLICY)
    assert status.state is State.BACKOFF
    assert actions == [Discard("c2")]
    assert status.next_attempt_at == 160.0 + POLICY.backoff_initial
    assert "not healthy 100 s after start" in status.reason


# -- ERROR -----------------------------------------------------------------------------------


def _starting(container: str = "c1") -> Status:
    status, _ = drive(
        initial(0.0, managed=True), [(0.0, Launch()), (1.0, Pulled()), (2.0, Started(container))]
    )
    return status


def _unhealthy(container: str = "c1") -> Status:
    status, _ = drive(
        warm_worker(container=container),
        [(10.0, Probed(FAILED)), (12.0, Probed(FAILED)), (14.0, Probed(FAILED))],
    )
    assert status.state is State.UNHEALTHY
    return status


@pytest.mark.parametrize(
    "before",
    [_starting(), warm_worker(), _unhealthy()],
    ids=["starting", "warm", "unhealthy"],
)
def test_error_discards_and_relaunches_at_once(before: Status) -> None:
    status, actions = decide(before, Probed(ERROR), 20.0, POLICY)
    assert actions == [Discard("c1"), Pull()]
    assert status.state is State.PULLING
    assert not status.advertised
    assert status.restarts == before.restarts + 1
    assert status.crash_streak == 1
    assert "ERROR" in status.reason
    assert status.container_id is None


# -- WARM and UNHEALTHY ----------------------------------------------------------------------


def test_failed_probes_below_threshold_stay_warm() -> None:
    status = warm_worker()
    for i in range(POLICY.failure_threshold - 1):
        status, actions = decide(status, Probed(FAILED), 10.0 + i, POLICY)
        assert status.state is State.WARM
        assert status.advertised
        assert status.failures == i + 1
        assert actions == []


def test_failed_probes_at_threshold_go_unhealthy() -> None:
    status = warm_worker()
    steps: list[tuple[float, Event]] = [
        (10.0 + i, Probed(FAILED)) for i in range(POLICY.failure_threshold)
    ]
    status, actions = drive(status, steps)
    assert status.state is State.UNHEALTHY
    assert not status.advertised
    assert actions == []
    assert status.unhealthy_since == 10.0 + POLICY.failure_threshold - 1
    assert status.reason == "3 failed health probes: connection refused"
    assert status.container_id == "c1"


def test_a_good_probe_between_failures_resets_the_count() -> None:
    status, _ = drive(
        warm_worker(),
        [
            (10.0, Probed(FAILED)),
            (12.0, Probed(FAILED)),
            (14.0, Probed(WARM)),
            (16.0, Probed(FAILED)),
            (18.0, Probed(FAILED)),
        ],
    )
    assert status.state is State.WARM
    assert status.failures == 2


def test_one_warm_probe_brings_unhealthy_back() -> None:
    status, actions = decide(_unhealthy(), Probed(WARM), 16.0, POLICY)
    assert status.state is State.WARM
    assert status.advertised
    assert status.failures == 0
    assert status.unhealthy_since is None
    assert status.warm_since == 16.0
    assert status.reason == ""
    assert actions == []


def test_managed_unhealthy_too_long_restarts() -> None:
    status = _unhealthy()
    since = status.unhealthy_since
    assert since is not None
    status, actions = decide(status, Probed(FAILED), since + 29.0, POLICY)
    assert status.state is State.UNHEALTHY
    assert actions == []
    assert status.failures == 4

    status, actions = decide(status, Probed(FAILED), since + 30.0, POLICY)
    assert actions == [Discard("c1"), Pull()]
    assert status.state is State.PULLING
    assert status.restarts == 1
    assert "unhealthy for 30 s" in status.reason


# -- external workers ------------------------------------------------------------------------


def test_external_launch_probes_without_container_actions() -> None:
    status, actions = decide(initial(0.0, managed=False), Launch(), 1.0, POLICY)
    assert status.state is State.STARTING
    assert status.container_id is None
    assert actions == [Probe()]


def test_external_never_gets_container_actions() -> None:
    status = initial(0.0, managed=False)
    steps: list[tuple[float, Event]] = [(0.0, Launch()), (1.0, Probed(ERROR))]
    steps += [(2.0 + i, Probed(LOADING)) for i in range(5)]  # never times out while starting
    steps += [(POLICY.startup_timeout * 10, Probed(LOADING)), (2000.0, Probed(WARM))]
    steps += [(2001.0 + i, Probed(ERROR)) for i in range(POLICY.failure_threshold)]
    steps += [(2100.0 + 100.0 * i, Probed(FAILED)) for i in range(50)]
    steps += [(99999.0, Tick()), (99999.0, Probed(ERROR)), (99999.0, Died("x", "gone"))]
    status, actions = drive(status, steps)
    assert_no_container_actions(actions)
    assert status.state is State.UNHEALTHY  # forever: nothing restarts an external worker
    assert status.restarts == 0
    assert status.crash_streak == 0
    assert not status.advertised


def test_external_error_counts_as_a_failed_probe() -> None:
    status, actions = decide(external_warm(), Probed(ERROR), 5.0, POLICY)
    assert status.state is State.WARM
    assert status.failures == 1
    assert actions == []

    status, actions = drive(status, [(6.0, Probed(ERROR)), (7.0, Probed(ERROR))])
    assert status.state is State.UNHEALTHY
    assert "worker reports ERROR" in status.reason
    assert actions == []


def test_external_stays_unhealthy_past_the_restart_limit() -> None:
    status, _ = drive(external_warm(), [(5.0 + i, Probed(FAILED)) for i in range(3)])
    assert status.state is State.UNHEALTHY
    late = 5.0 + POLICY.unhealthy_restart_after * 100
    status, actions = decide(status, Probed(FAILED), late, POLICY)
    assert status.state is State.UNHEALTHY
    assert actions == []
    status, actions = decide(status, Probed(WARM), 1e6, POLICY)
    assert status.state is State.WARM
    assert actions == []


def test_external_stop_is_immediate() -> None:
    status, actions = decide(external_warm(), Stop(), 5.0, POLICY)
    assert status.state is State.STOPPED
    assert actions == []


# -- Docker events ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "before",
    [_starting(), warm_worker(), _unhealthy()],
    ids=["starting", "warm", "unhealthy"],
)
def test_died_withdraws_at_once(before: Status) -> None:
    status, actions = decide(before, Died("c1", "exited with code 137 (OOM)"), 20.0, POLICY)
    assert status.state is not State.WARM
    assert not status.advertised
    assert status.reason == "exited with code 137 (OOM)"
    assert actions == [Discard("c1"), Pull()]
    assert status.restarts == before.restarts + 1


def test_died_for_another_container_is_ignored() -> None:
    warm = warm_worker(container="c1")
    status, actions = decide(warm, Died("c0", "old one exited"), 20.0, POLICY)
    assert status == warm
    assert actions == []


def test_died_in_backoff_is_ignored() -> None:
    status = Status(State.BACKOFF, since=0.0, container_id=None, next_attempt_at=50.0)
    after, actions = decide(status, Died("c1", "late event"), 1.0, POLICY)
    assert after == status
    assert actions == []


# -- back-off --------------------------------------------------------------------------------


def test_backoff_delay_sequence() -> None:
    delays = [backoff_delay(streak, POLICY) for streak in range(0, 10)]
    assert delays == [0.0, 0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]


def _crash(status: Status, now: float, container: str) -> tuple[Status, list[Action]]:
    """From PULLING: pull, start `container`, and let it die at `now`."""
    assert status.state is State.PULLING
    return drive(
        status,
        [(now, Pulled()), (now, Started(container)), (now, Died(container, "exited 1"))],
    )


def test_repeated_crashes_back_off_doubling_to_the_cap() -> None:
    status, _ = drive(initial(0.0, managed=True), [(0.0, Launch())])
    now = 0.0
    # First crash of the streak: relaunch at once.
    status, actions = _crash(status, now, "c0")
    assert status.state is State.PULLING
    assert actions[-2:] == [Discard("c0"), Pull()]
    assert status.restarts == 1
    assert status.next_wake() is None

    expected = [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    for n, delay in enumerate(expected, start=1):
        now += 1.0
        restarts = status.restarts
        status, actions = _crash(status, now, f"c{n}")
        assert status.state is State.BACKOFF
        assert not status.advertised
        assert actions == [Run(), Probe(), Discard(f"c{n}")]
        assert status.next_attempt_at is not None
        assert status.next_attempt_at - now == delay
        assert status.next_wake() == status.next_attempt_at
        assert status.restarts == restarts
        assert status.crash_streak == n + 1

        early, nothing = decide(status, Tick(), status.next_attempt_at - 0.01, POLICY)
        assert early == status
        assert nothing == []

        now = status.next_attempt_at
        status, actions = decide(status, Tick(), now, POLICY)
        assert status.state is State.PULLING
        assert actions == [Pull()]
        assert status.restarts == restarts + 1
        assert status.next_attempt_at is None
    assert status.restarts == 1 + len(expected)


def test_tick_after_the_due_time_relaunches() -> None:
    status = Status(State.BACKOFF, since=0.0, next_attempt_at=10.0, crash_streak=2, restarts=3)
    status, actions = decide(status, Tick(), 25.0, POLICY)
    assert status.state is State.PULLING
    assert actions == [Pull()]
    assert status.restarts == 4
    assert status.crash_streak == 2  # only staying warm resets the streak


def test_streak_resets_after_staying_warm_but_restarts_do_not() -> None:
    status, _ = drive(initial(0.0, managed=True), [(0.0, Launch())])
    status, _ = _crash(status, 0.0, "c0")  # streak 1, immediate
    status, _ = _crash(status, 1.0, "c1")  # streak 2, BACKOFF
    assert status.crash_streak == 2
    assert status.next_attempt_at is not None
    status, _ = drive(
        status,
        [
            (11.0, Tick()),
            (12.0, Pulled()),
            (12.0, Started("c2")),
            (13.0, Probed(WARM)),  # warm since 13
        ],
    )
    assert status.state is State.WARM
    assert status.restarts == 2

    status, _ = decide(status, Probed(WARM), 13.0 + POLICY.backoff_reset_after - 1, POLICY)
    assert status.crash_streak == 2  # not yet
    status, _ = decide(status, Probed(WARM), 13.0 + POLICY.backoff_reset_after, POLICY)
    assert status.crash_streak == 0
    assert status.restarts == 2

    # The next crash is the first of a new streak: immediate again.
    status, actions = decide(status, Died("c2", "exited 1"), 700.0, POLICY)
    assert actions == [Discard("c2"), Pull()]
    assert status.state is State.PULLING
    assert status.crash_streak == 1
    assert status.restarts == 3


def test_streak_survives_a_short_warm_spell() -> None:
    status, _ = drive(initial(0.0, managed=True), [(0.0, Launch())])
    status, _ = _crash(status, 0.0, "c0")
    status, _ = drive(
        status,
        [(1.0, Pulled()), (1.0, Started("c1")), (2.0, Probed(WARM)), (50.0, Probed(WARM))],
    )
    status, actions = decide(status, Died("c1", "exited 1"), 60.0, POLICY)
    assert status.state is State.BACKOFF
    assert status.next_attempt_at == 60.0 + POLICY.backoff_initial
    assert actions == [Discard("c1")]


# -- pull and start failures -----------------------------------------------------------------


def test_pull_failure_retries_at_once_then_fails_on_the_backoff() -> None:
    status, _ = drive(initial(0.0, managed=True), [(0.0, Launch())])
    status, actions = decide(status, PullFailed("manifest unknown"), 1.0, POLICY)
    assert status.state is State.PULLING  # first failure of a streak: retried at once
    assert actions == [Pull()]
    assert status.reason == "manifest unknown"
    assert status.restarts == 1

    status, actions = decide(status, PullFailed("manifest unknown"), 2.0, POLICY)
    assert status.state is State.FAILED
    assert not status.advertised
    assert status.reason == "manifest unknown"
    assert actions == []
    assert status.next_attempt_at == 2.0 + POLICY.backoff_initial
    assert status.next_wake() == status.next_attempt_at

    status, actions = decide(status, Tick(), 11.0, POLICY)
    assert status.state is State.FAILED
    assert actions == []
    status, actions = decide(status, Tick(), 12.0, POLICY)
    assert status.state is State.PULLING
    assert actions == [Pull()]
    assert status.restarts == 2


def test_start_failure_fails_on_the_backoff() -> None:
    status = Status(State.PULLING, since=0.0, crash_streak=1, restarts=1)
    status, actions = drive(status, [(1.0, Pulled()), (2.0, StartFailed("port is in use"))])
    assert actions == [Run()]
    assert status.state is State.FAILED
    assert status.reason == "port is in use"
    assert status.container_id is None
    assert status.next_attempt_at == 2.0 + POLICY.backoff_initial

    status, actions = decide(status, Tick(), 12.0, POLICY)
    assert status.state is State.PULLING
    assert actions == [Pull()]


def test_pull_and_start_failures_outside_their_state_are_ignored() -> None:
    warm = warm_worker()
    for event in (PullFailed("late"), StartFailed("late")):
        status, actions = decide(warm, event, 10.0, POLICY)
        assert status == warm
        assert actions == []
    status, actions = decide(warm, Started("c7"), 10.0, POLICY)
    assert status == warm
    assert actions == [Discard("c7")], "a container nobody waits for is removed, not leaked"


# -- stopping --------------------------------------------------------------------------------


def test_stop_with_a_container_stops_it() -> None:
    status, actions = decide(warm_worker(), Stop(), 10.0, POLICY)
    assert status.state is State.STOPPING
    assert not status.advertised
    assert actions == [StopContainer("c1")]

    status, actions = decide(status, Stopped(), 11.0, POLICY)
    assert status.state is State.STOPPED
    assert status.container_id is None
    assert actions == []
    assert status.next_wake() is None


def test_stop_without_a_container_is_immediate() -> None:
    status, _ = drive(initial(0.0, managed=True), [(0.0, Launch())])
    status, actions = decide(status, Stop(), 1.0, POLICY)
    assert status.state is State.STOPPED
    assert actions == []


def test_died_while_stopping_waits_for_the_removal() -> None:
    """The die a stop causes is not the end: STOPPED means the container is also removed."""
    status, _ = decide(warm_worker(), Stop(), 10.0, POLICY)
    status, actions = decide(status, Died("c1", "exited 0"), 10.5, POLICY)
    assert status.state is State.STOPPING
    assert actions == []
    assert status.restarts == 0
    status, actions = decide(status, Stopped(), 11.0, POLICY)
    assert status.state is State.STOPPED
    assert status.container_id is None


def test_stopped_worker_ignores_ticks_and_probes() -> None:
    stopped, _ = drive(warm_worker(), [(10.0, Stop()), (11.0, Stopped())])
    status, actions = drive(stopped, [(1e6, Tick()), (1e6, Probed(ERROR))])
    assert status.state is State.STOPPED
    assert actions == []


# -- ticks and probes ------------------------------------------------------------------------


def test_tick_probes_only_when_due_and_not_already_probing() -> None:
    status, _ = decide(warm_worker(), Probed(WARM), 2.0, POLICY)  # next probe at 4.0
    assert status.next_probe_at == 4.0
    assert status.next_wake() == 4.0

    early, actions = decide(status, Tick(), 3.9, POLICY)
    assert early == status
    assert actions == []

    status, actions = decide(status, Tick(), 4.0, POLICY)
    assert status.probing
    assert actions == [Probe()]
    assert status.next_wake() is None

    again, actions = decide(status, Tick(), 9.0, POLICY)
    assert again == status
    assert actions == []


def test_tick_in_starting_uses_the_startup_interval() -> None:
    status, _ = drive(_starting(), [(3.0, Probed(LOADING))])
    assert status.next_wake() == 3.0 + POLICY.startup_probe_interval
    status, actions = decide(status, Tick(), 3.0 + POLICY.startup_probe_interval, POLICY)
    assert actions == [Probe()]


def test_probe_result_in_an_unprobed_state_only_clears_probing() -> None:
    before = Status(
        State.BACKOFF, since=0.0, probing=True, next_attempt_at=50.0, crash_streak=2, restarts=1
    )
    status, actions = decide(before, Probed(WARM), 5.0, POLICY)
    assert actions == []
    assert status.state is State.BACKOFF
    assert not status.probing
    assert not status.advertised
    assert status.next_attempt_at == 50.0
    assert status.crash_streak == 2
    assert status.since == 0.0


def test_next_wake() -> None:
    c = "c1"
    assert Status(State.WARM, since=0.0, container_id=c, next_probe_at=7.0).next_wake() == 7.0
    assert Status(State.UNHEALTHY, since=0.0, container_id=c, next_probe_at=7.0).next_wake() == 7.0
    assert Status(State.STARTING, since=0.0, container_id=c, next_probe_at=7.0).next_wake() == 7.0
    assert Status(State.STARTING, since=0.0, next_probe_at=7.0).next_wake() is None, (
        "a managed worker with no container yet has nothing to probe"
    )
    assert Status(State.STARTING, since=0.0, managed=False, next_probe_at=7.0).next_wake() == 7.0
    assert Status(State.WARM, since=0.0, next_probe_at=7.0, probing=True).next_wake() is None
    assert Status(State.WARM, since=0.0).next_wake() is None
    backoff = Status(State.BACKOFF, since=0.0, next_attempt_at=30.0, next_probe_at=7.0)
    assert backoff.next_wake() == 30.0
    assert Status(State.FAILED, since=0.0, next_attempt_at=40.0).next_wake() == 40.0
    for state in (State.COLD, State.PULLING, State.STOPPING, State.STOPPED):
        assert Status(state, since=0.0, next_probe_at=7.0, next_attempt_at=9.0).next_wake() is None


def test_only_warm_is_advertised() -> None:
    for state in State:
        assert Status(state, since=0.0).advertised is (state is State.WARM)


# -- known problems (see the reply that added this file) -------------------------------------


def test_relaunch_does_not_probe_before_the_new_container_runs() -> None:
    status = warm_worker(at=0.0)  # started at 1.0
    status, _ = drive(status, [(5000.0, Died("c1", "exited 1"))])  # immediate relaunch
    status, _ = drive(status, [(5001.0, Pulled())])  # Run in flight, no container yet
    assert status.state is State.STARTING
    assert status.container_id is None
    status, actions = decide(status, Tick(), 5001.0, POLICY)
    assert actions == []


def test_container_started_after_stop_is_stopped() -> None:
    status, _ = drive(initial(0.0, managed=True), [(0.0, Launch()), (1.0, Pulled())])
    status, _ = decide(status, Stop(), 1.5, POLICY)  # Run already performed by the runner
    status, actions = decide(status, Started("c1"), 2.0, POLICY)
    assert [a for a in actions if isinstance(a, StopContainer | Discard)] != []


def test_startup_timeout_counts_from_time_zero() -> None:
    status = Status(State.STARTING, since=0.0, container_id="c1", started_at=0.0)
    status, _ = decide(status, Probed(LOADING), POLICY.startup_timeout + 1.0, POLICY)
    assert status.state is not State.STARTING


def test_the_failure_behind_a_restart_is_kept_until_warm_again() -> None:
    cause = "container exited with code 137: killed by SIGKILL"
    crashed, _ = decide(warm_worker(), Died("c1", cause), 10.0, POLICY)
    assert crashed.restart_cause == cause
    loading, _ = drive(
        crashed, [(10.5, Pulled()), (10.6, Started("c2")), (10.7, Probed(LOADING, "c2"))]
    )
    assert loading.state is State.STARTING
    assert loading.reason == "worker reports LOADING"
    assert loading.restart_cause == cause
    back, _ = decide(loading, Probed(WARM, "c2"), 11.0, POLICY)
    assert back.state is State.WARM and back.restart_cause == ""
    # A planned start carries no cause.
    assert warm_worker().restart_cause == ""
    planned, _ = decide(back, Launch(), 12.0, POLICY)
    assert planned.restart_cause == ""
