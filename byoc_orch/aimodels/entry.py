"""One aiModels.json entry: the model, the rules that involve more than one of its fields, and
what the rest of byoc-orch reads off it (its worker id, image, host port, GPU request).

Only valid entries can be constructed. The rules run inside the model so that building one
directly (a test, `byoc-orch export`) checks as much as loading the file does.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from byoc_orch.aimodels.fields import (
    Capacity,
    CapAdd,
    EnvMap,
    FlagMap,
    GpuSpec,
    HealthPath,
    Image,
    Memory,
    NonEmptyStr,
    PixelsPerUnit,
    Price,
    ReplicaRange,
    Replicas,
    ShmSize,
    Token,
    Url,
    Volume,
    bad_characters,
)
from byoc_orch.aimodels.host_access import HOST_PATHS_CONTEXT, HostPaths, host_access_issues
from byoc_orch.aimodels.limits import (
    DEFAULT_CONTAINER_PORT,
    DEFAULT_HEADROOM,
    DEFAULT_SCALE_DOWN_AFTER,
    DROPPED_CAPABILITIES,
    ENV_SET_BY_BYOC_ORCH,
    LOOPBACK_HOSTS,
    MAX_CAPACITY,
    MAX_CPUS,
    MAX_REPLICAS_PER_GPU,
    MAX_SCALE_DOWN_AFTER,
    MAX_STARTUP_TIMEOUT,
    MAX_VOLUMES,
    MAX_VRAM_MB,
)
from byoc_orch.aimodels.ports import past_the_last_port
from byoc_orch.aimodels.problems import Issue, invalid
from byoc_orch.aimodels.wording import render_loc
from byoc_orch.image_ref import ImageRef, parse_image_ref
from byoc_orch.offer import Offer
from byoc_orch.redact import MASK, display_url

_EXTERNAL_LOOPBACK_HOSTS = LOOPBACK_HOSTS | {"::1"}


@dataclass(frozen=True, slots=True)
class GpuRequest:
    """What to ask Docker for: ``count`` (-1 = all) or specific ``device_ids``."""

    count: int | None
    device_ids: tuple[str, ...] = ()

    @property
    def shown(self) -> str | int | list[str]:
        """As aiModels.json writes it: "all", a count, or the device list."""
        if self.device_ids:
            return list(self.device_ids)
        return "all" if self.count in (None, -1) else int(self.count or 0)


def worker_id(pipeline: str, model_id: str) -> str:
    """A stable, URL-safe id that is also a valid Docker container-name fragment.

    The readable slug can collide ("a/b" and "a-b"), so a hash of the exact pair follows it.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", f"{pipeline}-{model_id}".lower()).strip("-")
    slug = slug[:40].rstrip("-")
    digest = hashlib.sha256(f"{pipeline}/{model_id}".encode()).hexdigest()[:8]
    return f"{slug}-{digest}" if slug else digest


class ModelEntry(BaseModel):
    """One aiModels.json entry. Only valid entries can be constructed."""

    model_config = ConfigDict(
        strict=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        title="aiModels.json entry",
    )

    pipeline: NonEmptyStr = Field(
        description="go-livepeer: pipeline name, e.g. live-video-to-video. Passed to the "
        "container as PIPELINE.",
    )
    model_id: NonEmptyStr = Field(
        description="go-livepeer: model name. pipeline/model_id is the advertised capability "
        "and must be unique in the file. Passed to the container as MODEL_ID.",
    )
    url: Url | None = Field(
        default=None,
        description="go-livepeer: the worker's address. With container, it must be "
        "http://127.0.0.1:PORT (or localhost): PORT is the host port the container port is "
        "published on, on 127.0.0.1 only. Without container, byoc-orch only health-polls, "
        "advertises and proxies this address (an external worker).",
    )
    token: Token | None = Field(
        default=None,
        description="go-livepeer: secret sent to the worker as 'Authorization: Bearer'. "
        "Never logged or shown; must not be empty or whitespace.",
    )
    warm: bool = Field(
        default=False,
        description="go-livepeer: true = start it with the daemon and keep it running; false = "
        "known but not started or advertised (cold).",
    )
    capacity: Capacity = Field(
        default=1,
        ge=1,
        json_schema_extra={"maximum": MAX_CAPACITY},
        description="go-livepeer: concurrent sessions this worker takes; with replicas, per "
        f"replica (at most {MAX_CAPACITY}).",
    )
    optimization_flags: FlagMap = Field(
        default_factory=dict,
        description="go-livepeer: flags given to the container as environment variables "
        "(values are strings or booleans; booleans become 'true'/'false').",
    )
    gateway: str | None = Field(
        default=None,
        description="go-livepeer: gateway address the price applies to ('default' if unset).",
    )
    price_per_unit: Price = Field(
        default=None,
        description="go-livepeer: price per pixels_per_unit pixels, a bare JSON number "
        "(quoted values are refused by go-livepeer).",
    )
    pixels_per_unit: PixelsPerUnit = Field(
        default=None,
        description="go-livepeer: pixels per price unit, a positive integer.",
    )
    currency: str | None = Field(
        default=None,
        description="go-livepeer: currency of price_per_unit, e.g. USD (default: wei).",
    )
    container: Image | None = Field(
        default=None,
        description="Image byoc-orch pulls and runs for this entry (docker pull syntax, "
        "e.g. livepeer/comfystream:latest). Without it the entry is external.",
    )
    container_port: int = Field(
        default=DEFAULT_CONTAINER_PORT,
        ge=1,
        le=65535,
        description="Port the worker listens on inside the container.",
    )
    gpus: GpuSpec = Field(
        default="all",
        description='GPUs each container gets (each replica, with replicas): "all", a count, '
        'a list of device indexes or UUIDs (only without replicas), or "none". Default: "all" '
        "for a single container, 1 per replica with replicas. A single container's count lets "
        "Docker pick the GPUs; replicas are placed on GPUs of their own from the pool.",
    )
    replicas: Replicas = Field(
        default=1,
        description='How many containers run this entry: a count, "per-gpu" for one per '
        'GPU of the pool (BYOC_ORCH_GPUS, else every GPU NVML lists), or a range {"min": m, '
        '"max": n}: m always run, up to n follow demand on the shared pool (see headroom). '
        "Replica i listens on host port url port + i and keeps its GPUs across restarts; "
        "capacity is per replica.",
    )
    headroom: int = Field(
        default=DEFAULT_HEADROOM,
        ge=0,
        le=MAX_CAPACITY,
        description="With a replica range: free warm session slots to keep. Below it a "
        "replica is started (while max and the pool allow); with headroom plus one replica's "
        "capacity free for scale_down_after seconds, one is drained and removed.",
    )
    scale_down_after: float = Field(
        default=DEFAULT_SCALE_DOWN_AFTER,
        gt=0,
        le=MAX_SCALE_DOWN_AFTER,
        description="With a replica range: seconds a surplus replica must stay unneeded "
        "before it is drained and removed (never below min).",
    )
    vram_mb: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VRAM_MB,
        description="With a replica range: GPU memory one replica needs, in MiB. Replicas of "
        "different entries then share a GPU while their vram_mb fit its memory (NVML's total, "
        "or BYOC_ORCH_GPU_MEMORY_MB); without it each replica takes whole GPUs.",
    )
    replicas_per_gpu: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS_PER_GPU,
        description="How many replicas of this entry may share one GPU: with gpus 1 and "
        "replicas_per_gpu 2, replicas 0 and 1 share the first GPU, 2 and 3 the next. No "
        'effect without replicas, or with gpus "all" or "none".',
    )
    env: EnvMap = Field(
        default_factory=dict,
        description="Extra environment variables for the container (string values). Cannot "
        "override PIPELINE, MODEL_ID or an optimization_flags key.",
    )
    command: Annotated[list[str], Field(min_length=1)] | None = Field(
        default=None,
        description="Replaces the image's CMD. Omit to keep the image's own.",
    )
    volumes: list[Volume] = Field(
        default_factory=list,
        max_length=MAX_VOLUMES,
        description="Bind mounts, 'host_path:container_path[:ro|:rw]', both absolute. A host "
        "path that resolves to the Docker or containerd socket, a directory holding one, "
        "/proc, /sys, /dev or /, or to /etc mounted writable, needs allow_host_access.",
    )
    shm_size: ShmSize | None = Field(
        default=None,
        description="Size of /dev/shm: bytes, or a string such as '2g' or '512m' "
        "(default: Docker's 64m).",
    )
    pull: Literal["missing", "always", "never"] = Field(
        default="missing",
        description="When to pull the image: only if missing locally, on every start, or never.",
    )
    health_path: HealthPath = Field(
        default="/health",
        description='Path polled for {"status": ...}; warm when it says ok/OK/IDLE.',
    )
    stream_prefix: Literal["auto", "", "/api"] = Field(
        default="auto",
        description="Where the worker serves its stream routes: '' (/stream/start, pytrickle "
        ">= 0.1.5), '/api' (/api/stream/start, older workers), or 'auto' to detect it.",
    )
    startup_timeout: Annotated[float, Field(gt=0, le=MAX_STARTUP_TIMEOUT)] | None = Field(
        default=None,
        description="Seconds the worker may take to become healthy before the start counts "
        f"as failed, at most {MAX_STARTUP_TIMEOUT} (a week); default: the daemon's setting.",
    )
    cap_add: CapAdd = Field(
        default=(),
        description='Linux capabilities to add, e.g. ["NET_RAW"] (with or without CAP_, any '
        "case). byoc-orch drops " + ", ".join(DROPPED_CAPABILITIES) + " from Docker's "
        "default set; adding one of those back is free, any other needs allow_host_access.",
    )
    memory: Memory | None = Field(
        default=None,
        description="Memory limit of each container: bytes, or a string such as '8g' or "
        "'512m'; at least 6m (Docker's minimum). Default: no limit.",
    )
    cpus: Annotated[float, Field(gt=0, le=MAX_CPUS)] | None = Field(
        default=None,
        description=f"CPUs each container may use, e.g. 2 or 0.5 (more than 0, at most "
        f"{MAX_CPUS}). Default: no limit.",
    )
    allow_host_access: bool = Field(
        default=False,
        description="Must be true for privileged, network_mode host, pid_mode host, a "
        "capability in cap_add other than those byoc-orch drops, or a volume whose host path "
        "(after resolving symlinks) is, holds or lies inside the Docker or containerd socket "
        "or their directories, /proc, /sys, /dev or /, or is /etc or under it mounted "
        "writable: each gives the container control of the host.",
    )
    privileged: bool = Field(
        default=False, description="Run the container privileged (needs allow_host_access)."
    )
    network_mode: Literal["bridge", "host"] = Field(
        default="bridge",
        description="'host' shares the host's network (needs allow_host_access); the "
        "container_port must then equal the url's port.",
    )
    pid_mode: Literal["", "host"] = Field(
        default="", description="'host' shares the host's PID namespace (needs allow_host_access)."
    )

    @model_validator(mode="before")
    @classmethod
    def _gpus_default_per_replica(cls, data: Any) -> Any:
        """Replicas default to one GPU each; a single container keeps today's "all"."""
        if (
            isinstance(data, dict)
            and "gpus" not in data
            and data.get("container") is not None
            and _asks_for_replicas(data.get("replicas"))
        ):
            return {**data, "gpus": 1}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _carriable_text(cls, value: Any) -> Any:
        """No NUL or unpaired surrogate anywhere: a container, a path or a header can't hold one
        (`parse_models` reports each of them before the model sees the entry)."""
        for issue in bad_characters(value):
            raise invalid(issue.message, issue.fix, issue.loc)
        return value

    @model_validator(mode="after")
    def _entry_rules(self, info: ValidationInfo) -> Self:
        context = info.context if isinstance(info.context, dict) else {}
        host_paths = context.get(HOST_PATHS_CONTEXT)
        if not isinstance(host_paths, HostPaths):
            host_paths = HostPaths.for_engine(None)
        issues = _entry_issues(self, host_paths)
        if issues:
            summary = "; ".join(f"{render_loc(i.loc)}: {i.message}" for i in issues)
            raise PydanticCustomError(
                "entry_rules", "{summary}", {"summary": summary, "issues": tuple(issues)}
            )
        return self

    @property
    def managed(self) -> bool:
        """byoc-orch runs this one's container (otherwise it only reaches ``url``)."""
        return self.container is not None

    @property
    def image(self) -> ImageRef | None:
        return parse_image_ref(self.container) if self.container is not None else None

    @property
    def host_port(self) -> int | None:
        """The port of ``url`` (the scheme's default when it names none)."""
        return _url_port(urlsplit(self.url)) if self.url is not None else None

    @property
    def worker_id(self) -> str:
        return worker_id(self.pipeline, self.model_id)

    @property
    def offer(self) -> Offer:
        return Offer(self.price_per_unit, self.pixels_per_unit, self.currency, self.gateway)

    @property
    def capability(self) -> str:
        return f"{self.pipeline}/{self.model_id}"

    @property
    def replicated(self) -> bool:
        """The entry opted in to replicas: its containers are placed on the GPU pool, each on
        its own port; otherwise it is today's single container, untouched by placement."""
        return _asks_for_replicas(self.replicas)

    @property
    def ranged(self) -> bool:
        """Replicas follow demand between a min and a max on the shared GPU pool."""
        return isinstance(self.replicas, ReplicaRange)

    @property
    def replica_range(self) -> ReplicaRange | None:
        return self.replicas if isinstance(self.replicas, ReplicaRange) else None

    @property
    def gpus_per_replica(self) -> Literal["all", "none"] | int | list[int | str]:
        """What each container gets, after the default ("all" alone, 1 per replica)."""
        return self.gpus

    def gpu_request(self) -> GpuRequest | None:
        """GPUs to request from Docker for one container, or None for none at all. For a
        replicated entry a count is per replica; placement turns it into device ids."""
        if self.gpus == "none":
            return None
        if self.gpus == "all":
            return GpuRequest(count=-1)
        if isinstance(self.gpus, int):
            return GpuRequest(count=self.gpus)
        return GpuRequest(count=None, device_ids=tuple(str(device) for device in self.gpus))


def _url_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def _asks_for_replicas(value: object) -> bool:
    if value == "per-gpu" or isinstance(value, (ReplicaRange, dict)):
        return True
    return isinstance(value, int) and not isinstance(value, bool) and value > 1


def _entry_issues(entry: ModelEntry, host_paths: HostPaths) -> list[Issue]:
    """Rules that involve more than one field of an entry."""
    issues: list[Issue] = []
    if entry.container is None and entry.url is None:
        issues.append(
            Issue(
                ("container",),
                "the entry has neither container nor url, so there is nothing to run or reach",
                'add "container" (an image) and "url": "http://127.0.0.1:<port>" for byoc-orch '
                'to run it, or only "url" for a worker you run yourself',
            )
        )
    if entry.managed:
        url_issues = _managed_url_issues(entry)
        issues += url_issues
        issues += _replica_issues(entry, check_ports=not url_issues)
    issues += host_access_issues(entry, host_paths)
    issues += _env_collisions(entry)
    return issues


def _managed_url_issues(entry: ModelEntry) -> list[Issue]:
    if entry.url is None:
        return [
            Issue(
                ("url",),
                "a managed entry (one with container) needs url to choose its host port",
                'add "url": "http://127.0.0.1:<free port>", e.g. "http://127.0.0.1:8001"',
            )
        ]
    parts = urlsplit(entry.url)
    port = parts.port
    suggestion = f"http://127.0.0.1:{port or '<port>'}"
    if parts.hostname not in LOOPBACK_HOSTS:
        return [
            Issue(
                ("url",),
                f"host {parts.hostname} cannot reach a managed container: byoc-orch "
                "publishes the container port on 127.0.0.1 only",
                f'use "{suggestion}"; for a worker on another machine, remove "container" '
                "and keep url (an external entry)",
            )
        ]
    if parts.scheme != "http" or port is None or parts.path not in ("", "/") or parts.query:
        shown = json.dumps(display_url(entry.url, mask=MASK))
        return [
            Issue(
                ("url",),
                f"{shown} must be exactly http://127.0.0.1:PORT (an explicit port, plain http, "
                "no path): the port is where the container is published",
                f'use "{suggestion}"',
            )
        ]
    if entry.network_mode == "host" and entry.container_port != port:
        return [
            Issue(
                ("container_port",),
                f"with network_mode host the container listens on the host directly, so "
                f"container_port {entry.container_port} must equal the url port {port}",
                f"set container_port to {port}, or change the url port to {entry.container_port}",
            )
        ]
    return []


def _replica_issues(entry: ModelEntry, *, check_ports: bool) -> list[Issue]:
    """Replica rules that one entry decides alone; the pool and other entries are placement's."""
    if not entry.replicated:
        return []
    issues: list[Issue] = []
    gpus = entry.gpus
    if isinstance(gpus, list):
        issues.append(
            Issue(
                ("gpus",),
                f"a device list names one container's GPUs, but replicas is "
                f"{json.dumps(entry.replicas)}",
                "with replicas use a count per replica (e.g. 1), or drop replicas",
            )
        )
    if entry.replicas == "per-gpu" and gpus in ("all", "none"):
        meaning = "gives every replica every GPU" if gpus == "all" else "gives replicas no GPU"
        issues.append(
            Issue(
                ("replicas",),
                f'"per-gpu" places one replica per GPU, but gpus "{gpus}" {meaning}',
                'give each replica a GPU count (e.g. "gpus": 1, the default with replicas), or '
                'use a replica count such as "replicas": 2',
            )
        )
    issues += _range_issues(entry)
    if entry.network_mode == "host":
        issues.append(
            Issue(
                ("replicas",),
                "with network_mode host every replica would listen on the host's own port "
                f"{entry.container_port}; they cannot share it",
                'drop replicas, or use network_mode "bridge"',
            )
        )
    elif check_ports and entry.host_port is not None and entry.replicas != "per-gpu":
        count = entry.replicas.max if isinstance(entry.replicas, ReplicaRange) else entry.replicas
        assert isinstance(count, int)
        past = past_the_last_port(entry.host_port, count, counted=True)
        if past is not None:
            issues.append(Issue(("replicas",), *past))
    return issues


def _range_issues(entry: ModelEntry) -> list[Issue]:
    """What a replica range can be placed with: one GPU count (or none) per replica, and
    vram_mb only where a replica sits on one GPU it may share."""
    if not entry.ranged:
        return []
    issues: list[Issue] = []
    if entry.gpus == "all":
        issues.append(
            Issue(
                ("gpus",),
                'gpus "all" gives every replica every GPU, so a replica range has nothing to place',
                'give each replica a GPU count (e.g. "gpus": 1, the default with replicas)',
            )
        )
    if entry.replicas_per_gpu > 1:
        issues.append(
            Issue(
                ("replicas_per_gpu",),
                "a replica range shares GPUs by memory, not by a fixed count",
                'remove replicas_per_gpu and set "vram_mb" (what one replica needs), so '
                "replicas of this and other entries share a GPU while they fit",
            )
        )
    if entry.vram_mb is not None and entry.gpus != 1:
        issues.append(
            Issue(
                ("vram_mb",),
                f"vram_mb packs replicas onto one GPU each, but gpus is {json.dumps(entry.gpus)}",
                'use "gpus": 1 with vram_mb, or remove vram_mb to give each replica whole GPUs',
            )
        )
    return issues


def _env_collisions(entry: ModelEntry) -> list[Issue]:
    issues: list[Issue] = []
    for source in ("optimization_flags", "env"):
        names: dict[str, Any] = getattr(entry, source)
        for name in names:
            if name in ENV_SET_BY_BYOC_ORCH:
                issues.append(
                    Issue(
                        (source, name),
                        f"{name} is set by byoc-orch from {name.lower()}",
                        f"remove it; set the entry's {name.lower()} instead",
                    )
                )
    for name in entry.env.keys() & entry.optimization_flags.keys():
        issues.append(
            Issue(
                ("env", name),
                f"{name} is also set in optimization_flags; the container can get only one",
                "keep it in one place (optimization_flags is what go-livepeer reads too)",
            )
        )
    return issues


def loopback_port(entry: ModelEntry) -> int | None:
    """The host port an entry's worker takes on this host's loopback (every managed entry's
    url port; an external entry's only when its url is on loopback), else None."""
    if entry.url is None:
        return None
    parts = urlsplit(entry.url)
    if entry.managed or parts.hostname in _EXTERNAL_LOOPBACK_HOSTS:
        return _url_port(parts)
    return None
