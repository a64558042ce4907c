"""Loading aiModels.json: read it safely, check every entry and the entries together, then place
the replicas; every problem is reported at once, or the file is a `ModelsFile`.

Loading is total: whatever the file holds (a FIFO, 20 MiB, nesting a thousand deep, a
5,000-digit number, NUL bytes, unpaired surrogates), `load_models` and `parse_models` return or
raise ModelsFileError, within the MAX_* bounds, and no message carries a NUL, a token or a
url's password.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from byoc_orch.aimodels.checks import duplicate_capabilities, port_conflicts
from byoc_orch.aimodels.entry import ModelEntry
from byoc_orch.aimodels.entry_checks import check_entry
from byoc_orch.aimodels.host_access import HOST_PATHS_CONTEXT, HostPaths
from byoc_orch.aimodels.json_text import decode
from byoc_orch.aimodels.placement import GpuPool, ReplicaSlot, plan
from byoc_orch.aimodels.ports import NO_PORTS
from byoc_orch.aimodels.problems import ModelsFileError, Problem, problem_order
from byoc_orch.aimodels.reading import read_text
from byoc_orch.gpu import GpuInfo

if TYPE_CHECKING:
    from typing_extensions import Unpack


@dataclass(frozen=True, slots=True)
class ModelsFile:
    """A valid aiModels.json: its entries in file order, anything worth a warning, and where
    each managed entry's containers run (``replicas``, by worker_id: one slot per container)."""

    entries: list[ModelEntry]
    warnings: list[Problem] = field(default_factory=list)
    source: str = "aiModels.json"
    replicas: dict[str, tuple[ReplicaSlot, ...]] = field(default_factory=dict)


class HostFacts(TypedDict, total=False):
    """What `parse_models` knows of this host, besides the text (see there)."""

    reserved_ports: Mapping[int, str]
    gpu_pool: GpuPool | None
    pool_configured: bool
    gpu_inventory: Sequence[GpuInfo]
    engine_socket: str | None


def load_models(path: Path, **host: Unpack[HostFacts]) -> ModelsFile:
    """Read and check aiModels.json and place its replicas; raise ModelsFileError listing every
    problem, and nothing else whatever the file holds. Only a regular file of at most
    MAX_FILE_BYTES is read (a FIFO, device, socket or directory is refused without opening it
    for a blocking read). `host` as for `parse_models`."""
    source = str(path)
    return parse_models(read_text(path, source), source=source, **host)


def parse_models(
    text: str,
    *,
    source: str,
    reserved_ports: Mapping[int, str] = NO_PORTS,
    gpu_pool: GpuPool | None = None,
    pool_configured: bool = False,
    gpu_inventory: Sequence[GpuInfo] = (),
    engine_socket: str | None = None,
) -> ModelsFile:
    """Check aiModels.json text, then place its replicas; raise ModelsFileError listing every
    problem, and nothing else whatever the text holds.

    ``gpu_pool`` is the GPUs replicas may use (`placement.pool_from`); ``pool_configured`` says
    it came from BYOC_ORCH_GPUS; ``gpu_inventory`` (NVML's GPUs, when known) matches a GPU's
    index with its UUID. Entries without replicas need none of them.

    ``engine_socket`` is the Docker engine's unix socket (a path, or BYOC_ORCH_DOCKER_HOST's
    ``unix://`` URL; other endpoints are ignored). Volumes whose host path resolves to it, to
    the default sockets (/var/run/docker.sock, /run/docker.sock) or to a directory holding one
    need allow_host_access, as do /proc, /sys, /dev, containerd's directory, / and a writable
    /etc; host paths are resolved on this host (symlinks, '..', '//').
    """
    raw_entries = decode(text, source)
    context = {HOST_PATHS_CONTEXT: HostPaths.for_engine(engine_socket)}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    valid: list[tuple[int, ModelEntry]] = []
    for index, raw in enumerate(raw_entries):
        entry, entry_problems, entry_warnings = check_entry(index, raw, context)
        problems += entry_problems
        warnings += entry_warnings
        if entry is not None:
            valid.append((index, entry))
    problems += duplicate_capabilities(valid)
    port_problems, port_warnings = port_conflicts(valid, reserved_ports)
    problems += port_problems
    warnings += port_warnings
    problems.sort(key=problem_order)
    warnings.sort(key=problem_order)
    if problems:
        raise ModelsFileError(problems, warnings)
    entries = [entry for _, entry in valid]
    placed = plan(
        entries,
        gpu_pool,
        source=source,
        reserved_ports=reserved_ports,
        pool_configured=pool_configured,
        inventory=gpu_inventory,
    )
    warnings = sorted(warnings + placed.warnings, key=problem_order)
    if placed.problems:
        raise ModelsFileError(placed.problems, warnings)
    return ModelsFile(entries=entries, warnings=warnings, source=source, replicas=placed.slots)
