"""Live Runner sessions: both sides end the same sessions, and a drain cuts none.

byoc-orch runs as `byoc-orch run` in a subprocess with Live Runner heartbeats on (interval 1 s,
TTL 20 s as go-livepeer's), beside tests/fake_livepeer.py's registry (go-livepeer's
ai/runner/live_runner.go function by function) in the benchmark's own process. Every session is
made as a client makes it: reserved at the registry (`POST /apps/{runner}/session`), its stream
started through the registry's reverse proxy, which sets the four `Livepeer-*` headers.

1. Worker end → released at the orchestrator. A session on replica 0 of a 2-replica entry; its
   container is SIGKILLed. The time runs from byoc-orch noticing (the session's `ended_at` in
   `/sessions`, byoc-orch's clock) to the registry recording the release (its `time.time()`:
   one host, one clock). Target ≤ 1 s (DESIGN §5). The replica restarts before the next trial.
2. Orchestrator release → stop sent to the worker. The client releases a running session at the
   registry (`POST /apps/{runner}/session/{id}/stop`); the time runs from that answer to the
   worker recording the `/stream/stop` byoc-orch sends it (the demo worker's own call log).
   byoc-orch learns of the release from the next heartbeat answer's `session_ids`, so the
   target is one heartbeat interval (1 s here).
3. Rolling replacement of 4 replicas, each holding a session made through the registry: the
   entry's environment changes and the daemon is reloaded; once every replica is draining or
   replaced, each client releases its session in turn. Figure: sessions released at the
   registry for any reason but the client's own stop (an unregister, a TTL expiry, a failed
   health poll) before their client released them — target 0.
4. A session call through the registry's proxy: `GET …/app/stream/status` of a live session,
   through byoc-orch beside a static runner whose `runner_url` is the same container directly,
   the two alternating per round on the same registry. Added latency is the median (and p99) of
   the per-round differences; target ≤ 1 ms p50 (the registry's own proxy costs the same on
   both sides, so the difference is byoc-orch's).

Every container carries the run's instance label and is removed at the end, on failure too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
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
from tests.bench.replicas import FAST, _port_run, _replicated, _wait_warm
from tests.fake_livepeer import FakeLivepeer

SECRET = "bench-orch-secret"
INTERVAL = 1.0
BODY = {"subscribe_url": "http://127.0.0.1:1/in", "publish_url": "http://127.0.0.1:1/out"}


def _settings(orch: FakeLivepeer, state: str) -> dict[str, str]:
    return {
        **FAST,
        "BYOC_ORCH_ORCH_URL": orch.url,
        "BYOC_ORCH_ORCH_SECRET": SECRET,
        "BYOC_ORCH_BYOC_REGISTER": "false",
        "BYOC_ORCH_LIVE_RUNNER_HEARTBEAT": "true",
        "BYOC_ORCH_REGISTER_RETRY_INITIAL": "0.05",
        "BYOC_ORCH_REGISTER_RETRY_MAX": "0.5",
        "BYOC_ORCH_BACKOFF_INITIAL": "0.2",
        "BYOC_ORCH_BACKOFF_MAX": "1",
        "BYOC_ORCH_STATE_DIRECTORY": state,
        "BYOC_ORCH_GPUS": "0,1,2,3",
    }


async def _start(orch: FakeLivepeer, route: str, name: str) -> str:
    reply = await orch.reserve(route)
    reply.raise_for_status()
    session_id = str(reply.json()["session_id"])
    started = await orch.app_call(
        route, session_id, "stream/start", json_body={**BODY, "gateway_request_id": name}
    )
    if started.status_code != 200:
        raise RuntimeError(f"start through the registry answered {started.status_code}")
    return session_id


async def _runner_for(orch: FakeLivepeer, worker_id: str, within: float = 30.0) -> str:
    deadline = time.monotonic() + within
    while (found := orch.runner_labelled(worker_id)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no runner for {worker_id}")
        await asyncio.sleep(0.02)
    return str(found["runner_id"])


async def _workers(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    return list((await http.get(f"{url}/workers", timeout=5)).json())


async def _session(http: httpx.AsyncClient, url: str, session: str) -> dict[str, Any]:
    return dict((await http.get(f"{url}/sessions/{session}", timeout=5)).json())


async def _until(check: Any, within: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.01)


async def _stop_calls(http: httpx.AsyncClient, port: int) -> list[dict[str, Any]]:
    calls = (await http.get(f"http://127.0.0.1:{port}/_demo/calls", timeout=5)).json()
    return [c for c in calls if c["path"].endswith("/stream/stop")]


async def live_runner(run: Run) -> list[Figure]:
    orch = FakeLivepeer(SECRET, heartbeat_interval=INTERVAL, heartbeat_ttl=20.0)
    await orch.start()
    instance = run.instance("lr")
    state = run.workdir / "lr-state"
    figures: list[Figure] = []
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            figures += await _ends(run, orch, http, instance, str(state))
            figures += await _rolling(run, orch, http, run.instance("lr-roll"), str(state))
    finally:
        await orch.stop()
        for name in ("lr", "lr-roll"):
            remove_instance(run.docker(), run.instance(name))
    return figures


async def _ends(
    run: Run, orch: FakeLivepeer, http: httpx.AsyncClient, instance: str, state: str
) -> list[Figure]:
    port = _port_run(2)
    entry = _replicated(run.image, "lr", 2, port)
    daemon = DaemonProcess(
        run,
        models=write_models(run, "lr", [entry]),
        instance=instance,
        settings=_settings(orch, state),
        log_name="live-runner",
    )
    daemon.spawn()
    crash: list[float] = []
    release: list[float] = []
    added: list[float] = []
    try:
        await _wait_warm(daemon, http, {"lr": 2}, 60)
        workers = sorted(await _workers(http, daemon.url), key=lambda w: w["replica"])
        r0 = workers[0]
        route = await _runner_for(orch, r0["worker_id"])

        trials = run.trial_count(10, 3)
        log(f"live_runner: {trials} crash trials")
        for trial in range(trials):
            name = f"crash-{trial}"
            session_id = await _start(orch, route, name)
            current = next(
                w for w in await _workers(http, daemon.url) if w["worker_id"] == r0["worker_id"]
            )
            container = run.docker().containers.get(current["container_id"])
            await asyncio.to_thread(container.kill)
            found = await _until(
                lambda sid=session_id: [r for r in orch.released if r.session_id == sid],
                what="released after the crash",
            )
            ended = await _session(http, daemon.url, name)
            crash.append((found[0].wall - float(ended["ended_at"])) * 1000)
            await _wait_warm(daemon, http, {"lr": 2}, 60)
            await _runner_for(orch, r0["worker_id"])

        log(f"live_runner: {trials} orchestrator releases")
        for trial in range(trials):
            name = f"release-{trial}"
            session_id = await _start(orch, route, name)
            before = len(await _stop_calls(http, port))
            answered = await orch.client_stop(route, session_id)
            released_at = time.time()
            answered.raise_for_status()
            calls = await _until(
                lambda n=before: _more_stops(http, port, n), what="the worker told to stop"
            )
            release.append((float(calls[-1]["ts"]) - released_at) * 1000)
            await _until(lambda n=name: _ended(http, daemon.url, n), what="the session ended here")

        figures = [
            Figure(
                "lr_worker_end_released",
                "Live Runner: worker crash → released at the orchestrator (from byoc-orch "
                "noticing)",
                "ms",
                crash,
                **targets.RELEASED_AT_ORCHESTRATOR.figure(),
            ),
            Figure(
                "lr_orchestrator_release_stopped",
                "Live Runner: orchestrator release → stop sent to the worker (heartbeat 1 s)",
                "ms",
                release,
                **targets.RELEASE_STOPPED.figure(),
            ),
        ]
        added = await _proxy_added(run, orch, http, route, port)
        figures.append(
            Figure(
                "lr_proxy_added",
                "Live Runner: session status call through the registry's proxy, byoc-orch's "
                "added latency",
                "ms",
                added,
                **targets.SESSION_CALL_ADDED.figure(),
            )
        )
        return figures
    finally:
        await daemon.stop()


async def _more_stops(http: httpx.AsyncClient, port: int, before: int) -> list[dict[str, Any]]:
    calls = await _stop_calls(http, port)
    return calls if len(calls) > before else []


async def _ended(http: httpx.AsyncClient, url: str, name: str) -> bool:
    return (await _session(http, url, name)).get("end_reason") is not None


async def _proxy_added(
    run: Run, orch: FakeLivepeer, http: httpx.AsyncClient, route: str, port: int
) -> list[float]:
    """Status calls of a live session, through byoc-orch and straight to the container."""
    static = {
        "runners": [
            {
                "label": "bench-direct",
                "routing": "label",
                "runner_url": f"http://127.0.0.1:{port}",
                "health_url": f"http://127.0.0.1:{port}/health",
                "app": f"{PIPELINE}/direct",
                "capacity": 1,
            }
        ]
    }
    (
        await http.post(f"{orch.url}/registerLiveRunners", content=json.dumps(static))
    ).raise_for_status()
    via = await _start(orch, route, "proxied")
    direct = str((await orch.reserve("bench-direct")).json()["session_id"])
    rounds = run.trial_count(300, 60)
    samples: list[float] = []
    async with httpx.AsyncClient(trust_env=False) as client:

        async def timed(path: str) -> float:
            began = time.perf_counter()
            reply = await client.get(path, timeout=10)
            if reply.status_code != 200:
                raise RuntimeError(f"{path} answered {reply.status_code}")
            return (time.perf_counter() - began) * 1000

        base = orch.url
        through = f"{base}/apps/{route}/session/{via}/app/stream/status"
        straight = f"{base}/apps/bench-direct/session/{direct}/app/stream/status"
        for _ in range(20):
            await timed(through)
            await timed(straight)
        for i in range(rounds):
            if i % 2:
                a, b = await timed(through), await timed(straight)
            else:
                b, a = await timed(straight), await timed(through)
            samples.append(a - b)
    log(f"live_runner: proxy added p50 {statistics.median(samples):.2f} ms")
    return samples


async def _rolling(
    run: Run, orch: FakeLivepeer, http: httpx.AsyncClient, instance: str, state: str
) -> list[Figure]:
    port = _port_run(4)
    entry = _replicated(run.image, "roll", 4, port)
    models = write_models(run, "lr-roll", [entry])
    settings = {**_settings(orch, state), "BYOC_ORCH_DRAIN_TIMEOUT": "120"}
    daemon = DaemonProcess(run, models=models, instance=instance, settings=settings)
    daemon.spawn()
    early: list[float] = []
    try:
        for trial in range(run.trial_count(2, 1)):
            await _wait_warm(daemon, http, {"roll": 4}, 60)
            workers = await _workers(http, daemon.url)
            routes = [await _runner_for(orch, w["worker_id"]) for w in workers]
            sessions = {
                route: await _start(orch, route, f"roll-{trial}-{i}")
                for i, route in enumerate(routes)
            }
            client_stopped: dict[str, float] = {}
            before = len(orch.released)
            entry["env"] = {**entry["env"], "DEMO_TRIAL": str(trial)}
            models.write_text(json.dumps([entry]))
            (await http.post(f"{daemon.url}/reload", timeout=30)).raise_for_status()
            await asyncio.sleep(2 * INTERVAL)
            for route, session_id in sessions.items():
                client_stopped[session_id] = orch.clock()
                (await orch.client_stop(route, session_id)).raise_for_status()
                await asyncio.sleep(0.5)
            await _until(lambda: _rollout_done(http, daemon.url), within=120, what="rollout done")
            cut = [
                r
                for r in orch.released[before:]
                if r.session_id in client_stopped
                and (r.reason != "client stop" or r.at < client_stopped[r.session_id])
            ]
            early.append(float(len(cut)))
            log(f"live_runner: rolling replacement trial {trial}: {len(cut)} cut")
        return [
            Figure(
                "lr_rolling_released_early",
                "Live Runner: rolling replacement of 4 replicas with a session each — sessions "
                "released at the orchestrator before their client ended them",
                "",
                early,
                **targets.NO_SESSION_RELEASED_EARLY.figure(),
                show_p99=False,
            )
        ]
    finally:
        await daemon.stop()


async def _rollout_done(http: httpx.AsyncClient, url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError, ValueError):
        entries = (await http.get(f"{url}/entries", timeout=5)).json()
        rollout = entries[0].get("rollout") or {}
        return bool(rollout.get("state") == "done")
    return False
