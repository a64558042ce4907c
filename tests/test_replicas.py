"""Replicas on the real engine: placement on a GPU pool, one capability routing sessions over
its replicas, per-replica crashes, adoption, rolling replacement, and advertising."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import docker
import httpx
import pytest

from byoc_orch.aimodels import ModelsFile, parse_models
from byoc_orch.api import create_app
from byoc_orch.capabilities import Change
from byoc_orch.daemon import Daemon
from byoc_orch.settings import Settings
from byoc_orch.worker import Worker
from byoc_orch.worker_state import State
from tests.conftest import Harness, eventually, free_port
from tests.fake_livepeer import FakeLivepeer
from tests.test_daemon import FAST, worker_entry

pytestmark = pytest.mark.engine

POOL = "0,1,2,3"
SECRET = "orch-secret-for-tests"


def replicated(harness: Harness, model_id: str, port: int, **fields: Any) -> dict[str, Any]:
    """An entry with replicas; `port` is its url port, the first of a run of free ones."""
    entry = worker_entry(harness, model_id, port, **fields)
    entry.pop("gpus")
    return entry


def settings_for(harness: Harness, instance: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "docker_host": harness.docker_host,
        "instance": instance,
        "port": free_port(),
        "gpus": POOL,
        "gpu_metrics": False,
        "drain_timeout": 5.0,
        **FAST,
    }
    values.update(overrides)
    return Settings(**values)


def models_for(entries: list[dict[str, Any]], settings: Settings) -> ModelsFile:
    return parse_models(
        json.dumps(entries),
        source="test",
        gpu_pool=settings.gpu_pool_setting,
        pool_configured=settings.gpu_pool_setting is not None,
    )


@asynccontextmanager
async def running(settings: Settings, entries: list[dict[str, Any]]) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings, models_for(entries, settings))
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


@asynccontextmanager
async def api(daemon: Daemon) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(daemon))
    async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as client:
        yield client


def replicas_of(daemon: Daemon, model_id: str) -> list[Worker]:
    deployment = next(d for d in daemon.deployments.values() if d.entry.model_id == model_id)
    return deployment.replicas()


async def all_warm(daemon: Daemon, model_id: str, count: int) -> list[Worker]:
    await eventually(
        lambda: (
            len(replicas_of(daemon, model_id)) == count
            and all(w.status.state is State.WARM for w in replicas_of(daemon, model_id))
        ),
        within=30,
        what=f"{count} replicas of {model_id} warm",
    )
    return replicas_of(daemon, model_id)


def start_body(session: str) -> dict[str, Any]:
    return {
        "subscribe_url": "http://127.0.0.1:1/in",
        "publish_url": "http://127.0.0.1:1/out",
        "gateway_request_id": session,
    }


async def calls_seen(worker: Worker, suffix: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{worker.upstream_url}/_demo/calls")
    return [c for c in reply.json() if c["path"].endswith(suffix)]


def device_ids(client: docker.DockerClient, container_id: str | None) -> list[list[str]]:
    assert container_id is not None
    attrs = client.api.inspect_container(container_id)
    return [r.get("DeviceIDs") or [] for r in attrs["HostConfig"].get("DeviceRequests") or []]


def capability_of(listing: list[dict[str, Any]], model_id: str) -> dict[str, Any] | None:
    return next((c for c in listing if c["model_id"] == model_id), None)


# -- placement ----------------------------------------------------------------------------------


async def test_replicas_get_distinct_gpus_and_consecutive_ports(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    port = free_port(3)
    entries = [replicated(harness, "three", port, replicas=3, gpus=1)]
    async with running(settings_for(harness, instance), entries) as daemon:
        workers = await all_warm(daemon, "three", 3)
        assert [w.spec.host_port for w in workers if w.spec] == [port, port + 1, port + 2]
        requested = [device_ids(docker_client, w.status.container_id) for w in workers]
        assert requested == [[["0"]], [["1"]], [["2"]]]
        names = [docker_client.containers.get(w.status.container_id or "").name for w in workers]
        assert len(set(names)) == 3
        async with api(daemon) as client:
            listed = (await client.get("/workers")).json()
            assert [(w["replica"], w["host_port"], w["gpus"]) for w in listed] == [
                (0, port, ["0"]),
                (1, port + 1, ["1"]),
                (2, port + 2, ["2"]),
            ]
            capability = capability_of((await client.get("/capabilities")).json(), "three")
            assert capability is not None
            assert capability["capacity"] == 3
            assert capability["url"].endswith(f"/proxy/{workers[0].entry_id}")


async def test_per_gpu_fills_the_pool_and_replicas_per_gpu_share(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entries = [
        replicated(harness, "shared", free_port(4), replicas=4, replicas_per_gpu=2),
        replicated(harness, "filler", free_port(4), replicas="per-gpu"),
    ]
    async with running(settings_for(harness, instance), entries) as daemon:
        shared = await all_warm(daemon, "shared", 4)
        filler = await all_warm(daemon, "filler", 2)
        assert [device_ids(docker_client, w.status.container_id) for w in shared] == [
            [["0"]],
            [["0"]],
            [["1"]],
            [["1"]],
        ]
        assert [device_ids(docker_client, w.status.container_id) for w in filler] == [
            [["2"]],
            [["3"]],
        ]


# -- routing ------------------------------------------------------------------------------------


async def test_sessions_spread_over_replicas_and_calls_reach_the_holder(
    harness: Harness, instance: str
) -> None:
    entries = [replicated(harness, "spread", free_port(3), replicas=3, gpus=1)]
    async with running(settings_for(harness, instance), entries) as daemon, api(daemon) as client:
        workers = await all_warm(daemon, "spread", 3)
        base = f"/proxy/{workers[0].entry_id}/stream"
        for session in ("s-0", "s-1", "s-2"):
            reply = await client.post(f"{base}/start", json=start_body(session))
            assert reply.status_code == 200, reply.text
        seen = [
            [c["body"]["gateway_request_id"] for c in await calls_seen(w, "/stream/start")]
            for w in workers
        ]
        assert sorted(map(tuple, seen)) == [("s-0",), ("s-1",), ("s-2",)]
        full = await client.post(f"{base}/start", json=start_body("s-3"))
        assert full.status_code == 503
        assert full.json()["reason"] == "full"
        assert full.headers["retry-after"] == "1"
        assert [len(await calls_seen(w, "/stream/start")) for w in workers] == [1, 1, 1]

        holder = {s[0]: w for w, s in zip(workers, seen, strict=True)}
        # Stop by go-livepeer's X-Stream-Id header (it sends no body id).
        reply = await client.post(f"{base}/stop", content=b"", headers={"X-Stream-Id": "s-1"})
        assert reply.status_code == 200, reply.text
        assert len(await calls_seen(holder["s-1"], "/stream/stop")) == 1
        assert daemon.sessions.get("s-1").end_reason == "stopped"  # type: ignore[union-attr]
        # Params and stop by gateway_request_id.
        reply = await client.post(
            f"{base}/params", json={"x": 1}, headers={"X-Gateway-Request-Id": "s-2"}
        )
        assert reply.status_code == 200, reply.text
        assert [c["body"] for c in await calls_seen(holder["s-2"], "/stream/params")] == [{"x": 1}]
        reply = await client.post(f"{base}/stop", json={"gateway_request_id": "s-2"})
        assert reply.status_code == 200, reply.text
        assert len(await calls_seen(holder["s-2"], "/stream/stop")) == 1
        assert await calls_seen(holder["s-0"], "/stream/params") == []
        assert await calls_seen(holder["s-1"], "/stream/params") == []
        # A stop naming nothing while one is live reaches that one's holder.
        reply = await client.post(f"{base}/stop", json={})
        assert reply.status_code == 200
        assert len(await calls_seen(holder["s-0"], "/stream/stop")) == 1
        # The freed slots take new sessions again.
        reply = await client.post(f"{base}/start", json=start_body("s-4"))
        assert reply.status_code == 200, reply.text


async def test_a_stop_naming_none_of_several_live_sessions_is_refused(
    harness: Harness, instance: str
) -> None:
    entries = [replicated(harness, "ambiguous", free_port(2), replicas=2, gpus=1)]
    async with running(settings_for(harness, instance), entries) as daemon, api(daemon) as client:
        workers = await all_warm(daemon, "ambiguous", 2)
        base = f"/proxy/{workers[0].entry_id}/stream"
        for session in ("a", "b"):
            assert (await client.post(f"{base}/start", json=start_body(session))).status_code == 200
        reply = await client.post(f"{base}/stop", json={})
        assert reply.status_code == 400
        assert sorted(reply.json()["sessions"]) == ["a", "b"]
        assert "X-Stream-Id" in reply.json()["fix"]
        assert [await calls_seen(w, "/stream/stop") for w in workers] == [[], []]
        assert len(daemon.sessions.live()) == 2


async def test_a_dead_replica_takes_only_its_sessions_and_its_share_of_capacity(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    orch = FakeLivepeer(SECRET)
    await orch.start()
    settings = settings_for(
        harness,
        instance,
        orch_url=orch.url,
        orch_secret=SECRET,
        register_probe_interval=0.1,
        register_retry_initial=0.05,
        register_retry_max=0.2,
    )
    entries = [replicated(harness, "crashy", free_port(3), replicas=3, gpus=1)]
    try:
        async with running(settings, entries) as daemon, api(daemon) as client:
            workers = await all_warm(daemon, "crashy", 3)
            await eventually(
                lambda: orch.capabilities.get("crashy", {}).get("capacity") == 3,
                what="registered with capacity 3",
            )
            base = f"/proxy/{workers[0].entry_id}/stream"
            for session in ("k-0", "k-1", "k-2"):
                assert (
                    await client.post(f"{base}/start", json=start_body(session))
                ).status_code == 200
            victim = workers[1]
            doomed = daemon.sessions.live(victim.worker_id)[0].id
            container_id = victim.status.container_id
            await asyncio.to_thread(docker_client.containers.get(container_id or "").kill)
            ended = await eventually(
                lambda: (s := daemon.sessions.get(doomed)) and s.state == "ended" and s,
                what="the dead replica's session ended",
            )
            assert ended.end_reason == "crashed"
            assert {s.id for s in daemon.sessions.live()} == {"k-0", "k-1", "k-2"} - {doomed}
            listed = capability_of((await client.get("/capabilities")).json(), "crashy")
            assert listed is not None and listed["capacity"] == 2
            # go-livepeer gets capacity 2 net of the 2 sessions still running: 0 free, Load 0.
            await eventually(
                lambda: orch.capabilities.get("crashy", {}).get("capacity") == 0,
                what="re-registered after the crash",
            )
            await eventually(
                lambda: (
                    victim.status.state is State.WARM and victim.status.container_id != container_id
                ),
                within=20,
                what="the replica back",
            )
            listed = capability_of((await client.get("/capabilities")).json(), "crashy")
            assert listed is not None and listed["capacity"] == 3
            await eventually(
                lambda: orch.capabilities.get("crashy", {}).get("capacity") == 1,
                what="re-registered with the replica back (3 warm, 2 in use)",
            )
    finally:
        await orch.stop()


# -- restarts and rollouts ----------------------------------------------------------------------


async def test_a_restart_adopts_every_replica(harness: Harness, instance: str) -> None:
    settings = settings_for(harness, instance)
    entries = [replicated(harness, "adopted", free_port(3), replicas=3, gpus=1)]
    async with running(settings, entries) as daemon:
        before = {w.worker_id: w.status.container_id for w in await all_warm(daemon, "adopted", 3)}
    async with running(settings, entries) as daemon:
        after = {w.worker_id: w.status.container_id for w in await all_warm(daemon, "adopted", 3)}
        assert sorted(daemon.adopted) == sorted(before)
    assert after == before


async def test_an_image_change_rolls_one_replica_at_a_time_and_stays_listed(
    harness: Harness, instance: str, docker_client: docker.DockerClient, tmp_path: Any
) -> None:
    v2 = harness.worker_image.rsplit(":", 1)[0] + f":rollout-{instance}"
    await asyncio.to_thread(docker_client.images.get(harness.worker_image).tag, v2)
    entry = replicated(harness, "rolled", free_port(3), replicas=3, gpus=1)
    path = tmp_path / "aiModels.json"
    path.write_text(json.dumps([entry]))
    settings = settings_for(harness, instance, models_path=path)
    try:
        async with running(settings, [entry]) as daemon, api(daemon) as client:
            old = {w.worker_id: w.status.container_id for w in await all_warm(daemon, "rolled", 3)}
            # Every change of the warm set during the rollout, as it happens.
            listed: list[bool] = []
            warm_counts: list[int] = []
            serving: list[int] = []

            def seen(change: Change) -> None:
                rolled = [c for c in daemon.registry.warm() if c.model_id == "rolled"]
                listed.append(bool(rolled))
                serving.append(len(rolled[0].replicas) if rolled else 0)
                warm_counts.append(
                    sum(w.status.state is State.WARM for w in replicas_of(daemon, "rolled"))
                )

            unsubscribe = daemon.registry.subscribe(seen)
            path.write_text(json.dumps([{**entry, "container": v2}]))
            plan = await daemon.reload()
            assert plan.replace == (next(iter(daemon.deployments)),)
            deployment = next(iter(daemon.deployments.values()))
            await eventually(
                lambda: deployment.rollout is not None and deployment.rollout.state == "done",
                within=60,
                what="rollout done",
            )
            unsubscribe()
            new = {w.worker_id: w.status.container_id for w in replicas_of(daemon, "rolled")}
            assert set(new) == set(old)
            assert all(new[k] != old[k] for k in old)
            assert {
                docker_client.containers.get(c or "").attrs["Config"]["Image"] for c in new.values()
            } == {v2}
            assert listed and all(listed), "capability left /capabilities"
            assert capability_of((await client.get("/capabilities")).json(), "rolled")
            assert min(warm_counts) >= 2, "more than one replica was down at a time"
            assert min(serving) == 2, "more than one replica was out of service at a time"
    finally:
        await asyncio.to_thread(docker_client.images.remove, v2)


async def test_lowering_replicas_drains_the_extra_ones(harness: Harness, instance: str) -> None:
    entry = replicated(harness, "shrunk", free_port(3), replicas=3, gpus=1)
    settings = settings_for(harness, instance)
    async with running(settings, [entry]) as daemon, api(daemon) as client:
        workers = await all_warm(daemon, "shrunk", 3)
        kept = [w.status.container_id for w in workers[:2]]
        base = f"/proxy/{workers[0].entry_id}/stream"
        for session in ("d-0", "d-1", "d-2"):
            assert (await client.post(f"{base}/start", json=start_body(session))).status_code == 200
        last = workers[2]
        draining_session = daemon.sessions.live(last.worker_id)[0].id
        shrunk = models_for([{**entry, "replicas": 2}], settings)
        planned = await daemon.reload(shrunk, dry_run=True)
        # Called what it is: the two replicas both counts share are left alone.
        assert planned.scale == (last.entry_id,) and not planned.replace
        assert {"field": "replicas", "old": "3", "new": "2"} in planned.changes[last.entry_id]
        applied = await daemon.reload(shrunk)
        assert applied.scale == (last.entry_id,)
        await eventually(lambda: last.draining, what="the extra replica drains")
        assert all(w.status.container_id == c for w, c in zip(workers[:2], kept, strict=True))
        # Draining: still running its session, taking none, out of the advertised capacity.
        assert daemon.sessions.get(draining_session).state == "active"  # type: ignore[union-attr]
        listed = capability_of((await client.get("/capabilities")).json(), "shrunk")
        assert listed is not None and listed["capacity"] == 2
        refused = await client.post(f"{base}/start", json=start_body("d-3"))
        assert refused.status_code == 503
        reply = await client.post(
            f"{base}/stop", content=b"", headers={"X-Stream-Id": draining_session}
        )
        assert reply.status_code == 200
        await eventually(
            lambda: len(replicas_of(daemon, "shrunk")) == 2, within=20, what="two replicas left"
        )
        assert last.worker_id not in daemon.workers


# -- Live Runner, two hosts -----------------------------------------------------------------


async def test_two_hosts_heartbeat_runners_of_one_app_each_withdrawn_on_its_own(
    harness: Harness, docker_client: docker.DockerClient
) -> None:
    orch = FakeLivepeer(SECRET, heartbeat_interval=0.2, heartbeat_ttl=2.0)
    await orch.start()
    hosts = []
    try:
        for host in ("a", "b"):
            instance = f"t{int(time.time() * 1000) % 10**8}{host}"
            settings = settings_for(
                harness,
                instance,
                orch_url=orch.url,
                orch_secret=SECRET,
                byoc_register=False,
                live_runner_heartbeat=True,
                public_url=f"http://10.0.0.{1 if host == 'a' else 2}:9935",
                register_retry_initial=0.05,
                register_retry_max=0.2,
            )
            entry = replicated(harness, "scaled", free_port(2), replicas=2, gpus=1)
            daemon = Daemon(settings, models_for([entry], settings))
            await daemon.start()
            hosts.append((daemon, instance))
        for daemon, _ in hosts:
            await all_warm(daemon, "scaled", 2)

        def runners() -> list[dict[str, Any]]:
            return list(orch.runners.values())

        await eventually(lambda: len(runners()) == 4, within=20, what="four runners")
        assert {r["app"] for r in runners()} == {"live-video-to-video/scaled"}
        assert len({r["runner_url"] for r in runners()}) == 4
        assert {r["capacity"] for r in runners()} == {1}
        assert {r["gpu"]["id"] for r in runners()} == {"0", "1"}

        daemon_b = hosts[1][0]
        victim = replicas_of(daemon_b, "scaled")[0]
        victim_url = victim.proxy_url
        await asyncio.to_thread(docker_client.containers.get(victim.status.container_id or "").kill)
        await eventually(
            lambda: victim_url not in {r["runner_url"] for r in runners()},
            what="the dead replica's runner withdrawn",
        )
        assert len(runners()) == 3
    finally:
        for daemon, instance in hosts:
            await daemon.stop()
            for container in docker_client.containers.list(
                all=True, filters={"label": f"byoc-orch.instance={instance}"}
            ):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
        await orch.stop()
