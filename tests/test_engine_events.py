"""Docker events routed to workers, and what the stream says about Docker's reachability: the
router on the fake engine's event stream with stand-in workers, then the daemon composing it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import structlog

from byoc_orch.aimodels import parse_models
from byoc_orch.daemon import Daemon
from byoc_orch.engine_events import EngineEvents, EngineReachability
from byoc_orch.exit_status import describe_exit
from byoc_orch.metrics import Metrics
from byoc_orch.settings import Settings
from byoc_orch.worker_state import Died, EngineBack, Event, State, Status
from tests.conftest import eventually, free_port
from tests.fake_engine import FakeEngine, FakeEventStream

IMAGE = "127.0.0.1:5000/worker:1"


@dataclass
class StandIn:
    """A followed worker: its status and what it was told."""

    status: Status
    posted: list[Event] = field(default_factory=list)

    def post(self, event: Event) -> None:
        self.posted.append(event)


class Routed:
    """A router on a fake engine's stream, with stand-ins following its containers."""

    def __init__(self) -> None:
        self.engine = FakeEngine(instance="me")
        self.workers: list[StandIn] = []
        self.metrics = Metrics()
        self.reach = EngineReachability("unix:///fake/docker.sock", self.metrics)
        self.stream: FakeEventStream = self.engine.events()
        self.router = EngineEvents(
            self.stream,
            workers=lambda: self.workers,
            list_containers=self.engine.list_containers,
            on_lost=self.reach.stream_lost,
            on_restored=self.reach.stream_restored,
            inspect=self.engine.inspect,
        )
        self.reach.reached()

    def follow(self, worker_id: str, *, managed: bool = True) -> tuple[StandIn, str]:
        labels = self.engine.ours(**{"byoc-orch.worker-id": worker_id})
        container = self.engine.add_container(f"c-{worker_id}", labels).id
        worker = StandIn(Status(State.WARM, 0.0, managed=managed, container_id=container))
        self.workers.append(worker)
        return worker, container


@pytest.fixture
async def routed() -> AsyncIterator[Routed]:
    world = Routed()
    task = asyncio.create_task(world.router.run())
    yield world
    task.cancel()


async def test_a_die_goes_to_the_worker_running_that_container_only(routed: Routed) -> None:
    first, container = routed.follow("w1")
    second, _ = routed.follow("w2")
    routed.engine.crash(container, exit_code=3)
    await eventually(lambda: first.posted, within=2)
    assert first.posted == [Died(container, "container exited with code 3")]
    assert second.posted == []


async def test_an_oom_kill_says_out_of_memory_once(routed: Routed) -> None:
    worker, container = routed.follow("w1")
    routed.engine.crash(container, oom=True)
    await eventually(lambda: worker.posted, within=2)
    assert worker.posted == [Died(container, describe_exit(137, oom_killed=True))]
    assert "SIGKILL" in worker.posted[0].reason and "out of memory" in worker.posted[0].reason
    # The same container dying again later (restarted by hand) is no longer an OOM.
    routed.engine.containers[container].state = "running"
    routed.engine.crash(container, exit_code=2)
    await eventually(lambda: len(worker.posted) == 2, within=2)
    assert worker.posted[1] == Died(container, "container exited with code 2")


async def test_a_sigkill_is_named_and_a_death_unseen_takes_its_status_from_inspect(
    routed: Routed,
) -> None:
    killed, container = routed.follow("w1")
    routed.engine.crash(container, exit_code=137)
    await eventually(lambda: killed.posted, within=2)
    (died,) = killed.posted
    assert isinstance(died, Died)
    assert died.reason.startswith("container exited with code 137: killed by SIGKILL — likely")
    # Died while the stream was down: inspect tells the exit code and that Docker's memory
    # limit killed it.
    unseen, gone = routed.follow("w2")
    routed.engine.cut()
    await eventually(lambda: routed.reach.up is False, within=2)
    routed.engine.reachable = True
    routed.engine.crash(gone, oom=True)
    routed.engine.restore(replay=False)
    await eventually(lambda: unseen.posted, within=2)
    assert unseen.posted[0] == Died(
        gone, describe_exit(137, oom_killed=True) + " (while Docker events were down)"
    )


async def test_a_die_of_a_container_no_worker_follows_is_ignored(routed: Routed) -> None:
    worker, _ = routed.follow("w1")
    stray = routed.engine.add_container("stray", routed.engine.ours()).id
    routed.engine.crash(stray)
    routed.engine.crash(worker.status.container_id or "")
    await eventually(lambda: worker.posted, within=2)
    assert len(worker.posted) == 1


async def test_a_lost_stream_makes_docker_unreachable_and_its_return_resyncs(
    routed: Routed,
) -> None:
    survivor, _ = routed.follow("w1")
    casualty, gone = routed.follow("w2")
    external = StandIn(Status(State.WARM, 0.0, managed=False))
    routed.workers.append(external)
    with structlog.testing.capture_logs() as logs:
        routed.engine.cut()
        await eventually(lambda: routed.reach.up is False, within=2)
        # dockerd restarted: the container it took with it is gone and no event says so.
        routed.engine.vanish(gone)
        routed.engine.restore(replay=False)
        await eventually(lambda: survivor.posted, within=2)
    assert routed.reach.up is True
    assert casualty.posted == [
        Died(gone, "container stopped while Docker events were down"),
        EngineBack(),
    ]
    assert survivor.posted == [EngineBack()]
    assert external.posted == [EngineBack()]
    events = [e["event"] for e in logs]
    assert events == ["Docker engine unreachable", "Docker engine reachable again"]
    assert routed.metrics.sample("byoc_orch_docker_engine_up") == 1
    assert routed.metrics.sample("byoc_orch_docker_event_stream_reconnects_total") == 1


async def test_a_relist_that_fails_still_tells_every_worker_docker_is_back(
    routed: Routed,
) -> None:
    worker, _ = routed.follow("w1")
    routed.engine.cut()
    await eventually(lambda: routed.reach.up is False, within=2)
    routed.engine.stall()
    routed.engine.timeout = 0.01
    with structlog.testing.capture_logs() as logs:
        routed.engine.restore()
        await eventually(lambda: worker.posted, within=2)
    assert worker.posted == [EngineBack()]
    assert "could not re-list containers" in [e["event"] for e in logs]


async def test_the_daemon_composes_reachability_resync_and_relaunch() -> None:
    engine = FakeEngine(instance="me", images=[IMAGE])
    entry = {
        "pipeline": "live-video-to-video",
        "model_id": "m",
        "container": IMAGE,
        "url": f"http://127.0.0.1:{free_port()}",
        "gpus": "none",
        "warm": True,
    }
    settings = Settings(
        instance="me",
        port=free_port(),
        gpu_metrics=False,
        probe_interval=0.05,
        startup_probe_interval=0.01,
        stop_timeout=1,
    )
    daemon = Daemon(settings, parse_models(json.dumps([entry]), source="t"), engine=engine)
    await daemon.start()
    try:
        (worker,) = daemon.workers.values()
        await eventually(lambda: worker.status.state is State.WARM, within=5)
        first = worker.status.container_id or ""
        assert daemon.engine_up is True
        engine.cut()
        await eventually(lambda: daemon.engine_up is False, within=2)
        assert daemon.summary()["ready"] is False
        assert daemon.metrics.sample("byoc_orch_docker_engine_up") == 0
        engine.vanish(first)
        engine.restore(replay=False)
        await eventually(
            lambda: worker.status.state is State.WARM and worker.status.container_id != first,
            within=5,
            what="relaunched after the resync found its container gone",
        )
        assert daemon.engine_up is True and daemon.summary()["ready"] is True
        assert worker.status.restarts == 1
    finally:
        await daemon.stop()
        engine.shutdown()
