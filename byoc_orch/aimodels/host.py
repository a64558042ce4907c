"""aiModels.json as placed on this host: the one loader that `run`, `reload`, `validate` and
`export live-runners` share.

Modelled on uvicorn's ``Config.load()``: what the settings and the host decide (the reserved
ports, the engine socket, the GPU pool from BYOC_ORCH_GPUS or NVML's inventory) is derived once,
when the loader is made, from an inventory read once; `ModelsLoader.load` then only reads the
file. The daemon is handed the loader its start-up used, so NVML is not asked again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from byoc_orch.aimodels.load import ModelsFile, load_models
from byoc_orch.aimodels.placement import GpuPool, GpuPoolError, pool_from
from byoc_orch.aimodels.ports import NO_PORTS
from byoc_orch.aimodels.problems import Problem
from byoc_orch.gpu import GpuInfo, GpuUnavailableError
from byoc_orch.settings import Settings, reserved_ports

__all__ = ["NO_GPUS", "HostGpus", "ModelsLoader"]


@dataclass(frozen=True, slots=True)
class HostGpus:
    """This host's GPUs as NVML listed them, once; empty (with ``failure`` saying why, when NVML
    was asked) on a host without a driver or with BYOC_ORCH_GPU_METRICS=false."""

    inventory: tuple[GpuInfo, ...] = ()
    failure: str | None = None

    @classmethod
    def read(cls, reader: Callable[[], Sequence[GpuInfo]] | None) -> HostGpus:
        """Ask ``reader`` (NVML's inventory) once; None asks nothing."""
        if reader is None:
            return cls()
        try:
            return cls(tuple(reader()))
        except GpuUnavailableError as exc:
            return cls(failure=str(exc))


NO_GPUS = HostGpus()


class ModelsLoader:
    """Loads aiModels.json from ``path`` checked and with its replicas placed on this host."""

    def __init__(
        self,
        path: Path,
        *,
        reserved_ports: Mapping[int, str] = NO_PORTS,
        pool_setting: tuple[str, ...] | None = None,
        engine_socket: str | None = None,
        gpus: HostGpus = NO_GPUS,
        gpu_memory_mb: int | None = None,
    ) -> None:
        """``reserved_ports`` are byoc-orch's own; ``pool_setting`` is BYOC_ORCH_GPUS;
        ``engine_socket`` is the Docker endpoint, whose socket volumes may not reach without
        allow_host_access (see `parse_models`)."""
        self.path = path
        self.reserved_ports: Mapping[int, str] = MappingProxyType(dict(reserved_ports))
        self.pool_setting = pool_setting
        self.engine_socket = engine_socket
        self.gpus = gpus
        self.gpu_memory_mb = gpu_memory_mb
        self._pool: GpuPool | None = None
        self._pool_problems: tuple[Problem, ...] = ()
        try:
            self._pool = pool_from(pool_setting, gpus.inventory)
        except GpuPoolError as exc:
            self._pool_problems = tuple(exc.problems)

    @classmethod
    def from_settings(cls, settings: Settings, gpus: HostGpus = NO_GPUS) -> ModelsLoader:
        return cls(
            settings.models_path,
            reserved_ports=reserved_ports(settings),
            pool_setting=settings.gpu_pool_setting,
            engine_socket=settings.docker_host,
            gpus=gpus,
            gpu_memory_mb=settings.gpu_memory_mb,
        )

    def with_gpus(self, gpus: HostGpus) -> ModelsLoader:
        """This loader on another reading of the host's GPUs."""
        return ModelsLoader(
            self.path,
            reserved_ports=self.reserved_ports,
            pool_setting=self.pool_setting,
            engine_socket=self.engine_socket,
            gpus=gpus,
            gpu_memory_mb=self.gpu_memory_mb,
        )

    def load(self) -> ModelsFile:
        """The file checked and placed; raises ModelsFileError listing every problem (a
        GpuPoolError, before reading the file, when BYOC_ORCH_GPUS names GPUs NVML lacks)."""
        if self._pool_problems:
            raise GpuPoolError(list(self._pool_problems))
        return load_models(
            self.path,
            reserved_ports=self.reserved_ports,
            gpu_pool=self._pool,
            pool_configured=self.pool_setting is not None,
            gpu_inventory=self.gpus.inventory,
            engine_socket=self.engine_socket,
            gpu_memory_mb=self.gpu_memory_mb,
        )
