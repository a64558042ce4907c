"""Which host GPU a device id names, and what aiModels.json's GPU requests ask of this host.

Pure: the inventory is NVML's, read once by whoever loads the file. A GPU may be written as its
index or its UUID (any case); when NVML said which is which, both name one device. MIG devices
(``MIG-…`` UUIDs, ``0:1`` indexes) are not in NVML's device list, so they pass as written.
"""

from __future__ import annotations

from collections.abc import Sequence

from byoc_orch.aimodels.entry import GpuRequest, ModelEntry
from byoc_orch.aimodels.problems import Problem
from byoc_orch.gpu import GpuInfo


def is_mig(device: str) -> bool:
    return device.upper().startswith("MIG-") or ":" in device


class Devices:
    """This host's GPUs by every id that names them; ids NVML does not know compare as written."""

    def __init__(self, inventory: Sequence[GpuInfo]) -> None:
        self.inventory = inventory
        self._keys: dict[str, str] = {}
        for gpu in inventory:
            self._keys[str(gpu.index)] = str(gpu.index)
            self._keys[gpu.uuid.lower()] = str(gpu.index)

    def key(self, device: str) -> str:
        """One name per GPU: its index when NVML knows the id, else the id itself."""
        return self._keys.get(device.lower(), device.lower())

    def known(self, device: str) -> bool:
        return device.lower() in self._keys

    def on_host(self, device: str) -> bool:
        """Whether ``device`` may be given here: NVML lists it, or it is a MIG device."""
        return self.known(device) or is_mig(device)

    def named(self, device_ids: Sequence[str]) -> list[GpuInfo]:
        """The GPUs of the inventory that ``device_ids`` name, in inventory order."""
        keys = {self.key(device) for device in device_ids}
        return [gpu for gpu in self.inventory if str(gpu.index) in keys]


def gpu_request_warnings(
    entries: Sequence[ModelEntry], inventory: Sequence[GpuInfo], source: str | None = None
) -> list[Problem]:
    """Entries asking for GPUs this host does not have; Docker would refuse to start them."""
    devices = Devices(inventory)
    listed = ", ".join(str(gpu.index) for gpu in inventory) or "none"
    problems = []
    for index, entry in enumerate(entries):
        request = entry.gpu_request() if entry.managed else None
        if request is None:
            continue
        if request.count is not None and request.count > len(inventory):
            problems.append(
                Problem(
                    index,
                    entry.model_id,
                    "gpus",
                    f"asks for {request.count} GPUs but this host has {len(inventory)}",
                    'lower the count, or use "all"',
                    source,
                )
            )
        for device in request.device_ids:
            if devices.on_host(device):
                continue
            problems.append(
                Problem(
                    index,
                    entry.model_id,
                    "gpus",
                    f"device {device} is not on this host (GPU indexes here: {listed})",
                    "use an index or UUID that `nvidia-smi -L` lists",
                    source,
                )
            )
    return problems


def gpus_given(request: GpuRequest, inventory: Sequence[GpuInfo]) -> list[GpuInfo] | None:
    """The host GPUs a request names, when that can be known (listed devices, or all of an
    inventory); None for a bare count, which Docker resolves itself, or with no inventory."""
    if not inventory:
        return None
    if request.device_ids:
        return Devices(inventory).named(request.device_ids)
    if request.count == -1:
        return list(inventory)
    return None


def names_gpus(entry: ModelEntry) -> bool:
    """Whether an entry asks for particular GPUs or a number of them (not just "all"/"none")."""
    request = entry.gpu_request() if entry.managed else None
    return request is not None and (bool(request.device_ids) or (request.count or 0) > 0)
