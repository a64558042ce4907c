"""Session start+stop through byoc-orch's proxy vs straight to the container, interleaved.

byoc-orch runs as `byoc-orch run` in a subprocess (its own interpreter and CPU, as deployed),
with one warm demo worker. Each side has one keep-alive httpx client; every pair is start then
stop, and the two sides take turns in a random order per pair so drift (CPU frequency, the
daemon's 1 s probes, page cache) falls on both alike. Added latency is the median of the
per-pair differences (proxied minus direct), per call and per start+stop.

Contract (the session proxy is being built): `POST /proxy/<worker_id>/stream/start` with
`{subscribe_url, publish_url, gateway_request_id}` and `POST /proxy/<worker_id>/stream/stop`
with `{gateway_request_id}`; a 404 on the first start means the proxy is not there yet.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from tests.bench import targets
from tests.bench.common import (
    DaemonProcess,
    Figure,
    Run,
    cpu_seconds,
    log,
    managed_entries,
    wait_listed,
    write_models,
)

WARMUP = 50


class ProxyUnavailable(Exception):
    pass


def _body(n: int, run_id: str) -> dict[str, str]:
    return {
        "subscribe_url": "http://127.0.0.1:9/sub",
        "publish_url": "http://127.0.0.1:9/pub",
        "gateway_request_id": f"bench-{run_id}-{n}",
    }


def _pair(client: httpx.Client, base: str, body: dict[str, str]) -> tuple[float, float]:
    """One start and its stop; seconds each. Anything but 200 is an error, not a sample."""
    t0 = time.perf_counter()
    started = client.post(f"{base}/stream/start", json=body)
    t1 = time.perf_counter()
    stopped = client.post(
        f"{base}/stream/stop", json={"gateway_request_id": body["gateway_request_id"]}
    )
    t2 = time.perf_counter()
    if started.status_code != 200 or stopped.status_code != 200:
        raise RuntimeError(
            f"{base}: start {started.status_code} {started.text[:200]!r}, "
            f"stop {stopped.status_code} {stopped.text[:200]!r}"
        )
    return t1 - t0, t2 - t1


def _measure(run_id: str, proxied: str, direct: str, pairs: int, pid: int) -> dict[str, Any]:
    """Blocking: the whole interleaved loop, in a thread of its own."""
    samples: dict[str, list[float]] = {
        f"{side}.{call}": [] for side in ("proxy", "direct") for call in ("start", "stop")
    }
    bases = {"proxy": proxied, "direct": direct}
    rng = random.Random(0)
    with (
        httpx.Client(trust_env=False, timeout=10) as proxy_client,
        httpx.Client(trust_env=False, timeout=10) as direct_client,
    ):
        clients = {"proxy": proxy_client, "direct": direct_client}
        first = _body(-1, run_id)
        probe = clients["proxy"].post(f"{proxied}/stream/start", json=first)
        if probe.status_code == 404:
            raise ProxyUnavailable(
                f"POST {proxied}/stream/start → 404 {probe.text[:120]!r}: proxy not available"
            )
        if probe.status_code == 200:
            stop = {"gateway_request_id": first["gateway_request_id"]}
            clients["proxy"].post(f"{proxied}/stream/stop", json=stop)
        for n in range(WARMUP):
            for side in ("proxy", "direct"):
                _pair(clients[side], bases[side], _body(n, run_id))
        cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
        for n in range(pairs):
            order = ["proxy", "direct"]
            rng.shuffle(order)
            for side in order:
                start, stop = _pair(clients[side], bases[side], _body(WARMUP + n, run_id))
                samples[f"{side}.start"].append(start * 1000)
                samples[f"{side}.stop"].append(stop * 1000)
        cpu = cpu_seconds(pid) - cpu_before
        wall = time.perf_counter() - wall_before
    return {"samples": samples, "daemon_cpu_s": cpu, "wall_s": wall}


async def proxy(run: Run) -> list[Figure]:
    pairs = max(1000, run.trial_count(full=2000, quick=1000))
    instance = run.instance("proxy")
    models = write_models(run, "proxy", managed_entries(run.image, 1, load_seconds=0.2))
    daemon = DaemonProcess(run, models=models, instance=instance, log_name="proxy")
    async with httpx.AsyncClient(trust_env=False) as http:
        daemon.spawn()
        try:
            await wait_listed(daemon, http, 1, within=120)
            (worker,) = (await http.get(f"{daemon.url}/workers")).json()
            proxied = f"{daemon.url}/proxy/{worker['worker_id']}"
            direct = f"http://127.0.0.1:{worker['host_port']}"
            log(f"proxy: {pairs} interleaved start+stop pairs per side")
            try:
                got = await asyncio.to_thread(
                    _measure, run.run_id, proxied, direct, pairs, daemon.pid
                )
            except ProxyUnavailable as exc:
                run.shared["proxy_unavailable"] = str(exc)
                return []
        finally:
            await daemon.stop()
    s = got["samples"]
    added = {
        call: [p - d for p, d in zip(s[f"proxy.{call}"], s[f"direct.{call}"], strict=True)]
        for call in ("start", "stop")
    }
    pair = {
        side: [a + b for a, b in zip(s[f"{side}.start"], s[f"{side}.stop"], strict=True)]
        for side in ("proxy", "direct")
    }
    added_pair = [p - d for p, d in zip(pair["proxy"], pair["direct"], strict=True)]
    run.shared["proxy_extra"] = {
        "pairs": pairs,
        "daemon_cpu_ms_per_proxied_pair": got["daemon_cpu_s"] / pairs * 1000,
        "wall_s": got["wall_s"],
    }
    figures = []
    for call in ("start", "stop"):
        figures += [
            Figure(
                f"proxy.direct.{call}",
                f"session {call}, direct to container",
                "ms",
                s[f"direct.{call}"],
            ),
            Figure(
                f"proxy.proxied.{call}",
                f"session {call}, through byoc-orch",
                "ms",
                s[f"proxy.{call}"],
            ),
            Figure(
                f"proxy.added.{call}",
                f"session {call}: added by byoc-orch (paired difference)",
                "ms",
                added[call],
                **targets.SESSION_CALL_ADDED.figure(),
            ),
        ]
    figures += [
        Figure("proxy.direct.pair", "session start+stop, direct", "ms", pair["direct"]),
        Figure("proxy.proxied.pair", "session start+stop, through byoc-orch", "ms", pair["proxy"]),
        Figure(
            "proxy.added.pair",
            "session start+stop: added by byoc-orch",
            "ms",
            added_pair,
            **targets.SESSION_PAIR_ADDED.figure(),
        ),
    ]
    return figures
