"""What container each replica of an aiModels.json entry asks for, independent of how Docker is
called.

The spec hash covers exactly the fields that shape the container, so a daemon restart can tell
"this running container is what the entry wants" (adopt it) from "the entry changed" (replace
it); price, capacity or token edits never restart a warm worker. A replica's index, host port and
GPUs are part of its spec, so every replica of an entry is adopted as itself. An entry that does
not use replicas keeps the id, name, labels and hash it had before replicas existed, so
upgrading byoc-orch never restarts its container.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from byoc_orch.image_ref import ImageRef

if TYPE_CHECKING:
    from byoc_orch.aimodels import GpuRequest, ModelEntry

LABEL_MANAGED_BY = "byoc-orch.managed-by"
LABEL_INSTANCE = "byoc-orch.instance"
LABEL_WORKER = "byoc-orch.worker-id"
LABEL_PIPELINE = "byoc-orch.pipeline"
LABEL_MODEL_ID = "byoc-orch.model-id"
LABEL_SPEC_HASH = "byoc-orch.spec-hash"
LABEL_ENTRY = "byoc-orch.entry-id"
LABEL_REPLICA = "byoc-orch.replica"
MANAGED_BY = "byoc-orch"
SPEC_VERSION = "1"


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
    """Where one replica runs: placement.ReplicaSlot, or the entry's own url and gpus."""

    @property
    def index(self) -> int: ...
    @property
    def host_port(self) -> int: ...
    @property
    def gpus(self) -> GpuRequest | None: ...


@dataclass(frozen=True)
class EntrySlot:
    """The single slot of an entry without placement: its url port and its own gpus."""

    index: int
    host_port: int
    gpus: GpuRequest | None


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
        slot = EntrySlot(0, entry.host_port, entry.gpu_request())
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
        spec_hash=digest,
    )
