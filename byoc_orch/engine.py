"""The Docker engine adapter: the only module that imports `docker`.

docker-py blocks, so every short call runs in a worker thread and the two long-lived streams
(image pulls and the event stream) get threads of their own that feed the event loop. Every
operation on an existing container first checks that it carries this instance's labels:
another daemon's containers, or an operator's own, are never listed, stopped or removed.
Docker's errors are translated into `EngineError`s whose text tells an operator what failed and
what to do; credentials never appear in them. Containers are created with the containment
ContainerSpec carries (no-new-privileges, dropped capabilities, pids, log, memory and CPU
limits); a container the kernel killed for exceeding its memory limit shows as
`ContainerInfo.oom_killed` and as an `oom` event ahead of its `die` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import docker
import docker.auth
import docker.errors
import docker.types
import docker.utils
import requests.exceptions
import structlog

from byoc_orch.container_spec import (
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_SPEC_HASH,
    LABEL_WORKER,
    MANAGED_BY,
    ContainerSpec,
    ownership_labels,
)
from byoc_orch.image_ref import ImageRef
from byoc_orch.pull_coordinator import PullCoordinator
from byoc_orch.pull_progress import PullProgress

log = structlog.get_logger("byoc_orch.engine")

WATCHED_EVENTS = ("start", "die", "oom", "stop", "kill", "destroy", "health_status")
MAX_LOG_LINE = 500
"""Characters kept of one container log line (a worker may print megabytes on one line)."""
STREAM_LOST = "stream_lost"
STREAM_RESTORED = "stream_restored"


class PullPolicy(StrEnum):
    MISSING = "missing"
    ALWAYS = "always"
    NEVER = "never"


class EngineError(Exception):
    """An engine operation failed; the message is written for an operator."""


class EngineUnavailable(EngineError):
    pass


class ImageNotFound(EngineError):
    pass


class RegistryAuthError(EngineError):
    pass


class RegistryUnreachable(EngineError):
    pass


class ImagePullError(EngineError):
    pass


class GpuUnavailable(EngineError):
    pass


class PortInUse(EngineError):
    pass


class NameInUse(EngineError):
    pass


class NotOurContainer(EngineError):
    pass


class ContainerNotFound(EngineError):
    pass


@dataclass(frozen=True)
class EngineInfo:
    server_version: str
    api_version: str
    operating_system: str
    runtimes: tuple[str, ...]
    engine_id: str = ""
    """The engine's own identity (`docker info` ID): the same however it is addressed."""


@dataclass(frozen=True)
class ImageInfo:
    id: str
    reference: str
    repo_digests: tuple[str, ...]

    @property
    def digest(self) -> str | None:
        return self.repo_digests[0].split("@", 1)[1] if self.repo_digests else None


@dataclass(frozen=True)
class PullResult:
    image: ImageInfo
    pulled: bool
    joined: bool = False
    note: str = ""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    worker_id: str
    spec_hash: str
    image: str
    image_id: str
    state: str
    labels: Mapping[str, str]
    host_port: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    error: str = ""

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class EngineEvent:
    """A container event for one of our containers, or a note about the stream itself."""

    action: str
    container_id: str | None = None
    worker_id: str | None = None
    exit_code: int | None = None
    time_nano: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_stream_note(self) -> bool:
        return self.action in (STREAM_LOST, STREAM_RESTORED)


class Engine:
    """Async façade over one Docker endpoint, scoped to one byoc-orch instance."""

    def __init__(
        self,
        *,
        docker_host: str,
        instance: str,
        timeout: float = 30.0,
        docker_config: Path | None = None,
        pull_progress_interval: float = 5.0,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.docker_host = docker_host
        self.instance = instance
        self._timeout = timeout
        self._docker_config = docker_config
        self._pull_progress_interval = pull_progress_interval
        self._environment = dict(environment or {})
        self._client: docker.DockerClient | None = None
        self._pulls: PullCoordinator[ImageInfo] = PullCoordinator()
        self._missing_locks: dict[str, asyncio.Lock] = {}
        self._ownership = ownership_labels(instance)

    # -- connection ---------------------------------------------------------------------------

    @property
    def pulls_started(self) -> int:
        """Pulls actually sent to dockerd (deduplicated ones are not counted)."""
        return self._pulls.pulls_started

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            tls = docker.utils.kwargs_from_env(environment=self._environment).get("tls")
            try:
                self._client = docker.DockerClient(
                    base_url=self.docker_host,
                    # requests takes a float; the stubs say int
                    timeout=self._timeout,  # type: ignore[arg-type]
                    tls=tls or False,
                )
            except docker.errors.DockerException as exc:
                raise EngineUnavailable(
                    f"cannot reach the Docker engine at {self.docker_host}: {_short(exc)} — start "
                    "dockerd, or point BYOC_ORCH_DOCKER_HOST/DOCKER_HOST at it (and make sure "
                    "this user may use its socket, e.g. the docker group)"
                ) from None
        return self._client

    async def connect(self) -> EngineInfo:
        """Reach the engine and say what it is; raises EngineUnavailable with the fix."""
        return await asyncio.to_thread(self._info_blocking)

    def _info_blocking(self) -> EngineInfo:
        with self._translate("ask the Docker engine what it is"):
            client = self._docker()
            version = client.version()
            info = client.info()
        return EngineInfo(
            server_version=str(version.get("Version", "?")),
            api_version=str(version.get("ApiVersion", "?")),
            operating_system=str(info.get("OperatingSystem", "?")),
            runtimes=tuple(sorted(info.get("Runtimes") or {})),
            engine_id=str(info.get("ID") or ""),
        )

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)

    # -- images -------------------------------------------------------------------------------

    async def image(self, ref: ImageRef) -> ImageInfo | None:
        """The local image for `ref`, or None when the engine does not have it."""
        return await asyncio.to_thread(self._image_blocking, ref)

    def _image_blocking(self, ref: ImageRef) -> ImageInfo | None:
        with self._translate(f"look up image {ref}"):
            try:
                attrs: dict[str, Any] = self._docker().api.inspect_image(  # type: ignore[no-untyped-call]
                    _local_name(ref)
                )
            except docker.errors.ImageNotFound:
                return None
        return ImageInfo(
            id=attrs["Id"],
            reference=ref.canonical,
            repo_digests=tuple(attrs.get("RepoDigests") or ()),
        )

    async def ensure_image(self, ref: ImageRef, policy: PullPolicy | str) -> PullResult:
        """Make `ref` available locally as the pull policy says."""
        policy = PullPolicy(policy)
        if policy is PullPolicy.ALWAYS:
            # Join (or start) the shared pull before anything else is awaited, so callers
            # arriving together share one pull; the local copy is only a fallback.
            try:
                return await self.pull(ref)
            except (RegistryUnreachable, RegistryAuthError, ImageNotFound, ImagePullError) as exc:
                local = await self.image(ref)
                if local is None:
                    raise
                log.warning("pull failed; running the local copy", image=str(ref), reason=str(exc))
                return PullResult(local, pulled=False, note=f"pull failed, local copy used: {exc}")
        if policy is PullPolicy.NEVER:
            local = await self.image(ref)
            if local is None:
                raise ImageNotFound(
                    f"image {ref} is not on this Docker engine and its pull policy is 'never' — "
                    f'load it (docker pull/load {ref}) or set "pull": "missing"'
                )
            return PullResult(local, pulled=False)
        # "missing": look and pull under one lock per image, so a caller that looks just after
        # another's pull finished finds the image instead of pulling it again.
        async with self._missing_locks.setdefault(ref.canonical, asyncio.Lock()):
            local = await self.image(ref)
            if local is not None:
                return PullResult(local, pulled=False)
            return await self.pull(ref)

    async def pull(self, ref: ImageRef) -> PullResult:
        """Pull `ref` now, sharing a pull of the same image already in flight."""
        shared = await self._pulls.pull(
            ref.canonical, lambda: asyncio.to_thread(self._pull_blocking, ref)
        )
        return PullResult(shared.value, pulled=True, joined=shared.joined)

    def _pull_blocking(self, ref: ImageRef) -> ImageInfo:
        started = time.monotonic()
        progress = PullProgress(str(ref), interval=self._pull_progress_interval)
        log.info("pulling image", image=str(ref))
        with self._translate(f"pull {ref}", image=ref):
            stream = self._docker().api.pull(
                ref.repository_ref,
                tag=ref.pull_tag,
                stream=True,
                decode=True,
                auth_config=self._auth_for(ref.registry),
            )
            for message in stream:
                if "error" in message:
                    raise _pull_error(ref, str(message.get("error")))
                summary = progress.update(message)
                if summary is not None:
                    log.info("pull progress", **summary.as_log_fields())
        image = self._image_blocking(ref)
        if image is None:
            raise ImagePullError(
                f"pull of {ref} ended but the engine has no such image — try again"
            )
        log.info(
            "pulled image",
            image=str(ref),
            digest=image.digest,
            seconds=round(time.monotonic() - started, 2),
            **{k: v for k, v in progress.summary().as_log_fields().items() if k != "image"},
        )
        return image

    def _auth_for(self, registry: str) -> dict[str, Any] | None:
        """Credentials for `registry` from the configured config.json, if one is configured.

        Without an explicit file docker-py consults Docker's own ($DOCKER_CONFIG or
        ~/.docker/config.json, credential helpers included) when given None. With one, a
        registry it has no entry for is pulled anonymously ({}), not with the user's own.
        """
        if self._docker_config is None:
            return None
        config = docker.auth.load_config(config_path=str(self._docker_config))
        resolved = config.resolve_authconfig(registry)
        return dict(resolved) if resolved else {}

    # -- containers ---------------------------------------------------------------------------

    async def run(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start the container `spec` describes.

        A leftover container of ours with the same name is removed first; one with that name
        that is not ours is left alone and reported.
        """
        return await asyncio.to_thread(self._run_blocking, spec)

    def _run_blocking(self, spec: ContainerSpec) -> ContainerInfo:
        api = self._docker().api
        with self._translate(f"create container {spec.name}"):
            self._remove_stale_namesake(spec.name)
            container_id = api.create_container(
                image=_local_name(spec.image),
                name=spec.name,
                command=list(spec.command) if spec.command is not None else None,
                environment=dict(spec.env),
                labels=dict(spec.labels),
                ports=[spec.container_port] if spec.network_mode != "host" else None,
                host_config=self._host_config(spec),
                detach=True,
            )["Id"]
        try:
            with self._translate(f"start container {spec.name}", spec=spec):
                api.start(container_id)
        except EngineError:
            with contextlib.suppress(
                docker.errors.DockerException, requests.exceptions.RequestException
            ):
                api.remove_container(container_id, force=True)
            raise
        log.info(
            "container started",
            worker_id=spec.worker_id,
            container_id=container_id[:12],
            image=str(spec.image),
            host_port=spec.host_port,
        )
        return self._inspect_blocking(container_id)

    def _host_config(self, spec: ContainerSpec) -> dict[str, Any]:
        api = self._docker().api
        device_requests = []
        if spec.gpus is not None:
            device_requests.append(
                docker.types.DeviceRequest(
                    count=0 if spec.gpus.device_ids else (spec.gpus.count or -1),
                    device_ids=list(spec.gpus.device_ids),
                    capabilities=[["gpu"]],
                )
            )
        host_network = spec.network_mode == "host"
        return api.create_host_config(
            port_bindings=None
            if host_network
            else {spec.container_port: ("127.0.0.1", spec.host_port)},
            device_requests=device_requests or None,
            binds=list(spec.volumes) or None,
            shm_size=spec.shm_size,
            privileged=spec.privileged,
            network_mode=spec.network_mode,
            pid_mode=spec.pid_mode or None,
            restart_policy={"Name": "no"},
            security_opt=list(spec.security_opt) or None,
            cap_drop=list(spec.cap_drop) or None,
            cap_add=list(spec.cap_add) or None,
            pids_limit=spec.pids_limit,
            log_config=docker.types.LogConfig(type=spec.log_driver, config=dict(spec.log_options)),
            mem_limit=spec.memory,
            # Swap limited to the memory limit: a container over its limit is OOM-killed
            # instead of swapping the host to a crawl.
            memswap_limit=spec.memory,
            nano_cpus=spec.nano_cpus,
        )

    def _remove_stale_namesake(self, name: str) -> None:
        api = self._docker().api
        try:
            attrs = api.inspect_container(name)
        except docker.errors.NotFound:
            return
        if not self._is_ours(attrs.get("Config", {}).get("Labels") or {}):
            raise NameInUse(
                f"a container named {name} exists but is not managed by byoc-orch instance "
                f"'{self.instance}' — remove or rename it (docker rm {name}), or run byoc-orch "
                "with another BYOC_ORCH_INSTANCE"
            )
        log.info("removing our stale container", container=name, container_id=attrs["Id"][:12])
        api.remove_container(attrs["Id"], force=True)

    async def list_containers(self) -> list[ContainerInfo]:
        """Every container (running or not) that carries this instance's labels."""
        return await asyncio.to_thread(self._list_blocking)

    def _list_blocking(self) -> list[ContainerInfo]:
        with self._translate("list containers"):
            rows = self._docker().api.containers(all=True, filters={"label": self._label_filters()})
        return [_info_from_list_row(row) for row in rows if self._is_ours(row.get("Labels") or {})]

    async def inspect(self, container_id: str) -> ContainerInfo:
        return await asyncio.to_thread(self._inspect_blocking, container_id)

    def _inspect_blocking(self, container_id: str) -> ContainerInfo:
        return _info_from_inspect(self._inspect_ours(container_id))

    def _inspect_ours(self, container_id: str) -> dict[str, Any]:
        with self._translate(f"inspect container {container_id[:12]}"):
            try:
                attrs: dict[str, Any] = self._docker().api.inspect_container(container_id)
            except docker.errors.NotFound:
                raise ContainerNotFound(f"container {container_id[:12]} no longer exists") from None
        if not self._is_ours(attrs.get("Config", {}).get("Labels") or {}):
            raise NotOurContainer(
                f"container {container_id[:12]} ({attrs.get('Name', '?').lstrip('/')}) is not "
                f"managed by byoc-orch instance '{self.instance}'; refusing to touch it"
            )
        return attrs

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; a stopped container is fine."""
        await asyncio.to_thread(self._stop_blocking, container_id, timeout)

    def _stop_blocking(self, container_id: str, timeout: float) -> None:
        self._inspect_ours(container_id)
        with self._translate(f"stop container {container_id[:12]}"):
            self._docker().api.stop(container_id, timeout=max(0, round(timeout)))

    async def remove(self, container_id: str) -> None:
        """Force-remove one of our containers; one already gone is fine."""
        await asyncio.to_thread(self._remove_blocking, container_id)

    def _remove_blocking(self, container_id: str) -> None:
        try:
            self._inspect_ours(container_id)
        except ContainerNotFound:
            return
        with self._translate(f"remove container {container_id[:12]}"):
            try:
                self._docker().api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                return

    async def logs(self, container_id: str, tail: int = 40) -> list[str]:
        """The last `tail` lines one of our containers wrote (stdout and stderr together)."""
        return await asyncio.to_thread(self._logs_blocking, container_id, tail)

    def _logs_blocking(self, container_id: str, tail: int) -> list[str]:
        self._inspect_ours(container_id)
        with self._translate(f"read the log of container {container_id[:12]}"):
            raw = self._docker().api.logs(container_id, stdout=True, stderr=True, tail=tail)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return [line[:MAX_LOG_LINE] for line in text.splitlines()[-tail:]]

    def follow_logs(self, container_id: str, tail: int = 40) -> Iterator[str]:
        """Lines as one of our containers writes them, from its last `tail` on (blocking: for
        the `byoc-orch logs -f` command, not the daemon)."""
        self._inspect_ours(container_id)
        with self._translate(f"follow the log of container {container_id[:12]}"):
            stream = self._docker().api.logs(
                container_id, stdout=True, stderr=True, tail=tail, stream=True, follow=True
            )
            pending = b""
            for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if pending:
                yield pending.decode("utf-8", "replace")

    # -- events -------------------------------------------------------------------------------

    def events(self, *, reconnect_max_delay: float = 5.0) -> EventStream:
        """Start following container events for this instance's containers.

        Events are collected from the moment of this call, so subscribe before listing
        containers and nothing falls between the two. docker-py's stream ends silently when
        dockerd restarts or the connection drops; the stream then yields STREAM_LOST,
        reconnects with back-off asking for what it missed (`since` the last event seen) and
        yields STREAM_RESTORED, after which callers should re-list containers.
        """
        return EventStream(self._open_event_stream, reconnect_max_delay)

    def _open_event_stream(self, since: str | None) -> Any:
        # dockerd takes since as "seconds.nanoseconds", which resuming needs; the stubs say int
        return self._docker().api.events(  # type: ignore[call-overload]
            since=since,
            decode=True,
            filters={
                "type": "container",
                "label": self._label_filters(),
                "event": list(WATCHED_EVENTS),
            },
        )

    # -- helpers ------------------------------------------------------------------------------

    def _label_filters(self) -> list[str]:
        return [f"{key}={value}" for key, value in self._ownership.items()]

    def _is_ours(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self._ownership.items())

    @contextlib.contextmanager
    def _translate(
        self, doing: str, *, image: ImageRef | None = None, spec: ContainerSpec | None = None
    ) -> Any:
        """Turn docker-py and transport errors into EngineErrors that name the fix."""
        try:
            yield
        except EngineError:
            raise
        except docker.errors.APIError as exc:
            message = _short(exc)
            if image is not None:
                raise _pull_error(image, message) from None
            if spec is not None:
                raise _start_error(spec, message) from None
            raise EngineError(f"could not {doing}: {message}") from None
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
            raise EngineUnavailable(
                f"could not {doing}: the Docker engine at {self.docker_host} is unreachable "
                f"({_short(exc)}) — is dockerd running, and may this user use its socket?"
            ) from None
        except requests.exceptions.Timeout:
            raise EngineUnavailable(
                f"could not {doing}: the Docker engine at {self.docker_host} did not answer in "
                f"{self._timeout:g} s — check dockerd's health (journalctl -u docker)"
            ) from None


class EventStream:
    """An async iterator of EngineEvents fed by a thread that owns the blocking stream."""

    def __init__(self, connect: Callable[[str | None], Any], max_delay: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self._pump = _EventPump(connect=connect, emit=self._emit, max_delay=max_delay)
        threading.Thread(target=self._pump.run, name="docker-events", daemon=True).start()

    def _emit(self, event: EngineEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under a late event
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> EngineEvent:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._pump.stop()


class _EventPump:
    """Reads the blocking event stream in its own thread and reconnects when it ends."""

    def __init__(
        self,
        *,
        connect: Callable[[str | None], Any],
        emit: Callable[[EngineEvent], None],
        max_delay: float,
    ) -> None:
        self._connect = connect
        self._emit = emit
        self._max_delay = max_delay
        self._stopping = threading.Event()
        self._stream: Any = None
        self._last_nano = time.time_ns()
        self._seen_at_last_nano: set[tuple[str, str]] = set()

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()

    def run(self) -> None:
        delay = 0.05
        lost = False
        while not self._stopping.is_set():
            try:
                self._stream = self._connect(_since(self._last_nano))
                if lost:
                    self._emit(EngineEvent(STREAM_RESTORED, time_nano=time.time_ns()))
                    lost = False
                delay = 0.05
                for raw in self._stream:
                    if self._stopping.is_set():
                        return
                    event = self._accept(raw)
                    if event is not None:
                        self._emit(event)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning("docker event stream failed", error=_short(exc))
            finally:
                self._stream = None
            if self._stopping.is_set():
                return
            if not lost:
                lost = True
                log.warning("docker event stream ended; reconnecting")
                self._emit(EngineEvent(STREAM_LOST, time_nano=time.time_ns()))
            self._stopping.wait(delay)
            delay = min(delay * 2, self._max_delay)

    def _accept(self, raw: Mapping[str, Any]) -> EngineEvent | None:
        """Parse one event, dropping the duplicates a `since` replay hands back."""
        nano = int(raw.get("timeNano") or int(raw.get("time", 0)) * 1_000_000_000)
        actor = raw.get("Actor") or {}
        key = (str(actor.get("ID", "")), str(raw.get("Action", "")))
        if nano < self._last_nano or (nano == self._last_nano and key in self._seen_at_last_nano):
            return None
        if nano > self._last_nano:
            self._last_nano = nano
            self._seen_at_last_nano = set()
        self._seen_at_last_nano.add(key)
        attributes = {str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()}
        exit_code = attributes.get("exitCode")
        return EngineEvent(
            action=key[1],
            container_id=key[0] or None,
            worker_id=attributes.get(LABEL_WORKER),
            exit_code=int(exit_code) if exit_code and exit_code.lstrip("-").isdigit() else None,
            time_nano=nano,
            attributes=attributes,
        )


def _since(nano: int) -> str:
    return f"{nano // 1_000_000_000}.{nano % 1_000_000_000:09d}"


def _local_name(ref: ImageRef) -> str:
    """How the engine names the image locally: repository plus tag, or plus digest."""
    if ref.digest:
        return f"{ref.repository_ref}@{ref.digest}"
    return f"{ref.repository_ref}:{ref.tag or 'latest'}"


def _short(exc: BaseException) -> str:
    if isinstance(exc, docker.errors.APIError):
        explanation = exc.explanation
        if isinstance(explanation, bytes):
            explanation = explanation.decode(errors="replace")
        return str(explanation or exc).strip()
    return str(exc).strip() or type(exc).__name__


_NOT_FOUND = re.compile(r"manifest unknown|not found|does not exist|repository name not known")
_AUTH = re.compile(r"unauthorized|authentication required|denied|no basic auth credentials", re.I)
_UNREACHABLE = re.compile(
    r"connection refused|no such host|i/o timeout|timeout|network is unreachable|"
    r"server misbehaving|TLS handshake|EOF",
    re.I,
)


def _pull_error(ref: ImageRef, message: str) -> EngineError:
    if _AUTH.search(message):
        return RegistryAuthError(
            f"registry {ref.registry} refused to serve {ref} ({message}) — put credentials for "
            f"{ref.registry} in the Docker config.json byoc-orch reads (docker login "
            f"{ref.registry}, or BYOC_ORCH_DOCKER_CONFIG), and check the name"
        )
    if _NOT_FOUND.search(message):
        return ImageNotFound(
            f"image {ref} was not found on {ref.registry} ({message}) — check the "
            'repository and tag in the entry\'s "container" field'
        )
    if _UNREACHABLE.search(message):
        return RegistryUnreachable(
            f"registry {ref.registry} is unreachable while pulling {ref} ({message}) — check "
            "that it is up and reachable from this host; byoc-orch will retry"
        )
    return ImagePullError(f"pull of {ref} failed: {message}")


def _start_error(spec: ContainerSpec, message: str) -> EngineError:
    if "could not select device driver" in message:
        return GpuUnavailable(
            f"Docker refused GPUs for {spec.name}: {message} — this engine has no NVIDIA "
            "runtime: install the NVIDIA container toolkit (nvidia-container-toolkit) and "
            'restart dockerd, or set "gpus": "none" on the entry if it needs no GPU'
        )
    if "address already in use" in message or "port is already allocated" in message:
        return PortInUse(
            f"host port 127.0.0.1:{spec.host_port} is already in use, so {spec.name} cannot "
            f"publish it ({message}) — stop whatever holds the port (ss -ltnp 'sport = "
            f':{spec.host_port}\') or give the entry another port in its "url"'
        )
    return EngineError(f"could not start container {spec.name}: {message}")


def _host_port(ports: Any) -> int | None:
    """The host port from either the list form (containers) or the inspect form."""
    if isinstance(ports, list):
        for port in ports:
            if port.get("PublicPort"):
                return int(port["PublicPort"])
        return None
    if isinstance(ports, dict):
        for bindings in ports.values():
            for binding in bindings or ():
                if binding.get("HostPort"):
                    return int(binding["HostPort"])
    return None


def _info_from_list_row(row: Mapping[str, Any]) -> ContainerInfo:
    labels = row.get("Labels") or {}
    names = row.get("Names") or ["?"]
    return ContainerInfo(
        id=row["Id"],
        name=str(names[0]).lstrip("/"),
        worker_id=labels.get(LABEL_WORKER, ""),
        spec_hash=labels.get(LABEL_SPEC_HASH, ""),
        image=str(row.get("Image", "")),
        image_id=str(row.get("ImageID", "")),
        state=str(row.get("State", "")),
        labels=labels,
        host_port=_host_port(row.get("Ports")),
    )


def _info_from_inspect(attrs: Mapping[str, Any]) -> ContainerInfo:
    labels = attrs.get("Config", {}).get("Labels") or {}
    state = attrs.get("State") or {}
    return ContainerInfo(
        id=attrs["Id"],
        name=str(attrs.get("Name", "")).lstrip("/"),
        worker_id=labels.get(LABEL_WORKER, ""),
        spec_hash=labels.get(LABEL_SPEC_HASH, ""),
        image=str(attrs.get("Config", {}).get("Image", "")),
        image_id=str(attrs.get("Image", "")),
        state=str(state.get("Status", "")),
        labels=labels,
        host_port=_host_port((attrs.get("HostConfig") or {}).get("PortBindings")),
        exit_code=state.get("ExitCode"),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=state.get("StartedAt"),
        finished_at=state.get("FinishedAt"),
        error=str(state.get("Error") or ""),
    )


__all__ = [
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "MANAGED_BY",
    "STREAM_LOST",
    "STREAM_RESTORED",
    "ContainerInfo",
    "Engine",
    "EngineError",
    "EngineEvent",
    "EngineInfo",
    "EngineUnavailable",
    "EventStream",
    "GpuUnavailable",
    "ImageInfo",
    "ImageNotFound",
    "ImagePullError",
    "NameInUse",
    "NotOurContainer",
    "PortInUse",
    "PullPolicy",
    "PullResult",
    "RegistryAuthError",
    "RegistryUnreachable",
]
