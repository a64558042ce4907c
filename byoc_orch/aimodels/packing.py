"""The shared GPU pool as replica ranges see it: each GPU's memory and who holds what on it.
Pure, no I/O; the same rules serve `validate` (do the minimums fit?) and the running daemon
(where does the next replica go?), so what validate accepts is what start-up places.

A replica needs either whole GPUs (``gpus`` N, no ``vram_mb``: N GPUs nobody else holds
anything on) or ``vram_mb`` on one GPU, shared with other entries' replicas while the sum of
their ``vram_mb`` fits the GPU's memory (NVML's total, else BYOC_ORCH_GPU_MEMORY_MB). A GPU
whose memory is unknown takes only whole-GPU replicas. Replicas with ``gpus: "none"`` need no
GPU and always fit. GPUs held by entries placed statically (a replica count, ``"per-gpu"``, a
device list) are held whole before any range is placed.

Where several GPUs fit, a shared replica goes to the one it fills most (best fit, then pool
order), so small replicas gather on a few GPUs and whole ones stay free for whole-GPU replicas;
whole-GPU replicas take free GPUs in pool order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PoolGpu:
    """One GPU of the pool: its device id (as the pool names it) and its memory, when known."""

    device: str
    memory_mb: int | None


@dataclass(frozen=True, slots=True)
class Need:
    """What one replica takes: ``gpus`` whole GPUs, or ``vram_mb`` of one GPU (gpus is then
    1); ``gpus`` 0 is no GPU at all."""

    gpus: int = 1
    vram_mb: int | None = None

    def shown(self) -> str:
        if self.gpus == 0:
            return "no GPU"
        if self.vram_mb is not None:
            return f"{self.vram_mb} MiB of one GPU"
        return "1 whole GPU" if self.gpus == 1 else f"{self.gpus} whole GPUs"


@dataclass(frozen=True, slots=True)
class Claim:
    """What ``holder`` (a replica's worker id) holds on ``device``: ``vram_mb``, or all of it."""

    holder: str
    entry_id: str
    device: str
    vram_mb: int | None


@dataclass(frozen=True, slots=True)
class PoolLayout:
    """The pool before any range is placed: its GPUs and what static entries hold whole."""

    gpus: tuple[PoolGpu, ...] = ()
    claims: tuple[Claim, ...] = ()

    def state(self) -> PoolState:
        pool = PoolState(self.gpus)
        for claim in self.claims:
            pool.add(claim)
        return pool


@dataclass
class PoolState:
    """Who holds what on each GPU of the pool; claims are made and released by holder."""

    gpus: tuple[PoolGpu, ...]
    _claims: dict[str, list[Claim]] = field(default_factory=dict)

    def copy(self) -> PoolState:
        return PoolState(self.gpus, {k: list(v) for k, v in self._claims.items()})

    def add(self, claim: Claim) -> None:
        self._claims.setdefault(claim.holder, []).append(claim)

    def on(self, device: str) -> list[Claim]:
        return [c for claims in self._claims.values() for c in claims if c.device == device]

    def holders(self) -> set[str]:
        return set(self._claims)

    def devices_of(self, holder: str) -> tuple[str, ...]:
        return tuple(c.device for c in self._claims.get(holder, ()))

    def used_mb(self, gpu: PoolGpu) -> int | None:
        """MiB held on ``gpu``; None when someone holds all of it."""
        claims = self.on(gpu.device)
        if any(c.vram_mb is None for c in claims):
            return None
        return sum(c.vram_mb or 0 for c in claims)

    def free_mb(self, gpu: PoolGpu) -> int:
        used = self.used_mb(gpu)
        if used is None or gpu.memory_mb is None:
            return 0
        return max(gpu.memory_mb - used, 0)

    def _fits_on(self, gpu: PoolGpu, need: Need) -> bool:
        if need.vram_mb is None:
            return not self.on(gpu.device)
        return gpu.memory_mb is not None and self.free_mb(gpu) >= need.vram_mb

    def where(self, need: Need) -> tuple[str, ...] | None:
        """The devices a replica needing ``need`` would get now, or None if it fits nowhere."""
        if need.gpus == 0:
            return ()
        if need.vram_mb is None:
            free = [g.device for g in self.gpus if not self.on(g.device)]
            return tuple(free[: need.gpus]) if len(free) >= need.gpus else None
        fitting = [g for g in self.gpus if self._fits_on(g, need)]
        if not fitting:
            return None
        best = min(fitting, key=lambda g: self.free_mb(g) - (need.vram_mb or 0))
        return (best.device,)

    def fits_on(self, devices: Sequence[str], need: Need) -> bool:
        """Whether a replica needing ``need`` fits on exactly ``devices`` (adopting one)."""
        by_device = {g.device: g for g in self.gpus}
        if len(devices) != need.gpus or any(d not in by_device for d in devices):
            return False
        return all(self._fits_on(by_device[d], need) for d in devices)

    def claim(
        self, holder: str, entry_id: str, need: Need, devices: Sequence[str] | None = None
    ) -> tuple[str, ...] | None:
        """Hold room for ``holder`` (on ``devices`` when given, else where it fits best); the
        devices held, or None (and nothing held) when it does not fit."""
        if devices is None:
            chosen = self.where(need)
        else:
            chosen = tuple(devices) if self.fits_on(devices, need) else None
        if chosen is None:
            return None
        for device in chosen:
            self.add(Claim(holder, entry_id, device, need.vram_mb))
        return chosen

    def release(self, holder: str) -> None:
        self._claims.pop(holder, None)

    def free_gpus(self) -> int:
        return sum(1 for g in self.gpus if not self.on(g.device))

    def describe(self) -> list[dict[str, object]]:
        """Each GPU: its memory, what is held on it and by whom (for /entries and status)."""
        return [
            {
                "device": g.device,
                "memory_mb": g.memory_mb,
                "used_mb": self.used_mb(g),
                "holders": sorted(c.holder for c in self.on(g.device)),
            }
            for g in self.gpus
        ]

    def largest_memory_mb(self) -> int | None:
        known = [g.memory_mb for g in self.gpus if g.memory_mb is not None]
        return max(known) if known else None

    def free_text(self) -> str:
        """What is free, for a refusal: 'GPU 0: 4000 of 24000 MiB free, GPU 1: held whole'."""
        parts = []
        for g in self.gpus:
            used = self.used_mb(g)
            if used is None:
                parts.append(f"GPU {g.device}: held whole")
            elif g.memory_mb is None:
                parts.append(f"GPU {g.device}: {'free' if not used else 'shared'}, memory unknown")
            else:
                parts.append(f"GPU {g.device}: {g.memory_mb - used} of {g.memory_mb} MiB free")
        return ", ".join(parts) or "the pool is empty"


def layout(gpus: Iterable[PoolGpu], held: Iterable[tuple[str, str, str]]) -> PoolLayout:
    """A layout from the pool's GPUs and (holder, entry id, device) held whole."""
    pool = tuple(gpus)
    members = {g.device for g in pool}
    claims = tuple(
        Claim(holder, entry_id, device, None)
        for holder, entry_id, device in held
        if device in members
    )
    return PoolLayout(pool, claims)
