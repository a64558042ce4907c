"""An in-memory container engine with engine.Engine's contract, for tests without dockerd.

Function by function it does what the real adapter does: only containers carrying this
instance's labels are listed or touched (`NotOurContainer` for a stranger's, `ContainerNotFound`
for a gone one, while removing a gone one or stopping a stopped one is fine); a run first
removes a leftover namesake of ours and refuses a stranger's (`NameInUse`); a missing image, a
taken host port or GPUs on an engine without them fail the run, with the real adapter's
messages, and leave no container behind; pull policies and shared pulls behave as there. Every
call raises `EngineUnavailable` while the engine is cut, and waits (up to `timeout`, as
docker-py's) while it is stalled. Events are this instance's only and only the watched ones, in
Docker's order: `start`; `kill`, `die` (with its exit code), `stop` for a stop; `oom` before
`die` for an OOM kill; `kill`, `die`, `destroy` for a forced removal. Cutting the engine ends
every event stream (STREAM_LOST); restoring it yields STREAM_RESTORED, then the events missed
meanwhile, as the real stream's `since` replay does.

A running container answers HTTP on 127.0.0.1:<its host port> from a tiny server in this
process: its health path with `{"status": container.health}` (`None`: no answer at all), any
other path 404. So the daemon's real prober and proxy run unchanged against it — no probe seam
in production code — and a stopped container refuses connections as a real one does.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from byoc_orch.container_spec import LABEL_SPEC_HASH, LABEL_WORKER, ContainerSpec, ownership_labels
from byoc_orch.engine import (
    MAX_LOG_LINE,
    STREAM_LOST,
    STREAM_RESTORED,
    WATCHED_EVENTS,
    ContainerInfo,
    ContainerNotFound,
    EngineError,
    EngineEvent,
    EngineInfo,
    EngineUnavailable,
    ImageInfo,
    ImageNotFound,
    ImagePullError,
    NameInUse,
    NotOurContainer,
    PullPolicy,
    PullResult,
    RegistryAuthError,
    RegistryUnreachable,
    _local_name,
    _pull_error,
    _start_error,
)
from byoc_orch.image_ref import ImageRef, parse_image_ref
from byoc_orch.pull_coordinator import PullCoordinator

SIGTERM_EXIT = 143
SIGKILL_EXIT = 137


@dataclass(eq=False)
class FakeContainer:
    id: str
    name: str
    labels: dict[str, str]
    image: str
    image_id: str
    host_port: int | None = None
    spec: ContainerSpec | None = None
    state: str = "created"
    exit_code: int = 0
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    health: str | None = "OK"
    """The word its /health answers with; None: it accepts the connection and never answers."""
    health_code: int = 200
    health_path: str = "/health"
    ignores_sigterm: bool = False
    """A stop then ends it with SIGKILL (137) instead of SIGTERM (143)."""
    log: list[str] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every HTTP request it was sent."""
    _server: asyncio.Server | None = field(default=None, repr=False)
    _connections: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def worker_id(self) -> str:
        return self.labels.get(LABEL_WORKER, "")

    async def serve(self) -> None:
        """Answer HTTP on 127.0.0.1:host_port; OSError when the port is taken."""
        assert self.host_port is not None
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.host_port)

    def unserve(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.close()
        self._connections.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                path = target.split("?", 1)[0]
                self.requests.append((method, path))
                if path == self.health_path:
                    if self.health is None:
                        await reader.read()  # hang until the client gives up
                        return
                    status, body = self.health_code, {"status": self.health}
                else:
                    status, body = 404, {"detail": "Not Found"}
                payload = json.dumps(body).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            self._connections.discard(writer)
            writer.close()


class FakeEventStream:
    """An engine's event stream: what `FakeEngine.events()` returns."""

    def __init__(self, *, lost: bool) -> None:
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._missed: list[EngineEvent] = []
        self._lost = lost
        self.closed = False
        if lost:
            self._queue.put_nowait(EngineEvent(STREAM_LOST, time_nano=time.time_ns()))

    def __aiter__(self) -> FakeEventStream:
        return self

    async def __anext__(self) -> EngineEvent:
        return await self._queue.get()

    async def aclose(self) -> None:
        self.closed = True

    def received(self) -> list[EngineEvent]:
        """Take every event waiting to be read, without waiting for more."""
        taken = []
        while not self._queue.empty():
            taken.append(self._queue.get_nowait())
        return taken

    def deliver(self, event: EngineEvent) -> None:
        if self.closed:
            return
        if self._lost:
            self._missed.append(event)
        else:
            self._queue.put_nowait(event)

    def lose(self) -> None:
        if not self._lost and not self.closed:
            self._lost = True
            self._queue.put_nowait(EngineEvent(STREAM_LOST, time_nano=time.time_ns()))

    def restore(self, replay: bool) -> None:
        if not self._lost or self.closed:
            return
        self._lost = False
        self._queue.put_nowait(EngineEvent(STREAM_RESTORED, time_nano=time.time_ns()))
        for event in self._missed if replay else ():
            self._queue.put_nowait(event)
        self._missed.clear()


class FakeEngine:
    """Start it with the images it has (`images`) and the ones its registry serves (`registry`);
    `containers` is every container it holds, by id, this instance's or not."""

    def __init__(
        self,
        *,
        instance: str,
        images: Iterable[str] = (),
        registry: Iterable[str] = (),
        gpus: bool = True,
        docker_host: str = "unix:///fake/docker.sock",
        timeout: float = 30.0,
    ) -> None:
        self.instance = instance
        self.docker_host = docker_host
        self.gpus = gpus
        self.timeout = timeout
        self.containers: dict[str, FakeContainer] = {}
        self.local: dict[str, ImageInfo] = {}
        self.remote: set[str] = {parse_image_ref(r).canonical for r in registry}
        self.registry_up = True
        self.reachable = True
        self.calls: list[str] = []
        """What was asked of it, in order ("list containers", "stop container 0123…")."""
        self.blocked = 0
        """Calls waiting on the stalled engine now."""
        self.closed = 0
        self.on_start: Callable[[FakeContainer], None] | None = None
        """Called as each container starts: a test shapes it there (health, log…)."""
        self.pull_gate: asyncio.Event | None = None
        """When set, pulls wait for this event (to make callers meet on one pull)."""
        self._ownership = ownership_labels(instance)
        self._streams: list[FakeEventStream] = []
        self._pulls: PullCoordinator[ImageInfo] = PullCoordinator()
        self._missing_locks: dict[str, asyncio.Lock] = {}
        self._answering = asyncio.Event()
        self._answering.set()
        for ref in images:
            self.add_image(ref)

    # -- the ContainerEngine contract -------------------------------------------------------

    async def connect(self) -> EngineInfo:
        await self._answer("ask the Docker engine what it is")
        return EngineInfo(
            server_version="27.0.0-fake",
            api_version="1.46",
            operating_system="fake",
            runtimes=("nvidia", "runc") if self.gpus else ("runc",),
            engine_id="FAKE:ENGINE",
        )

    def events(self) -> FakeEventStream:
        stream = FakeEventStream(lost=not self.reachable)
        self._streams.append(stream)
        return stream

    async def list_containers(self) -> list[ContainerInfo]:
        await self._answer("list containers")
        return [_listed(c) for c in self.containers.values() if self._is_ours(c.labels)]

    async def inspect(self, container_id: str) -> ContainerInfo:
        return _inspected(await self._ours(container_id))

    async def image(self, ref: ImageRef) -> ImageInfo | None:
        await self._answer(f"look up image {ref}")
        return self.local.get(ref.canonical)

    async def ensure_image(self, ref: ImageRef, policy: PullPolicy | str) -> PullResult:
        policy = PullPolicy(policy)
        if policy is PullPolicy.ALWAYS:
            try:
                return await self.pull(ref)
            except (RegistryUnreachable, RegistryAuthError, ImageNotFound, ImagePullError) as exc:
                local = await self.image(ref)
                if local is None:
                    raise
                return PullResult(local, pulled=False, note=f"pull failed, local copy used: {exc}")
        if policy is PullPolicy.NEVER:
            local = await self.image(ref)
            if local is None:
                raise ImageNotFound(
                    f"image {ref} is not on this Docker engine and its pull policy is 'never' — "
                    f'load it (docker pull/load {ref}) or set "pull": "missing"'
                )
            return PullResult(local, pulled=False)
        async with self._missing_locks.setdefault(ref.canonical, asyncio.Lock()):
            local = await self.image(ref)
            if local is not None:
                return PullResult(local, pulled=False)
            return await self.pull(ref)

    async def pull(self, ref: ImageRef) -> PullResult:
        shared = await self._pulls.pull(ref.canonical, lambda: self._pull_now(ref))
        return PullResult(shared.value, pulled=True, joined=shared.joined)

    @property
    def pulls_started(self) -> int:
        return self._pulls.pulls_started

    async def run(self, spec: ContainerSpec) -> ContainerInfo:
        await self._answer(f"create container {spec.name}")
        namesake = next((c for c in self.containers.values() if c.name == spec.name), None)
        if namesake is not None:
            if not self._is_ours(namesake.labels):
                raise NameInUse(
                    f"a container named {spec.name} exists but is not managed by byoc-orch "
                    f"instance '{self.instance}' — remove or rename it (docker rm {spec.name}), "
                    "or run byoc-orch with another BYOC_ORCH_INSTANCE"
                )
            self._destroy(namesake)
        image = self.local.get(spec.image.canonical)
        if image is None:
            raise EngineError(
                f"could not create container {spec.name}: No such image: {_local_name(spec.image)}"
            )
        container = FakeContainer(
            id=uuid.uuid4().hex + uuid.uuid4().hex,
            name=spec.name,
            labels=dict(spec.labels),
            image=_local_name(spec.image),
            image_id=image.id,
            host_port=spec.host_port,
            spec=spec,
        )
        self.containers[container.id] = container
        try:
            await self._answer(f"start container {spec.name}")
            await self._start(container, spec)
        except EngineError:
            self._destroy(container)
            raise
        return _inspected(container)

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        container = await self._ours(container_id)
        await self._answer(f"stop container {container_id[:12]}")
        if not container.running:
            return
        self._emit("kill", container, signal="15")
        if container.ignores_sigterm:
            self._emit("kill", container, signal="9")
            self._exit(container, SIGKILL_EXIT)
        else:
            self._exit(container, SIGTERM_EXIT)
        self._emit("stop", container)

    async def remove(self, container_id: str) -> None:
        try:
            container = await self._ours(container_id)
        except ContainerNotFound:
            return
        await self._answer(f"remove container {container_id[:12]}")
        self._destroy(container)

    async def logs(self, container_id: str, tail: int = 40) -> list[str]:
        container = await self._ours(container_id)
        await self._answer(f"read the log of container {container_id[:12]}")
        return [line[:MAX_LOG_LINE] for line in container.log[-tail:]]

    async def close(self) -> None:
        """As docker-py's: the next call connects again."""
        self.closed += 1

    # -- what a test does to it -------------------------------------------------------------

    def add_image(self, reference: str) -> ImageInfo:
        ref = parse_image_ref(reference)
        digest = "sha256:" + uuid.uuid5(uuid.NAMESPACE_URL, ref.canonical).hex * 2
        info = ImageInfo(
            id="sha256:" + uuid.uuid4().hex * 2,
            reference=ref.canonical,
            repo_digests=(f"{ref.repository_ref}@{digest}",),
        )
        self.local[ref.canonical] = info
        return info

    def add_container(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        running: bool = True,
        image: str = "busybox:latest",
    ) -> FakeContainer:
        """A container made behind byoc-orch's back (another instance's, an operator's, or a
        leftover of ours): it serves no HTTP."""
        container = FakeContainer(
            id=uuid.uuid4().hex + uuid.uuid4().hex,
            name=name,
            labels=dict(labels),
            image=image,
            image_id="sha256:" + uuid.uuid4().hex * 2,
            state="running" if running else "exited",
        )
        self.containers[container.id] = container
        return container

    def ours(self, **labels: str) -> dict[str, str]:
        """This instance's ownership labels, plus `labels`."""
        return {**self._ownership, **labels}

    def crash(self, container_id: str, exit_code: int = 1, *, oom: bool = False) -> None:
        """The container's process ends by itself (or the kernel kills it for memory)."""
        container = self.containers[container_id]
        assert container.running, f"{container.name} is not running"
        if oom:
            container.oom_killed = True
            self._emit("oom", container)
            exit_code = SIGKILL_EXIT
        self._exit(container, exit_code)

    def vanish(self, container_id: str) -> None:
        """Someone ran `docker rm -f` on it."""
        self._destroy(self.containers[container_id])

    def cut(self) -> None:
        """dockerd goes away: every call fails, every event stream is lost."""
        self.reachable = False
        for stream in self._streams:
            stream.lose()

    def restore(self, *, replay: bool = True) -> None:
        """dockerd answers again; `replay`: the streams hand over what they missed (False: it
        restarted and kept no history)."""
        self.reachable = True
        for stream in self._streams:
            stream.restore(replay)

    def stall(self) -> None:
        """dockerd hangs: calls wait (up to `timeout`) instead of answering."""
        self._answering.clear()

    def unstall(self) -> None:
        self._answering.set()

    def running(self) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.running]

    def of_worker(self, worker_id: str) -> FakeContainer | None:
        """The worker's container now, if it has one."""
        return next((c for c in self.containers.values() if c.worker_id == worker_id), None)

    def shutdown(self) -> None:
        """Stop every container's HTTP server (end of a test)."""
        for container in self.containers.values():
            container.unserve()

    # -- inside -----------------------------------------------------------------------------

    async def _answer(self, doing: str) -> None:
        """One API round trip: fails while cut, waits while stalled, always yields."""
        self.calls.append(doing)
        if not self._answering.is_set():
            self.blocked += 1
            try:
                async with asyncio.timeout(self.timeout):
                    await self._answering.wait()
            except TimeoutError:
                raise EngineUnavailable(
                    f"could not {doing}: the Docker engine at {self.docker_host} did not answer "
                    f"in {self.timeout:g} s — check dockerd's health (journalctl -u docker)"
                ) from None
            finally:
                self.blocked -= 1
        await asyncio.sleep(0)
        if not self.reachable:
            raise EngineUnavailable(
                f"could not {doing}: the Docker engine at {self.docker_host} is unreachable "
                "(connection refused) — is dockerd running, and may this user use its socket?"
            )

    async def _ours(self, container_id: str) -> FakeContainer:
        await self._answer(f"inspect container {container_id[:12]}")
        container = self.containers.get(container_id) or next(
            (c for c in self.containers.values() if c.name == container_id), None
        )
        if container is None:
            raise ContainerNotFound(f"container {container_id[:12]} no longer exists")
        if not self._is_ours(container.labels):
            raise NotOurContainer(
                f"container {container_id[:12]} ({container.name}) is not managed by byoc-orch "
                f"instance '{self.instance}'; refusing to touch it"
            )
        return container

    async def _pull_now(self, ref: ImageRef) -> ImageInfo:
        await self._answer(f"pull {ref}")
        if self.pull_gate is not None:
            await self.pull_gate.wait()
        if not self.registry_up:
            raise _pull_error(ref, f"dial tcp {ref.registry}: connect: connection refused")
        if ref.canonical not in self.remote:
            raise _pull_error(ref, f"manifest for {ref} not found: manifest unknown")
        return self.add_image(str(ref))

    async def _start(self, container: FakeContainer, spec: ContainerSpec) -> None:
        if spec.gpus is not None and not self.gpus:
            raise _start_error(spec, 'could not select device driver "" with capabilities: [[gpu]]')
        taken = any(c.running and c.host_port == spec.host_port for c in self.containers.values())
        if taken:
            raise _start_error(
                spec, f"Bind for 127.0.0.1:{spec.host_port} failed: port is already allocated"
            )
        try:
            await container.serve()
        except OSError:
            raise _start_error(
                spec,
                f"listen tcp4 127.0.0.1:{spec.host_port}: bind: address already in use",
            ) from None
        container.state, container.started_at = "running", _now()
        container.exit_code, container.finished_at = 0, None
        if self.on_start is not None:
            self.on_start(container)
        self._emit("start", container)

    def _exit(self, container: FakeContainer, exit_code: int) -> None:
        container.unserve()
        container.state, container.exit_code, container.finished_at = "exited", exit_code, _now()
        self._emit("die", container, exitCode=str(exit_code))

    def _destroy(self, container: FakeContainer) -> None:
        """A forced removal."""
        if container.running:
            self._emit("kill", container, signal="9")
            self._exit(container, SIGKILL_EXIT)
        container.unserve()
        self.containers.pop(container.id, None)
        self._emit("destroy", container)

    def _emit(self, action: str, container: FakeContainer, **extra: str) -> None:
        if action not in WATCHED_EVENTS or not self._is_ours(container.labels):
            return
        attributes = {**container.labels, "name": container.name, "image": container.image}
        attributes.update(extra)
        exit_code = extra.get("exitCode")
        event = EngineEvent(
            action=action,
            container_id=container.id,
            worker_id=container.labels.get(LABEL_WORKER),
            exit_code=int(exit_code) if exit_code is not None else None,
            time_nano=time.time_ns(),
            attributes=attributes,
        )
        for stream in self._streams:
            stream.deliver(event)

    def _is_ours(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self._ownership.items())


def _listed(container: FakeContainer) -> ContainerInfo:
    """As `docker ps -a` lists it: no exit code or times, and a port only while published."""
    return replace(
        _inspected(container),
        host_port=container.host_port if container.running else None,
        exit_code=None,
        oom_killed=False,
        started_at=None,
        finished_at=None,
    )


def _inspected(container: FakeContainer) -> ContainerInfo:
    return ContainerInfo(
        id=container.id,
        name=container.name,
        worker_id=container.worker_id,
        spec_hash=container.labels.get(LABEL_SPEC_HASH, ""),
        image=container.image,
        image_id=container.image_id,
        state=container.state,
        labels=dict(container.labels),
        host_port=container.host_port,
        exit_code=container.exit_code,
        oom_killed=container.oom_killed,
        started_at=container.started_at,
        finished_at=container.finished_at,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
