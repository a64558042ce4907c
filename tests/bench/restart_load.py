"""Restarts under load: byoc-orch is restarted (SIGTERM, then a new process) five times while a
client sends 200 calls a second through it, as systemd restarts a socket-activated service.

The test holds the listening socket as systemd's `.socket` unit does and hands it to each new
process as fd 3 (tests/socket_holder.py), so calls made while no process serves wait in the
backlog. The load is open-loop: a call is sent every 5 ms on a new connection whatever the
previous ones are doing — a session's `/stream/status`, a small batch `POST /v1/echo` and a
Live Runner readiness poll in turn. Figures:

- failed calls: anything but a 200, or a connection error (target 0);
- added latency of the calls that waited for the new process (sent between SIGTERM and the new
  process's first answer): its latency less the p50 of the calls between restarts;
- exec → first proxied call served: from spawning the new process (its launcher's interpreter
  start, ~20 ms, included) to the first `/stream/status` answer, sent at once and waiting in
  the backlog (issue "restarts lose nothing": p50 ≤ 0.3 s);
- exec → all warm: to `/readyz` counting every worker warm (adopted and probed; DESIGN
  §5, p50 ≤ 0.5 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.bench import targets
from tests.bench.common import (
    BYOC_ORCH,
    PIPELINE,
    Figure,
    Run,
    log,
    write_models,
)
from tests.conftest import free_port
from tests.socket_holder import SocketHolder, environment_without_activation

RATE = 200.0
"""Calls a second, every kind together."""
BODY = {"subscribe_url": "http://127.0.0.1:1/in", "publish_url": "http://127.0.0.1:1/out"}


class OpenLoad:
    """A call every 1/RATE s on a fresh connection, never waiting for the previous ones."""

    def __init__(self, base: str, session_worker: str, batch_worker: str) -> None:
        self._calls = [
            ("GET", f"{base}/proxy/{session_worker}/stream/status"),
            ("POST", f"{base}/proxy/{batch_worker}/v1/echo"),
            ("GET", f"{base}/live-runner/{session_worker}/health"),
        ]
        self.results: list[tuple[float, float, bool, str]] = []
        """(sent at, latency, ok, what failed) per call, perf_counter seconds."""
        self._stop = asyncio.Event()
        self._pending: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=None),
            timeout=30,
            trust_env=False,
        )

    async def __aenter__(self) -> OpenLoad:
        self._runner = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._runner is not None
        await self._runner
        if self._pending:
            await asyncio.wait(self._pending)
        await self._client.aclose()

    async def _run(self) -> None:
        began = time.perf_counter()
        sent = 0
        while not self._stop.is_set():
            method, url = self._calls[sent % len(self._calls)]
            task = asyncio.create_task(self._one(method, url))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            sent += 1
            delay = began + sent / RATE - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _one(self, method: str, url: str) -> None:
        sent = time.perf_counter()
        try:
            reply = await self._client.request(method, url, content=b"x" * 100)
            ok = reply.status_code == 200
            what = f"{method} {url}: {reply.status_code} {reply.text[:160]}"
        except httpx.HTTPError as exc:
            ok, what = False, f"{method} {url}: {type(exc).__name__}"
        self.results.append((sent, time.perf_counter() - sent, ok, "" if ok else what))


def _all_warm(reply: httpx.Response) -> bool:
    summary = reply.json()
    return bool(summary["workers"]) and summary["states"] == {"warm": summary["workers"]}


async def _first_answer(
    base: str,
    path: str,
    within: float = 60.0,
    check: Callable[[httpx.Response], bool] = lambda _: True,
) -> float:
    """perf_counter when `path` first answers 200 (and `check`), asked on fresh connections."""
    deadline = time.perf_counter() + within
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_keepalive_connections=0), timeout=within, trust_env=False
    ) as client:
        while True:
            try:
                reply = await client.get(f"{base}{path}")
                if reply.status_code == 200 and check(reply):
                    return time.perf_counter()
            except httpx.HTTPError:
                pass
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{path} did not answer 200 within {within:g} s")
            await asyncio.sleep(0.002)


def _entries(run: Run) -> list[dict[str, Any]]:
    return [
        {
            "pipeline": PIPELINE,
            "model_id": f"restart-load-{i}",
            "container": run.image,
            "url": f"http://127.0.0.1:{free_port()}",
            "warm": True,
            "env": {"DEMO_LOAD_SECONDS": "1"},
            # The batch entry takes the calls that queued in the backlog during a restart at
            # once, as a worker with capacity would.
            "capacity": 1 if i == 0 else 64,
        }
        for i in range(2)
    ]


async def restart_load(run: Run) -> list[Figure]:
    restarts = run.trial_count(full=5, quick=2)
    instance = run.instance("restart-load")
    models = write_models(run, "restart-load", _entries(run))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in environment_without_activation().items() if not k.startswith("BYOC_")},
        "BYOC_ORCH_MODELS_PATH": str(models),
        "BYOC_ORCH_PORT": str(port),
        "BYOC_ORCH_INSTANCE": instance,
        "BYOC_ORCH_DOCKER_HOST": run.docker_host,
        "BYOC_ORCH_STATE_DIRECTORY": str(run.workdir / "restart-load-state"),
        "BYOC_ORCH_LOG_FORMAT": "json",
        "BYOC_ORCH_LOG_LEVEL": "warning",
    }
    # A production install (no test tools, e.g. no rich for httpx and structlog to pick up)
    # imports less: BYOC_BENCH_BYOC_ORCH names its byoc-orch to measure that.
    argv = [os.environ.get("BYOC_BENCH_BYOC_ORCH", str(BYOC_ORCH)), "run"]
    log_path = run.workdir / "restart-load.log"
    holder = SocketHolder(port)
    run.cleanups.append(holder.close)
    process = holder.spawn(env, argv=argv, log=log_path)
    run.processes.append(process)
    await _first_answer(base, "/readyz", within=120, check=_all_warm)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        listed = (await client.get(f"{base}/workers")).json()
        w0, w1 = sorted(w["worker_id"] for w in listed)
        started = await client.post(
            f"{base}/proxy/{w0}/stream/start", json={**BODY, "gateway_request_id": "bench"}
        )
        started.raise_for_status()
    log(f"restart_load: {restarts} restarts under {RATE:g} calls/s")
    first_served: list[float] = []
    all_warm: list[float] = []
    exit_s: list[float] = []
    windows: list[tuple[float, float]] = []
    async with OpenLoad(base, w0, w1) as load:
        await asyncio.sleep(2.0)
        for _ in range(restarts):
            stop_at = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 30)
            exit_s.append(time.perf_counter() - stop_at)
            exec_at = time.perf_counter()
            process = holder.spawn(env, argv=argv, log=log_path)
            run.processes.append(process)
            served, warm = await asyncio.gather(
                _first_answer(base, f"/proxy/{w0}/stream/status"),
                _first_answer(base, "/readyz", check=_all_warm),
            )
            first_served.append(served - exec_at)
            all_warm.append(warm - exec_at)
            windows.append((stop_at, served))
            await asyncio.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, 30)

    def since_sigterm(sent: float) -> str:
        before = [start for start, _ in windows if start <= sent]
        return f"+{sent - before[-1]:.3f} s after SIGTERM" if before else "before the first"

    failed = [
        f"{what} (sent {since_sigterm(sent)}, answered after {latency:.3f} s)"
        for sent, latency, ok, what in load.results
        if not ok
    ]
    waited = [
        latency
        for sent, latency, ok, _ in load.results
        if ok and any(start <= sent <= end for start, end in windows)
    ]
    steady = [
        latency
        for sent, latency, ok, _ in load.results
        if ok and not any(start - 0.1 <= sent <= end + 0.5 for start, end in windows)
    ]
    baseline = statistics.median(steady) if steady else 0.0
    added = [max(latency - baseline, 0.0) for latency in waited]
    run.shared["restart_load"] = {
        "calls": len(load.results),
        "failed": failed[:20],
        "steady_p50_s": baseline,
        "processes": [os.fspath(log_path)],
    }
    note = f"{len(load.results)} calls, {len(waited)} waited; steady p50 {baseline * 1000:.1f} ms"
    return [
        Figure(
            "restart_load.failed",
            f"{restarts} restarts under {RATE:g} calls/s: failed calls",
            "",
            [float(len(failed))],
            **targets.NO_FAILED_CALLS.figure(),
            show_p99=False,
            note=note,
        ),
        Figure(
            "restart_load.added_latency",
            "  added latency of a call that waited for the new process",
            "s",
            added,
            judge="max",
            note="reference: the p99 and the largest matter",
        ),
        Figure(
            "restart_load.exec_to_first_served",
            "  exec → first proxied call served",
            "s",
            first_served,
            **targets.EXEC_TO_FIRST_CALL.figure(),
        ),
        Figure(
            "restart_load.exec_to_all_warm",
            "  exec → all warm (/readyz 200)",
            "s",
            all_warm,
            **targets.RESTART_ALL_WARM.figure(),
        ),
        Figure(
            "restart_load.sigterm_to_exit",
            "  SIGTERM → process exited",
            "s",
            exit_s,
        ),
    ]
