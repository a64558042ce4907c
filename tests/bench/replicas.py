"""Replicas: one pull for 8 replicas, session routing over replicas, and a rolling replacement.

byoc-orch runs as `byoc-orch run` in a subprocess (its own interpreter and HTTP stack, as
deployed) on the real engine. There is no GPU here: every entry asks for `"gpus": 1` per
replica and BYOC_ORCH_GPUS names a pool of device ids, which the test engine's stub NVIDIA hook
accepts, so placement, ports and `--gpus` requests are exactly what a GPU host gets.

1. Cold start of 8 replicas. A fresh image is built for the run (the demo worker plus a layer
   unique to this benchmark), pushed to the loopback registry and removed from the engine, as
   `pulls` does. Each trial removes the image again, starts a daemon whose one entry has
   `"replicas": 8` on a pool of 8 GPUs, and polls `GET /entries` every 10 ms until all 8
   replicas are warm; the time runs from exec to that poll. Pulls are counted by dockerd
   itself: its `pull` image events for the tag between exec and the end of the trial (one per
   pull API call, shared or not); the daemon's own `byoc_orch_image_pulls_total` by result goes
   to the JSON beside it. Beside it, with the same fresh pull: one entry with
   `"replicas": 1`, so the 8-replica figure can be read against one replica's cold start. The
   sides alternate which goes first. DESIGN.md §5 sets no target for this time, and starting 8
   containers at once is bound by the cores the machine has, so both times and their ratio are
   reference figures; the pull count's target is exactly 1.
2. Session start/stop over replica selection. One daemon serves an entry with 1 replica and one
   with 8 (capacity 1 each, a pool of 9 GPUs, probes every 1 s as in `proxy`). Each round makes
   one start+stop pair through `/proxy/<entry_id>/stream/…` of each entry and one straight to
   the container each is routed to (replica 0: with nothing live the least loaded is the lowest
   index; the JSON lists which replicas held the sessions), the four in a random order per
   round, on one keep-alive client per side. Added latency is the median (and p99) of the
   per-round differences, proxied minus direct, per entry; the 8-vs-1 figures are the paired
   difference of the two proxied starts and the ratio of the added p50s.
3. Rolling replacement of 4 replicas. One daemon runs an entry with `"replicas": 4`; once all
   are warm, each trial rewrites aiModels.json to name the same image under another local tag
   (made with the Docker client; trials alternate between the two tags, so every trial
   replaces all 4) and calls `POST /reload`. From just before the reload until `GET /entries`
   shows that rollout `done`, `GET /capabilities` (then `GET /entries`) is polled every 50 ms.
   Figures: the share of polls that listed the capability (target 100 %), the fewest replicas
   taking sessions in any poll (capacity 1 each, target ≥ 3 of 4), and the rollout's duration
   by the daemon's own clock (`started_at` → `finished_at`). The drain timeout is 1 s; no
   sessions run, so replicas are replaced as soon as they stop taking new ones.

Every container carries the run's instance label and is removed after each trial and at the
end, on failure too; the image tags and the registry tag are removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import docker
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
from tests.bench.proxy import WARMUP, _body, _pair
from tests.bench.pulls import REPOSITORY, _delete_from_registry, _drop_local, _prepare
from tests.conftest import free_port

COLD_REPLICAS = 8
ROLLING_REPLICAS = 4
ROUTED_REPLICAS = 8
LOAD_SECONDS = 0.2
POLL_WARM_S = 0.01
POLL_ROLLOUT_S = 0.05

FAST = {
    "BYOC_ORCH_PROBE_INTERVAL": "0.2",
    "BYOC_ORCH_STARTUP_PROBE_INTERVAL": "0.1",
    "BYOC_ORCH_PROBE_TIMEOUT": "0.5",
    "BYOC_ORCH_STOP_TIMEOUT": "1",
    "BYOC_ORCH_DRAIN_TIMEOUT": "1",
    "BYOC_ORCH_GPU_METRICS": "false",
}
PULLED = re.compile(r'^byoc_orch_image_pulls_total\{result="(\w+)"\} ([0-9.e+]+)$', re.M)


# -- shared ------------------------------------------------------------------------------------


def _pool(gpus: int) -> dict[str, str]:
    return {"BYOC_ORCH_GPUS": ",".join(str(i) for i in range(gpus))}


def _port_run(count: int, avoid: range = range(0)) -> int:
    """A port p such that p .. p+count-1 are free now (replica i listens on url port + i)."""
    for _ in range(200):
        base = free_port()
        ports = range(base, base + count)
        if base + count > 65535 or any(p in avoid for p in ports):
            continue
        try:
            for port in ports:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def _replicated(image: str, model_id: str, replicas: int, port: int) -> dict[str, Any]:
    return {
        "pipeline": PIPELINE,
        "model_id": model_id,
        "container": image,
        "url": f"http://127.0.0.1:{port}",
        "warm": True,
        "replicas": replicas,
        "gpus": 1,
        "env": {"DEMO_LOAD_SECONDS": f"{LOAD_SECONDS:g}"},
    }


async def _entries(http: httpx.AsyncClient, url: str) -> dict[str, dict[str, Any]] | None:
    """GET /entries by model_id; None while the API is not up."""
    try:
        reply = await http.get(f"{url}/entries", timeout=2)
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    return {e["model_id"]: e for e in reply.json()}


async def _wait_warm(
    daemon: DaemonProcess, http: httpx.AsyncClient, want: dict[str, int], within: float
) -> float:
    """Poll /entries every 10 ms until each model_id has its replicas warm; seconds from exec."""
    deadline = time.perf_counter() + within
    while True:
        entries = await _entries(http, daemon.url)
        now = time.perf_counter()
        if entries is not None and all(
            m in entries and entries[m]["replicas_warm"] >= n for m, n in want.items()
        ):
            return now - daemon.spawned_at
        if not daemon.alive():
            raise RuntimeError(f"byoc-orch exited early:\n{daemon.log_tail()}")
        if now > deadline:
            raise TimeoutError(f"replicas {want} not all warm within {within:g} s: {entries}")
        await asyncio.sleep(POLL_WARM_S)


def _remove(run: Run, instance: str) -> None:
    client = run.docker()
    try:
        remove_instance(client, instance)
    finally:
        client.close()


# -- 1. cold start of 8 replicas: one pull -----------------------------------------------------


def _pull_events(run: Run, image: str, since: float, until: float) -> int:
    """dockerd's own `pull` events for `image` in [since, until] (one per pull API call)."""
    client = run.docker()
    try:
        events = client.api.events(
            since=int(since),
            until=int(until) + 1,
            decode=True,
            filters={"type": "image", "event": "pull"},
        )
        return sum(
            1 for e in events if e.get("id") == image and since <= int(e["timeNano"]) / 1e9 <= until
        )
    finally:
        client.close()


async def _cold_trial(run: Run, image: str, replicas: int, trial: int) -> dict[str, Any]:
    name = f"replicas-cold{replicas}-{trial}"
    instance = run.instance(name)
    models = write_models(run, name, [_replicated(image, "cold", replicas, _port_run(replicas))])
    await asyncio.to_thread(_drop_local, run, image)
    daemon = DaemonProcess(
        run,
        models=models,
        instance=instance,
        settings={**FAST, **_pool(replicas)},
        log_name=name,
    )
    since = time.time() - 0.05
    metrics: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            daemon.spawn()
            try:
                seconds = await _wait_warm(daemon, http, {"cold": replicas}, within=180)
                reply = await http.get(f"{daemon.url}/metrics", timeout=5)
                metrics = {k: float(v) for k, v in PULLED.findall(reply.text)}
            finally:
                await daemon.stop()
        pulls = await asyncio.to_thread(_pull_events, run, image, since, time.time() + 0.05)
    finally:
        await asyncio.to_thread(_remove, run, instance)
    return {"replicas": replicas, "seconds": seconds, "dockerd_pulls": pulls, "metrics": metrics}


async def _cold(run: Run) -> list[Figure]:
    trials = run.trial_count(full=3, quick=2)
    registry = run.env["BYOC_TEST_REGISTRY"]
    repo, tag = f"{registry}/{REPOSITORY}", f"replicas-{run.run_id}"
    image = f"{repo}:{tag}"
    log(f"replicas: building and pushing {image}")
    await asyncio.to_thread(_prepare, run, image, repo, tag, f"{run.run_id}-replicas")
    run.cleanups.append(lambda: _delete_from_registry(registry, tag))
    run.cleanups.append(lambda: _drop_local(run, image))
    raw: list[dict[str, Any]] = []
    for trial in range(trials):
        order = (COLD_REPLICAS, 1) if trial % 2 == 0 else (1, COLD_REPLICAS)
        log(f"replicas: cold start {trial + 1}/{trials}: {order[0]} replica(s), then {order[1]}")
        for replicas in order:
            raw.append(await _cold_trial(run, image, replicas, trial))
    run.shared["replicas_cold"] = {"image": image, "trials": raw}
    many = [r for r in raw if r["replicas"] == COLD_REPLICAS]
    one = [r for r in raw if r["replicas"] == 1]
    one_p50 = statistics.median(r["seconds"] for r in one)
    many_p50 = statistics.median(r["seconds"] for r in many)
    return [
        Figure(
            "replicas.cold.pulls",
            f"{COLD_REPLICAS} replicas of one entry, image not local: pulls dockerd got",
            "",
            [r["dockerd_pulls"] for r in many],
            **targets.ONE_PULL.figure(),
        ),
        Figure(
            "replicas.cold.all_warm",
            f"{COLD_REPLICAS} replicas, one pull: exec → all {COLD_REPLICAS} warm",
            "s",
            [r["seconds"] for r in many],
        ),
        Figure(
            "replicas.cold.one_warm",
            "1 replica, one pull: exec → warm (for comparison)",
            "s",
            [r["seconds"] for r in one],
        ),
        Figure(
            "replicas.cold.ratio",
            f"  {COLD_REPLICAS} replicas ÷ 1 replica, cold start p50",
            "",
            [round(many_p50 / one_p50, 2)],
            show_p99=False,
        ),
    ]


# -- 2. session start/stop over replica selection ----------------------------------------------


def _measure(run_id: str, bases: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Blocking: `rounds` rounds, each side's start+stop pair once per round in random order."""
    sides = list(bases)
    samples: dict[str, list[float]] = {
        f"{side}.{call}": [] for side in sides for call in ("start", "stop")
    }
    rng = random.Random(0)
    clients = {side: httpx.Client(trust_env=False, timeout=10) for side in sides}
    try:
        for n in range(WARMUP):
            for side in sides:
                _pair(clients[side], bases[side], _body(n, f"{run_id}-{side}"))
        for n in range(rounds):
            order = sides[:]
            rng.shuffle(order)
            for side in order:
                start, stop = _pair(
                    clients[side], bases[side], _body(WARMUP + n, f"{run_id}-{side}")
                )
                samples[f"{side}.start"].append(start * 1000)
                samples[f"{side}.stop"].append(stop * 1000)
    finally:
        for client in clients.values():
            client.close()
    return samples


async def _routing(run: Run) -> list[Figure]:
    rounds = max(1000, run.trial_count(full=2000, quick=1000))
    instance = run.instance("replicas-routing")
    many_port = _port_run(ROUTED_REPLICAS)
    one_port = _port_run(1, avoid=range(many_port, many_port + ROUTED_REPLICAS))
    entries = [
        _replicated(run.image, "one", 1, one_port),
        _replicated(run.image, "many", ROUTED_REPLICAS, many_port),
    ]
    models = write_models(run, "replicas-routing", entries)
    settings = {
        **FAST,
        "BYOC_ORCH_PROBE_INTERVAL": "1",  # as `proxy` runs it: the shipped default
        **_pool(1 + ROUTED_REPLICAS),
    }
    daemon = DaemonProcess(
        run, models=models, instance=instance, settings=settings, log_name="replicas-routing"
    )
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            daemon.spawn()
            try:
                await _wait_warm(daemon, http, {"one": 1, "many": ROUTED_REPLICAS}, within=180)
                listed = await _entries(http, daemon.url)
                assert listed is not None
                workers = (await http.get(f"{daemon.url}/workers")).json()
                first = {
                    w["entry_id"]: w["host_port"] for w in workers if w["replica"] == 0
                }  # where a start goes while nothing is live
                bases = {}
                for side, model in (("r1", "one"), (f"r{ROUTED_REPLICAS}", "many")):
                    entry_id = listed[model]["entry_id"]
                    bases[side] = f"{daemon.url}/proxy/{entry_id}"
                    bases[f"{side}.direct"] = f"http://127.0.0.1:{first[entry_id]}"
                log(f"replicas: {rounds} rounds of 4 interleaved start+stop pairs")
                samples = await asyncio.to_thread(_measure, run.run_id, bases, rounds)
                sessions = (await http.get(f"{daemon.url}/sessions")).json()
            finally:
                await daemon.stop()
    finally:
        await asyncio.to_thread(_remove, run, instance)
    many = f"r{ROUTED_REPLICAS}"
    # Which of the 8 replicas took the (recent) sessions: expected, replica 0 every time.
    held = sorted({s["worker_id"] for s in sessions if s["model_id"] == "many"})
    added = {
        (side, call): [
            p - d
            for p, d in zip(
                samples[f"{side}.{call}"], samples[f"{side}.direct.{call}"], strict=True
            )
        ]
        for side in ("r1", many)
        for call in ("start", "stop")
    }
    versus = [a - b for a, b in zip(samples[f"{many}.start"], samples["r1.start"], strict=True)]
    run.shared["replicas_routing"] = {
        "rounds": rounds,
        "p50_ms": {k: statistics.median(v) for k, v in samples.items()},
        f"{many}_sessions_held_by": held,
    }
    figures = []
    for call in ("start", "stop"):
        for side, replicas in (("r1", 1), (many, ROUTED_REPLICAS)):
            plural = "replica" if replicas == 1 else "replicas"
            figures.append(
                Figure(
                    f"replicas.routing.added.{call}.{side}",
                    f"session {call} via entry, {replicas} {plural}: added by byoc-orch",
                    "ms",
                    added[(side, call)],
                    **targets.SESSION_CALL_ADDED.figure(),
                )
            )
    ratio = statistics.median(added[(many, "start")]) / statistics.median(added[("r1", "start")])
    figures += [
        Figure(
            "replicas.routing.start.8_minus_1",
            f"  session start via entry, {ROUTED_REPLICAS} replicas minus 1 (paired)",
            "ms",
            versus,
        ),
        Figure(
            "replicas.routing.start.ratio",
            f"  session start, added p50 {ROUTED_REPLICAS} replicas ÷ 1 replica",
            "",
            [round(ratio, 2)],
            show_p99=False,
        ),
    ]
    return figures


# -- 3. capability availability during a rolling replacement -----------------------------------


def _tag(run: Run, tag: str) -> str:
    """Blocking: the worker image under another local tag (same image, a different spec)."""
    client = run.docker()
    try:
        repo = run.image.rsplit(":", 1)[0]
        client.images.get(run.image).tag(repo, tag)
        return f"{repo}:{tag}"
    finally:
        client.close()


def _untag(run: Run, image: str) -> None:
    client = run.docker()
    try:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image)
    finally:
        client.close()


async def _one_rollout(
    daemon: DaemonProcess,
    http: httpx.AsyncClient,
    models: Path,
    entry: dict[str, Any],
    image: str,
) -> dict[str, Any]:
    listed: list[bool] = []
    capacity: list[int] = []
    done: dict[str, Any] = {}
    began = time.time()

    async def poll() -> None:
        next_at = time.perf_counter()
        while True:
            reply = await http.get(f"{daemon.url}/capabilities", timeout=5)
            reply.raise_for_status()
            listed.append(any(c["model_id"] == entry["model_id"] for c in reply.json()))
            entries = await _entries(http, daemon.url)
            if entries is None:
                raise RuntimeError(f"GET /entries failed during the rollout:\n{daemon.log_tail()}")
            mine = entries[entry["model_id"]]
            capacity.append(mine["capacity"])
            rollout = mine["rollout"] or {}
            if rollout.get("started_at", 0) >= began and rollout.get("state") != "rolling":
                done.update(rollout)
                return
            next_at += POLL_ROLLOUT_S
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    await asyncio.to_thread(models.write_text, json.dumps([{**entry, "container": image}]))
    poller = asyncio.create_task(poll())
    try:
        reply = await http.post(f"{daemon.url}/reload", timeout=30)
        if reply.status_code != 200:
            raise RuntimeError(f"POST /reload → {reply.status_code} {reply.text[:300]!r}")
        await asyncio.wait_for(asyncio.shield(poller), 180)
    finally:
        poller.cancel()
    if done.get("state") != "done":
        raise RuntimeError(f"rollout to {image} ended {done.get('state')}: {done.get('detail')}")
    workers = (await http.get(f"{daemon.url}/workers")).json()
    images = sorted({w["image"] for w in workers if w["model_id"] == entry["model_id"]})
    return {
        "image": image,
        "polls": len(listed),
        "listed_pct": 100.0 * sum(listed) / len(listed),
        "min_capacity": min(capacity),
        "seconds": done["finished_at"] - done["started_at"],
        "images_after": images,
    }


async def _rollout(run: Run) -> list[Figure]:
    trials = run.trial_count(full=5, quick=2)
    instance = run.instance("replicas-rollout")
    other = await asyncio.to_thread(_tag, run, f"bench-rollout-{run.run_id}")
    run.cleanups.append(lambda: _untag(run, other))
    entry = _replicated(run.image, "rolled", ROLLING_REPLICAS, _port_run(ROLLING_REPLICAS))
    models = write_models(run, "replicas-rollout", [entry])
    daemon = DaemonProcess(
        run,
        models=models,
        instance=instance,
        settings={**FAST, **_pool(ROLLING_REPLICAS)},
        log_name="replicas-rollout",
    )
    raw: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            daemon.spawn()
            try:
                await _wait_warm(daemon, http, {"rolled": ROLLING_REPLICAS}, within=180)
                for trial in range(trials):
                    image = other if trial % 2 == 0 else run.image
                    log(f"replicas: rollout {trial + 1}/{trials} of {ROLLING_REPLICAS} → {image}")
                    got = await _one_rollout(daemon, http, models, entry, image)
                    if got["images_after"] != [image]:
                        run.notes.append(
                            f"replicas rollout {trial + 1}: replicas run {got['images_after']} "
                            f"after the rollout to {image}"
                        )
                    raw.append(got)
            finally:
                await daemon.stop()
    finally:
        await asyncio.to_thread(_remove, run, instance)
        await asyncio.to_thread(_untag, run, other)
    run.shared["replicas_rollout"] = raw
    return [
        Figure(
            "replicas.rollout.listed",
            f"rolling replacement of {ROLLING_REPLICAS} replicas: polls listing the capability",
            "%",
            [r["listed_pct"] for r in raw],
            **targets.ROLLOUT_LISTED.figure(),
        ),
        Figure(
            "replicas.rollout.min_capacity",
            "  fewest replicas taking sessions in any poll (capacity 1 each)",
            "",
            [r["min_capacity"] for r in raw],
            **targets.ROLLOUT_CAPACITY.figure(),
        ),
        Figure(
            "replicas.rollout.seconds",
            f"  rollout duration, {ROLLING_REPLICAS} replicas one at a time (daemon's clock)",
            "s",
            [r["seconds"] for r in raw],
        ),
    ]


async def replicas(run: Run) -> list[Figure]:
    figures = await _cold(run)
    figures += await _routing(run)
    figures += await _rollout(run)
    return figures
