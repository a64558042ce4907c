"""Advertising into (fake) go-livepeer from a daemon supervising real containers."""

from __future__ import annotations

import asyncio
import json
import time

import docker
import httpx
import pytest

from byoc_orch.api import create_app
from tests.conftest import Harness, eventually
from tests.fake_livepeer import FakeLivepeer
from tests.test_daemon import only, running, worker_entry

pytestmark = pytest.mark.engine

SECRET = "orch-secret-e2e"


async def test_warm_only_registration_follows_the_container(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    orch = FakeLivepeer(SECRET)
    await orch.start()
    entry = worker_entry(harness, "advertised", price_per_unit=1200, pixels_per_unit=1)
    overrides = {
        "orch_url": orch.url,
        "orch_secret": SECRET,
        "public_url": "http://10.1.2.3:9935",
        "register_retry_initial": 0.1,
        "register_retry_max": 0.5,
        "register_probe_interval": 0.2,
    }
    try:
        async with running(harness, instance, [entry], **overrides) as daemon:
            worker = only(daemon)
            await eventually(lambda: "advertised" in orch.registered, what="registered once warm")
            (register,) = orch.calls_to("/capability/register")
            assert register.authorization == SECRET
            body = json.loads(register.body)
            assert body["name"] == "advertised"
            assert body["url"] == f"http://10.1.2.3:9935/proxy/{worker.worker_id}"
            assert body["capacity"] == 1
            assert body["price_per_unit"] == 1200

            # The Live Runner readiness URL says the same as the registry.
            transport = httpx.ASGITransport(app=create_app(daemon))
            async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as api:
                ready = await api.get(f"/live-runner/{worker.worker_id}/health")
                assert ready.status_code == 200
                assert (await api.get("/advertisers")).json()[0]["registered"]
                assert SECRET not in (await api.get("/advertisers")).text

                container_id = worker.status.container_id
                killed_at = time.monotonic()
                await asyncio.to_thread(docker_client.containers.get(container_id).kill)
                await eventually(
                    lambda: orch.calls_to("/capability/unregister"), what="unregistered"
                )
                assert time.monotonic() - killed_at < 1.0
                assert orch.calls_to("/capability/unregister")[0].body == b"advertised"
                not_ready = await api.get(f"/live-runner/{worker.worker_id}/health")
                assert not_ready.status_code == 503

                await eventually(
                    lambda: (
                        daemon.registry.is_warm(worker.worker_id)
                        and "advertised" in orch.registered
                    ),
                    what="registered again once the relaunched container is warm",
                )
                assert (await api.get(f"/live-runner/{worker.worker_id}/health")).status_code == 200

                # go-livepeer restarts and forgets everything: the warm set comes back.
                await orch.restart(downtime=0.3)
                await eventually(
                    lambda: "advertised" in orch.registered, what="re-registered after restart"
                )
            unregisters = len(orch.calls_to("/capability/unregister"))
        # A shutdown that leaves the container running withdraws nothing: the next process
        # takes over (go-livepeer keeps the running sessions' Load and their stop/params).
        assert orch.registered == {"advertised"}
        assert len(orch.calls_to("/capability/unregister")) == unregisters
    finally:
        await orch.stop()
