"""``byoc-orch validate``: check aiModels.json and say what the daemon would do with it.

Operators run it before a restart or reload, so it prints every problem at once and, for a
good file, one line per entry showing how each was understood. Run on the GPU host, it also
warns about `gpus` naming devices that host does not have (Docker would refuse the container).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TextIO

from byoc_orch.aimodels import (
    ModelEntry,
    ModelsFileError,
    UnreadableModelsFileError,
    load_models,
)
from byoc_orch.exit_codes import EXIT_INVALID, EXIT_OK
from byoc_orch.gpu import (
    GpuInfo,
    GpuUnavailableError,
    gpu_request_warnings,
    names_gpus,
    read_inventory,
)

__all__ = ["describe_entry", "print_problems", "run_validate"]

_NO_PORTS: Mapping[int, str] = MappingProxyType({})


def run_validate(
    path: Path,
    *,
    reserved_ports: Mapping[int, str] = _NO_PORTS,
    gpu_inventory: Callable[[], Sequence[GpuInfo]] | None = read_inventory,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Validate ``path``; return the process exit code (0 valid, 1 not).

    ``gpu_inventory`` lists this host's GPUs (raising `GpuUnavailableError` without NVML);
    None skips the GPU check.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        models = load_models(path, reserved_ports=reserved_ports)
    except UnreadableModelsFileError as exc:
        print_problems(exc, None, err)
        return EXIT_INVALID
    except ModelsFileError as exc:
        count = len(exc.problems)
        print_problems(
            exc,
            f"{path.name} is invalid: {count} problem{'s' if count != 1 else ''}; "
            "byoc-orch will start nothing from it",
            err,
        )
        return EXIT_INVALID
    for index, entry in enumerate(models.entries):
        print(describe_entry(index, entry), file=out)
    for warning in models.warnings:
        print(f"warning: {warning}", file=out)
    for line in _gpu_lines(models.entries, gpu_inventory, models.source):
        print(line, file=out)
    print(_summary(models.entries), file=out)
    return EXIT_OK


def print_problems(exc: ModelsFileError, verdict: str | None, err: TextIO | None = None) -> None:
    """Every warning and problem of a rejected aiModels.json, one per line, then the verdict
    (what was not done because of them)."""
    err = err or sys.stderr
    for warning in exc.warnings:
        print(f"warning: {warning}", file=err)
    for problem in exc.problems:
        print(f"error: {problem}", file=err)
    if verdict:
        print(verdict, file=err)


def _gpu_lines(
    entries: list[ModelEntry],
    gpu_inventory: Callable[[], Sequence[GpuInfo]] | None,
    source: str,
) -> list[str]:
    if gpu_inventory is None or not any(names_gpus(entry) for entry in entries):
        return []
    try:
        inventory = gpu_inventory()
    except GpuUnavailableError as exc:
        return [
            f"note: gpus: device ids and counts were not checked against this host's GPUs "
            f"({exc}; no NVIDIA driver here?) — run validate on the GPU host to check them"
        ]
    return [f"warning: {problem}" for problem in gpu_request_warnings(entries, inventory, source)]


def describe_entry(index: int, entry: ModelEntry) -> str:
    """One line saying how an entry was understood."""
    temperature = "warm" if entry.warm else "cold"
    head = f"entry {index} {entry.capability}"
    if not entry.managed:
        return f"{head}: external, {temperature}, url={entry.url}"
    return (
        f"{head}: managed, {temperature}, image={entry.image}, "
        f"host port {entry.host_port}→{entry.container_port}, gpus={_gpus(entry)}"
    )


def _gpus(entry: ModelEntry) -> str:
    request = entry.gpu_request()
    if request is None:
        return "none"
    shown = request.shown
    return "[" + ",".join(shown) + "]" if isinstance(shown, list) else str(shown)


def _summary(entries: list[ModelEntry]) -> str:
    managed = sum(entry.managed for entry in entries)
    warm = sum(entry.warm for entry in entries)
    noun = "entry" if len(entries) == 1 else "entries"
    return (
        f"{len(entries)} {noun}: {managed} managed, {len(entries) - managed} external; {warm} warm"
    )
