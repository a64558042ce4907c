"""The benchmarks' targets, in one place: DESIGN.md §5 ("Targets"), quoted, and how each figure
is judged against it. Every bench takes its targets from here, so a table never reports against
a looser number than DESIGN's; a miss prints **NO** and is `"met": false` in the JSON.

Where §5 names no statistic, the stricter reading is taken (the p99 for byoc-orch's own share of a
crash's withdrawal). A few rows judge what §5 says in words ("not body-sized", "listed 100 % of the
time"): their limits are marked as this suite's reading of §5, not §5's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    design: str
    """DESIGN §5's words, verbatim."""
    text: str
    """What the table's target column prints."""
    judge: str
    limit: float
    strict: bool = False
    at_least: bool = False
    minimum: float | None = None

    def figure(self) -> dict[str, Any]:
        """The keyword arguments of a `Figure` judged against this target."""
        return {
            "target": self.text,
            "judge": self.judge,
            "limit": self.limit,
            "strict": self.strict,
            "at_least": self.at_least,
            "minimum": self.minimum,
            "design": self.design,
        }


CRASH_WITHDRAWN = Target(
    "crash (SIGKILL of a worker container) → capability withdrawn: p99 ≤ 100 ms",
    "p99 ≤ 100 ms",
    "p99",
    100.0,
)
CRASH_OWN_SHARE = Target(
    "crash … → capability withdrawn: … byoc-orch's own share ≤ 5 ms",
    "p99 ≤ 5 ms",
    "p99",
    5.0,
)
RESTART_ALL_WARM = Target(
    "daemon restart, unchanged aiModels.json → all warm again p50 ≤ 0.5 s",
    "p50 ≤ 0.5 s",
    "p50",
    0.5,
)
EXEC_TO_FIRST_CALL = Target(
    "daemon restart … exec → first proxied call served p50 ≤ 0.3 s", "p50 ≤ 0.3 s", "p50", 0.3
)
RESTART_RECREATED = Target(
    "daemon restart, unchanged aiModels.json → … 0 containers recreated", "0", "max", 0.0
)
RELEASED_AT_ORCHESTRATOR = Target(
    "a session ended on the worker → released at the orchestrator ≤ 1 s after byoc-orch notices",
    "p99 ≤ 1000 ms",
    "p99",
    1000.0,
)
RELEASE_STOPPED = Target(
    "a session released by the orchestrator → stop sent to its worker ≤ one heartbeat interval",
    "p99 ≤ 1000 ms (one interval, 1 s here)",
    "p99",
    1000.0,
)
NO_SESSION_RELEASED_EARLY = Target(
    "a restart, a drain, a rolling replacement: … 0 sessions released at the orchestrator that "
    "had not ended",
    "0",
    "max",
    0.0,
)
HEALTHY_TO_LISTED = Target(
    "container first healthy → advertised: p50 ≤ 100 ms", "p50 ≤ 100 ms", "p50", 100.0
)
SESSION_CALL_ADDED = Target(
    "session start/stop through byoc-orch adds ≤ 1 ms p50 over calling the container directly, "
    "also through an entry with 8 replicas",
    "p50 ≤ 1 ms",
    "p50",
    1.0,
)
SESSION_PAIR_ADDED = Target(
    "session start/stop through byoc-orch adds ≤ 1 ms p50 … (a start and a stop: 1 ms each)",
    "p50 ≤ 2 ms (1 ms a call)",
    "p50",
    2.0,
)
PASSTHROUGH_THROUGHPUT = Target(
    "pass-through of 64 MiB bodies: ≥ 50 % of direct throughput",
    "p50 ≥ 50 % of direct",
    "p50",
    50.0,
    at_least=True,
)
PASSTHROUGH_MEMORY = Target(
    "pass-through of 64 MiB bodies: … daemon memory not body-sized (this suite: growth under a "
    "quarter of one body)",
    "< 16 MiB (not body-sized)",
    "max",
    16.0,
    strict=True,
)
ROLLOUT_LISTED = Target(
    "rolling replacement of a multi-replica entry: capability listed 100 % of the time",
    "100 %",
    "min",
    100.0,
    minimum=100.0,
)
ROLLOUT_CAPACITY = Target(
    "rolling replacement of a multi-replica entry: … (this suite: one replica at a time, so all "
    "but one keep taking sessions)",
    "≥ 3 of 4",
    "min",
    4.0,
    minimum=3.0,
)
NO_FAILED_CALLS = Target(
    "a restart, a drain, a rolling replacement: 0 failed calls through byoc-orch", "0", "max", 0.0
)
CPU_256 = Target(
    "256 workers polled every 1 s: < 5 % of one core", "mean < 5 %", "mean", 5.0, strict=True
)
RSS_256 = Target("256 workers polled every 1 s: … RSS ≤ 80 MB", "≤ 80 MB", "max", 80.0)
CPU_1024 = Target("1,024 workers: < 15 %", "mean < 15 %", "mean", 15.0, strict=True)
RSS_1024 = Target("1,024 workers: … ≤ 128 MB", "≤ 128 MB", "max", 128.0)
ONE_PULL = Target(
    "N entries sharing an image → exactly one pull", "exactly 1", "max", 1.0, minimum=1.0
)

SCALE = {256: (CPU_256, RSS_256), 1024: (CPU_1024, RSS_1024)}
"""The worker counts §5 sets CPU and RSS targets for; other sizes are reference figures."""

UNMEASURED = (
    "a shared GPU pool under a bursty demand trace: session starts refused ≤ ⅓ of the best "
    "static split's",
)
"""§5 targets no benchmark measures yet."""

# Rows §5 has no target for, held to the nearest one: not DESIGN's numbers, and marked so.
PASSTHROUGH_SMALL_ADDED = Target(
    "(not in §5) a small pass-through request, held to the session calls' ≤ 1 ms p50 added",
    "p50 ≤ 1 ms",
    "p50",
    1.0,
)
CONCURRENT_ERRORS = Target(
    "(not in §5) concurrent clients: every answer a 200, as §5 asks of restarts and rollouts",
    "0",
    "max",
    0.0,
)
