"""An entry's health as an operator monitors it, and the exit code `byoc-orch status` gives.

Pure: from each replica's state to one word per entry. Only a failure pages: an entry is DOWN
(nothing serves) or DEGRADED (some replicas serve) when a replica failed and is not warm again
yet (crashed, unhealthy, a pull or start that failed, or coming back from one of those).
Everything an operator or a reload did on purpose is not a failure: `starting` (replicas coming
up after a start, a reload or `byoc-orch restart`; bounded by the start-up timeout, after which
a replica that is not warm has failed), `drained` (the operator's `drain` or `withdraw`), `cold`
(the entry is not warm in aiModels.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from byoc_orch.exit_codes import EXIT_DEGRADED, EXIT_OK
from byoc_orch.worker_state import State


class Health(StrEnum):
    WARM = "warm"
    COLD = "cold"
    STARTING = "starting"
    DRAINED = "drained"
    DEGRADED = "degraded"
    DOWN = "down"


PAGING = frozenset({Health.DEGRADED, Health.DOWN})
"""What `status` exits 3 for: a failure, never a plan."""

FAILING_STATES = frozenset({State.UNHEALTHY, State.BACKOFF, State.FAILED})


@dataclass(frozen=True)
class Replica:
    state: State
    routable: bool
    """Warm and taking new work."""
    held: bool = False
    """Drained by the operator."""
    restart_cause: str = ""
    """The failure it is coming back from, if any."""

    @property
    def failing(self) -> bool:
        return self.state in FAILING_STATES or (
            bool(self.restart_cause) and self.state is not State.WARM
        )


def entry_health(wants_warm: bool, replicas: Sequence[Replica], wanted: int) -> Health:
    if not wants_warm:
        return Health.COLD
    serving = sum(r.routable for r in replicas)
    if any(r.failing for r in replicas):
        return Health.DEGRADED if serving else Health.DOWN
    if replicas and all(r.held for r in replicas):
        return Health.DRAINED
    if serving >= wanted and serving > 0:
        return Health.WARM
    coming = [r for r in replicas if not r.routable and not r.held]
    if coming or len(replicas) < wanted:
        return Health.STARTING
    return Health.WARM  # the rest are drained by the operator; what is left serves


def status_exit_code(healths: Sequence[Health], *, ready: bool) -> int:
    """0 unless the daemon is not ready or an entry failed (3): for a monitoring check."""
    if not ready or any(h in PAGING for h in healths):
        return EXIT_DEGRADED
    return EXIT_OK
