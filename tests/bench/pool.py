"""Pool: one seeded, bursty demand trace of three models on 4 pretend GPUs, replayed side by
side against the best static split and against replica ranges that follow demand.

Time is compressed tenfold, and every duration below is the compressed one (the uncompressed
meaning in brackets): sessions last 2–6 s (20–60 s), the demo worker loads for 1 s before its
first healthy answer (a 10 s cold start, the network's limit), and ranged entries retire a
surplus replica after 3 s (30 s). The trace (random.Random(SEED)) has, for each model, a low
background rate of session starts (Poisson, 0.04/s) and one burst of its own (Poisson, 0.8/s
for a quarter of the trace: about 3 sessions at once, more at its peaks), the three bursts one
after the other with a gap between them.

Both sides run `byoc-orch run` as a subprocess on the real engine, one after the other, on the
same pool: BYOC_ORCH_GPUS=0,1,2,3 with BYOC_ORCH_GPU_MEMORY_MB=24000 (the stub NVIDIA hook takes
the device requests), every replica capacity 1 (the demo worker runs one stream) and
``vram_mb: 12000``, so 8 replicas fit, two per GPU, packed by memory across entries on both
sides:

- **static**: each model a fixed ``{"min": n, "max": n}``; n per model is the best split of the
  8 replicas for this very trace (every split with at least 1 each is simulated offline, session
  by session, and the one refusing fewest is run) — the best an operator guessing once could do;
- **demand**: each model ``{"min": 1, "max": 6}``, ``headroom`` 1, ``scale_down_after`` 3;
  BYOC_ORCH_SCALE_INTERVAL=0.25.

Each session of the trace is started through ``/proxy/<entry_id>/stream/start`` at its time and
stopped at its end; a start answered anything but 200 is refused (not retried). Figures: the
share of session starts refused on each side (target: demand ≤ ⅓ of static, DESIGN.md §5), the
replica-seconds held idle (``GET /workers`` every 0.5 s: warm replicas with nothing in use,
times 0.5 s), and, on the demand side, from the scaler's decision to start a replica ("replica
started for demand" in the daemon's log) to that replica warm (its "worker state" warm line):
the time a burst waits for a new replica, container start and the 1 s load included; the
decision itself follows the start that used up the headroom within one scale interval.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from tests.bench import targets
from tests.bench.common import (
    PIPELINE,
    DaemonProcess,
    Figure,
    Run,
    log,
    remove_instance,
    write_models,
)
from tests.bench.replicas import _entries, _port_run

SEED = 22
MODELS = ("alpha", "beta", "gamma")
GPUS = 4
GPU_MEMORY_MB = 24000
VRAM_MB = 12000
SLOTS = GPUS * GPU_MEMORY_MB // VRAM_MB
LOAD_SECONDS = 1.0
SESSION_S = (2.0, 6.0)
BACKGROUND_RATE = 0.04
BURST_RATE = 0.8
SCALE_DOWN_AFTER = 3.0
SAMPLE_S = 0.5
SETTINGS = {
    "BYOC_ORCH_PROBE_INTERVAL": "0.5",
    "BYOC_ORCH_STARTUP_PROBE_INTERVAL": "0.1",
    "BYOC_ORCH_PROBE_TIMEOUT": "0.5",
    "BYOC_ORCH_STOP_TIMEOUT": "1",
    "BYOC_ORCH_GPU_METRICS": "false",
    "BYOC_ORCH_GPUS": ",".join(str(i) for i in range(GPUS)),
    "BYOC_ORCH_GPU_MEMORY_MB": str(GPU_MEMORY_MB),
    "BYOC_ORCH_SCALE_INTERVAL": "0.25",
}


@dataclass(frozen=True)
class Arrival:
    at: float
    model: str
    duration: float


def trace(length: float, seed: int = SEED) -> list[Arrival]:
    """Background arrivals for every model, and one burst per model in turn."""
    rng = random.Random(seed)
    burst = length / 4
    gap = (length - 3 * burst) / 4
    arrivals: list[Arrival] = []
    for i, model in enumerate(MODELS):
        start = gap + i * (burst + gap)
        windows = [(0.0, length, BACKGROUND_RATE), (start, start + burst, BURST_RATE)]
        for begin, end, rate in windows:
            t = begin + rng.expovariate(rate)
            while t < end:
                arrivals.append(Arrival(t, model, rng.uniform(*SESSION_S)))
                t += rng.expovariate(rate)
    return sorted(arrivals, key=lambda a: a.at)


def refused_with(arrivals: list[Arrival], slots: dict[str, int]) -> int:
    """Sessions a fixed split refuses, replayed exactly (no cold starts: they are warm)."""
    ends: dict[str, list[float]] = {m: [] for m in MODELS}
    refused = 0
    for a in arrivals:
        ends[a.model] = [e for e in ends[a.model] if e > a.at]
        if len(ends[a.model]) >= slots[a.model]:
            refused += 1
        else:
            ends[a.model].append(a.at + a.duration)
    return refused


def best_split(arrivals: list[Arrival]) -> dict[str, int]:
    splits = [
        dict(zip(MODELS, counts, strict=True))
        for counts in itertools.product(range(1, SLOTS + 1), repeat=len(MODELS))
        if sum(counts) == SLOTS
    ]
    return min(splits, key=lambda s: (refused_with(arrivals, s), list(s.values())))


def _entry(model: str, port: int, replicas: dict[str, int], **fields: Any) -> dict[str, Any]:
    return {
        "pipeline": PIPELINE,
        "model_id": model,
        "container": "",
        "url": f"http://127.0.0.1:{port}",
        "warm": True,
        "capacity": 1,
        "replicas": replicas,
        "vram_mb": VRAM_MB,
        "env": {"DEMO_LOAD_SECONDS": f"{LOAD_SECONDS:g}"},
        **fields,
    }


@dataclass
class Replay:
    started: int = 0
    refused: int = 0
    idle_replica_seconds: float = 0.0
    decision_to_warm: list[float] | None = None


async def _replay(
    run: Run, side: str, entries: list[dict[str, Any]], arrivals: list[Arrival], length: float
) -> Replay:
    for entry in entries:
        entry["container"] = run.image
    models = write_models(run, f"pool-{side}", entries)
    instance = run.instance(f"pool-{side}")
    daemon = DaemonProcess(
        run,
        models=models,
        instance=instance,
        settings=SETTINGS,
        log_name=f"pool-{side}",
    )
    daemon.spawn()
    result = Replay()
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            ids = await _wait_ready(daemon, http, entries)
            began = time.perf_counter()
            sampler = asyncio.create_task(_sample_idle(daemon, http, result, began + length))
            await asyncio.gather(
                *(_session(daemon, http, ids, a, began, result, i) for i, a in enumerate(arrivals))
            )
            await sampler
        finally:
            await daemon.stop()
            client = run.docker()
            try:  # its containers outlive it (as deployed), and hold the ports the next side uses
                await asyncio.to_thread(remove_instance, client, instance)
            finally:
                client.close()
    if side == "demand":
        result.decision_to_warm = _decision_to_warm(daemon.log_path.read_text(errors="replace"))
    return result


async def _wait_ready(
    daemon: DaemonProcess, http: httpx.AsyncClient, entries: list[dict[str, Any]]
) -> dict[str, str]:
    want = {e["model_id"]: e["replicas"]["min"] for e in entries}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise RuntimeError(f"byoc-orch exited:\n{daemon.log_tail()}")
        listed = await _entries(http, daemon.url)
        if listed and all(m in listed and listed[m]["replicas_warm"] >= n for m, n in want.items()):
            return {m: listed[m]["entry_id"] for m in want}
        await asyncio.sleep(0.1)
    raise TimeoutError(f"replicas not warm within 120 s:\n{daemon.log_tail()}")


async def _session(
    daemon: DaemonProcess,
    http: httpx.AsyncClient,
    ids: dict[str, str],
    arrival: Arrival,
    began: float,
    result: Replay,
    n: int,
) -> None:
    await asyncio.sleep(max(began + arrival.at - time.perf_counter(), 0))
    session = f"{arrival.model}-{n}"
    base = f"{daemon.url}/proxy/{ids[arrival.model]}/stream"
    body = {
        "subscribe_url": "http://127.0.0.1:1/in",
        "publish_url": "http://127.0.0.1:1/out",
        "gateway_request_id": session,
    }
    try:
        reply = await http.post(f"{base}/start", json=body)
    except httpx.HTTPError:
        reply = None
    result.started += 1
    if reply is None or reply.status_code != 200:
        result.refused += 1
        return
    await asyncio.sleep(arrival.duration)
    await http.post(f"{base}/stop", json={"gateway_request_id": session})


async def _sample_idle(
    daemon: DaemonProcess, http: httpx.AsyncClient, result: Replay, until: float
) -> None:
    while time.perf_counter() < until:
        await asyncio.sleep(SAMPLE_S)
        try:
            workers = (await http.get(f"{daemon.url}/workers", timeout=5)).json()
        except (httpx.HTTPError, ValueError):
            continue
        idle = sum(1 for w in workers if w["state"] == "warm" and w["in_use"] == 0)
        result.idle_replica_seconds += idle * SAMPLE_S


def _decision_to_warm(text: str) -> list[float]:
    decided: dict[str, float] = {}
    waits: list[float] = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        worker = record.get("worker_id")
        stamp = record.get("timestamp")
        if not worker or not stamp:
            continue
        at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        if record.get("event") == "replica started for demand" and record.get("action") == "up":
            decided[worker] = at
        elif record.get("event") == "worker state" and record.get("state") == "warm":
            since = decided.pop(worker, None)
            if since is not None:
                waits.append(at - since)
    return waits


async def pool(run: Run) -> list[Figure]:
    length = 80.0 if run.quick else 160.0
    arrivals = trace(length)
    split = best_split(arrivals)
    log(
        f"pool: {len(arrivals)} sessions over {length:g} s; best static split {split} "
        f"(refuses {refused_with(arrivals, split)} offline)"
    )
    ports = {m: _port_run(SLOTS) for m in MODELS}
    static = [_entry(m, ports[m], {"min": split[m], "max": split[m]}) for m in MODELS]
    ranged = [
        _entry(
            m,
            ports[m],
            {"min": 1, "max": SLOTS - 2},
            headroom=1,
            scale_down_after=SCALE_DOWN_AFTER,
        )
        for m in MODELS
    ]
    sides: dict[str, Replay] = {}
    for side, entries in (("static", static), ("demand", ranged)):
        log(f"pool: replaying against {side}")
        sides[side] = await _replay(run, side, entries, arrivals, length)
    share = {s: r.refused / max(r.started, 1) * 100 for s, r in sides.items()}
    ratio = share["demand"] / share["static"] if share["static"] else 0.0
    note = f"best static split {json.dumps(split)}; {len(arrivals)} sessions, seed {SEED}"
    shown_split = "/".join(map(str, split.values()))
    figures = [
        Figure(
            "pool_refused_static",
            f"trace: session starts refused, best static split {shown_split}",
            "%",
            [share["static"]],
            note=note,
            show_p99=False,
        ),
        Figure(
            "pool_refused_demand",
            "trace: session starts refused, replicas following demand",
            "%",
            [share["demand"]],
            show_p99=False,
        ),
        Figure(
            "pool_refused_ratio",
            "  refused: demand ÷ static (same trace, same run)",
            "ratio",
            [ratio],
            **targets.POOL_REFUSED.figure(),
            show_p99=False,
        ),
        Figure(
            "pool_idle_static",
            "trace: replica-seconds held idle, static",
            "s",
            [sides["static"].idle_replica_seconds],
            show_p99=False,
        ),
        Figure(
            "pool_idle_demand",
            "trace: replica-seconds held idle, demand",
            "s",
            [sides["demand"].idle_replica_seconds],
            show_p99=False,
        ),
        Figure(
            "pool_burst_to_warm",
            "  scale-up decision → new replica warm (1 s load)",
            "s",
            sides["demand"].decision_to_warm or [],
        ),
    ]
    run.shared["pool"] = {
        side: {"started": r.started, "refused": r.refused} for side, r in sides.items()
    }
    return figures
