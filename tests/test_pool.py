"""Replica ranges on the real engine, on a pretend pool of 4 GPUs (the stub NVIDIA hook):
demand grows one entry while another stays at its minimum, surplus replicas drain away after
the delay (never below min, never cutting a session), two entries competing for the last GPU
follow the documented rule, a restart adopts ranged replicas on the GPUs they had, and vram_mb
packs replicas of different entries on one GPU while they fit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import docker
import httpx
import pytest

from byoc_orch.aimodels import ModelsFile, parse_models
from byoc_orch.daemon import Daemon
from byoc_orch.settings import Settings
from byoc_orch.worker import Worker
from byoc_orch.worker_state import State
from tests.conftest import Harness, eventually, free_port
from tests.fake_livepeer import FakeLivepeer
from tests.test_replicas import SECRET, api, device_ids, replicated, settings_for, start_body

pytestmark = pytest.mark.engine

MEMORY_MB = 24000


def pool_settings(harness: Harness, instance: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"scale_interval": 0.1, "gpu_memory_mb": MEMORY_MB, **overrides}
    return settings_for(harness, instance, **values)


def models_for(entries: list[dict[str, Any]], settings: Settings) -> ModelsFile:
    return parse_models(
        json.dumps(entries),
        source="test",
        gpu_pool=settings.gpu_pool_setting,
        pool_configured=True,
        gpu_memory_mb=settings.gpu_memory_mb,
    )


@asynccontextmanager
async def running(settings: Settings, entries: list[dict[str, Any]]) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings, models_for(entries, settings))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


def ranged(harness: Harness, model_id: str, low: int, high: int, **fields: Any) -> dict[str, Any]:
    return replicated(
        harness, model_id, free_port(high), replicas={"min": low, "max": high}, **fields
    )


def deployment_of(daemon: Daemon, model_id: str) -> Any:
    return next(d for d in daemon.deployments.values() if d.entry.model_id == model_id)


def kept(daemon: Daemon, model_id: str) -> list[Worker]:
    return list(deployment_of(daemon, model_id).kept())


def warm(daemon: Daemon, model_id: str, count: int) -> Any:
    def check() -> bool:
        workers = kept(daemon, model_id)
        return len(workers) == count and all(w.routable for w in workers)

    return eventually(
        check,
        within=30,
        what=lambda: (
            f"{model_id}: {[(w.replica, str(w.status.state)) for w in kept(daemon, model_id)]}"
        ),
    )


async def start(
    client: httpx.AsyncClient, daemon: Daemon, model_id: str, session: str
) -> httpx.Response:
    entry_id = deployment_of(daemon, model_id).entry_id
    return await client.post(f"/proxy/{entry_id}/stream/start", json=start_body(session))


async def stop(client: httpx.AsyncClient, daemon: Daemon, model_id: str, session: str) -> None:
    entry_id = deployment_of(daemon, model_id).entry_id
    reply = await client.post(
        f"/proxy/{entry_id}/stream/stop", json={"gateway_request_id": session}
    )
    assert reply.status_code == 200, reply.text


def described(listing: list[dict[str, Any]], model_id: str) -> dict[str, Any]:
    return next(e for e in listing if e["model_id"] == model_id)


def gpus_of(client: docker.DockerClient, workers: list[Worker]) -> list[list[list[str]]]:
    return [device_ids(client, w.status.container_id) for w in workers]


async def test_demand_grows_one_entry_to_max_while_another_stays_at_min(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entries = [ranged(harness, "hot", 1, 3), ranged(harness, "calm", 1, 3)]
    async with running(pool_settings(harness, instance), entries) as daemon, api(daemon) as client:
        await warm(daemon, "hot", 1)
        await warm(daemon, "calm", 1)
        for n, session in enumerate(("h-0", "h-1", "h-2")):
            reply = await start(client, daemon, "hot", session)
            assert reply.status_code == 200, reply.text
            # the headroom of one free warm slot brings one more replica, up to max
            await warm(daemon, "hot", min(n + 2, 3))
        full = await start(client, daemon, "hot", "h-3")
        assert full.status_code == 503
        assert full.json()["reason"] == "full"  # at max: not the pool's fault
        assert len(kept(daemon, "calm")) == 1
        hot = kept(daemon, "hot")
        assert [w.spec.host_port for w in hot if w.spec] == [
            hot[0].spec.host_port + i
            for i in range(3)  # type: ignore[union-attr]
        ]
        devices = gpus_of(docker_client, hot) + gpus_of(docker_client, kept(daemon, "calm"))
        assert sorted(d[0][0] for d in devices) == ["0", "1", "2", "3"]  # one GPU each

        listing = (await client.get("/entries")).json()
        shown = described(listing, "hot")
        assert (shown["replicas_min"], shown["replicas_max"]) == (1, 3)
        assert (shown["replicas_desired"], shown["replicas_running"]) == (3, 3)
        assert shown["replicas_warm"] == 3
        assert shown["scale"]["action"] == "up" and shown["scale"]["reason"] == "headroom"
        assert shown["cold_start_median_s"] is not None
        assert described(listing, "calm")["replicas_desired"] == 1
        labels = {"pipeline": "live-video-to-video", "model_id": "hot"}
        assert daemon.metrics.sample("byoc_orch_entry_replicas", labels) == 3
        assert daemon.metrics.sample("byoc_orch_entry_replicas_running", labels) == 3
        assert (
            daemon.metrics.sample(
                "byoc_orch_scale_events_total", {**labels, "action": "up", "reason": "headroom"}
            )
            == 2
        )


async def test_idle_replicas_drain_away_after_the_delay_never_below_min(
    harness: Harness, instance: str
) -> None:
    entries = [ranged(harness, "ebb", 1, 3, scale_down_after=1.0)]
    settings = pool_settings(harness, instance)
    async with running(settings, entries) as daemon, api(daemon) as client:
        await warm(daemon, "ebb", 1)
        assert (await start(client, daemon, "ebb", "e-0")).status_code == 200
        await warm(daemon, "ebb", 2)  # headroom 1: a free warm slot again
        assert (await start(client, daemon, "ebb", "e-1")).status_code == 200
        await warm(daemon, "ebb", 3)
        await stop(client, daemon, "ebb", "e-1")
        # 2 free: the headroom (1) holds without one replica — after the delay one goes
        await eventually(
            lambda: [w.replica for w in kept(daemon, "ebb")] == [0, 1],
            within=15,
            what=lambda: f"replica 2 drained away: {deployment_of(daemon, 'ebb').last_scale}",
        )
        assert deployment_of(daemon, "ebb").last_scale["reason"] == "idle"
        await eventually(lambda: 2 not in deployment_of(daemon, "ebb").workers, within=15)
        assert [s.id for s in daemon.sessions.live()] == ["e-0"]
        await stop(client, daemon, "ebb", "e-0")
        await eventually(lambda: [w.replica for w in kept(daemon, "ebb")] == [0], within=15)
        # never below min, however long it stays idle (three times the delay, looked at
        # every 0.1 s)
        await asyncio.sleep(3.0)
        assert [w.replica for w in kept(daemon, "ebb")] == [0]
        assert kept(daemon, "ebb")[0].routable
        labels = {"pipeline": "live-video-to-video", "model_id": "ebb"}
        events = {"action": "down", "reason": "idle"}
        assert daemon.metrics.sample("byoc_orch_scale_events_total", {**labels, **events}) == 2


async def test_a_replica_with_a_session_is_drained_and_removed_only_when_empty(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entry = ranged(harness, "keep", 1, 2, headroom=0)
    settings = pool_settings(harness, instance)
    async with running(settings, [entry]) as daemon, api(daemon) as client:
        await warm(daemon, "keep", 1)
        assert (await start(client, daemon, "keep", "k-0")).status_code == 200
        # headroom 0: the next start finds it full, and brings replica 1 at once
        full = await start(client, daemon, "keep", "k-1")
        assert full.status_code == 503 and full.json()["reason"] == "full"
        await warm(daemon, "keep", 2)
        assert (await start(client, daemon, "keep", "k-1")).status_code == 200
        second = deployment_of(daemon, "keep").workers[1]
        assert second.sessions == 1
        container = second.status.container_id
        # a lower max: replica 1 is above it and holds a session
        lowered = {**entry, "replicas": {"min": 1, "max": 1}}
        await daemon.reload(models_for([lowered], settings))
        await eventually(lambda: second.draining, within=10, what="replica 1 draining")
        assert deployment_of(daemon, "keep").last_scale["reason"] == "above_max"
        await asyncio.sleep(settings.drain_timeout + 1)  # past any drain timeout: not cut
        assert second.status.state is State.WARM and second.sessions == 1
        assert docker_client.containers.get(container or "").status == "running"
        refused = await start(client, daemon, "keep", "k-2")  # nothing new on it
        assert refused.status_code == 503
        await stop(client, daemon, "keep", "k-1")
        await eventually(
            lambda: 1 not in deployment_of(daemon, "keep").workers,
            within=15,
            what="replica 1 removed once empty",
        )
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(container or "")
        ended = daemon.sessions.get("k-1")
        assert ended is not None and ended.end_reason == "stopped"
        assert [w.replica for w in kept(daemon, "keep")] == [0]


async def test_two_entries_wanting_the_last_gpu_follow_the_rule(
    harness: Harness, instance: str
) -> None:
    first = ranged(harness, "first", 1, 2, headroom=1)
    second = ranged(harness, "second", 1, 3, headroom=2)
    filler = ranged(harness, "filler", 1, 1)
    # looks only when told to (a reload, a refused start), so both want the freed GPU at once
    settings = pool_settings(harness, instance, scale_interval=60)
    async with running(settings, [first, second, filler]) as daemon, api(daemon) as client:
        await warm(daemon, "first", 1)
        await warm(daemon, "second", 2)  # its headroom of 2 took the fourth GPU at start
        await warm(daemon, "filler", 1)
        assert (await start(client, daemon, "first", "f-0")).status_code == 200
        for session in ("s-0", "s-1"):
            assert (await start(client, daemon, "second", session)).status_code == 200
        # removing filler frees one GPU; "second" is shorter of its headroom (0 free of 2)
        # than "first" (0 of 1), so it gets it
        await daemon.reload(models_for([first, second], settings))
        await warm(daemon, "second", 3)
        assert deployment_of(daemon, "second").last_scale["action"] == "up"
        assert deployment_of(daemon, "second").last_scale["reason"] == "headroom"
        lost = deployment_of(daemon, "first").last_scale
        assert (lost["action"], lost["reason"]) == ("no_gpu", "headroom")
        assert "no room for 1 whole GPU" in lost["detail"]
        assert len(kept(daemon, "first")) == 1
        refused = await start(client, daemon, "first", "f-1")
        assert refused.status_code == 503
        assert refused.json()["reason"] == "no_gpu"
        labels = {"pipeline": "live-video-to-video", "model_id": "first"}
        assert (
            daemon.metrics.sample(
                "byoc_orch_session_starts_refused_total", {**labels, "reason": "no_gpu"}
            )
            == 1
        )
        no_gpu = {"action": "no_gpu", "reason": "headroom"}
        assert daemon.metrics.sample("byoc_orch_scale_events_total", {**labels, **no_gpu}) == 1


async def test_a_restart_adopts_ranged_replicas_on_the_gpus_they_had(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entries = [ranged(harness, "grown", 1, 3), ranged(harness, "other", 1, 2)]
    settings = pool_settings(harness, instance)
    async with running(settings, entries) as daemon, api(daemon) as client:
        await warm(daemon, "grown", 1)
        await warm(daemon, "other", 1)
        assert (await start(client, daemon, "grown", "g-0")).status_code == 200
        await warm(daemon, "grown", 2)
        before = {
            w.worker_id: (w.status.container_id, device_ids(docker_client, w.status.container_id))
            for d in daemon.deployments.values()
            for w in d.kept()
        }
    # replica 1 of "grown" went to GPU 2, not where a fresh start would put it (GPU 1)
    assert sorted(v[1][0][0] for v in before.values()) == ["0", "1", "2"]
    async with running(settings, entries) as daemon:
        assert sorted(daemon.adopted) == sorted(before)
        await warm(daemon, "grown", 2)
        after = {
            w.worker_id: (w.status.container_id, device_ids(docker_client, w.status.container_id))
            for d in daemon.deployments.values()
            for w in d.kept()
        }
        assert after == before


async def test_vram_packs_two_entries_on_one_gpu_and_refuses_a_third_that_does_not_fit(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entries = [
        replicated(harness, "static", free_port(3), replicas=3, gpus=1),  # holds GPUs 0-2
        ranged(harness, "big", 1, 2, vram_mb=14000),
        ranged(harness, "small", 1, 2, vram_mb=8000),
    ]
    async with running(pool_settings(harness, instance), entries) as daemon, api(daemon) as client:
        await warm(daemon, "big", 1)
        await warm(daemon, "small", 1)
        assert gpus_of(docker_client, kept(daemon, "big")) == [[["3"]]]
        assert gpus_of(docker_client, kept(daemon, "small")) == [[["3"]]]
        # another small replica needs 8000 MiB; GPU 3 has 2000 left
        assert (await start(client, daemon, "small", "p-0")).status_code == 200
        await eventually(
            lambda: (deployment_of(daemon, "small").last_scale or {}).get("action") == "no_gpu",
            within=10,
            what="small refused by the pool",
        )
        detail = deployment_of(daemon, "small").last_scale["detail"]
        assert "no room for 8000 MiB of one GPU" in detail
        assert "GPU 3: 2000 of 24000 MiB free" in detail
        assert len(kept(daemon, "small")) == 1


async def test_a_gpu_session_budget_shared_by_two_entries_is_never_advertised_twice(
    harness: Harness, instance: str
) -> None:
    orch = FakeLivepeer(SECRET, heartbeat_interval=0.2, heartbeat_ttl=5.0)
    await orch.start()
    settings = pool_settings(
        harness,
        instance,
        gpu_sessions=2,
        orch_url=orch.url,
        orch_secret=SECRET,
        live_runner_heartbeat=True,
        register_probe_interval=0.1,
        register_retry_initial=0.05,
        register_retry_max=0.2,
    )
    # three replicas of capacity 1 packed on GPU 0 (8000 MiB each of 24000), 2 sessions there
    entries = [
        ranged(harness, "left", 2, 2, vram_mb=8000),
        ranged(harness, "right", 1, 1, vram_mb=8000),
    ]
    budget = settings.gpu_sessions or 0

    def offered(model_id: str) -> int:
        capability = daemon.registry.get(deployment_of(daemon, model_id).entry_id)
        return 0 if capability is None else capability.capacity - capability.in_use

    def runner_capacity(model_id: str) -> int:
        runners = daemon.runners.get(deployment_of(daemon, model_id).entry_id)
        return 0 if runners is None else sum(s.capacity - s.in_use for s in runners.replicas)

    violations: list[str] = []

    def check() -> None:
        in_use = daemon.gpu_budget.in_use("0")  # type: ignore[union-attr]
        if in_use > budget:
            violations.append(f"{in_use} sessions on GPU 0")
        for model_id in ("left", "right"):
            for name, free in (
                ("BYOC", offered(model_id)),
                ("Live Runner", runner_capacity(model_id)),
            ):
                if free > budget - in_use:
                    violations.append(f"{name} {model_id} offers {free} with {in_use} in use")

    try:
        async with running(settings, entries) as daemon, api(daemon) as client:
            await warm(daemon, "left", 2)
            await warm(daemon, "right", 1)
            placed = [w.spec.gpus for w in kept(daemon, "left") + kept(daemon, "right") if w.spec]
            assert {g.device_ids for g in placed if g is not None} == {("0",)}
            # what an advertiser can see: after the change that published, on a later turn
            loop = asyncio.get_running_loop()
            daemon.registry.subscribe(lambda change: loop.call_soon(check))
            daemon.runners.subscribe(lambda change: loop.call_soon(check))
            # left alone could take 2, right 1: the GPU's budget of 2 is shared
            assert (offered("left"), offered("right")) == (2, 1)
            assert (await start(client, daemon, "right", "r-0")).status_code == 200
            await eventually(lambda: offered("left") == 1, what="left lowered by right's session")
            await eventually(
                lambda: orch.capabilities.get("left", {}).get("capacity") == 1,
                what="left re-registered at go-livepeer with 1",
            )
            assert (await start(client, daemon, "left", "l-0")).status_code == 200
            refused = await start(client, daemon, "left", "l-1")  # the budget is spent
            assert refused.status_code == 503
            assert offered("left") == 0 and offered("right") == 0

            async def churn(model_id: str, n: int) -> None:
                for i in range(n):
                    reply = await start(client, daemon, model_id, f"{model_id}-c{i}")
                    if reply.status_code == 200:
                        await stop(client, daemon, model_id, f"{model_id}-c{i}")

            await stop(client, daemon, "right", "r-0")
            await stop(client, daemon, "left", "l-0")
            await asyncio.gather(churn("left", 15), churn("right", 15), churn("left", 15))
            check()
            assert violations == [], violations[:6]
            await eventually(
                lambda: (offered("left"), offered("right")) == (2, 1), what="all free again"
            )
            await eventually(
                lambda: sorted(r["capacity"] for r in orch.runners.values()) == [1, 1, 1],
                what="three Live Runner runners of capacity 1",
            )
    finally:
        await orch.stop()
