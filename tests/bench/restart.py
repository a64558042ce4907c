"""Daemon restart with N warm workers: adoption vs recreate-everything, side by side.

byoc-orch runs as `byoc-orch run` in a subprocess, stopped with SIGTERM as systemd would, so a
restart costs what an operator pays: interpreter start and imports, the HTTP API coming up, the
start-up reconcile, and the first probes. Timing starts when the new process is exec'd and ends
when `GET /capabilities` (polled every 2 ms) lists all N.

The go-livepeer side simulates what its worker manager does at start-up: remove the containers
it finds, then create new ones. Here the containers are force-removed (in the timed interval)
and the same byoc-orch binary then starts with nothing to adopt, so the two sides differ only
in adoption. Sides alternate which goes first. "Recreated" compares container ids per worker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.bench import targets
from tests.bench.common import (
    DaemonProcess,
    Figure,
    Run,
    instance_containers,
    log,
    managed_entries,
    remove_instance,
    wait_listed,
    write_models,
)

SIZES = (1, 4, 8)


async def _one_restart(
    run: Run, models: Any, instance: str, n: int, *, recreate: bool, name: str
) -> dict[str, Any]:
    client = run.docker()
    try:
        before = await asyncio.to_thread(instance_containers, client, instance)
        daemon = DaemonProcess(run, models=models, instance=instance, log_name=name)
        began = time.perf_counter()
        if recreate:
            await asyncio.to_thread(_remove_all, run, instance)
        removed_s = time.perf_counter() - began
        async with httpx.AsyncClient(trust_env=False) as http:
            daemon.spawn()
            try:
                api_up, _ = await wait_listed(daemon, http, n, within=120)
                listed = time.perf_counter() - began
            finally:
                await daemon.stop()
        after = await asyncio.to_thread(instance_containers, client, instance)
    finally:
        await asyncio.to_thread(client.close)
    recreated = sum(1 for worker, cid in after.items() if before.get(worker) != cid)
    return {"seconds": listed, "api_up_s": api_up, "removal_s": removed_s, "recreated": recreated}


def _remove_all(run: Run, instance: str) -> None:
    client = run.docker()
    try:
        remove_instance(client, instance)
    finally:
        client.close()


async def restart(run: Run) -> list[Figure]:
    trials = run.trial_count(full=5, quick=3)
    loads = (1.0,) if run.quick else (1.0, 5.0)
    figures: list[Figure] = []
    recreated_adopting: list[float] = []
    api_up: list[float] = []
    reconcile: list[float] = []
    raw: list[dict[str, Any]] = []
    for load in loads:
        for n in SIZES:
            instance = run.instance(f"restart-{n}-{load:g}")
            models = write_models(
                run,
                f"restart-{n}-{load:g}",
                managed_entries(run.image, n, load_seconds=load, prefix=f"restart{n}"),
            )
            log(f"restart: N={n}, load {load:g} s, {trials} trials per side (first start cold)")
            first = DaemonProcess(run, models=models, instance=instance, log_name="restart-first")
            async with httpx.AsyncClient(trust_env=False) as http:
                first.spawn()
                try:
                    await wait_listed(first, http, n, within=120)
                finally:
                    await first.stop()
            sides: dict[str, list[float]] = {"adopt": [], "recreate": []}
            for trial in range(trials):
                order = ("adopt", "recreate") if trial % 2 == 0 else ("recreate", "adopt")
                for side in order:
                    got = await _one_restart(
                        run,
                        models,
                        instance,
                        n,
                        recreate=side == "recreate",
                        name=f"restart-{side}",
                    )
                    raw.append({"load_s": load, "n": n, "side": side, **got})
                    sides[side].append(got["seconds"])
                    if side == "adopt":
                        recreated_adopting.append(got["recreated"])
                        api_up.append(got["api_up_s"])
                        reconcile.append(got["seconds"] - got["api_up_s"])
                    elif got["recreated"] != n:
                        run.notes.append(
                            f"restart N={n}: recreate-all side recreated {got['recreated']} "
                            f"of {n} (expected all)"
                        )
            figures += [
                Figure(
                    f"restart.adopt.n{n}.load{load:g}",
                    f"restart N={n} (load {load:g} s), adoption: exec → all listed",
                    "s",
                    sides["adopt"],
                    **targets.RESTART_ALL_WARM.figure(),
                ),
                Figure(
                    f"restart.recreate.n{n}.load{load:g}",
                    f"restart N={n} (load {load:g} s), recreate-all (go-livepeer)",
                    "s",
                    sides["recreate"],
                ),
            ]
    figures += [
        Figure(
            "restart.adopt.recreated",
            "restart, adoption: containers recreated (every N and trial)",
            "",
            recreated_adopting,
            **targets.RESTART_RECREATED.figure(),
        ),
        Figure(
            "restart.adopt.api_up",
            "  of which exec → HTTP API answering (interpreter, imports)",
            "s",
            api_up,
        ),
        Figure(
            "restart.adopt.reconcile",
            "  of which HTTP API up → all listed (reconcile, adopt, probe)",
            "s",
            reconcile,
        ),
    ]
    run.shared["restart_raw"] = raw
    return figures
