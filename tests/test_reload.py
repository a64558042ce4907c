"""Reload on the real engine: only what changed in aiModels.json changes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from byoc_orch.aimodels import load_models
from byoc_orch.api import create_app
from byoc_orch.daemon import Daemon
from byoc_orch.settings import reserved_ports
from tests.conftest import Harness, eventually
from tests.test_daemon import by_model, settings_for, worker_entry

pytestmark = pytest.mark.engine


def write(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(entries, indent=2))


async def all_warm(daemon: Daemon) -> None:
    await eventually(
        lambda: len(daemon.registry.warm()) == len(daemon.workers),
        within=30,
        what="every worker warm",
    )


def container_ids(daemon: Daemon) -> dict[str, str | None]:
    return {w.entry.model_id: w.status.container_id for w in daemon.workers.values()}


async def test_reload_changes_only_what_changed(
    harness: Harness, instance: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    path = tmp_path / "aiModels.json"
    same = worker_entry(harness, "same")
    priced = worker_entry(harness, "priced", price_per_unit=10)
    changed = worker_entry(harness, "changed")
    dropped = worker_entry(harness, "dropped")
    write(path, [same, priced, changed, dropped])
    settings = settings_for(harness, instance, models_path=path)
    daemon = Daemon(settings, load_models(path, reserved_ports=reserved_ports(settings)))
    await daemon.start()
    try:
        await all_warm(daemon)
        before = container_ids(daemon)
        transport = httpx.ASGITransport(app=create_app(daemon))
        async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as api:
            # A session on the worker whose price changes survives the reload.
            priced_worker = by_model(daemon, "priced")
            start = await api.post(
                f"/proxy/{priced_worker.worker_id}/stream/start",
                json={"subscribe_url": "a", "publish_url": "b", "gateway_request_id": "keep"},
            )
            assert start.status_code == 200
            changed_worker = by_model(daemon, "changed")
            start = await api.post(
                f"/proxy/{changed_worker.worker_id}/stream/start",
                json={"subscribe_url": "a", "publish_url": "b", "gateway_request_id": "gone"},
            )
            assert start.status_code == 200

            added = worker_entry(harness, "added")
            write(
                path,
                [
                    same,
                    {**priced, "price_per_unit": 20, "capacity": 2},
                    {**changed, "env": {**changed["env"], "EXTRA": "1"}},
                    added,
                ],
            )
            reply = await api.post("/reload")
            assert reply.status_code == 200, reply.text
            summary = reply.json()
            assert summary["result"] == "applied"
            assert summary["unchanged"] == [by_model(daemon, "same").worker_id]
            assert summary["updated"] == [priced_worker.worker_id]
            assert summary["replaced"] == [changed_worker.worker_id]
            assert len(summary["removed"]) == 1
            assert summary["added"] == [by_model(daemon, "added").worker_id]

            await all_warm(daemon)
            after = container_ids(daemon)
            assert after["same"] == before["same"]
            assert after["priced"] == before["priced"]
            assert after["changed"] not in (None, before["changed"])
            assert "dropped" not in after
            assert after["added"] is not None
            with pytest.raises(docker.errors.NotFound):
                await asyncio.to_thread(docker_client.containers.get, before["dropped"])
            with pytest.raises(docker.errors.NotFound):
                await asyncio.to_thread(docker_client.containers.get, before["changed"])

            listed = {c["model_id"]: c for c in (await api.get("/capabilities")).json()}
            assert sorted(listed) == ["added", "changed", "priced", "same"]
            assert listed["priced"]["price_per_unit"] == 20
            assert listed["priced"]["capacity"] == 2
            assert listed["priced"]["free_capacity"] == 1
            assert daemon.sessions.get("keep").state == "active"  # type: ignore[union-attr]
            gone = daemon.sessions.get("gone")
            assert gone is not None and gone.end_reason == "replaced"
            assert (
                daemon.metrics.sample("byoc_orch_config_reloads_total", {"result": "applied"}) == 1
            )
            metrics = (await api.get("/metrics")).text
            assert 'model_id="dropped"' not in metrics
            assert 'byoc_orch_worker_state{model_id="added"' in metrics
    finally:
        await daemon.stop()


async def test_a_broken_file_is_rejected_and_nothing_changes(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    path = tmp_path / "aiModels.json"
    entries = [worker_entry(harness, "steady-a"), worker_entry(harness, "steady-b")]
    write(path, entries)
    settings = settings_for(harness, instance, models_path=path)
    daemon = Daemon(settings, load_models(path, reserved_ports=reserved_ports(settings)))
    await daemon.start()
    try:
        await all_warm(daemon)
        before = container_ids(daemon)
        workers_before = dict(daemon.workers)
        transport = httpx.ASGITransport(app=create_app(daemon))
        async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as api:
            broken = [entries[0], {**entries[1], "capacity": "two"}, {"pipeline": "x"}]
            write(path, broken)
            reply = await api.post("/reload")
            assert reply.status_code == 422
            body = reply.json()
            assert body["result"] == "rejected"
            assert any("entry 1 (steady-b): capacity" in p for p in body["problems"])
            assert any("entry 2" in p and "model_id" in p for p in body["problems"])
            path.write_text("[{,]")
            reply = await api.post("/reload")
            assert reply.status_code == 422
            assert "line 1" in reply.json()["problems"][0]
        assert container_ids(daemon) == before
        assert daemon.workers == workers_before
        assert len(daemon.registry.warm()) == 2
        assert daemon.metrics.sample("byoc_orch_config_reloads_total", {"result": "rejected"}) == 2
        assert daemon.metrics.sample("byoc_orch_config_reloads_total", {"result": "applied"}) == 0
    finally:
        await daemon.stop()


async def test_reload_is_guarded_by_the_api_token(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    path = tmp_path / "aiModels.json"
    write(path, [])
    settings = settings_for(harness, instance, models_path=path, api_token="reload-token")
    daemon = Daemon(settings, load_models(path))
    await daemon.start()
    try:
        transport = httpx.ASGITransport(app=create_app(daemon))
        async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as api:
            assert (await api.post("/reload")).status_code == 401
            ok = await api.post("/reload", headers={"Authorization": "Bearer reload-token"})
            assert ok.status_code == 200
            assert ok.json()["result"] == "applied"
    finally:
        await daemon.stop()


async def test_a_reload_storm_leaves_exactly_the_last_files_containers(
    harness: Harness, instance: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    """Reloads 0.1 s apart, valid and invalid files alternating, entries coming and going
    while their containers are still being created: afterwards exactly the last valid file's
    containers run, and no wanted worker failed on a name clash."""
    path = tmp_path / "aiModels.json"
    keep = worker_entry(harness, "storm-keep")
    write(path, [keep])
    settings = settings_for(harness, instance, models_path=path, reconcile_interval=1.0)
    daemon = Daemon(settings, load_models(path, reserved_ports=reserved_ports(settings)))
    await daemon.start()
    try:
        await all_warm(daemon)
        reloads = []
        last: list[dict[str, Any]] = [keep]
        # 21 rounds: the last file written is a valid one, so the last reload (whenever the
        # queue gets to it) reads it.
        for round_ in range(21):
            if round_ % 2:
                path.write_text('[{"pipeline": "broken"')
            else:
                last = [keep, worker_entry(harness, f"storm-{round_ % 3}")]
                write(path, last)
            reloads.append(asyncio.create_task(daemon.reload()))
            await asyncio.sleep(0.1)
        results = await asyncio.gather(*reloads, return_exceptions=True)
        assert any(not isinstance(r, BaseException) for r in results)
        wanted = {e["model_id"] for e in last}
        await eventually(
            lambda: (
                {w.entry.model_id for w in daemon.workers.values()} == wanted
                and len(daemon.registry.warm()) == len(wanted)
            ),
            within=30,
            what=lambda: (
                "the last valid file applied and warm; now "
                + str(
                    {
                        w.worker_id: (w.status.state, w.status.reason)
                        for w in daemon.workers.values()
                    }
                )
            ),
        )

        def ours() -> set[str]:
            return {
                c.labels.get("byoc-orch.model-id", "")
                for c in docker_client.containers.list(
                    all=True, filters={"label": f"byoc-orch.instance={instance}"}
                )
            }

        await eventually(
            lambda: ours() == wanted, within=30, what="no container of a removed entry left"
        )
        assert all(w.status.state == "warm" for w in daemon.workers.values())
        failures = [w.status.last_failure for w in daemon.workers.values() if w.status.last_failure]
        assert not [f for f in failures if "already in use" in f], failures
    finally:
        await daemon.stop()
