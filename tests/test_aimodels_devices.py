"""Which host GPU a device id names (decided once, for placement, the pool setting, validate's
warnings and the GPUs a worker is shown with), and what GPU requests ask of this host."""

from __future__ import annotations

from typing import Any

from byoc_orch.aimodels import GpuRequest, ModelEntry
from byoc_orch.aimodels.devices import Devices, gpu_request_warnings, gpus_given, names_gpus
from byoc_orch.gpu import GpuInfo

GIB = 1024**3


def entry(**fields: Any) -> ModelEntry:
    base = {"pipeline": "p", "model_id": "m", "container": "busybox", "url": "http://127.0.0.1:1"}
    return ModelEntry.model_validate({**base, **fields})


def external(**fields: Any) -> ModelEntry:
    base = {"pipeline": "p", "model_id": "ext", "url": "http://10.0.0.5:1"}
    return ModelEntry.model_validate({**base, **fields})


INVENTORY = [GpuInfo(0, "GPU-aaaa", "H100", 80 * GIB), GpuInfo(1, "GPU-bbbb", "L4", 24 * GIB)]


def test_request_warnings_name_missing_devices_and_excess_counts() -> None:
    entries = [
        entry(gpus=[0, "gpu-BBBB"]),
        entry(model_id="two", gpus=[2, "GPU-cccc", "MIG-1234", "0:1"]),
        entry(model_id="many", gpus=3),
        entry(model_id="ok", gpus=2),
        entry(model_id="all"),
        external(gpus=[7]),
    ]
    assert [str(p) for p in gpu_request_warnings(entries, INVENTORY)] == [
        "entry 1 (two): gpus: device 2 is not on this host (GPU indexes here: 0, 1) — use an "
        "index or UUID that `nvidia-smi -L` lists",
        "entry 1 (two): gpus: device GPU-cccc is not on this host (GPU indexes here: 0, 1) — "
        "use an index or UUID that `nvidia-smi -L` lists",
        'entry 2 (many): gpus: asks for 3 GPUs but this host has 2 — lower the count, or use "all"',
    ]


def test_names_gpus_only_for_managed_entries_naming_devices_or_counts() -> None:
    assert names_gpus(entry(gpus=[0]))
    assert names_gpus(entry(gpus=1))
    assert not names_gpus(entry())
    assert not names_gpus(entry(gpus="none"))
    assert not names_gpus(external(gpus=[0]))


def test_an_index_and_a_uuid_of_one_gpu_are_one_device() -> None:
    devices = Devices(INVENTORY)
    assert devices.key("1") == devices.key("GPU-BBBB") == devices.key("gpu-bbbb") == "1"
    assert devices.key("GPU-x") == "gpu-x"
    assert devices.known("gpu-AAAA")
    assert not devices.known("2")


def test_mig_devices_are_on_the_host_unchecked() -> None:
    devices = Devices(INVENTORY)
    assert devices.on_host("MIG-1234")
    assert devices.on_host("0:1")
    assert not devices.on_host("GPU-cccc")


def test_gpus_given_by_index_or_uuid_in_inventory_order() -> None:
    request = GpuRequest(count=None, device_ids=("gpu-BBBB", "0", "7"))
    assert gpus_given(request, INVENTORY) == INVENTORY
    assert gpus_given(GpuRequest(count=-1), INVENTORY) == INVENTORY
    assert gpus_given(GpuRequest(count=1), INVENTORY) is None
    assert gpus_given(request, []) is None
