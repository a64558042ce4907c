"""``byoc-orch validate``: check aiModels.json and say what the daemon would do with it.

Operators run it before a restart or reload, so it prints every problem at once and, for a
good file, one line per entry showing how each was understood, with where each replica runs.
Run on the GPU host, it places replicas on that host's GPUs (or BYOC_ORCH_GPUS) and warns about
`gpus` naming devices the host does not have (Docker would refuse the container). NVML is read
only when the file needs the host's GPUs: it can take a while to answer, and a file that names
none should validate the same anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TextIO

from byoc_orch.aimodels import (
    GpuRequest,
    ModelEntry,
    ModelsFile,
    ModelsFileError,
    UnreadableModelsFileError,
)
from byoc_orch.aimodels.devices import gpu_request_warnings, names_gpus
from byoc_orch.aimodels.host import HostGpus, ModelsLoader
from byoc_orch.aimodels.placement import GpuPoolError, ReplicaSlot
from byoc_orch.aimodels.ports import NO_PORTS
from byoc_orch.aimodels.wording import show_bytes
from byoc_orch.exit_codes import EXIT_INVALID, EXIT_OK
from byoc_orch.gpu import GpuInfo, read_inventory
from byoc_orch.redact import MASK, display_url

__all__ = ["describe_entry", "print_problems", "run_validate"]


def run_validate(
    path: Path,
    *,
    reserved_ports: Mapping[int, str] = NO_PORTS,
    gpu_inventory: Callable[[], Sequence[GpuInfo]] | None = read_inventory,
    gpu_pool_setting: tuple[str, ...] | None = None,
    engine_socket: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Validate ``path``; return the process exit code (0 valid, 1 not), whatever the file holds.

    ``gpu_inventory`` lists this host's GPUs (raising `GpuUnavailableError` without NVML);
    None skips reading them. ``gpu_pool_setting`` is BYOC_ORCH_GPUS (`Settings.gpu_pool_setting`).
    ``engine_socket`` is the Docker endpoint (BYOC_ORCH_DOCKER_HOST): volumes reaching its
    socket need allow_host_access (`load_models`).
    """
    to_out = _Printable(out or sys.stdout)
    to_err = _Printable(err or sys.stderr)
    host = _HostGpus(gpu_inventory)
    loader = ModelsLoader(
        path,
        reserved_ports=reserved_ports,
        pool_setting=gpu_pool_setting,
        engine_socket=engine_socket,
    )
    try:
        models = _load(loader, host)
    except GpuPoolError as exc:
        print_problems(exc, "BYOC_ORCH_GPUS does not match this host; nothing would start", to_err)
        return EXIT_INVALID
    except UnreadableModelsFileError as exc:
        print_problems(exc, None, to_err)
        return EXIT_INVALID
    except ModelsFileError as exc:
        count = len(exc.problems)
        print_problems(
            exc,
            f"{path.name} is invalid: {count} problem{'s' if count != 1 else ''}; "
            "byoc-orch will start nothing from it",
            to_err,
        )
        return EXIT_INVALID
    for index, entry in enumerate(models.entries):
        print(describe_entry(index, entry, models.replicas.get(entry.worker_id, ())), file=to_out)
    for warning in models.warnings:
        print(f"warning: {warning}", file=to_out)
    for line in _gpu_lines(models, host):
        print(line, file=to_out)
    print(_summary(models), file=to_out)
    return EXIT_OK


class _Writer(Protocol):
    def write(self, text: str, /) -> int: ...


class _Printable:
    """A text stream that writes what it cannot encode as escapes instead of failing."""

    def __init__(self, stream: _Writer) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        try:
            text.encode(encoding)
        except (UnicodeEncodeError, LookupError):
            text = text.encode("ascii", "backslashreplace").decode("ascii")
        return self.stream.write(text)


class _HostGpus:
    """NVML's inventory, read at most once and only when asked for."""

    def __init__(self, reader: Callable[[], Sequence[GpuInfo]] | None) -> None:
        self.reader = reader
        self._read: HostGpus | None = None

    def read(self) -> HostGpus:
        if self._read is None:
            self._read = HostGpus.read(self.reader)
        return self._read


def _load(loader: ModelsLoader, host: _HostGpus) -> ModelsFile:
    """The file as the daemon would load it. NVML is asked only to check BYOC_ORCH_GPUS, or
    when the file is not valid without it or names GPUs or replicas."""
    if loader.pool_setting is None and host.reader is not None:
        try:
            models = loader.load()
        except UnreadableModelsFileError:
            raise
        except ModelsFileError:
            pass
        else:
            if not any(_needs_host_gpus(entry) for entry in models.entries):
                return models
    return loader.with_gpus(host.read()).load()


def _needs_host_gpus(entry: ModelEntry) -> bool:
    return entry.managed and (entry.replicated or names_gpus(entry))


def print_problems(exc: ModelsFileError, verdict: str | None, err: _Writer | None = None) -> None:
    """Every warning and problem of a rejected aiModels.json, one per line, then the verdict
    (what was not done because of them)."""
    err = _Printable(err or sys.stderr)
    for warning in exc.warnings:
        print(f"warning: {warning}", file=err)
    for problem in exc.problems:
        print(f"error: {problem}", file=err)
    if verdict:
        print(verdict, file=err)


def _gpu_lines(models: ModelsFile, host: _HostGpus) -> list[str]:
    if host.reader is None or not any(names_gpus(entry) for entry in models.entries):
        return []
    gpus = host.read()
    if gpus.failure is not None:
        return [
            f"note: gpus: device ids and counts were not checked against this host's GPUs "
            f"({gpus.failure}; no NVIDIA driver here?) — run validate on the GPU host to check "
            "them"
        ]
    warnings = gpu_request_warnings(models.entries, gpus.inventory, models.source)
    return [f"warning: {problem}" for problem in warnings]


def describe_entry(index: int, entry: ModelEntry, slots: Sequence[ReplicaSlot] = ()) -> str:
    """One line saying how an entry was understood; a replicated one lists its replicas.
    Credentials never show: a url's ``user:password@`` is written ``***@``."""
    temperature = "warm" if entry.warm else "cold"
    head = f"entry {index} {entry.capability}"
    if not entry.managed:
        url = display_url(entry.url, mask=MASK) if entry.url is not None else None
        return f"{head}: external, {temperature}, url={url}"
    head = f"{head}: managed, {temperature}, image={entry.image}"
    if entry.url is not None and display_url(entry.url, mask=MASK) != entry.url:
        head = f"{head}, url={display_url(entry.url, mask=MASK)}"
    limits = _limits(entry)
    replica_range = entry.replica_range
    if replica_range is not None and entry.host_port is not None:
        placed = ", ".join(f"#{slot.index} gpus={_shown(slot.gpus)}" for slot in slots)
        top = entry.host_port + replica_range.max - 1
        vram = f", vram_mb={entry.vram_mb}" if entry.vram_mb is not None else ""
        return (
            f"{head}, replicas {replica_range.min}–{replica_range.max} on the pool "
            f"(ports 127.0.0.1:{entry.host_port}–{top}, headroom {entry.headroom}, "
            f"scale down after {entry.scale_down_after:g} s{vram}); min placed: {placed}{limits}"
        )
    if entry.replicated:
        replicas = ", ".join(
            f"#{slot.index} 127.0.0.1:{slot.host_port} gpus={_shown(slot.gpus)}" for slot in slots
        )
        return f"{head}, {len(slots)} replicas: {replicas}{limits}"
    return (
        f"{head}, host port {entry.host_port}→{entry.container_port}, "
        f"gpus={_shown(entry.gpu_request())}{limits}"
    )


def _limits(entry: ModelEntry) -> str:
    """The container limits an entry sets, as ", memory=8 GiB, cpus=2, cap_add=[NET_RAW]"."""
    parts = []
    if entry.memory is not None:
        parts.append(f"memory={show_bytes(entry.memory)}")
    if entry.cpus is not None:
        parts.append(f"cpus={entry.cpus:g}")
    if entry.cap_add:
        parts.append(f"cap_add=[{','.join(entry.cap_add)}]")
    return "".join(f", {part}" for part in parts)


def _shown(request: GpuRequest | None) -> str:
    if request is None:
        return "none"
    shown = request.shown
    return "[" + ",".join(shown) + "]" if isinstance(shown, list) else str(shown)


def _summary(models: ModelsFile) -> str:
    entries = models.entries
    managed = sum(entry.managed for entry in entries)
    warm = sum(entry.warm for entry in entries)
    noun = "entry" if len(entries) == 1 else "entries"
    text = (
        f"{len(entries)} {noun}: {managed} managed, {len(entries) - managed} external; {warm} warm"
    )
    if any(entry.replicated for entry in entries):
        containers = sum(len(models.replicas.get(e.worker_id, ())) for e in entries if e.managed)
        text += f"; {containers} containers"
    return text
