"""GPU inventory and gauges, through a fake NVML module at the library boundary."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from byoc_orch.gpu import (
    GpuCollector,
    GpuInfo,
    GpuReader,
    GpuUnavailableError,
    read_inventory,
)
from byoc_orch.logging import configure_logging
from byoc_orch.metrics import Metrics
from tests.test_aimodels_devices import entry

GIB = 1024**3


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(3)


@dataclass
class FakeGpu:
    uuid: str
    name: str | bytes
    total: int
    used: int
    utilization: int | None = 50
    temperature: int | None = 60
    power_mw: int | None = 250_000


@dataclass
class FakeNvml:
    """The slice of pynvml that byoc_orch.gpu uses; `None` readings raise NotSupported."""

    gpus: list[FakeGpu] = field(default_factory=list)
    init_error: Exception | None = None
    broken: set[tuple[int, str]] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_NOT_SUPPORTED = 3

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return self.gpus[handle].uuid

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        return self.gpus[handle].name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        gpu = self.gpus[handle]
        return SimpleNamespace(total=gpu.total, used=gpu.used, free=gpu.total - gpu.used)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._reading(handle, "utilization"), memory=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._reading(handle, "temperature")

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return self._reading(handle, "power_mw")

    def _reading(self, handle: int, name: str) -> Any:
        if (handle, name) in self.broken:
            raise NVMLError(15)  # NVML_ERROR_GPU_IS_LOST
        value = getattr(self.gpus[handle], name)
        if value is None:
            raise NVMLError_NotSupported()
        return value


def two_gpus() -> FakeNvml:
    return FakeNvml(
        gpus=[
            FakeGpu("GPU-aaaa", "NVIDIA H100 80GB HBM3", 80 * GIB, 10 * GIB, 37, 41, 312_500),
            FakeGpu("GPU-bbbb", b"NVIDIA L4", 24 * GIB, 0, 0, 30, 16_000),
        ]
    )


def scrape(nvml: Any) -> dict[str, dict[tuple[str, str, str], float]]:
    """Registered on a real Metrics and parsed back the way Prometheus reads it."""
    metrics = Metrics()
    metrics.register(GpuCollector(GpuReader(nvml)))
    text = metrics.render().decode()
    found: dict[str, dict[tuple[str, str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("byoc_orch_gpu_"):
            for sample in family.samples:
                key = (sample.labels["gpu"], sample.labels["uuid"], sample.labels["name"])
                found.setdefault(sample.name, {})[key] = sample.value
    return found


@pytest.fixture
def gpu_log(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[str]]]:
    """JSON logging into capsys; call it once the test runs (capsys swaps stderr per phase)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configured = False

    def lines() -> list[str]:
        nonlocal configured
        if not configured:
            configure_logging("info", "json")
            configured = True
            return []
        return capsys.readouterr().err.splitlines()

    yield lines
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_gauges_per_gpu_in_base_units() -> None:
    found = scrape(two_gpus())
    h100 = ("0", "GPU-aaaa", "NVIDIA H100 80GB HBM3")
    l4 = ("1", "GPU-bbbb", "NVIDIA L4")
    assert found == {
        "byoc_orch_gpu_utilization_ratio": {h100: 0.37, l4: 0.0},
        "byoc_orch_gpu_memory_used_bytes": {h100: 10 * GIB, l4: 0.0},
        "byoc_orch_gpu_memory_total_bytes": {h100: 80 * GIB, l4: 24 * GIB},
        "byoc_orch_gpu_temperature_celsius": {h100: 41.0, l4: 30.0},
        "byoc_orch_gpu_power_watts": {h100: 312.5, l4: 16.0},
    }


def test_unsupported_reading_is_omitted_for_that_gpu_only() -> None:
    nvml = two_gpus()
    nvml.gpus[1].power_mw = None
    nvml.gpus[1].temperature = None
    found = scrape(nvml)
    assert set(found["byoc_orch_gpu_power_watts"]) == {("0", "GPU-aaaa", "NVIDIA H100 80GB HBM3")}
    assert len(found["byoc_orch_gpu_temperature_celsius"]) == 1
    assert len(found["byoc_orch_gpu_utilization_ratio"]) == 2


def test_a_gauge_no_gpu_reports_is_left_out_entirely() -> None:
    nvml = two_gpus()
    for gpu in nvml.gpus:
        gpu.power_mw = None
    metrics = Metrics()
    metrics.register(GpuCollector(GpuReader(nvml)))
    text = metrics.render().decode()
    assert "byoc_orch_gpu_power_watts" not in text
    assert "byoc_orch_gpu_temperature_celsius{" in text


def test_other_reading_errors_are_omitted_and_logged_once(
    gpu_log: Callable[[], list[str]],
) -> None:
    gpu_log()
    nvml = two_gpus()
    nvml.broken.add((0, "utilization"))
    metrics = Metrics()
    metrics.register(GpuCollector(GpuReader(nvml)))
    for _ in range(3):
        families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
        utilization = families["byoc_orch_gpu_utilization_ratio"].samples
        assert [sample.labels["gpu"] for sample in utilization] == ["1"]
    lines = [line for line in gpu_log() if "unreadable" in line]
    assert len(lines) == 1
    assert '"gpu": 0' in lines[0]
    assert '"what": "utilization_ratio"' in lines[0]


def test_init_failure_means_no_series_and_one_log_line(
    gpu_log: Callable[[], list[str]],
) -> None:
    gpu_log()
    nvml = FakeNvml(init_error=NVMLError(12))
    metrics = Metrics()
    metrics.register(GpuCollector(GpuReader(nvml)))
    for _ in range(3):
        text = metrics.render().decode()
        assert "byoc_orch_gpu_" not in text
        assert "byoc_orch_build_info" in text
    assert nvml.calls == ["init"], "a failed init is not retried on every scrape"
    lines = gpu_log()
    assert len(lines) == 1
    assert "no GPU metrics" in lines[0]
    assert "NVML error 12" in lines[0]


def test_no_gpus_means_no_series_and_one_log_line(gpu_log: Callable[[], list[str]]) -> None:
    gpu_log()
    metrics = Metrics()
    metrics.register(GpuCollector(GpuReader(FakeNvml())))
    assert "byoc_orch_gpu_" not in metrics.render().decode()
    assert "byoc_orch_gpu_" not in metrics.render().decode()
    (line,) = gpu_log()
    assert "NVML lists no GPUs" in line


def test_collector_survives_unexpected_errors() -> None:
    nvml = two_gpus()
    nvml.nvmlDeviceGetCount = lambda: 1 // 0  # type: ignore[method-assign]
    metrics = Metrics()
    metrics.register(GpuCollector(GpuReader(nvml)))
    assert "byoc_orch_gpu_" not in metrics.render().decode()


def test_registering_does_not_touch_nvml() -> None:
    nvml = two_gpus()
    Metrics().register(GpuCollector(GpuReader(nvml)))
    assert nvml.calls == []


def test_real_pynvml_degrades_cleanly_without_a_driver() -> None:
    """This machine has no NVIDIA driver: the real library must fail softly, not crash."""
    reader = GpuReader()
    try:
        inventory = reader.inventory()
    except GpuUnavailableError as exc:
        assert "NVML" in str(exc)
        assert reader.failure is not None
        metrics = Metrics()
        metrics.register(GpuCollector(reader))
        assert "byoc_orch_gpu_" not in metrics.render().decode()
    else:
        assert all(isinstance(gpu, GpuInfo) for gpu in inventory)
    finally:
        reader.close()


def test_inventory_lists_each_gpu_and_decodes_bytes() -> None:
    assert read_inventory(two_gpus()) == [
        GpuInfo(0, "GPU-aaaa", "NVIDIA H100 80GB HBM3", 80 * GIB),
        GpuInfo(1, "GPU-bbbb", "NVIDIA L4", 24 * GIB),
    ]


def test_init_once_and_shutdown_on_close() -> None:
    nvml = two_gpus()
    reader = GpuReader(nvml)
    reader.inventory()
    reader.read()
    reader.inventory()
    assert nvml.calls == ["init"]
    reader.close()
    assert nvml.calls == ["init", "shutdown"]
    with pytest.raises(GpuUnavailableError):
        reader.inventory()
    reader.close()
    assert nvml.calls == ["init", "shutdown"]


def test_concurrent_scrapes_initialise_once() -> None:
    nvml = two_gpus()
    reader = GpuReader(nvml)
    results: list[int] = []
    barrier = threading.Barrier(8)

    def scrape_once() -> None:
        barrier.wait()
        results.append(len(reader.read()))

    threads = [threading.Thread(target=scrape_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [2] * 8
    assert nvml.calls == ["init"]


async def test_the_daemon_serves_gpu_gauges_inventory_and_assignments() -> None:
    import httpx

    from byoc_orch.aimodels import parse_models
    from byoc_orch.aimodels.host import HostGpus, ModelsLoader
    from byoc_orch.api import create_app
    from byoc_orch.daemon import Daemon
    from byoc_orch.settings import Settings

    external = '[{"pipeline": "p", "model_id": "ext", "url": "http://127.0.0.1:9"}]'
    reader = GpuReader(two_gpus())
    settings = Settings()
    loader = ModelsLoader.from_settings(settings, HostGpus.read(reader.inventory))
    daemon = Daemon(settings, parse_models(external, source="t"), gpu_reader=reader, loader=loader)
    await daemon.start()
    try:
        transport = httpx.ASGITransport(app=create_app(daemon))
        async with httpx.AsyncClient(transport=transport, base_url="http://byoc") as client:
            gpus = (await client.get("/gpus")).json()
            assert [g["index"] for g in gpus] == [0, 1]
            metrics = (await client.get("/metrics")).text
            assert 'byoc_orch_gpu_memory_total_bytes{gpu="1"' in metrics
            assert (await client.get("/workers")).json()[0]["gpu_devices"] is None
        assert daemon.gpu_devices(entry(gpus=[1])) == [
            {"index": 1, "uuid": gpus[1]["uuid"], "name": gpus[1]["name"]}
        ]
        assert [g["index"] for g in daemon.gpu_devices(entry(gpus="all")) or []] == [0, 1]
    finally:
        await daemon.stop()
