"""What every benchmark shares: the harness, figures and their statistics, the run's cleanup,
byoc-orch as a subprocess, /proc sampling, and Docker's own `die` timestamps.

Figures keep their raw samples so the JSON can be re-analysed; statistics are nearest-rank
percentiles, so a p99 over fewer than 100 trials is simply the largest sample but one or two,
and the trial count is always printed beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

from byoc_orch.container_spec import LABEL_INSTANCE
from tests.conftest import HARNESS_ENV, ROOT, _read_harness_env, free_port

HINT = "run bash scripts/test-env.sh first"
PIPELINE = "live-video-to-video"
BYOC_ORCH = ROOT / ".venv" / "bin" / "byoc-orch"


class BenchUnavailable(Exception):
    """The harness is not up; the message tells the user how to bring it up."""


# -- figures ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: an actual sample, never an interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Figure:
    """One row of the table: a measure over repeated trials, and how it compares to its target.

    `judge` picks the statistic the target is about (p50, p99, max, mean); `limit` is the
    bound it must not exceed (`strict`: must stay below), or with `at_least` the floor it must
    reach. No limit: a reference figure.
    """

    key: str
    measure: str
    unit: str
    samples: list[float]
    target: str = ""
    judge: str = "p50"
    limit: float | None = None
    strict: bool = False
    minimum: float | None = None
    note: str = ""
    show_p99: bool = True
    at_least: bool = False
    design: str = ""
    """DESIGN §5's words for the target (tests/bench/targets.py), when it has one."""

    def stat(self, name: str) -> float | None:
        if not self.samples:
            return None
        match name:
            case "p50":
                return statistics.median(self.samples)
            case "p99":
                return pct(self.samples, 0.99)
            case "max":
                return max(self.samples)
            case "min":
                return min(self.samples)
            case "mean":
                return statistics.fmean(self.samples)
        raise ValueError(name)

    @property
    def met(self) -> bool | None:
        value = self.stat(self.judge)
        if self.limit is None or value is None:
            return None
        if self.minimum is not None and min(self.samples) < self.minimum:
            return False
        if self.at_least:
            return value > self.limit if self.strict else value >= self.limit
        return value < self.limit if self.strict else value <= self.limit

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "measure": self.measure,
            "unit": self.unit,
            "trials": len(self.samples),
            **{name: self.stat(name) for name in ("p50", "p99", "mean", "min", "max")},
            "target": self.target or None,
            "design_target": self.design or None,
            "judged_on": self.judge if self.limit is not None else None,
            "limit": self.limit,
            "limit_is_floor": self.at_least,
            "met": self.met,
            "note": self.note or None,
            "samples": self.samples,
        }


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("ms", "s", "%", "MB", "MiB", "MB/s", "req/s"):
        digits = 3 if unit == "s" else 1 if abs(value) >= 10 or unit != "ms" else 2
        return f"{value:.{digits}f} {unit}"
    return f"{value:g}" + (f" {unit}" if unit else "")


def render_table(figures: list[Figure]) -> str:
    """A Markdown table, so the README can take it as printed."""
    rows = [("measure", "trials", "p50", "p99", "target", "met?")]
    for f in figures:
        target = f.target or "(reference)"
        if f.limit is not None and f.judge == "mean":
            target += f" (mean {fmt(f.stat('mean'), f.unit)})"
        met = f.met
        rows.append(
            (
                f.measure,
                str(len(f.samples)),
                fmt(f.stat("p50"), f.unit),
                fmt(f.stat("p99"), f.unit) if f.show_p99 else "",
                target,
                "—" if met is None else "yes" if met else "**NO**",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    left = (0, 4)

    def line(cells: tuple[str, ...]) -> str:
        padded = (
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 2) if i in left else "-" * (w + 1) + ":" for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One invocation of the suite: harness endpoints, its unique ids, and what to clean up."""

    env: dict[str, str]
    quick: bool
    trials: int | None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    instances: set[str] = field(default_factory=set)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)
    keep_workdir: bool = False

    def __post_init__(self) -> None:
        # aiModels files and the subprocess daemons' logs; kept only when something failed.
        self.workdir = Path(tempfile.mkdtemp(prefix=f"byoc-bench-{self.run_id}-"))

    @property
    def docker_host(self) -> str:
        return self.env["BYOC_TEST_DOCKER_HOST"]

    @property
    def image(self) -> str:
        return self.env["BYOC_TEST_WORKER_IMAGE"]

    def instance(self, name: str) -> str:
        """A fresh instance id, remembered so its containers are removed at the end."""
        instance = f"bench-{self.run_id}-{name}"
        self.instances.add(instance)
        return instance

    def docker(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=120)

    def trial_count(self, full: int, quick: int) -> int:
        return self.trials if self.trials is not None else quick if self.quick else full

    def cleanup(self) -> None:
        """Stop our processes and remove every container of every instance this run used."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        for action in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                action()
        client = self.docker()
        try:
            for instance in sorted(self.instances):
                remove_instance(client, instance)
        finally:
            client.close()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def load_run(*, quick: bool, trials: int | None) -> Run:
    env = _read_harness_env()
    if "BYOC_TEST_DOCKER_HOST" not in env:
        raise BenchUnavailable(f"{HARNESS_ENV} not found — {HINT}")
    try:
        client = docker.DockerClient(base_url=env["BYOC_TEST_DOCKER_HOST"], timeout=10)
        client.ping()
        client.close()
    except Exception as exc:
        raise BenchUnavailable(
            f"the engine at {env['BYOC_TEST_DOCKER_HOST']} does not answer ({exc}) — {HINT}"
        ) from None
    return Run(env=env, quick=quick, trials=trials)


def remove_instance(client: docker.DockerClient, instance: str) -> int:
    """Force-remove every container labelled with `instance`; returns how many."""
    containers = client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})
    for container in containers:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    return len(containers)


def instance_containers(client: docker.DockerClient, instance: str) -> dict[str, str]:
    """worker id → container id of the running containers of `instance`."""
    rows = client.api.containers(filters={"label": f"{LABEL_INSTANCE}={instance}"})
    return {row["Labels"].get("byoc-orch.worker-id", row["Id"]): row["Id"] for row in rows}


def machine_info(client: docker.DockerClient) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    try:
        dockerd = str(client.version().get("Version", "?"))
    except Exception as exc:
        dockerd = f"? ({exc})"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dockerd": dockerd,
        "docker_py": docker.__version__,
        "httpx": httpx.__version__,
        "byoc_orch_commit": commit or "?",
    }


# -- aiModels.json ---------------------------------------------------------------------------


def managed_entries(
    image: str, count: int, *, load_seconds: float, prefix: str = "bench"
) -> list[dict[str, Any]]:
    """`count` warm managed entries of the demo worker, each on its own free host port."""
    return [
        {
            "pipeline": PIPELINE,
            "model_id": f"{prefix}-{i}",
            "container": image,
            "url": f"http://127.0.0.1:{free_port()}",
            "warm": True,
            "env": {"DEMO_LOAD_SECONDS": f"{load_seconds:g}"},
        }
        for i in range(count)
    ]


def write_models(run: Run, name: str, entries: list[dict[str, Any]]) -> Path:
    path = run.workdir / f"{name}.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


# -- waiting ---------------------------------------------------------------------------------


async def until(check: Callable[[], Any], within: float = 60.0, what: str = "") -> Any:
    """Poll a cheap synchronous check every 2 ms; the benchmarks time the result elsewhere."""
    deadline = time.monotonic() + within
    while not (value := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within:g} s: {what or check}")
        await asyncio.sleep(0.002)
    return value


# -- byoc-orch as a subprocess ---------------------------------------------------------------


class DaemonProcess:
    """`byoc-orch run` in its own process, so its CPU, RSS and start-up are its own."""

    def __init__(
        self,
        run: Run,
        *,
        models: Path,
        instance: str,
        settings: dict[str, str] | None = None,
        log_name: str = "daemon",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = run.workdir / f"{log_name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_ORCH_")}
        env.update(
            {
                "BYOC_ORCH_DOCKER_HOST": run.docker_host,
                "BYOC_ORCH_LOG_FORMAT": "json",
                **(settings or {}),
            }
        )
        self._run = run
        self._argv = [
            str(BYOC_ORCH),
            "run",
            "--models",
            str(models),
            "--port",
            str(self.port),
            "--instance",
            instance,
        ]
        self._env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    def spawn(self) -> None:
        """Start the process; `spawned_at` (perf_counter) is when exec was asked for."""
        log = self.log_path.open("ab")
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self._argv, env=self._env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        log.close()
        self._run.processes.append(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the operator's `systemctl stop`), then SIGKILL if it hangs."""
        if not self.alive():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
            self._run.notes.append(f"daemon {self.pid} ignored SIGTERM for {timeout:g} s")


async def listed_count(client: httpx.AsyncClient, url: str) -> int | None:
    """How many capabilities /capabilities lists; None while the API is not up."""
    try:
        reply = await client.get(f"{url}/capabilities", timeout=2)
    except httpx.HTTPError:
        return None
    return len(reply.json()) if reply.status_code == 200 else None


async def wait_listed(
    daemon: DaemonProcess, client: httpx.AsyncClient, want: int, within: float
) -> tuple[float, float]:
    """Poll /capabilities every 2 ms until `want` are listed.

    Returns (seconds from spawn until the API first answered, seconds from spawn until all
    `want` were listed), both measured from `daemon.spawned_at`.
    """
    deadline = time.perf_counter() + within
    api_up: float | None = None
    while True:
        count = await listed_count(client, daemon.url)
        now = time.perf_counter()
        if count is not None and api_up is None:
            api_up = now - daemon.spawned_at
        if count is not None and count >= want:
            return api_up or 0.0, now - daemon.spawned_at
        if not daemon.alive():
            raise RuntimeError(f"byoc-orch exited early:\n{daemon.log_tail()}")
        if now > deadline:
            raise TimeoutError(f"{want} capabilities not listed within {within:g} s")
        await asyncio.sleep(0.002)


# -- /proc -----------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak resident) and VmRSS (now), in MB (10^6 bytes)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0]) * 1024 / 1e6
    return values


# -- Docker's own die timestamps -------------------------------------------------------------


class DieWatch:
    """Follows `die` events of one instance in a thread of its own, keeping dockerd's own
    timestamp per container, so the daemon's share (die → withdrawn) can be told apart from
    the kernel's and dockerd's (SIGKILL → die)."""

    def __init__(self, docker_host: str, instance: str) -> None:
        self._client = docker.DockerClient(base_url=docker_host, timeout=None)
        self._instance = instance
        self.died: dict[str, float] = {}
        self._stream: Any = None

    def _open(self) -> None:
        self._stream = self._client.api.events(
            decode=True,
            filters={
                "type": "container",
                "event": "die",
                "label": f"{LABEL_INSTANCE}={self._instance}",
            },
        )
        threading.Thread(target=self._follow, name="bench-die-watch", daemon=True).start()

    def _follow(self) -> None:
        with contextlib.suppress(Exception):
            for event in self._stream:
                actor = (event.get("Actor") or {}).get("ID") or event.get("id")
                if actor:
                    self.died[actor] = int(event["timeNano"]) / 1e9

    async def __aenter__(self) -> DieWatch:
        await asyncio.to_thread(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        await asyncio.to_thread(self._client.close)

    async def wait(self, container_id: str, within: float = 10.0) -> float | None:
        with contextlib.suppress(TimeoutError):
            return float(await until(lambda: self.died.get(container_id), within))
        return None


def ready_ts(client: docker.DockerClient, container_id: str) -> float | None:
    """The demo worker's own `ready` timestamp (when its /health turned IDLE)."""
    for line in client.api.logs(container_id).decode(errors="replace").splitlines():
        if '"ready"' in line:
            with contextlib.suppress(ValueError, KeyError):
                return float(json.loads(line)["ts"])
    return None


async def ready_ts_async(client: docker.DockerClient, container_id: str) -> float | None:
    """ready_ts, off the loop, allowing the timer-printed line a few ms to appear."""
    for _ in range(50):
        found = await asyncio.to_thread(ready_ts, client, container_id)
        if found is not None:
            return found
        await asyncio.sleep(0.01)
    return None


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds the table alone."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
