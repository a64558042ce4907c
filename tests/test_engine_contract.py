"""The ContainerEngine contract, run against tests/fake_engine.py and the real engine alike: the
same calls, the same outcomes, the same errors and events. It is what keeps the fake honest
(the `real` half is marked `engine`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import docker
import pytest

from byoc_orch.container_spec import LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, ContainerSpec
from byoc_orch.engine import (
    ContainerNotFound,
    Engine,
    EngineError,
    EngineEvent,
    ImageNotFound,
    NameInUse,
    NotOurContainer,
)
from byoc_orch.engine_port import ContainerEngine
from byoc_orch.image_ref import parse_image_ref
from tests.conftest import Harness, eventually
from tests.fake_engine import FakeEngine
from tests.test_engine import make_spec

# Exits as a worker does on SIGTERM (busybox's sleep as PID 1 would ignore it).
TERMINATES = ["sh", "-c", "trap 'exit 143' TERM; while true; do sleep 0.05; done"]


@dataclass
class Side:
    """One engine under the contract, and how to set up around it."""

    engine: ContainerEngine
    instance: str
    image: str
    foreign: Callable[[str, dict[str, str]], str]
    """Make a container behind the engine's back (name, labels) → its id."""
    events: list[EngineEvent] = field(default_factory=list)

    def spec(self, image: str | None = None, **fields: object) -> ContainerSpec:
        fields.setdefault("command", TERMINATES)
        return make_spec(image or self.image, self.instance, gpus="none", **fields)

    def actions(self, container_id: str) -> list[str]:
        return [e.action for e in self.events if e.container_id == container_id]


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.engine)])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    if request.param == "fake":
        fake = FakeEngine(instance=f"t{uuid.uuid4().hex[:10]}", images=["busybox:1.36"])

        def make(name: str, labels: dict[str, str]) -> str:
            return fake.add_container(name, labels).id

        made = Side(fake, fake.instance, "busybox:1.36", make)
        async with _following(made):
            yield made
        fake.shutdown()
        return
    harness: Harness = request.getfixturevalue("harness")
    instance: str = request.getfixturevalue("instance")
    client: docker.DockerClient = request.getfixturevalue("docker_client")
    real = Engine(docker_host=harness.docker_host, instance=instance, timeout=60)
    strangers: list[str] = []

    def create(name: str, labels: dict[str, str]) -> str:
        container = client.containers.create(
            harness.busybox_image, ["sleep", "60"], name=name, labels=labels
        )
        strangers.append(str(container.id))
        return str(container.id)

    made = Side(real, instance, harness.busybox_image, create)
    try:
        async with _following(made):
            yield made
    finally:
        for container_id in strangers:
            await asyncio.to_thread(client.api.remove_container, container_id, force=True)
        await real.close()


class _following:
    """Collect the side's events from before the test on."""

    def __init__(self, side: Side) -> None:
        self._side = side
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        stream = self._side.engine.events()

        async def collect() -> None:
            async for event in stream:
                self._side.events.append(event)

        self._stream = stream
        self._task = asyncio.create_task(collect())

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await self._stream.aclose()


def stranger_labels() -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: "someone-else"}


async def test_a_run_container_is_listed_and_started(side: Side) -> None:
    spec = side.spec()
    info = await side.engine.run(spec)
    assert info.running and info.name == spec.name and info.worker_id == spec.worker_id
    assert info.spec_hash == spec.spec_hash and info.host_port == spec.host_port
    (listed,) = await side.engine.list_containers()
    assert (listed.id, listed.state, listed.spec_hash) == (info.id, "running", spec.spec_hash)
    assert listed.host_port == spec.host_port
    await eventually(lambda: side.actions(info.id) == ["start"], within=10)


async def test_a_stop_ends_it_with_its_exit_code_and_a_removal_destroys_it(side: Side) -> None:
    info = await side.engine.run(side.spec())
    await side.engine.stop(info.id, timeout=5)
    await eventually(lambda: "stop" in side.actions(info.id), within=10)
    assert side.actions(info.id) == ["start", "kill", "die", "stop"]
    die = next(e for e in side.events if e.container_id == info.id and e.action == "die")
    assert die.exit_code == 143 and die.worker_id == info.worker_id
    (listed,) = await side.engine.list_containers()
    assert listed.state == "exited" and listed.host_port is None
    await side.engine.stop(info.id)  # a stopped one is fine
    await side.engine.remove(info.id)
    await eventually(lambda: "destroy" in side.actions(info.id), within=10)
    assert await side.engine.list_containers() == []
    await side.engine.remove(info.id)  # a gone one is fine
    with pytest.raises(ContainerNotFound):
        await side.engine.stop(info.id)
    with pytest.raises(ContainerNotFound):
        await side.engine.logs(info.id)


async def test_removing_a_running_container_kills_it_first(side: Side) -> None:
    info = await side.engine.run(side.spec())
    await side.engine.remove(info.id)
    await eventually(lambda: "destroy" in side.actions(info.id), within=10)
    assert side.actions(info.id) == ["start", "kill", "die", "destroy"]


async def test_another_instances_or_an_operators_containers_are_never_touched(
    side: Side,
) -> None:
    theirs = side.foreign(f"byoc-contract-{uuid.uuid4().hex[:8]}", stranger_labels())
    operators = side.foreign(f"contract-op-{uuid.uuid4().hex[:8]}", {})
    assert await side.engine.list_containers() == []
    for container_id in (theirs, operators):
        for call in (side.engine.stop, side.engine.remove, side.engine.logs):
            with pytest.raises(NotOurContainer):
                await call(container_id)


async def test_a_strangers_namesake_is_refused_and_our_stale_one_replaced(side: Side) -> None:
    spec = side.spec()
    stale = await side.engine.run(spec)
    fresh = await side.engine.run(spec)
    assert fresh.id != stale.id
    assert [c.id for c in await side.engine.list_containers()] == [fresh.id]
    await side.engine.remove(fresh.id)
    side.foreign(spec.name, stranger_labels())
    with pytest.raises(NameInUse, match="BYOC_ORCH_INSTANCE"):
        await side.engine.run(spec)
    assert await side.engine.list_containers() == []


async def test_a_missing_image_fails_the_run_and_a_never_policy(side: Side) -> None:
    missing = f"127.0.0.1:5000/byoc-contract/missing-{uuid.uuid4().hex[:8]}:v1"
    with pytest.raises(EngineError, match="No such image"):
        await side.engine.run(side.spec(missing))
    assert await side.engine.list_containers() == []
    with pytest.raises(ImageNotFound, match="'never'"):
        await side.engine.ensure_image(parse_image_ref(missing), "never")
    present = await side.engine.ensure_image(parse_image_ref(side.image), "missing")
    assert not present.pulled


async def test_logs_are_the_last_lines(side: Side) -> None:
    printing = ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 60"]
    info = await side.engine.run(side.spec(command=printing))
    if isinstance(side.engine, FakeEngine):
        side.engine.containers[info.id].log = [f"line {i}" for i in range(1, 6)]
    await eventually(lambda: _logs(side, info.id), within=10)
    assert await side.engine.logs(info.id, tail=2) == ["line 4", "line 5"]


async def _logs(side: Side, container_id: str) -> bool:
    return len(await side.engine.logs(container_id)) == 5
