"""The benchmark suite: `.venv/bin/python -m tests.bench [--quick] [--only NAME,...] [--json PATH]`.

Needs the harness (`bash scripts/test-env.sh`); exits 2 without it. Runs each benchmark on the
real engine, prints one table (measure, trials, p50, p99, target, met?) to stdout, progress to
stderr, and writes every figure with its samples and the machine it ran on to JSON. Every
container it creates carries a run-unique instance label and is removed at the end, on failure
and on Ctrl-C too. A missed target is reported, never a failure: the exit status is 1 only when
a benchmark could not run.

Benchmarks (DESIGN.md §5; each module's docstring says how it measures): `pulls` (8 entries,
one image → one pull), `healthy` (first healthy → listed), `crash` (SIGKILL → withdrawn, beside
go-livepeer's 5 s × 2 polling), `restart` (adoption beside recreate-everything, N = 1, 4, 8),
`proxy` (session start/stop through byoc-orch beside direct), `scale` (CPU and RSS polling
32/128/256 external workers), `replicas` (8 replicas → one pull, session routing over 8
replicas beside 1, the capability staying listed through a rolling replacement of 4), `batch`
(the pass-through: 64 MiB bodies up and down beside direct, with the daemon's peak RSS;
small-request added latency; 32 concurrent clients beside direct), `live_runner` (sessions
made through the fake registry: a worker's end released there, a release there stopped here,
a rolling replacement cutting none, a call through the registry's proxy beside direct),
`restart_load` (5 restarts under socket activation with 200 calls/s through byoc-orch: failed
calls, added latency, exec → first proxied call, exec → all warm).
`python -m tests.bench.supervision` is the old name for `--only healthy,crash,restart`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from byoc_orch.logging import configure_logging
from tests.bench.batch import batch
from tests.bench.common import (
    BenchUnavailable,
    Figure,
    Run,
    load_run,
    log,
    machine_info,
    render_table,
)
from tests.bench.crash import crash, healthy
from tests.bench.live_runner import live_runner
from tests.bench.proxy import proxy
from tests.bench.pulls import pulls
from tests.bench.replicas import replicas
from tests.bench.restart import restart
from tests.bench.restart_load import restart_load
from tests.bench.scale import scale

BENCHES: dict[str, Callable[[Run], Awaitable[list[Figure]]]] = {
    "pulls": pulls,
    "healthy": healthy,
    "crash": crash,
    "restart": restart,
    "proxy": proxy,
    "scale": scale,
    "replicas": replicas,
    "batch": batch,
    "live_runner": live_runner,
    "restart_load": restart_load,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="byoc-orch benchmarks on the real engine (DESIGN.md §5 targets).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer trials, 15 s scale windows, 1 s load only"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHES)}"
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write the table and machine as Markdown"
    )
    parser.add_argument(
        "--trials", type=int, default=None, help="override every benchmark's trial count"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    args.names = [n for n in BENCHES if n in names]
    return args


async def _run_all(run: Run, names: list[str]) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    outcome: dict[str, Any] = {}
    for name in names:
        began = time.monotonic()
        load_before = os.getloadavg()[0]
        try:
            got = await BENCHES[name](run)
        except Exception as exc:
            traceback.print_exc()
            outcome[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            run.keep_workdir = True
        else:
            figures += got
            outcome[name] = {"status": "ok"}
            if name == "proxy" and "proxy_unavailable" in run.shared:
                outcome[name] = {"status": "unavailable", "error": run.shared["proxy_unavailable"]}
        outcome[name]["seconds"] = round(time.monotonic() - began, 1)
        # Anything else running on the machine skews every figure; say so rather than hide it.
        outcome[name]["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        log(f"{name}: {outcome[name]['status']} in {outcome[name]['seconds']} s")
    return figures, outcome


def _plain(value: Any) -> Any:
    """Shared details made JSON-able (dataclasses become dicts)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


def _markdown(
    command: str,
    started: datetime,
    machine: dict[str, Any],
    figures: list[Figure],
    missed: list[str],
) -> str:
    """The README's Performance table with what it ran on, ready to paste."""
    lines = [
        f"Measured {started:%Y-%m-%d} on {machine['cpu']} ({machine['cores']} cores, "
        f"{machine['memory_gb']} GB), Linux {machine['kernel']}, Python {machine['python']}, "
        f"dockerd {machine['dockerd']}, byoc-orch {machine['byoc_orch_commit']}, with "
        f"`.venv/bin/{command}`:",
        "",
        render_table(figures),
    ]
    if missed:
        lines += ["", "Targets missed: " + "; ".join(missed) + "."]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM cleans up like Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        run = load_run(quick=args.quick, trials=args.trials)
    except BenchUnavailable as exc:
        print(f"benchmarks need the real-engine harness: {exc}", file=sys.stderr)
        return 2
    configure_logging("warning", "console")  # the in-process daemons' logs stay quiet
    client = run.docker()
    machine = machine_info(client)
    client.close()
    started = datetime.now(UTC)
    figures: list[Figure] = []
    outcome: dict[str, Any] = {}
    interrupted = False
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        figures, outcome = asyncio.run(_run_all(run, args.names))
    except KeyboardInterrupt:
        interrupted = True
        run.keep_workdir = True
        log(f"interrupted; cleaning up (daemon logs kept in {run.workdir})")
    finally:
        run.cleanup()
    if interrupted:
        return 130
    command = "python -m tests.bench" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    print(
        f"\nbyoc-orch benchmarks — {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gb']} GB, Linux {machine['kernel']}, Python {machine['python']}, "
        f"dockerd {machine['dockerd']}, commit {machine['byoc_orch_commit']}\n"
    )
    print(render_table(figures))
    for name, result in outcome.items():
        if result["status"] != "ok":
            print(f"\n{name}: {result['status']} — {result.get('error', '')}")
    busiest = max((max(r["loadavg_1m"]) for r in outcome.values()), default=0.0)
    print(
        f"\n1-min load average peaked at {busiest:.1f} on {machine['cores']} cores (the suite's "
        "own daemons and containers count in it; more means other work shared the machine)"
    )
    missed = [f.measure.strip() for f in figures if f.met is False]
    if missed:
        print("\ntargets missed: " + "; ".join(missed))
    for note in run.notes:
        print(f"note: {note}")
    if run.keep_workdir:
        print(f"daemon logs and aiModels files kept in {run.workdir}")
    report = {
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started).total_seconds(), 1),
        "quick": args.quick,
        "run_id": run.run_id,
        "machine": machine,
        "benchmarks": outcome,
        "figures": [f.as_json() for f in figures],
        "details": {k: _plain(v) for k, v in run.shared.items()},
        "notes": run.notes,
    }
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwritten: {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(_markdown(command, started, machine, figures, missed) + "\n")
        print(f"written: {args.markdown}")
    return 1 if any(r["status"] == "failed" for r in outcome.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
