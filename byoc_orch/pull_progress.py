"""Summarise Docker's pull progress stream into a few log lines.

dockerd sends several messages per layer per second; an operator wants one line every few
seconds saying how far the pull is. Pure: the caller feeds messages and a clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

_DONE = {"Pull complete", "Already exists"}
_DOWNLOADED = {"Download complete", "Verifying Checksum", "Extracting", *_DONE}


@dataclass(frozen=True)
class PullSummary:
    """One progress line's worth of facts."""

    image: str
    layers_done: int
    layers_total: int
    bytes_done: int
    bytes_total: int
    elapsed_seconds: float

    def as_log_fields(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "layers": f"{self.layers_done}/{self.layers_total}",
            "downloaded_mb": round(self.bytes_done / 1e6, 1),
            "total_mb": round(self.bytes_total / 1e6, 1),
            "elapsed_s": round(self.elapsed_seconds, 1),
        }


@dataclass
class _Layer:
    status: str = ""
    current: int = 0
    total: int = 0


@dataclass
class PullProgress:
    """Folds pull messages into per-layer state; says when a summary line is due."""

    image: str
    interval: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _layers: dict[str, _Layer] = field(default_factory=dict)
    _started: float = field(init=False)
    _last_report: float = field(init=False)

    def __post_init__(self) -> None:
        self._started = self._last_report = self.clock()

    def update(self, message: Mapping[str, Any]) -> PullSummary | None:
        """Record one stream message; return a summary when one is due, else None."""
        layer_id = message.get("id")
        status = str(message.get("status", ""))
        if layer_id and not status.startswith("Pulling from"):
            self._record(str(layer_id), status, message.get("progressDetail") or {})
        now = self.clock()
        if now - self._last_report >= self.interval:
            self._last_report = now
            return self.summary()
        return None

    def _record(self, layer_id: str, status: str, detail: Mapping[str, Any]) -> None:
        layer = self._layers.setdefault(layer_id, _Layer())
        layer.status = status
        if status == "Downloading":
            layer.current = int(detail.get("current") or 0)
            layer.total = int(detail.get("total") or layer.total)
        elif status in _DOWNLOADED and layer.total:
            layer.current = layer.total

    def summary(self) -> PullSummary:
        layers = self._layers.values()
        return PullSummary(
            image=self.image,
            layers_done=sum(1 for layer in layers if layer.status in _DONE),
            layers_total=len(self._layers),
            bytes_done=sum(layer.current for layer in layers),
            bytes_total=sum(layer.total for layer in layers),
            elapsed_seconds=self.clock() - self._started,
        )
