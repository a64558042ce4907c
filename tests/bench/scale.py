"""Scale: byoc-orch's CPU and peak RSS while it polls 32, 128 and 256 external workers.

External entries (a `url`, no `container`) are health-polled every second but never started,
so no Docker engine is involved. The workers are one `tests.bench.farm` process of cheap
keep-alive servers, apart from byoc-orch, and byoc-orch is `byoc-orch run` in its own process:
the /proc figures are the daemon's alone. Once every worker is listed and a few seconds have
passed, CPU is read from /proc/<pid>/stat (utime+stime) once a second for the window; each
one-second delta is a sample (quantised to the kernel's 10 ms clock tick, so to 1 % of a core),
and the target is about their mean. Peak RSS is VmHWM at the end
(it includes start-up). The farm counts health requests, to show the polling really ran at 1 s.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import httpx

from tests.bench import targets
from tests.bench.common import (
    PIPELINE,
    ROOT,
    DaemonProcess,
    Figure,
    Run,
    cpu_seconds,
    log,
    memory_mb,
    wait_listed,
    write_models,
)

SIZES = (32, 128, 256)


def _spawn_farm(run: Run, count: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.farm", str(count)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    run.processes.append(proc)
    return proc


async def _farm(run: Run, count: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    proc = _spawn_farm(run, count)
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
    return proc, [int(p) for p in json.loads(line)]


async def _health_count(http: httpx.AsyncClient, port: int) -> int:
    return int((await http.get(f"http://127.0.0.1:{port}/_count")).json()["health"])


async def _one_size(run: Run, count: int, window: float, settle: float) -> dict[str, Any]:
    farm, ports = await _farm(run, count)
    try:
        entries = [
            {
                "pipeline": PIPELINE,
                "model_id": f"external-{i}",
                "url": f"http://127.0.0.1:{port}",
                "warm": True,
            }
            for i, port in enumerate(ports)
        ]
        models = write_models(run, f"scale-{count}", entries)
        daemon = DaemonProcess(
            run,
            models=models,
            instance=run.instance(f"scale-{count}"),
            settings={"BYOC_ORCH_PROBE_INTERVAL": "1"},
            log_name=f"scale-{count}",
        )
        async with httpx.AsyncClient(trust_env=False) as http:
            daemon.spawn()
            try:
                try:
                    _, listed_s = await wait_listed(daemon, http, count, within=60)
                except TimeoutError:
                    # An overloaded daemon may never list them all at once; measure it anyway.
                    listed_s = float("nan")
                    run.notes.append(f"scale {count}: not all listed within 60 s of start")
                await asyncio.sleep(settle)
                requests_before = await _health_count(http, ports[0])
                farm_cpu_before = cpu_seconds(farm.pid)
                samples: list[float] = []
                last_cpu, last_t = cpu_seconds(daemon.pid), time.perf_counter()
                first_cpu, first_t = last_cpu, last_t
                while last_t - first_t < window - 1e-3:
                    await asyncio.sleep(1.0)
                    cpu, now = cpu_seconds(daemon.pid), time.perf_counter()
                    samples.append((cpu - last_cpu) / (now - last_t) * 100)
                    last_cpu, last_t = cpu, now
                requests = await _health_count(http, ports[0]) - requests_before
                memory = memory_mb(daemon.pid)
                still_listed = len((await http.get(f"{daemon.url}/capabilities")).json())
                farm_cpu = cpu_seconds(farm.pid) - farm_cpu_before
            finally:
                await daemon.stop()
    finally:
        farm.terminate()
        await asyncio.to_thread(farm.wait, 10)
    elapsed = last_t - first_t
    return {
        "workers": count,
        "window_s": elapsed,
        "cpu_samples_pct": samples,
        "cpu_mean_pct": (last_cpu - first_cpu) / elapsed * 100,
        "peak_rss_mb": memory["VmHWM"],
        "rss_end_mb": memory["VmRSS"],
        "probes_per_worker_per_s": requests / elapsed / count,
        "listed_at_end": still_listed,
        "seconds_until_all_listed": listed_s,
        "farm_cpu_pct": farm_cpu / elapsed * 100,
    }


async def scale(run: Run) -> list[Figure]:
    window = 15.0 if run.quick else 60.0
    settle = 2.0 if run.quick else 5.0
    figures: list[Figure] = []
    details = []
    for count in SIZES:
        log(f"scale: {count} external workers, {window:g} s window")
        got = await _one_size(run, count, window, settle)
        details.append(got)
        if got["probes_per_worker_per_s"] < 0.9 or got["listed_at_end"] != count:
            run.notes.append(
                f"scale {count}: {got['probes_per_worker_per_s']:.2f} probes/worker/s, "
                f"{got['listed_at_end']} listed at the end (want ~1 and {count})"
            )
        judged = count in targets.SCALE
        figures += [
            Figure(
                f"scale.cpu.{count}",
                f"{count} external workers polled 1/s: CPU (% of a core, 1-s windows)",
                "%",
                got["cpu_samples_pct"],
                **(targets.SCALE[count][0].figure() if judged else {"judge": "mean"}),
            ),
            Figure(
                f"scale.rss.{count}",
                f"{count} external workers: peak RSS (VmHWM)",
                "MB",
                [got["peak_rss_mb"]],
                **(targets.SCALE[count][1].figure() if judged else {"judge": "max"}),
                show_p99=False,
            ),
            Figure(
                f"scale.probe_rate.{count}",
                f"{count} external workers: probes achieved per worker per s (want 1)",
                "",
                [round(got["probes_per_worker_per_s"], 3)],
                show_p99=False,
            ),
        ]
    run.shared["scale_details"] = details
    return figures
