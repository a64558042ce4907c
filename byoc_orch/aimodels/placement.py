"""Where each replica of an aiModels.json entry runs: its host port and its GPUs. Pure, no I/O.

The *pool* is the GPUs replicas may be placed on: ``BYOC_ORCH_GPUS`` when set (so an operator
can keep GPUs for go-livepeer's own AI workers), else every GPU NVML lists, else none.

Placement must be deterministic and stable, because a restart adopts a running container only
if its entry still wants exactly that container (same port, same devices):

1. An entry without replicas gets one slot, exactly today's container: index 0, the url port,
   and the entry's own GPU request (Docker picks the GPUs for "all" or a count). An explicit
   device list *claims* those GPUs.
2. Entries with a replica count, in file order, then ``"per-gpu"`` entries, in file order, take
   GPUs from the pool in pool order, skipping GPUs claimed by anyone before them. With g GPUs
   per replica and k = replicas_per_gpu, replica i gets group i // k, where group j is the j-th
   run of g free GPUs: R replicas need ceil(R / k) * g GPUs, and ``"per-gpu"`` runs
   (free GPUs // g) * k replicas. gpus ``"all"`` gives every replica every GPU (the pool's
   devices when BYOC_ORCH_GPUS is set, so reserved GPUs stay out) and claims nothing; ``"none"``
   gives none.
3. Replica i listens on host port url port + i, on loopback like every managed port.

So raising an entry's replicas keeps its existing replicas where they were, and an entry added
below moves nothing above it. What moves GPUs is a new device list anywhere in the file (lists
are claimed first), or more replicas or GPUs in an entry placed earlier (every counted entry is
placed before the "per-gpu" ones).

Once a file places replicas, device lists are exclusive claims, so two entries listing one GPU
is an error; a file without replicas keeps today's rule (allowed, with a warning that the two
containers share it). Every problem names the entry, its model_id, the field and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from byoc_orch.aimodels.devices import Devices
from byoc_orch.aimodels.entry import GpuRequest, ModelEntry, loopback_port
from byoc_orch.aimodels.packing import MIB, Need, PoolGpu, PoolLayout, PoolState, layout
from byoc_orch.aimodels.ports import (
    NO_PORTS,
    Listener,
    past_the_last_port,
    replica_port_problems,
)
from byoc_orch.aimodels.problems import ModelsFileError, Problem, problem_order
from byoc_orch.gpu import GpuInfo

__all__ = [
    "GpuPool",
    "GpuPoolError",
    "Placement",
    "ReplicaSlot",
    "plan",
    "pool_from",
]

GpuPool = tuple[str, ...]
"""Device ids replicas may be placed on (index strings such as "0", or UUIDs), in pool order."""

POOL_SETTING = "BYOC_ORCH_GPUS"
_NO_POOL = "no GPU pool to place replicas on: NVML lists no GPUs here and BYOC_ORCH_GPUS is not set"
_NO_POOL_FIX = 'run on the GPU host, set BYOC_ORCH_GPUS=0,1,…, or use "gpus": "none"'


class GpuPoolError(ModelsFileError):
    """BYOC_ORCH_GPUS names GPUs this host does not have; nothing can be placed."""


@dataclass(frozen=True, slots=True)
class ReplicaSlot:
    """One container of an entry: which replica it is, its host port and what Docker is asked
    for (placed replicas name their devices; an entry without replicas keeps its own request)."""

    index: int
    host_port: int
    gpus: GpuRequest | None

    @property
    def devices(self) -> tuple[str, ...]:
        """The device ids given, or () when Docker decides (all, a count) or there are none."""
        return self.gpus.device_ids if self.gpus is not None else ()


@dataclass(frozen=True, slots=True)
class Placement:
    """Every managed entry's slots (keyed by worker_id), or the problems that prevent them."""

    slots: dict[str, tuple[ReplicaSlot, ...]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    pool: PoolLayout = field(default_factory=PoolLayout)
    """The pool replica ranges share: its GPUs (with memory) and what static entries hold."""


# --------------------------------------------------------------------------- the pool


def pool_from(configured: tuple[str, ...] | None, inventory: Sequence[GpuInfo]) -> GpuPool | None:
    """The GPU pool: BYOC_ORCH_GPUS when set, else NVML's GPUs by index, else None (no pool).

    Members of BYOC_ORCH_GPUS are checked against the inventory when there is one; MIG ids are
    not in NVML's device list and pass unchecked. Raises GpuPoolError naming every bad member.
    """
    if configured is None:
        return tuple(str(gpu.index) for gpu in inventory) or None
    if inventory:
        problems = list(_pool_setting_problems(configured, inventory))
        if problems:
            raise GpuPoolError(problems)
    return tuple(configured)


def _pool_setting_problems(
    configured: tuple[str, ...], inventory: Sequence[GpuInfo]
) -> Iterator[Problem]:
    devices = Devices(inventory)
    listed = ", ".join(str(gpu.index) for gpu in inventory)
    at = partial(Problem, None, None, None, source=POOL_SETTING)
    seen: dict[str, str] = {}
    for member in configured:
        if not devices.on_host(member):
            yield at(
                f"GPU {member} is not on this host (NVML lists {listed})",
                "list GPU indexes or UUIDs that `nvidia-smi -L` shows",
            )
            continue
        earlier = seen.setdefault(devices.key(member), member)
        if earlier != member:
            yield at(f"{member} and {earlier} are the same GPU", f"list GPU {earlier} once")


# --------------------------------------------------------------------------- placing


@dataclass(frozen=True, slots=True)
class _Holder:
    index: int
    entry: ModelEntry
    device: str


class _Planner:
    """One placement run: claims made so far, in the order the module docstring gives."""

    def __init__(
        self,
        pool: GpuPool | None,
        *,
        source: str,
        pool_configured: bool,
        inventory: Sequence[GpuInfo],
        gpu_memory_mb: int | None = None,
    ) -> None:
        self.pool = pool
        self.gpu_memory_mb = gpu_memory_mb
        self.source = source
        self.pool_configured = pool_configured
        self.inventory = inventory
        self.devices = Devices(inventory)
        self.pool_keys = {self.devices.key(member) for member in pool or ()}
        self.holders: dict[str, _Holder] = {}
        self.result = Placement()

    def problem(self, index: int, entry: ModelEntry, name: str, message: str, fix: str) -> None:
        self.result.problems.append(Problem(index, entry.model_id, name, message, fix, self.source))

    def warning(self, index: int, entry: ModelEntry, name: str, message: str, fix: str) -> None:
        self.result.warnings.append(Problem(index, entry.model_id, name, message, fix, self.source))

    # -- entries without replicas ---------------------------------------------------------------

    def single(self, index: int, entry: ModelEntry, *, exclusive: bool) -> None:
        request = entry.gpu_request()
        self.result.slots[entry.worker_id] = (ReplicaSlot(0, _base_port(entry), request),)
        if request is None:
            return
        for device in request.device_ids:
            self._claim_listed(index, entry, device, exclusive=exclusive)
        if not request.device_ids:
            self._warn_beyond_pool(index, entry, request)

    def _claim_listed(self, index: int, entry: ModelEntry, device: str, *, exclusive: bool) -> None:
        key = self.devices.key(device)
        holder = self.holders.setdefault(key, _Holder(index, entry, device))
        if holder.index != index:
            same = "" if holder.device.lower() == device.lower() else f" as {holder.device}"
            message = (
                f"GPU {device} is also listed by entry {holder.index} ({holder.entry.model_id})"
                f"{same}"
            )
            if exclusive:
                self.problem(
                    index,
                    entry,
                    "gpus",
                    f"{message}; with replicas in the file, a device list claims its GPUs",
                    "give each entry its own GPUs; to share GPUs use one entry with replicas "
                    "and replicas_per_gpu",
                )
            else:
                self.warning(
                    index,
                    entry,
                    "gpus",
                    f"{message}; the two containers share it",
                    "check that both fit in its memory, or give each entry its own GPU",
                )
        if self.pool_configured and not self._in_pool(device):
            self.warning(
                index,
                entry,
                "gpus",
                f"GPU {device} is outside BYOC_ORCH_GPUS ({','.join(self.pool or ())})",
                "add it to BYOC_ORCH_GPUS, or list a GPU from the pool",
            )

    def _warn_beyond_pool(self, index: int, entry: ModelEntry, request: GpuRequest) -> None:
        """A single container asking for "all" or a count may get GPUs the operator kept out."""
        if not self.pool_configured or self.pool is None:
            return
        outside = [str(g.index) for g in self.inventory if not self._in_pool(str(g.index))]
        if not outside:
            return
        what = (
            "every GPU on the host"
            if request.count == -1
            else f"{request.count} GPU(s) Docker picks from the whole host"
        )
        self.warning(
            index,
            entry,
            "gpus",
            f"gives this container {what}, including {', '.join(outside)} that BYOC_ORCH_GPUS "
            "leaves out",
            f"list the GPUs it should use, e.g. [{', '.join(self.pool)}], or use replicas",
        )

    def _in_pool(self, device: str) -> bool:
        return self.devices.key(device) in self.pool_keys

    # -- entries with replicas ------------------------------------------------------------------

    def replicated(self, index: int, entry: ModelEntry) -> None:
        gpus = entry.gpus_per_replica
        if isinstance(gpus, list):
            raise ValueError(f"{entry.capability}: a device list cannot be replicated")
        if gpus == "none" or gpus == "all":
            if not isinstance(entry.replicas, int):
                raise ValueError(f'{entry.capability}: "per-gpu" needs a GPU count')
            request = None if gpus == "none" else self._everything()
            self._slots(index, entry, [request] * entry.replicas)
            return
        if self.pool is None:
            self.problem(index, entry, "replicas", _NO_POOL, _NO_POOL_FIX)
            return
        free = [d for d in self.pool if self.devices.key(d) not in self.holders]
        count = self._replica_count(index, entry, gpus, free)
        if count is None:
            return
        per_gpu = entry.replicas_per_gpu
        groups = [tuple(free[j * gpus : (j + 1) * gpus]) for j in range(math.ceil(count / per_gpu))]
        for group in groups:
            for device in group:
                self.holders[self.devices.key(device)] = _Holder(index, entry, device)
        self._slots(
            index,
            entry,
            [GpuRequest(count=None, device_ids=groups[i // per_gpu]) for i in range(count)],
        )

    # -- replica ranges -------------------------------------------------------------------------

    def layout(self) -> PoolLayout:
        """The pool as ranges find it: every member with its memory, static holders whole."""
        gpus = [PoolGpu(member, self._memory_mb(member)) for member in self.pool or ()]
        held = [
            (holder.entry.worker_id, holder.entry.worker_id, member)
            for member in self.pool or ()
            if (holder := self.holders.get(self.devices.key(member))) is not None
        ]
        return layout(gpus, held)

    def _memory_mb(self, member: str) -> int | None:
        known = self.devices.named([member])
        if known and known[0].memory_total_bytes > 0:
            return known[0].memory_total_bytes // MIB
        return self.gpu_memory_mb

    def ranged(self, index: int, entry: ModelEntry, pool: PoolState) -> None:
        """Place a range's minimum on what is left of the pool; the rest is claimed at run
        time by demand. Slots cover the minimum; ports are checked up to the maximum."""
        replica_range = entry.replica_range
        assert replica_range is not None
        need = replica_need(entry)
        if need.gpus and self.pool is None:
            self.problem(index, entry, "replicas", _NO_POOL, _NO_POOL_FIX)
            return
        if need.vram_mb is not None and not self._vram_fits(index, entry, need.vram_mb, pool):
            return
        slots = []
        for i in range(replica_range.min):
            devices = pool.claim(f"{entry.worker_id}-r{i}", entry.worker_id, need)
            if devices is None:
                self.problem(
                    index,
                    entry,
                    "replicas",
                    f"min {replica_range.min} replicas need {need.shown()} each, but only {i} "
                    f"fit in the pool ({pool.free_text()})",
                    "lower min, lower vram_mb if the model needs less, give the pool GPUs that "
                    "other entries hold, or widen BYOC_ORCH_GPUS",
                )
                return
            request = GpuRequest(count=None, device_ids=devices) if need.gpus else None
            slots.append(ReplicaSlot(i, _base_port(entry) + i, request))
        self.result.slots[entry.worker_id] = tuple(slots)

    def _vram_fits(self, index: int, entry: ModelEntry, vram_mb: int, pool: PoolState) -> bool:
        largest = pool.largest_memory_mb()
        if largest is None:
            self.problem(
                index,
                entry,
                "vram_mb",
                "the memory of the pool's GPUs is not known (NVML lists none here), so "
                "nothing can be packed by vram_mb",
                "set BYOC_ORCH_GPU_MEMORY_MB to the GPUs' memory in MiB, or remove vram_mb",
            )
            return False
        if vram_mb > largest:
            self.problem(
                index,
                entry,
                "vram_mb",
                f"{vram_mb} MiB is more than any GPU of the pool has (the largest: {largest} MiB)",
                f"lower vram_mb to at most {largest}, or use gpus 2 or more without vram_mb",
            )
            return False
        return True

    def _replica_count(
        self, index: int, entry: ModelEntry, gpus: int, free: list[str]
    ) -> int | None:
        """How many replicas fit on the free GPUs, or None (with the problem noted) if not all."""
        per_gpu = entry.replicas_per_gpu
        if isinstance(entry.replicas, int):
            needed = math.ceil(entry.replicas / per_gpu) * gpus
            if needed > len(free):
                self._too_few(index, entry, entry.replicas, gpus, needed, free)
                return None
            return entry.replicas
        count = len(free) // gpus * per_gpu
        if count == 0:
            self._none_for_per_gpu(index, entry, gpus, free)
            return None
        return count

    def _everything(self) -> GpuRequest:
        if self.pool_configured and self.pool:
            return GpuRequest(count=None, device_ids=self.pool)
        return GpuRequest(count=-1)

    def _slots(self, index: int, entry: ModelEntry, requests: list[GpuRequest | None]) -> None:
        base = _base_port(entry)
        past = past_the_last_port(base, len(requests), counted=entry.replicas != "per-gpu")
        if past is not None:
            self.problem(index, entry, "replicas", *past)
            return
        self.result.slots[entry.worker_id] = tuple(
            ReplicaSlot(i, base + i, request) for i, request in enumerate(requests)
        )

    def _too_few(
        self, index: int, entry: ModelEntry, count: int, gpus: int, needed: int, free: list[str]
    ) -> None:
        sharing = f", {entry.replicas_per_gpu} per GPU" if entry.replicas_per_gpu > 1 else ""
        fixes = ["lower replicas", "raise replicas_per_gpu (replicas sharing a GPU)"]
        if gpus > 1:
            fixes.append("lower gpus")
        if self.pool_configured:
            fixes.append("widen BYOC_ORCH_GPUS")
        self.problem(
            index,
            entry,
            "replicas",
            f"{count} replicas with {_gpu_count(gpus)} each{sharing} need {needed} GPUs, but "
            f"{self._free_text(free)}",
            ", ".join(fixes[:-1]) + f", or {fixes[-1]}",
        )

    def _none_for_per_gpu(self, index: int, entry: ModelEntry, gpus: int, free: list[str]) -> None:
        fix = "use a replica count, or lower gpus" if gpus > 1 else "use a replica count"
        if self.pool_configured:
            fix += ", or widen BYOC_ORCH_GPUS"
        self.problem(
            index,
            entry,
            "replicas",
            f'"per-gpu" places no replica: each needs {_gpu_count(gpus)}, but '
            f"{self._free_text(free)}",
            fix,
        )

    def _free_text(self, free: list[str]) -> str:
        size = len(self.pool or ())
        text = f"the pool has {len(free)} free of {size}"
        held: dict[int, tuple[ModelEntry, int]] = {}
        for member in self.pool or ():
            holder = self.holders.get(self.devices.key(member))
            if holder is not None:
                entry, n = held.get(holder.index, (holder.entry, 0))
                held[holder.index] = (entry, n + 1)
        if held:
            text += (
                " ("
                + ", ".join(
                    f"entry {i} ({entry.model_id}) holds {n}"
                    for i, (entry, n) in sorted(held.items())
                )
                + ")"
            )
        return text


def replica_need(entry: ModelEntry) -> Need:
    """What one replica of a range takes from the pool."""
    gpus = entry.gpus
    count = 0 if gpus == "none" else gpus if isinstance(gpus, int) else 1
    return Need(gpus=count, vram_mb=entry.vram_mb if count else None)


def _gpu_count(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _base_port(entry: ModelEntry) -> int:
    if entry.host_port is None:
        raise ValueError(f"{entry.capability} is not a managed entry")
    return entry.host_port


# --------------------------------------------------------------------------- ports


def _listeners(
    entries: Sequence[ModelEntry], slots: Mapping[str, tuple[ReplicaSlot, ...]]
) -> list[Listener]:
    """Every loopback port in use: each managed container's, and loopback external entries'."""
    listeners: list[Listener] = []
    for index, entry in enumerate(entries):
        if entry.managed and entry.replica_range is not None and entry.host_port is not None:
            top = entry.replica_range.max
            listeners += [
                Listener(index, entry.model_id, True, entry.host_port + i, i, top)
                for i in range(top)
            ]
        elif entry.managed:
            own = slots.get(entry.worker_id, ())
            listeners += [
                Listener(index, entry.model_id, True, slot.host_port, slot.index, len(own))
                for slot in own
            ]
        elif (port := loopback_port(entry)) is not None:
            listeners.append(Listener(index, entry.model_id, False, port))
    return listeners


# --------------------------------------------------------------------------- entry points


def plan(
    entries: Sequence[ModelEntry],
    pool: GpuPool | None,
    *,
    source: str,
    reserved_ports: Mapping[int, str] = NO_PORTS,
    pool_configured: bool = False,
    inventory: Sequence[GpuInfo] = (),
    gpu_memory_mb: int | None = None,
) -> Placement:
    """Place every managed entry of a checked file (``entries`` in file order); never raises.

    ``pool_configured`` says the pool came from BYOC_ORCH_GPUS; ``inventory`` (NVML's GPUs,
    when known) lets an index and a UUID of one GPU be recognised as the same device, and
    gives each GPU's memory (else ``gpu_memory_mb``, BYOC_ORCH_GPU_MEMORY_MB). Replica ranges
    are placed last, their minimums only, on what the static entries leave (`packing`).
    """
    planner = _Planner(
        pool,
        source=source,
        pool_configured=pool_configured,
        inventory=inventory,
        gpu_memory_mb=gpu_memory_mb,
    )
    managed = [(index, entry) for index, entry in enumerate(entries) if entry.managed]
    exclusive = any(entry.replicated for _, entry in managed)
    for index, entry in managed:
        if not entry.replicated:
            planner.single(index, entry, exclusive=exclusive)
    counted = [
        (i, e) for i, e in managed if e.replicated and e.replicas != "per-gpu" and not e.ranged
    ]
    per_gpu = [(i, e) for i, e in managed if e.replicas == "per-gpu"]
    for index, entry in counted + per_gpu:
        planner.replicated(index, entry)
    shared = planner.layout()
    state = shared.state()
    for index, entry in managed:
        if entry.ranged:
            planner.ranged(index, entry, state)
    result = planner.result
    result = replace(result, pool=shared)
    listeners = _listeners(entries, result.slots)
    result.problems.extend(replica_port_problems(listeners, reserved_ports, source))
    result.problems.sort(key=problem_order)
    result.warnings.sort(key=problem_order)
    return result
