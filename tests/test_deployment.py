"""Rollouts of one entry's replicas, directly: a Deployment with real Workers on the fake
engine, and a host that counts sessions by hand."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
import structlog

from byoc_orch.aimodels import ModelEntry, parse_models
from byoc_orch.capabilities import CapabilityRegistry, Change
from byoc_orch.container_spec import ContainerSpec, build_container_spec
from byoc_orch.deployment import Deployment, Specs, Timeouts
from byoc_orch.sessions import EndReason
from byoc_orch.worker import Worker
from byoc_orch.worker_state import Policy, State
from tests.conftest import eventually, free_port
from tests.fake_engine import FakeContainer, FakeEngine

INSTANCE = "me"
V1 = "127.0.0.1:5000/worker:1"
V2 = "127.0.0.1:5000/worker:2"
POLICY = Policy(
    startup_probe_interval=0.01,
    probe_interval=0.02,
    failure_threshold=2,
    startup_timeout=5.0,
    backoff_initial=60.0,
    backoff_max=60.0,
)


class Rig:
    """What a Deployment runs in (deployment.Host): Workers on a fake engine, a registry, and
    sessions a test sets with `Worker.set_sessions`, as the session table would."""

    def __init__(self, *, drain: float = 30.0) -> None:
        self.engine = FakeEngine(instance=INSTANCE, images=[V1, V2])
        self.registry = CapabilityRegistry()
        self.runners = CapabilityRegistry()
        self.timeouts = Timeouts(drain=drain, stop=2.0)
        self.port = free_port(4)
        self.ended: list[tuple[str, EndReason]] = []
        """Replicas whose live sessions byoc-orch ended, and why."""
        self.changes: list[Change] = []
        self.registry.subscribe(self.changes.append)
        self.deployments: list[Deployment] = []

    # -- deployment.Host

    def new_worker(
        self, entry: ModelEntry, spec: ContainerSpec | None, index: int, deployment: Deployment
    ) -> Worker:
        assert spec is not None
        return Worker(
            entry,
            spec=spec,
            engine=self.engine,
            policy=POLICY,
            proxy_url=f"http://byoc/proxy/{spec.worker_id}",
            probe_timeout=0.5,
            stop_timeout=1.0,
            worker_id=spec.worker_id,
            replica=index,
            on_change=deployment.worker_changed,
        )

    def forget_worker(self, worker: Worker) -> None:
        pass

    def end_sessions(self, worker: Worker, reason: EndReason, detail: str | None) -> None:
        if worker.sessions:
            self.ended.append((worker.worker_id, reason))
            worker.set_sessions(0)

    def session_ids(self, worker_id: str) -> tuple[str, ...]:
        return ()

    def entry_url(self, entry_id: str) -> str:
        return f"http://byoc/proxy/{entry_id}"

    def capacity_changed(self, entry: ModelEntry, capacity: int) -> None:
        pass

    def cold_start_measured(self, entry: ModelEntry, median: float) -> None:
        pass

    def demand_unmet(self, deployment: Deployment) -> None:
        pass

    def replica_changed(self, worker: Worker) -> None:
        pass

    def policy_for(self, entry: ModelEntry) -> Policy:
        return POLICY

    def recover_sessions(self, worker: Worker) -> None:
        worker.sessions_known = True
        worker.notify()

    def worker_idle(self, worker: Worker) -> None:
        pass

    # -- for the tests

    def entry(self, image: str, replicas: int) -> tuple[ModelEntry, Specs]:
        text = json.dumps(
            [
                {
                    "pipeline": "live-video-to-video",
                    "model_id": "rolled",
                    "container": image,
                    "url": f"http://127.0.0.1:{self.port}",
                    "warm": True,
                    "capacity": 2,
                    "replicas": replicas,
                    "gpus": "none",
                }
            ]
        )
        models = parse_models(text, source="test")
        (entry,) = models.entries
        slots = models.replicas[entry.worker_id]
        return entry, {s.index: build_container_spec(entry, INSTANCE, s) for s in slots}

    async def deploy(self, image: str, replicas: int) -> Deployment:
        """A deployment of `replicas` replicas, all warm."""
        deployment = Deployment(*self.entry(image, replicas), self, timeouts=self.timeouts)
        self.deployments.append(deployment)
        deployment.start({})
        await eventually(
            lambda: all(w.status.state is State.WARM for w in deployment.replicas()),
            within=5,
            what="every replica warm",
        )
        return deployment

    def container(self, worker: Worker) -> FakeContainer:
        return self.engine.containers[worker.status.container_id or ""]

    def withdrawals(self, entry_id: str) -> list[Change]:
        return [c for c in self.changes if any(w.entry_id == entry_id for w in c.withdrawn)]

    async def close(self) -> None:
        for deployment in self.deployments:
            await asyncio.gather(*deployment.halt(), return_exceptions=True)
        self.engine.shutdown()


@pytest.fixture
async def rigs() -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**options: float) -> Rig:
        made.append(Rig(**options))
        return made[-1]

    yield make
    for each in made:
        await each.close()


@pytest.fixture
def rig(rigs: Callable[..., Rig]) -> Rig:
    return rigs()


async def rolled_out(deployment: Deployment, state: str = "done") -> None:
    await eventually(
        lambda: deployment.rollout is not None and deployment.rollout.state == state,
        within=10,
        what=lambda: f"rollout {state}; it is {deployment.rollout}",
    )


@pytest.mark.parametrize("replicas", [2, 3])
async def test_a_new_image_replaces_one_replica_at_a_time_and_stays_listed(
    rig: Rig, replicas: int
) -> None:
    deployment = await rig.deploy(V1, replicas)
    entry_id = deployment.entry_id
    ids = [w.worker_id for w in deployment.replicas()]
    old = {w.replica: w.status.container_id for w in deployment.replicas()}
    events = rig.engine.events()
    serving: list[int] = []
    rig.registry.subscribe(
        lambda _: serving.append(len(c.replicas) if (c := rig.registry.get(entry_id)) else 0)
    )
    await deployment.reconfigure(*rig.entry(V2, replicas))
    await rolled_out(deployment)
    assert rig.withdrawals(entry_id) == [], "the capability left the warm set"
    assert min(serving) == replicas - 1, "more than one replica was out of service at a time"
    assert serving[-1] == replicas
    # Each old container is gone before its successor starts, and that one serves (above)
    # before the next old one drains.
    starts_and_ends = [
        (e.action, e.worker_id) for e in events.received() if e.action in ("destroy", "start")
    ]
    assert starts_and_ends == [
        step for worker_id in ids for step in (("destroy", worker_id), ("start", worker_id))
    ]
    for worker in deployment.replicas():
        assert worker.status.container_id != old[worker.replica]
        assert rig.container(worker).image == V2
    assert rig.ended == []


async def test_a_draining_replica_is_replaced_only_once_its_sessions_end(rig: Rig) -> None:
    deployment = await rig.deploy(V1, 2)
    busy, idle = deployment.workers[0], deployment.workers[1]
    busy.set_sessions(1)
    container = rig.container(busy)
    await deployment.reconfigure(*rig.entry(V2, 2))
    await busy.wait_until(lambda: busy.draining, 2)
    listed = rig.registry.get(deployment.entry_id)
    assert listed is not None and [s.worker_id for s in listed.replicas] == [idle.worker_id]
    # Probes go on while it drains; through several of them its container keeps running: the
    # rollout waits on the session, not on a timer.
    probed = len(container.requests)
    await eventually(lambda: len(container.requests) >= probed + 3, within=2)
    assert container.running and busy.status.state is State.WARM
    assert deployment.rollout is not None and deployment.rollout.detail == "replacing replica 0"
    busy.set_sessions(0)
    await rolled_out(deployment)
    assert not container.running and container.id not in rig.engine.containers
    assert rig.ended == []


async def test_a_drain_ends_the_sessions_left_when_its_timeout_passes(
    rigs: Callable[..., Rig],
) -> None:
    rig = rigs(drain=0.2)
    deployment = await rig.deploy(V1, 2)
    stuck = deployment.workers[0]
    stuck.set_sessions(1)
    container = rig.container(stuck)
    with structlog.testing.capture_logs() as logs:
        began = time.monotonic()
        await deployment.reconfigure(*rig.entry(V2, 2))
        await eventually(lambda: not container.running, within=5)
        waited = time.monotonic() - began
        await rolled_out(deployment)
    assert waited >= rig.timeouts.drain
    assert rig.ended == [(stuck.worker_id, EndReason.REPLACED)]
    assert "drain timed out; ending the replica's sessions" in [e["event"] for e in logs]


async def test_a_successor_that_does_not_become_warm_halts_the_rollout(rig: Rig) -> None:
    def broken_v2(container: FakeContainer) -> None:
        if container.image == V2:
            container.health = "ERROR"

    rig.engine.on_start = broken_v2
    deployment = await rig.deploy(V1, 3)
    old = {w.replica: w.status.container_id for w in deployment.replicas()}
    await deployment.reconfigure(*rig.entry(V2, 3))
    await rolled_out(deployment, "halted")
    assert deployment.rollout is not None
    assert deployment.rollout.detail.startswith("replica 0 did not become warm (backoff")
    first, *rest = deployment.replicas()
    assert first.status.state is State.BACKOFF
    assert all(w.status.container_id == old[w.replica] for w in rest)
    assert all(rig.container(w).running and rig.container(w).image == V1 for w in rest)
    listed = rig.registry.get(deployment.entry_id)
    assert listed is not None and [s.index for s in listed.replicas] == [1, 2]
    assert rig.withdrawals(deployment.entry_id) == []


async def test_fewer_replicas_drain_the_removed_ones_and_keep_the_rest(rig: Rig) -> None:
    deployment = await rig.deploy(V1, 4)
    kept = deployment.replicas()[:2]
    idle, busy = deployment.workers[2], deployment.workers[3]
    busy.set_sessions(1)
    kept_containers = [w.status.container_id for w in kept]
    leaving = [rig.container(idle), rig.container(busy)]
    await deployment.reconfigure(*rig.entry(V1, 2))
    await busy.wait_until(lambda: busy.draining and idle.draining, 2)
    listed = rig.registry.get(deployment.entry_id)
    assert listed is not None and [s.index for s in listed.replicas] == [0, 1]
    assert listed.capacity == 4
    # The idle one waits with the busy one: the removed replicas leave together.
    probed = len(leaving[1].requests)
    await eventually(lambda: len(leaving[1].requests) >= probed + 3, within=2)
    assert all(c.running for c in leaving)
    busy.set_sessions(0)
    await rolled_out(deployment)
    assert list(deployment.workers) == [0, 1]
    assert [w.status.container_id for w in deployment.replicas()] == kept_containers
    assert not any(c.id in rig.engine.containers for c in leaving)
    assert rig.ended == []
    assert rig.withdrawals(deployment.entry_id) == []
    listed = rig.registry.get(deployment.entry_id)
    assert listed is not None and listed.capacity == 4
