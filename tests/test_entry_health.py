"""Entry health and `status`'s exit code: only a failure pages, never a plan."""

from __future__ import annotations

import pytest

from byoc_orch.entry_health import Health, Replica, entry_health, status_exit_code
from byoc_orch.exit_codes import EXIT_DEGRADED, EXIT_OK
from byoc_orch.worker_state import State

WARM = Replica(State.WARM, routable=True)
HELD = Replica(State.WARM, routable=False, held=True)
COMING = Replica(State.STARTING, routable=False)
PULLING = Replica(State.PULLING, routable=False)
CRASHED = Replica(State.BACKOFF, routable=False, restart_cause="container exited with code 1")
BACK_AFTER_CRASH = Replica(State.STARTING, routable=False, restart_cause="exited with code 137")
ADOPTED = Replica(State.WARM, routable=False)  # warm, its streams not known yet


@pytest.mark.parametrize(
    ("replicas", "wanted", "health"),
    [
        ([WARM, WARM], 2, Health.WARM),
        ([COMING], 1, Health.STARTING),
        ([PULLING, COMING], 2, Health.STARTING),
        ([WARM, COMING], 2, Health.STARTING),
        ([], 1, Health.STARTING),
        ([ADOPTED], 1, Health.STARTING),
        ([HELD], 1, Health.DRAINED),
        ([HELD, HELD], 2, Health.DRAINED),
        ([WARM, HELD], 2, Health.WARM),
        ([HELD, COMING], 2, Health.STARTING),
        ([CRASHED], 1, Health.DOWN),
        ([BACK_AFTER_CRASH], 1, Health.DOWN),
        ([WARM, CRASHED], 2, Health.DEGRADED),
        ([WARM, BACK_AFTER_CRASH], 2, Health.DEGRADED),
        ([HELD, CRASHED], 2, Health.DOWN),
        ([Replica(State.UNHEALTHY, routable=False)], 1, Health.DOWN),
        ([Replica(State.FAILED, routable=False)], 1, Health.DOWN),
    ],
)
def test_entry_health(replicas: list[Replica], wanted: int, health: Health) -> None:
    assert entry_health(True, replicas, wanted) is health


def test_a_cold_entry_is_cold_whatever_its_replicas() -> None:
    assert entry_health(False, [CRASHED], 1) is Health.COLD


def test_only_a_failure_or_a_daemon_not_ready_pages() -> None:
    planned = [Health.WARM, Health.COLD, Health.STARTING, Health.DRAINED]
    assert status_exit_code(planned, ready=True) == EXIT_OK
    assert status_exit_code([*planned, Health.DEGRADED], ready=True) == EXIT_DEGRADED
    assert status_exit_code([Health.DOWN], ready=True) == EXIT_DEGRADED
    assert status_exit_code(planned, ready=False) == EXIT_DEGRADED
