"""The Docker engine adapter against the real engine and registries from scripts/test-env.sh."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from byoc_orch.aimodels import ModelEntry, parse_models
from byoc_orch.container_spec import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL_ID,
    LABEL_PIPELINE,
    LABEL_SPEC_HASH,
    LABEL_WORKER,
    ContainerSpec,
    build_container_spec,
)
from byoc_orch.engine import (
    STREAM_LOST,
    STREAM_RESTORED,
    Engine,
    EngineEvent,
    EventStream,
    GpuUnavailable,
    ImageNotFound,
    NameInUse,
    NotOurContainer,
    PortInUse,
    RegistryAuthError,
    RegistryUnreachable,
)
from byoc_orch.image_ref import parse_image_ref
from tests.conftest import Harness, eventually, free_port
from tests.unix_proxy import UnixProxy

pytestmark = pytest.mark.engine


def make_entry(image: str, port: int, **fields: Any) -> ModelEntry:
    raw = {
        "pipeline": "live-video-to-video",
        "model_id": f"test-{uuid.uuid4().hex[:6]}",
        "container": image,
        "url": f"http://127.0.0.1:{port}",
        "warm": True,
        **fields,
    }
    return parse_models(json.dumps([raw]), source="test").entries[0]


def make_spec(image: str, instance: str, **fields: Any) -> ContainerSpec:
    return build_container_spec(make_entry(image, free_port(), **fields), instance)


def sleeper(harness: Harness, instance: str, **fields: Any) -> ContainerSpec:
    """A busybox container that stays up and prints its environment."""
    fields.setdefault("command", ["sh", "-c", "env; exec sleep 300"])
    fields.setdefault("gpus", "none")
    return make_spec(harness.busybox_image, instance, **fields)


def push_fresh_image(client: docker.DockerClient, source: str, registry: str) -> str:
    """Push `source` under a never-used name and drop the local tag, so a pull must fetch it."""
    target = f"{registry}/byoc-test/pull-{uuid.uuid4().hex[:10]}:v1"
    repo, tag = target.rsplit(":", 1)
    client.images.get(source).tag(repo, tag)
    for line in client.images.push(repo, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(target)
    return target


# -- connection ---------------------------------------------------------------------------------


async def test_connect_reports_engine(engine: Engine) -> None:
    info = await engine.connect()
    assert info.server_version
    assert info.api_version


async def test_unreachable_engine_names_the_endpoint_and_fix(tmp_path: Path) -> None:
    dead = Engine(docker_host=f"unix://{tmp_path}/nothing.sock", instance="x")
    with pytest.raises(Exception) as caught:
        await dead.connect()
    assert "nothing.sock" in str(caught.value)
    assert "DOCKER_HOST" in str(caught.value)


# -- images -------------------------------------------------------------------------------------


async def test_pull_from_loopback_registry_then_reuse(
    engine: Engine, docker_client: docker.DockerClient, harness: Harness
) -> None:
    ref = parse_image_ref(push_fresh_image(docker_client, harness.busybox_image, harness.registry))
    first = await engine.ensure_image(ref, "missing")
    assert first.pulled and first.image.digest and first.image.digest.startswith("sha256:")
    again = await engine.ensure_image(ref, "missing")
    assert not again.pulled
    assert again.image.id == first.image.id
    assert engine.pulls_started == 1


async def test_missing_tag_is_a_clear_error(engine: Engine, harness: Harness) -> None:
    ref = parse_image_ref(f"{harness.registry}/byoc/busybox:no-such-tag")
    with pytest.raises(ImageNotFound) as caught:
        await engine.ensure_image(ref, "missing")
    text = str(caught.value)
    assert "no-such-tag" in text and '"container"' in text


async def test_registry_down_is_a_clear_error(engine: Engine) -> None:
    ref = parse_image_ref(f"127.0.0.1:{free_port()}/byoc/busybox:latest")
    with pytest.raises(RegistryUnreachable) as caught:
        await engine.ensure_image(ref, "missing")
    assert "unreachable" in str(caught.value) and ref.registry in str(caught.value)


async def test_pull_never_without_local_image_says_how_to_fix(
    engine: Engine, harness: Harness
) -> None:
    ref = parse_image_ref(f"{harness.registry}/byoc-test/never-pushed:1")
    with pytest.raises(ImageNotFound) as caught:
        await engine.ensure_image(ref, "never")
    assert "'never'" in str(caught.value) and '"pull": "missing"' in str(caught.value)


def _docker_config(tmp_path: Path, auths: dict[str, Any]) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": auths}))
    return path


async def test_private_registry_pulls_with_credentials_and_refuses_without(
    harness: Harness, instance: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    source = f"{harness.auth_registry}/byoc/busybox:latest"
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(source)  # the harness never leaves it locally
    ref = parse_image_ref(source)
    import base64

    token = base64.b64encode(f"{harness.auth_user}:{harness.auth_password}".encode()).decode()
    anonymous = Engine(
        docker_host=harness.docker_host,
        instance=instance,
        docker_config=_docker_config(tmp_path, {}),
    )
    with pytest.raises(RegistryAuthError) as caught:
        await anonymous.ensure_image(ref, "missing")
    assert harness.auth_registry in str(caught.value)
    assert harness.auth_password not in str(caught.value)
    await anonymous.close()

    (tmp_path / "with").mkdir()
    authed = Engine(
        docker_host=harness.docker_host,
        instance=instance,
        docker_config=_docker_config(tmp_path / "with", {harness.auth_registry: {"auth": token}}),
    )
    try:
        result = await authed.ensure_image(ref, "always")
        assert result.pulled and result.image.digest
    finally:
        await authed.close()
        docker_client.images.remove(source, force=True)


async def test_concurrent_pulls_of_one_image_pull_once(
    engine: Engine, docker_client: docker.DockerClient, harness: Harness
) -> None:
    ref = parse_image_ref(push_fresh_image(docker_client, harness.worker_image, harness.registry))
    results = await asyncio.gather(*(engine.ensure_image(ref, "always") for _ in range(4)))
    assert engine.pulls_started == 1
    assert sorted(r.joined for r in results) == [False, True, True, True]
    assert len({r.image.id for r in results}) == 1


async def test_concurrent_missing_pulls_of_one_image_pull_once(
    engine: Engine, docker_client: docker.DockerClient, harness: Harness
) -> None:
    """However late a caller looks, once one pull brought the image nobody pulls it again."""
    ref = parse_image_ref(push_fresh_image(docker_client, harness.worker_image, harness.registry))
    results = await asyncio.gather(*(engine.ensure_image(ref, "missing") for _ in range(8)))
    assert engine.pulls_started == 1
    assert sum(r.pulled for r in results) == 1
    assert len({r.image.id for r in results}) == 1


# -- containers ---------------------------------------------------------------------------------


async def container_logs(docker_client: docker.DockerClient, container_id: str, needle: str) -> str:
    def has_needle() -> str:
        logs = docker_client.containers.get(container_id).logs().decode()
        return logs if needle in logs else ""

    return str(await eventually(has_needle, what=f"{needle!r} in the container's output"))


async def test_gpus_all_launches_through_the_nvidia_hook(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    info = await engine.run(sleeper(harness, instance, gpus="all"))
    assert info.running
    attrs = docker_client.api.inspect_container(info.id)
    requests = attrs["HostConfig"]["DeviceRequests"]
    assert len(requests) == 1
    assert requests[0]["Count"] == -1
    assert requests[0]["Capabilities"] == [["gpu"]]
    assert "NVIDIA_VISIBLE_DEVICES=all" in await container_logs(
        docker_client, info.id, "NVIDIA_VISIBLE_DEVICES"
    )


async def test_gpus_list_asks_for_that_device(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    info = await engine.run(sleeper(harness, instance, gpus=["1"]))
    request = docker_client.api.inspect_container(info.id)["HostConfig"]["DeviceRequests"][0]
    assert request["DeviceIDs"] == ["1"]
    assert request["Capabilities"] == [["gpu"]]
    assert "NVIDIA_VISIBLE_DEVICES=1" in await container_logs(
        docker_client, info.id, "NVIDIA_VISIBLE_DEVICES"
    )


async def test_gpus_none_asks_for_nothing(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    info = await engine.run(sleeper(harness, instance, gpus="none"))
    assert not docker_client.api.inspect_container(info.id)["HostConfig"]["DeviceRequests"]


async def test_engine_without_nvidia_runtime_explains_the_fix(
    harness: Harness, instance: str
) -> None:
    nogpu = Engine(docker_host=harness.nogpu_docker_host, instance=instance)
    try:
        with pytest.raises(GpuUnavailable) as caught:
            await nogpu.run(sleeper(harness, instance, gpus="all"))
        text = str(caught.value)
        assert "nvidia-container-toolkit" in text and '"gpus": "none"' in text
        assert await nogpu.list_containers() == []
    finally:
        await nogpu.close()


async def test_worker_env_labels_and_loopback_port(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    port = free_port()
    entry = make_entry(
        harness.worker_image,
        port,
        gpus="none",
        optimization_flags={"SFAST": True, "STEPS": "4"},
        env={"DEMO_LOAD_SECONDS": "0"},
    )
    spec = build_container_spec(entry, instance)
    info = await engine.run(spec)
    attrs = docker_client.api.inspect_container(info.id)
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["PIPELINE"] == entry.pipeline and env["MODEL_ID"] == entry.model_id
    assert env["SFAST"] == "true" and env["STEPS"] == "4"
    labels = attrs["Config"]["Labels"]
    assert labels[LABEL_MANAGED_BY] == "byoc-orch"
    assert labels[LABEL_INSTANCE] == instance
    assert labels[LABEL_WORKER] == entry.worker_id
    assert labels[LABEL_PIPELINE] == entry.pipeline and labels[LABEL_MODEL_ID] == entry.model_id
    assert labels[LABEL_SPEC_HASH] == spec.spec_hash
    bindings = attrs["NetworkSettings"]["Ports"]["8000/tcp"]
    assert [(b["HostIp"], b["HostPort"]) for b in bindings] == [("127.0.0.1", str(port))]
    assert info.host_port == port

    async def healthy() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                reply = await client.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return reply.status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(healthy, what="the demo worker's /health on the published port")
    outside = _non_loopback_address()
    if outside is not None:
        with pytest.raises(OSError), socket.create_connection((outside, port), timeout=1):
            pass


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


async def test_port_in_use_names_the_port(engine: Engine, harness: Harness, instance: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = build_container_spec(
            make_entry(harness.busybox_image, port, gpus="none", command=["sleep", "300"]), instance
        )
        with pytest.raises(PortInUse) as caught:
            await engine.run(spec)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert await engine.list_containers() == []


async def test_list_stop_remove_never_touch_foreign_containers(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    ours = await engine.run(sleeper(harness, instance))
    unlabelled = docker_client.containers.run(harness.busybox_image, ["sleep", "300"], detach=True)
    other_instance = docker_client.containers.run(
        harness.busybox_image,
        ["sleep", "300"],
        detach=True,
        labels={LABEL_MANAGED_BY: "byoc-orch", LABEL_INSTANCE: f"{instance}-other"},
    )
    try:
        listed = await engine.list_containers()
        assert [c.id for c in listed] == [ours.id]
        for foreign in (unlabelled, other_instance):
            for operation in (engine.inspect, engine.stop, engine.remove):
                with pytest.raises(NotOurContainer):
                    await operation(foreign.id)
            foreign.reload()
            assert foreign.status == "running"
    finally:
        unlabelled.remove(force=True)
        other_instance.remove(force=True)


async def test_name_held_by_a_foreign_container_is_left_alone(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    spec = sleeper(harness, instance)
    squatter = docker_client.containers.run(
        harness.busybox_image, ["sleep", "300"], name=spec.name, detach=True
    )
    try:
        with pytest.raises(NameInUse) as caught:
            await engine.run(spec)
        assert spec.name in str(caught.value)
        squatter.reload()
        assert squatter.status == "running"
    finally:
        squatter.remove(force=True)


async def test_our_stale_container_of_the_same_name_is_replaced(
    engine: Engine, harness: Harness, instance: str
) -> None:
    spec = sleeper(harness, instance)
    first = await engine.run(spec)
    second = await engine.run(spec)
    assert second.id != first.id
    assert [c.id for c in await engine.list_containers()] == [second.id]


async def test_stop_escalates_after_the_timeout(
    engine: Engine, harness: Harness, instance: str
) -> None:
    stubborn = await engine.run(
        sleeper(harness, instance, command=["sh", "-c", "trap '' TERM; while :; do sleep 1; done"])
    )
    await engine.stop(stubborn.id, timeout=1)
    stopped = await engine.inspect(stubborn.id)
    assert stopped.state == "exited"
    assert stopped.exit_code == 137
    await engine.remove(stubborn.id)
    assert await engine.list_containers() == []
    await engine.remove(stubborn.id)  # already gone is fine


# -- events -------------------------------------------------------------------------------------


async def next_event(
    events: EventStream, want: Callable[[EngineEvent], bool], within: float = 15
) -> EngineEvent:
    async def scan() -> EngineEvent:
        async for event in events:
            if want(event):
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(scan(), within)


async def test_die_event_arrives_when_a_container_is_killed(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    events = engine.events()
    try:
        info = await engine.run(sleeper(harness, instance))
        started = await next_event(events, lambda e: e.action == "start")
        assert started.container_id == info.id and started.worker_id == info.worker_id
        docker_client.containers.get(info.id).kill()
        died = await next_event(events, lambda e: e.action == "die")
        assert died.container_id == info.id
        assert died.worker_id == info.worker_id
        assert died.exit_code == 137
    finally:
        await events.aclose()


async def test_events_of_other_instances_are_not_delivered(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    events = engine.events()
    try:
        foreign = docker_client.containers.run(
            harness.busybox_image,
            ["sleep", "300"],
            detach=True,
            labels={LABEL_MANAGED_BY: "byoc-orch", LABEL_INSTANCE: f"{instance}-other"},
        )
        foreign.remove(force=True)
        mine = await engine.run(sleeper(harness, instance))
        first = await next_event(events, lambda e: True)
        assert first.container_id == mine.id
    finally:
        await events.aclose()


async def test_event_stream_reconnects_and_replays_what_it_missed(
    harness: Harness, instance: str, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    upstream = harness.docker_host.removeprefix("unix://")
    proxy = UnixProxy(tmp_path / "docker.sock", upstream)
    await proxy.start()
    engine = Engine(docker_host=proxy.docker_host, instance=instance)
    events = engine.events(reconnect_max_delay=0.2)
    try:
        info = await engine.run(sleeper(harness, instance))
        await next_event(events, lambda e: e.action == "start")
        await proxy.cut()
        assert (await next_event(events, lambda e: e.is_stream_note)).action == STREAM_LOST
        docker_client.containers.get(info.id).kill()  # while the stream is down
        await proxy.start()
        assert (await next_event(events, lambda e: e.is_stream_note)).action == STREAM_RESTORED
        died = await next_event(events, lambda e: e.action == "die")
        assert died.container_id == info.id
    finally:
        await events.aclose()
        await engine.close()


# -- containment --------------------------------------------------------------------------------

# Capability numbers (linux/capability.h) of the four byoc-orch drops, and of one it keeps.
CAP_BITS = {"NET_RAW": 13, "SYS_CHROOT": 18, "MKNOD": 27, "AUDIT_WRITE": 29}
CAP_CHOWN = 0
SHOW_LIMITS = (
    "cat /proc/self/status; "
    "echo memory.max=$(cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes"
    " 2>/dev/null); "
    "echo pids.max=$(cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null); "
    "echo limits-shown; exec sleep 300"
)


def _status_field(logs: str, name: str) -> str:
    line = next(line for line in logs.splitlines() if line.startswith(f"{name}:"))
    return line.split(":", 1)[1].strip()


def _shown(logs: str, name: str) -> str:
    return next(line for line in logs.splitlines() if line.startswith(f"{name}="))[len(name) + 1 :]


async def test_containers_are_created_contained(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    info = await engine.run(sleeper(harness, instance, command=["sh", "-c", SHOW_LIMITS]))
    host = docker_client.api.inspect_container(info.id)["HostConfig"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["CapDrop"] == ["NET_RAW", "MKNOD", "SYS_CHROOT", "AUDIT_WRITE"]
    assert not host["CapAdd"]
    assert host["PidsLimit"] == 4096
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "20m", "max-file": "5"},
    }
    assert host["Memory"] == 0 and host["MemorySwap"] == 0 and host["NanoCpus"] == 0

    # What the kernel enforces on the container's processes, as they see it.
    logs = await container_logs(docker_client, info.id, "limits-shown")
    assert _status_field(logs, "NoNewPrivs") == "1"
    bounding = int(_status_field(logs, "CapBnd"), 16)
    assert bounding & (1 << CAP_CHOWN), "Docker's other default capabilities are kept"
    for name, bit in CAP_BITS.items():
        assert not bounding & (1 << bit), f"{name} is still in the bounding set"
    assert _shown(logs, "pids.max") == "4096"


async def test_memory_cpus_and_cap_add_reach_the_container(
    engine: Engine, harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    spec = sleeper(
        harness,
        instance,
        command=["sh", "-c", SHOW_LIMITS],
        memory="64m",
        cpus=0.5,
        cap_add=["NET_RAW"],
    )
    assert spec.memory == 64 << 20 and spec.nano_cpus == 500_000_000
    info = await engine.run(spec)
    host = docker_client.api.inspect_container(info.id)["HostConfig"]
    assert host["Memory"] == 64 << 20
    assert host["MemorySwap"] == 64 << 20, "no swap on top of the memory limit"
    assert host["NanoCpus"] == 500_000_000
    assert host["CapAdd"] == ["NET_RAW"]
    assert host["CapDrop"] == ["MKNOD", "SYS_CHROOT", "AUDIT_WRITE"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]

    logs = await container_logs(docker_client, info.id, "limits-shown")
    bounding = int(_status_field(logs, "CapBnd"), 16)
    assert bounding & (1 << CAP_BITS["NET_RAW"]), "cap_add gave NET_RAW back"
    assert not bounding & (1 << CAP_BITS["MKNOD"])
    assert int(_shown(logs, "memory.max")) == 64 << 20


async def test_reference_worker_serves_with_every_limit_on(
    engine: Engine, harness: Harness, instance: str
) -> None:
    port = free_port()
    entry = make_entry(
        harness.worker_image,
        port,
        gpus="none",
        memory="256m",
        cpus=1,
        env={"DEMO_LOAD_SECONDS": "0"},
    )
    await engine.run(build_container_spec(entry, instance))

    async def idle() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                reply = await client.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return bool(reply.json() == {"status": "IDLE"})
        except (httpx.HTTPError, ValueError):
            return False

    await eventually(idle, what="the demo worker's /health IDLE under the limits")


async def test_out_of_memory_is_reported_as_oom(
    engine: Engine, harness: Harness, instance: str
) -> None:
    """A worker that allocates beyond its limit is killed by the kernel, and the engine says
    so: an `oom` event before the `die` event (what the daemon names the crash by), and
    OOMKilled on inspection."""
    spec = make_spec(
        harness.worker_image,
        instance,
        gpus="none",
        memory="64m",
        env={"DEMO_LOAD_SECONDS": "0", "DEMO_ALLOCATE_MB": "512"},
    )
    events = engine.events()
    try:
        info = await engine.run(spec)
        seen: list[EngineEvent] = []

        def collect(event: EngineEvent) -> bool:
            if event.container_id == info.id:
                seen.append(event)
            return event.container_id == info.id and event.action == "die"

        died = await next_event(events, collect, within=30)
    finally:
        await events.aclose()
    actions = [event.action for event in seen]
    assert "oom" in actions, actions
    assert actions.index("oom") < actions.index("die"), actions
    assert died.exit_code == 137
    assert died.worker_id == info.worker_id
    inspected = await engine.inspect(info.id)
    assert inspected.oom_killed
    assert inspected.exit_code == 137
