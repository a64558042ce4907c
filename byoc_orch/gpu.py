"""GPU inventory and Prometheus gauges from NVML (nvidia-ml-py), the signals DCGM-exporter uses.

NVML is touched only here and only through the module object handed to `GpuReader`, so tests
pass a fake and the daemon runs unchanged on hosts with no NVIDIA driver: there the inventory
is unavailable, the collector yields nothing, and one log line says why. Scrapes run in a
thread (`Metrics.render` is called through `asyncio.to_thread`), so NVML calls are serialised
by a lock and never run on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "GpuCollector",
    "GpuInfo",
    "GpuReader",
    "GpuUnavailableError",
    "read_inventory",
]

log = structlog.get_logger("byoc_orch.gpu")

LABELS = ("gpu", "uuid", "name")
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_TEMPERATURE_GPU = 0


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML lists it; `index` is what `--gpus device=N` and aiModels.json name."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int

    def described(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "name": self.name}


class GpuUnavailableError(Exception):
    """NVML cannot be used on this host (no driver, no library, init failed)."""


class GpuReader:
    """Thread-safe access to NVML: initialised once on first use, shut down by `close()`.

    A failed initialisation is remembered rather than retried on every scrape: the usual
    causes (no driver, driver/library mismatch after an upgrade) need a restart to clear.
    """

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml: Any = nvml
        self._lock = threading.Lock()
        self._initialised = False
        self._failure: str | None = None
        self._closed = False
        self._warned: set[tuple[str, int]] = set()

    @property
    def failure(self) -> str | None:
        """Why NVML is unavailable, once a use has found out; None while it works."""
        return self._failure

    def inventory(self) -> list[GpuInfo]:
        """Every GPU NVML sees, by index; raises `GpuUnavailableError` when NVML cannot be used."""
        with self._lock:
            nvml = self._ensure_init()
            try:
                return [self._device(nvml, index)[1] for index in range(nvml.nvmlDeviceGetCount())]
            except nvml.NVMLError as exc:
                raise GpuUnavailableError(f"NVML cannot list the GPUs: {exc}") from exc

    def read(self) -> list[tuple[GpuInfo, dict[str, float]]]:
        """Each GPU with the gauges it could report; a gauge it cannot report is left out."""
        with self._lock:
            nvml = self._ensure_init()
            try:
                count = nvml.nvmlDeviceGetCount()
            except nvml.NVMLError as exc:
                raise GpuUnavailableError(f"NVML cannot count the GPUs: {exc}") from exc
            readings = []
            for index in range(count):
                try:
                    handle, info, memory = self._device(nvml, index)
                except nvml.NVMLError as exc:
                    self._warn_once(("device", index), "GPU cannot be read", index, exc)
                    continue
                readings.append((info, self._gauges(nvml, handle, info, memory)))
            return readings

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:
                    log.debug("NVML shutdown failed", error=str(exc))
            self._initialised = False
            self._closed = True

    def _ensure_init(self) -> Any:
        if self._initialised:
            return self._nvml
        if self._closed:
            raise GpuUnavailableError("the GPU reader is closed")
        if self._failure is not None:
            raise GpuUnavailableError(self._failure)
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except Exception as exc:
            self._failure = f"NVML unavailable: {exc or type(exc).__name__}"
            raise GpuUnavailableError(self._failure) from exc
        self._initialised = True
        return self._nvml

    def _device(self, nvml: Any, index: int) -> tuple[Any, GpuInfo, Any]:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        info = GpuInfo(
            index=index,
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            name=_text(nvml.nvmlDeviceGetName(handle)),
            memory_total_bytes=int(memory.total),
        )
        return handle, info, memory

    def _gauges(self, nvml: Any, handle: Any, info: GpuInfo, memory: Any) -> dict[str, float]:
        temperature_sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU)
        reads: dict[str, Callable[[], float]] = {
            "utilization_ratio": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
            "memory_used_bytes": lambda: memory.used,
            "memory_total_bytes": lambda: memory.total,
            "temperature_celsius": lambda: nvml.nvmlDeviceGetTemperature(
                handle, temperature_sensor
            ),
            "power_watts": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        }
        values: dict[str, float] = {}
        for gauge, read in reads.items():
            try:
                values[gauge] = float(read())
            except nvml.NVMLError as exc:
                if not _not_supported(nvml, exc):
                    self._warn_once((gauge, info.index), "GPU gauge unreadable", info.index, exc)
        return values

    def _warn_once(self, key: tuple[str, int], message: str, index: int, exc: Exception) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, gpu=index, what=key[0], error=str(exc))


class GpuCollector(Collector):
    """Per-GPU gauges for `Metrics.register`, read from NVML at scrape time.

    Never raises into the scrape: NVML trouble means no GPU series and one log line.
    """

    GAUGES = (
        ("utilization_ratio", "GPU utilisation over the driver's last sample period (0..1)."),
        ("memory_used_bytes", "GPU memory in use."),
        ("memory_total_bytes", "GPU memory installed."),
        ("temperature_celsius", "GPU core temperature."),
        ("power_watts", "GPU board power draw."),
    )

    def __init__(self, reader: GpuReader) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._reported = False

    def describe(self) -> list[GaugeMetricFamily]:
        """Names without samples, so registering never touches NVML."""
        return [self._family(gauge, text) for gauge, text in self.GAUGES]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            readings = self._reader.read()
        except GpuUnavailableError as exc:
            self._report_once("no GPU metrics", reason=str(exc))
            return
        except Exception as exc:
            self._report_once("no GPU metrics: reading NVML failed", reason=repr(exc))
            return
        if not readings:
            self._report_once("no GPU metrics", reason="NVML lists no GPUs")
            return
        for gauge, text in self.GAUGES:
            family = self._family(gauge, text)
            for info, values in readings:
                if gauge in values:
                    family.add_metric([str(info.index), info.uuid, info.name], values[gauge])
            if family.samples:
                yield family

    def _family(self, gauge: str, text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"byoc_orch_gpu_{gauge}", text, labels=LABELS)

    def _report_once(self, message: str, *, reason: str) -> None:
        with self._lock:
            if self._reported:
                return
            self._reported = True
        log.warning(message, reason=reason)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _not_supported(nvml: Any, exc: Exception) -> bool:
    cls = getattr(nvml, "NVMLError_NotSupported", None)
    if isinstance(cls, type) and isinstance(exc, cls):
        return True
    return getattr(exc, "value", None) == getattr(
        nvml, "NVML_ERROR_NOT_SUPPORTED", _NVML_ERROR_NOT_SUPPORTED
    )


def read_inventory(nvml: Any | None = None) -> list[GpuInfo]:
    """One-shot inventory for commands that do not keep NVML open (`byoc-orch validate`)."""
    reader = GpuReader(nvml)
    try:
        return reader.inventory()
    finally:
        reader.close()
