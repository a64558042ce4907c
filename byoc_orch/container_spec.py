"""What container each replica of an aiModels.json entry asks for, independent of how Docker is
called.

The spec hash covers exactly the fields that shape the container, so a daemon restart can tell
"this running container is what the entry wants" (adopt it) from "the entry changed" (replace
it); price, capacity or token edits never restart a warm worker. A replica's index, host port and
GPUs are part of its spec, so every replica of an entry is adopted as itself. An entry that does
not use replicas keeps the id, name, labels and hash it had before replicas existed, so
upgrading byoc-orch never restarts its container.

Every container is also contained, whatever its entry says: it may not gain privileges through
setuid binaries (`no-new-privileges`), runs without the Docker default capabilities a worker has
no use for (DROPPED_CAPABILITIES; an entry's `cap_add` gives them back), may run at most
PIDS_LIMIT processes, and keeps at most LOG_OPTIONS' worth of json-file logs. These defaults are
not part of the spec hash, so a container an older byoc-orch created is still adopted as it is
(and gets them when it is next recreated). An entry's own `cap_add`, `memory` and `cpus` are
part of the hash, but only when set, so entries that do not use them keep their hash too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from byoc_orch.aimodels import DROPPED_CAPABILITIES, GpuRequest, ModelEntry
from byoc_orch.aimodels.placement import ReplicaSlot
from byoc_orch.image_ref import ImageRef

LABEL_MANAGED_BY = "byoc-orch.managed-by"
LABEL_INSTANCE = "byoc-orch.instance"
LABEL_WORKER = "byoc-orch.worker-id"
LABEL_PIPELINE = "byoc-orch.pipeline"
LABEL_MODEL_ID = "byoc-orch.model-id"
LABEL_SPEC_HASH = "byoc-orch.spec-hash"
LABEL_ENTRY = "byoc-orch.entry-id"
LABEL_REPLICA = "byoc-orch.replica"
LABEL_GPUS = "byoc-orch.gpus"
"""A ranged replica's devices (comma-separated), so a restart adopts it onto the GPUs it had."""
MANAGED_BY = "byoc-orch"
SPEC_VERSION = "1"

# Always on, and not in the spec hash (see the module's docstring).
SECURITY_OPT = ("no-new-privileges:true",)
PIDS_LIMIT = 4096
LOG_DRIVER = "json-file"
LOG_OPTIONS: Mapping[str, str] = MappingProxyType({"max-size": "20m", "max-file": "5"})


def ownership_labels(instance: str) -> dict[str, str]:
    """The labels every container of this daemon instance carries, used to filter by."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: instance}


def container_name(instance: str, worker_id: str) -> str:
    return f"byoc-orch-{instance}-{worker_id}"


def replica_id(entry: ModelEntry, index: int) -> str:
    """One replica's id: the entry's own id for an entry without replicas (as before replicas
    existed), else the entry's id and `-r<index>`; URL- and container-name-safe either way."""
    return f"{entry.worker_id}-r{index}" if entry.replicated else entry.worker_id


class Slot(Protocol):
    """Where one replica runs: its index, host port and GPUs (a placement.ReplicaSlot)."""

    @property
    def index(self) -> int: ...
    @property
    def host_port(self) -> int: ...
    @property
    def gpus(self) -> GpuRequest | None: ...


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one worker's container."""

    name: str
    worker_id: str
    replica: int
    image: ImageRef
    host_port: int
    container_port: int
    env: Mapping[str, str]
    labels: Mapping[str, str]
    gpus: GpuRequest | None
    command: tuple[str, ...] | None = None
    volumes: tuple[str, ...] = ()
    shm_size: int | str | None = None
    privileged: bool = False
    network_mode: str = "bridge"
    pid_mode: str = ""
    security_opt: tuple[str, ...] = SECURITY_OPT
    cap_drop: tuple[str, ...] = DROPPED_CAPABILITIES
    cap_add: tuple[str, ...] = ()
    pids_limit: int | None = PIDS_LIMIT
    log_driver: str = LOG_DRIVER
    log_options: Mapping[str, str] = field(default_factory=lambda: LOG_OPTIONS)
    memory: int | None = None  # bytes; swap is limited to the same, so the container has none
    nano_cpus: int | None = None  # CPUs in units of 10^-9
    spec_hash: str = field(default="")


def container_env(entry: ModelEntry) -> dict[str, str]:
    """PIPELINE and MODEL_ID, then optimization_flags (as go-livepeer passes them), then env."""
    env = {"PIPELINE": entry.pipeline, "MODEL_ID": entry.model_id}
    env.update({key: _env_value(value) for key, value in entry.optimization_flags.items()})
    env.update(entry.env)
    return env


def _env_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def spec_hash(fields: Mapping[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def build_container_spec(
    entry: ModelEntry, instance: str, slot: Slot | None = None
) -> ContainerSpec:
    """The container one replica of a managed entry wants (the entry's only one when `slot` is
    None); the caller has checked `entry.managed`."""
    if entry.image is None or entry.host_port is None:
        raise ValueError(f"{entry.capability} is not a managed entry")
    if slot is None:
        slot = ReplicaSlot(0, entry.host_port, entry.gpu_request())
    gpus = slot.gpus
    worker = replica_id(entry, slot.index)
    shaping: dict[str, Any] = {
        "version": SPEC_VERSION,
        "pipeline": entry.pipeline,
        "model_id": entry.model_id,
        "image": entry.image.canonical,
        "host_port": slot.host_port,
        "container_port": entry.container_port,
        "env": container_env(entry),
        "gpus": None if gpus is None else [gpus.count, list(gpus.device_ids)],
        "command": entry.command,
        "volumes": list(entry.volumes),
        "shm_size": entry.shm_size,
        "privileged": entry.privileged,
        "network_mode": entry.network_mode,
        "pid_mode": entry.pid_mode,
    }
    if entry.replicated:
        shaping["replica"] = slot.index
    cap_add = tuple(entry.cap_add)
    # Never 0 for a tiny `cpus`: to Docker, NanoCpus 0 means no limit at all.
    nano_cpus = None if entry.cpus is None else max(1, round(entry.cpus * 1e9))
    # Only when set, so an entry that does not use them keeps the hash it had before them.
    if cap_add:
        shaping["cap_add"] = sorted(cap_add)
    if entry.memory is not None:
        shaping["memory"] = entry.memory
    if nano_cpus is not None:
        shaping["nano_cpus"] = nano_cpus
    digest = spec_hash(shaping)
    labels = {
        **ownership_labels(instance),
        LABEL_WORKER: worker,
        LABEL_ENTRY: entry.worker_id,
        LABEL_REPLICA: str(slot.index),
        LABEL_PIPELINE: entry.pipeline,
        LABEL_MODEL_ID: entry.model_id,
        LABEL_SPEC_HASH: digest,
    }
    if entry.ranged:
        labels[LABEL_GPUS] = ",".join(gpus.device_ids) if gpus is not None else ""
    return ContainerSpec(
        name=container_name(instance, worker),
        worker_id=worker,
        replica=slot.index,
        image=entry.image,
        host_port=slot.host_port,
        container_port=entry.container_port,
        env=shaping["env"],
        labels=labels,
        gpus=gpus,
        command=tuple(entry.command) if entry.command is not None else None,
        volumes=tuple(entry.volumes),
        shm_size=entry.shm_size,
        privileged=entry.privileged,
        network_mode=entry.network_mode,
        pid_mode=entry.pid_mode,
        cap_drop=dropped_capabilities(cap_add),
        cap_add=cap_add,
        memory=entry.memory,
        nano_cpus=nano_cpus,
        spec_hash=digest,
    )


def dropped_capabilities(cap_add: tuple[str, ...]) -> tuple[str, ...]:
    """DROPPED_CAPABILITIES less those the entry adds back (all of them for "ALL")."""
    if "ALL" in cap_add:
        return ()
    return tuple(name for name in DROPPED_CAPABILITIES if name not in cap_add)
