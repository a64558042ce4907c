"""Supervision latencies on the real engine: healthy → listed, kill → withdrawn, restart → warm.

Run with `.venv/bin/python -m tests.bench.supervision [--trials N] [--json PATH]` after
`bash scripts/test-env.sh`. Prints a table and writes JSON. Default settings are the daemon's
own (probe every 1 s, start-up probe every 0.1 s); only the restart back-off is shortened so
repeated kills do not wait minutes between trials.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import docker

from byoc_orch.aimodels import parse_models
from byoc_orch.capabilities import Change
from byoc_orch.daemon import Daemon
from byoc_orch.logging import configure_logging
from byoc_orch.settings import Settings
from byoc_orch.worker_state import State
from tests.conftest import _read_harness_env, free_port


def entries(image: str, count: int, load_seconds: float) -> list[dict[str, Any]]:
    return [
        {
            "pipeline": "live-video-to-video",
            "model_id": f"bench-{i}",
            "container": image,
            "url": f"http://127.0.0.1:{free_port()}",
            "warm": True,
            "env": {"DEMO_LOAD_SECONDS": str(load_seconds)},
        }
        for i in range(count)
    ]


async def until(check: Any, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met")
        await asyncio.sleep(0.005)


def ready_ts(client: docker.DockerClient, container_id: str) -> float:
    for line in client.containers.get(container_id).logs().decode().splitlines():
        if '"ready"' in line:
            return float(json.loads(line)["ts"])
    raise RuntimeError("worker printed no ready line")


def die_event_time(client: docker.DockerClient, container_id: str, since: float) -> float:
    """When dockerd emitted the container's `die` event (its own timestamp)."""
    for event in client.events(
        since=int(since) - 1,
        until=int(time.time()) + 1,
        filters={"container": container_id, "event": "die"},
        decode=True,
    ):
        return float(event["timeNano"]) / 1e9
    raise RuntimeError("no die event")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("bench-supervision.json"))
    args = parser.parse_args()
    configure_logging("warning", "console")
    env = _read_harness_env()
    client = docker.DockerClient(base_url=env["BYOC_TEST_DOCKER_HOST"])
    instance = f"bench{uuid.uuid4().hex[:6]}"
    # Back-off shortened only so that repeated kills do not wait minutes between trials; it
    # does not enter any measured interval.
    settings = Settings(
        docker_host=env["BYOC_TEST_DOCKER_HOST"],
        instance=instance,
        port=free_port(),
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    listed_after: list[float] = []
    withdrawn_after: list[float] = []
    event_to_withdrawn: list[float] = []
    events: dict[str, float] = {}

    def record(change: Change) -> None:
        now = time.time()
        for cap in change.added:
            events[f"added:{cap.worker_id}"] = now
        for cap in change.removed:
            events[f"removed:{cap.worker_id}"] = now

    models = parse_models(json.dumps(entries(env["BYOC_TEST_WORKER_IMAGE"], 1, 1.0)), source="b")
    daemon = Daemon(settings, models)
    daemon.registry.subscribe(record)
    await daemon.start()
    (worker,) = daemon.workers.values()
    try:
        for _ in range(args.trials):
            await until(lambda: worker.status.state is State.WARM)
            cid = worker.status.container_id
            listed_after.append(events[f"added:{worker.worker_id}"] - ready_ts(client, cid))
            killed = time.time()
            # In a thread: a blocking call here would hold the daemon's event loop.
            await asyncio.to_thread(client.api.kill, cid)
            await until(lambda: f"removed:{worker.worker_id}" in events)
            removed_at = events.pop(f"removed:{worker.worker_id}")
            withdrawn_after.append(removed_at - killed)
            died_at = die_event_time(client, cid, killed)
            event_to_withdrawn.append(removed_at - died_at)
            events.pop(f"added:{worker.worker_id}", None)
            await until(lambda c=cid: worker.status.container_id not in (None, c))
    finally:
        await daemon.stop()

    restart: dict[int, dict[str, float]] = {}
    for n in (1, 4, 8):
        models = parse_models(
            json.dumps(entries(env["BYOC_TEST_WORKER_IMAGE"], n, 1.0)), source="b"
        )
        first = Daemon(settings.model_copy(update={"instance": f"{instance}n{n}"}), models)
        await first.start()
        await until(lambda d=first: all(w.status.state is State.WARM for w in d.workers.values()))
        ids = {w.worker_id: w.status.container_id for w in first.workers.values()}
        await first.stop()
        began = time.perf_counter()
        second = Daemon(settings.model_copy(update={"instance": f"{instance}n{n}"}), models)
        await second.start()
        await until(lambda d=second: all(w.status.state is State.WARM for w in d.workers.values()))
        took = time.perf_counter() - began
        recreated = sum(
            1 for w in second.workers.values() if ids[w.worker_id] != w.status.container_id
        )
        await second.stop()
        for container in client.containers.list(
            all=True, filters={"label": f"byoc-orch.instance={instance}n{n}"}
        ):
            container.remove(force=True)
        restart[n] = {"seconds_to_all_warm": took, "recreated": recreated}

    results = {
        "trials": args.trials,
        "healthy_to_listed_ms": {
            "p50": statistics.median(listed_after) * 1000,
            "p99": pct(listed_after, 0.99) * 1000,
        },
        "die_event_to_withdrawn_ms": {
            "p50": statistics.median(event_to_withdrawn) * 1000,
            "p99": pct(event_to_withdrawn, 0.99) * 1000,
        },
        "kill_to_withdrawn_ms": {
            "p50": statistics.median(withdrawn_after) * 1000,
            "p99": pct(withdrawn_after, 0.99) * 1000,
        },
        "restart_with_adoption": restart,
    }
    print(f"{'measure':<34}{'p50':>10}{'p99':>10}   trials={args.trials}")
    for key in ("healthy_to_listed_ms", "kill_to_withdrawn_ms", "die_event_to_withdrawn_ms"):
        print(f"{key:<34}{results[key]['p50']:>10.1f}{results[key]['p99']:>10.1f}")
    for n, row in restart.items():
        print(
            f"restart N={n:<2} all warm (s){row['seconds_to_all_warm']:>14.3f}"
            f"   recreated={row['recreated']}"
        )
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
