"""The dangling-container sweep on the fake engine, with a clock moved by hand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from byoc_orch.container_spec import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY
from byoc_orch.dangling import DANGLING_GRACE, DanglingSweeper
from byoc_orch.engine import EngineError
from tests.fake_engine import FakeEngine
from tests.manual_clock import ManualClock


class World:
    """The sweeper's surroundings: an engine, what workers track, what they are creating."""

    def __init__(self) -> None:
        self.engine = FakeEngine(instance="me")
        self.clock = ManualClock()
        self.tracked: set[str] = set()
        self.creating: set[str] = set()
        self.enabled = True
        self.refused: set[str] = set()
        """Containers whose removal fails."""
        self.sweeper = DanglingSweeper(
            self.engine.list_containers,
            self.remove,
            tracked=lambda: self.tracked,
            creating=lambda: self.creating,
            clock=self.clock,
            enabled=lambda: self.enabled,
        )

    async def remove(self, container_id: str) -> None:
        if container_id in self.refused:
            raise EngineError(f"could not remove container {container_id[:12]}: busy")
        await self.engine.remove(container_id)

    def ours(self, worker_id: str) -> str:
        labels = self.engine.ours(**{"byoc-orch.worker-id": worker_id})
        return self.engine.add_container(f"byoc-orch-me-{worker_id}", labels).id


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


async def test_an_untracked_container_is_removed_only_once_the_grace_has_passed(
    world: World,
) -> None:
    container = world.ours("w1")
    assert await world.sweeper.sweep() == []
    world.clock.advance(DANGLING_GRACE - 0.01)
    assert await world.sweeper.sweep() == []
    assert container in world.engine.containers
    world.clock.advance(0.01)
    with structlog.testing.capture_logs() as logs:
        assert await world.sweeper.sweep() == [container]
    assert container not in world.engine.containers
    (line,) = logs
    assert line["event"] == "removing a container of this instance that nothing tracks"
    assert (line["container_id"], line["worker_id"]) == (container[:12], "w1")


async def test_a_tracked_container_is_never_removed(world: World) -> None:
    container = world.ours("w1")
    world.tracked.add(container)
    for _ in range(3):
        assert await world.sweeper.sweep() == []
        world.clock.advance(DANGLING_GRACE)
    assert container in world.engine.containers


async def test_a_container_whose_worker_is_creating_it_gets_a_fresh_grace(world: World) -> None:
    container = world.ours("w1")
    world.creating.add("w1")
    await world.sweeper.sweep()
    world.clock.advance(DANGLING_GRACE * 2)
    assert await world.sweeper.sweep() == []
    # The create returned but the worker has not taken it in yet: its grace starts now.
    world.creating.clear()
    assert await world.sweeper.sweep() == []
    world.clock.advance(DANGLING_GRACE - 0.01)
    assert await world.sweeper.sweep() == []
    world.clock.advance(0.01)
    assert await world.sweeper.sweep() == [container]


async def test_a_container_tracked_again_within_the_grace_is_forgotten(world: World) -> None:
    container = world.ours("w1")
    await world.sweeper.sweep()
    world.tracked.add(container)
    world.clock.advance(DANGLING_GRACE)
    assert await world.sweeper.sweep() == []
    world.tracked.clear()
    assert await world.sweeper.sweep() == []  # first seen untracked again only now


async def test_only_containers_with_this_instances_labels_are_swept(world: World) -> None:
    other = world.engine.add_container(
        "byoc-orch-other-w1", {LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: "other"}
    )
    operators = world.engine.add_container("postgres", {})
    half = world.engine.add_container("lookalike", {LABEL_INSTANCE: "me"})
    mine = world.ours("w1")
    await world.sweeper.sweep()
    world.clock.advance(DANGLING_GRACE)
    assert await world.sweeper.sweep() == [mine]
    assert {other.id, operators.id, half.id} <= set(world.engine.containers)


async def test_a_daemon_not_using_docker_never_asks_it(world: World) -> None:
    world.ours("w1")
    world.enabled = False
    world.clock.advance(DANGLING_GRACE * 3)
    assert await world.sweeper.sweep() == []
    assert world.engine.calls == []


async def test_docker_out_of_reach_is_logged_and_sweeps_nothing(world: World) -> None:
    world.ours("w1")
    world.engine.cut()
    with structlog.testing.capture_logs() as logs:
        assert await world.sweeper.sweep() == []
    assert [e["event"] for e in logs] == ["could not list containers to find dangling ones"]


async def test_a_failed_removal_is_logged_and_the_others_still_go(world: World) -> None:
    first, second = world.ours("w1"), world.ours("w2")
    await world.sweeper.sweep()
    world.clock.advance(DANGLING_GRACE)
    world.refused.add(first)
    with structlog.testing.capture_logs() as logs:
        assert await world.sweeper.sweep() == [second]
    assert "could not remove container" in [e["event"] for e in logs]
    assert first in world.engine.containers
