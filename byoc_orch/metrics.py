"""Every Prometheus metric byoc-orch exports, in one registry per daemon.

Names follow Prometheus conventions: `byoc_orch_` prefix, base units (seconds, bytes, ratios),
`_total` counters, `_seconds` histograms. Labels are few and bounded: an entry is named by
`pipeline` and `model_id` (an aiModels.json capability is unique), one of its containers by those
and its `replica` index (bounded by the entry's replica limit); never by session or container id.
Series for known entries and replicas are created up front so they read 0, not absent.

Beside the `byoc_orch_*` families the registry carries prometheus_client's standard `process_*`
(CPU, resident memory, open file descriptors against their limit, start time) and `python_*`
(interpreter, garbage collector) collectors, which the default registry would have had. No
`*_created` samples: they double the series count of every counter and histogram and no
dashboard here reads them; prometheus_client's switch for them is process-wide.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Sequence
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.registry import Collector

from byoc_orch import __version__
from byoc_orch.health import ProbeFailure
from byoc_orch.sessions import EndReason
from byoc_orch.worker_state import State

WORKER_STATES = tuple(str(state) for state in State)
PROBE_FAILURE_REASONS = tuple(str(failure) for failure in ProbeFailure)
SESSION_END_REASONS = tuple(str(reason) for reason in EndReason)
START_REFUSALS = ("not_warm", "full", "no_gpu")
EXTERNAL_REFUSALS = ("not_warm", "full")
"""An external entry has no GPU pool: its series are not made for `no_gpu` (1,024 entries)."""
SCALE_ACTIONS = ("up", "reclaim", "down", "no_gpu")
SCALE_REASONS = ("below_min", "headroom", "idle", "above_max")
LIVE_RUNNER_WHERE = ("both", "orchestrator_only", "byoc_orch_only")
PROXY_ROUTES = ("start", "stop", "params", "status", "passthrough")
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)


class GpuLike(Protocol):
    """What `set_worker_gpus` reads from a GPU (byoc_orch.gpu.GpuInfo has both)."""

    @property
    def index(self) -> int: ...

    @property
    def uuid(self) -> str: ...


class Metrics:
    """The daemon's metrics; tests read them back through `sample()`."""

    def __init__(self) -> None:
        # Process-wide in prometheus_client, read when samples are collected: calling it here
        # (idempotent) covers every registry this process renders, however it was imported.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # The GPUs each replica was given, as (index, uuid) label pairs, so that a new set or
        # the replica's removal drops exactly the series it had.
        self._worker_gpus: dict[tuple[str, str, str], tuple[tuple[str, str], ...]] = {}
        entry = ("pipeline", "model_id")
        worker = (*entry, "replica")
        self.build_info = Info("byoc_orch_build", "byoc-orch version and Python.", registry=r)
        self.build_info.info(
            {"version": __version__, "python": platform.python_version()},
        )
        self.worker_state = Gauge(
            "byoc_orch_worker_state",
            "1 for the state each worker is in, 0 for the others.",
            (*worker, "state"),
            registry=r,
        )
        self.capabilities_warm = Gauge(
            "byoc_orch_capabilities_warm",
            "Capabilities currently advertised (warm workers).",
            registry=r,
        )
        self.worker_capacity = Gauge(
            "byoc_orch_worker_capacity_sessions",
            "Concurrent sessions each worker (replica) is configured to serve.",
            worker,
            registry=r,
        )
        self.capability_capacity = Gauge(
            "byoc_orch_capability_capacity_sessions",
            "Sessions an entry's capability offers now: its warm, undrained replicas' capacity.",
            entry,
            registry=r,
        )
        self.entry_replicas = Gauge(
            "byoc_orch_entry_replicas",
            "Replicas each entry asks for now (desired): its count, or where a replica range "
            "has scaled to.",
            entry,
            registry=r,
        )
        self.entry_replicas_running = Gauge(
            "byoc_orch_entry_replicas_running",
            "Replicas of each entry with a container (starting, warm, or being drained away).",
            entry,
            registry=r,
        )
        self.scale_events = Counter(
            "byoc_orch_scale_events_total",
            "Decisions on replica ranges, by action (up, reclaim, down, no_gpu) and reason "
            "(below_min, headroom, idle, above_max).",
            (*entry, "action", "reason"),
            registry=r,
        )
        self.entry_cold_start = Gauge(
            "byoc_orch_entry_cold_start_seconds",
            "Running median of each entry's container start to warm (its last launches).",
            entry,
            registry=r,
        )
        self.probe_duration = Histogram(
            "byoc_orch_health_probe_duration_seconds",
            "Latency of /health probes, answered or not.",
            worker,
            buckets=_FAST,
            registry=r,
        )
        self.probe_failures = Counter(
            "byoc_orch_health_probe_failures_total",
            "Failed /health probes by reason.",
            (*worker, "reason"),
            registry=r,
        )
        self.container_restarts = Counter(
            "byoc_orch_container_restarts_total",
            "Worker containers relaunched after a crash, an ERROR or a long unhealthy spell.",
            worker,
            registry=r,
        )
        self.time_to_warm = Histogram(
            "byoc_orch_time_to_warm_seconds",
            "From launching (or relaunching) a worker until its first healthy probe.",
            worker,
            buckets=_SLOW,
            registry=r,
        )
        self.image_pulls = Counter(
            "byoc_orch_image_pulls_total",
            "Image pulls by result: pulled, shared (joined a pull in flight), present (no pull "
            "needed), failed.",
            ("result",),
            registry=r,
        )
        self.image_pull_duration = Histogram(
            "byoc_orch_image_pull_duration_seconds",
            "Duration of image pulls that reached the registry.",
            buckets=_SLOW,
            registry=r,
        )
        self.engine_up = Gauge(
            "byoc_orch_docker_engine_up",
            "1 while the Docker engine answers, 0 while it does not (its event stream is lost).",
            registry=r,
        )
        self.event_stream_reconnects = Counter(
            "byoc_orch_docker_event_stream_reconnects_total",
            "Times the Docker event stream was lost and re-established.",
            registry=r,
        )
        self.sessions_active = Gauge(
            "byoc_orch_sessions_active",
            "Sessions currently running on each worker.",
            worker,
            registry=r,
        )
        self.worker_gpu_info = Gauge(
            "byoc_orch_worker_gpu_info",
            "1 for each GPU a worker (replica) was given; join on gpu/uuid with the GPU gauges.",
            (*worker, "gpu", "uuid"),
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "byoc_orch_requests_in_flight",
            "Pass-through (batch) requests each worker is serving now; each holds a slot.",
            worker,
            registry=r,
        )
        self.requests_refused = Counter(
            "byoc_orch_requests_refused_total",
            "Pass-through requests refused by byoc-orch itself (503) before reaching a worker.",
            (*entry, "reason"),
            registry=r,
        )
        self.sessions_started = Counter(
            "byoc_orch_sessions_started_total",
            "Sessions the worker accepted.",
            entry,
            registry=r,
        )
        self.sessions_ended = Counter(
            "byoc_orch_sessions_ended_total",
            "Sessions ended, by reason.",
            (*entry, "reason"),
            registry=r,
        )
        self.orchestrator_releases = Counter(
            "byoc_orch_orchestrator_releases_total",
            "Sessions byoc-orch released at the orchestrator's Live Runner registry (they ended "
            "on byoc-orch's side), by the session's end reason and how the release ended "
            "(released, already_gone, refused, gave_up).",
            (*entry, "reason", "result"),
            registry=r,
        )
        self.live_runner_sessions = Gauge(
            "byoc_orch_live_runner_sessions",
            "Live Runner sessions as of each heartbeat answer, by where they are known: both "
            "(the orchestrator lists it and a worker runs it), orchestrator_only (reserved but "
            "not started here, or lost), byoc_orch_only (run here, released there: being "
            "stopped).",
            (*entry, "where"),
            registry=r,
        )
        self.session_starts_refused = Counter(
            "byoc_orch_session_starts_refused_total",
            "Session starts refused by byoc-orch itself (503) before reaching the worker.",
            (*entry, "reason"),
            registry=r,
        )
        self.proxy_duration = Histogram(
            "byoc_orch_proxy_request_duration_seconds",
            "Proxied calls to workers, by route and status class.",
            ("route", "status_class"),
            buckets=_FAST,
            registry=r,
        )
        self.advertiser_calls = Counter(
            "byoc_orch_advertiser_calls_total",
            "Calls to go-livepeer by advertiser, call and result.",
            ("advertiser", "call", "result"),
            registry=r,
        )
        self.config_reloads = Counter(
            "byoc_orch_config_reloads_total",
            "aiModels.json reloads by result (applied, rejected).",
            ("result",),
            registry=r,
        )
        self.config_loaded_timestamp = Gauge(
            "byoc_orch_config_loaded_timestamp_seconds",
            "Modification time of the aiModels.json currently applied.",
            registry=r,
        )
        self.config_last_reload_timestamp = Gauge(
            "byoc_orch_config_last_reload_timestamp_seconds",
            "When the running configuration was last applied (start-up or reload).",
            registry=r,
        )
        for result in ("pulled", "shared", "present", "failed"):
            self.image_pulls.labels(result)
        for result in ("applied", "rejected"):
            self.config_reloads.labels(result)
        for route in PROXY_ROUTES:
            for status_class in STATUS_CLASSES:
                self.proxy_duration.labels(route, status_class)

    def add_entry(
        self, pipeline: str, model_id: str, replicas: int, *, managed: bool = True
    ) -> None:
        """Create an entry's series at zero so dashboards see it before anything happens."""
        self.entry_replicas.labels(pipeline, model_id).set(replicas)
        self.capability_capacity.labels(pipeline, model_id)
        self.sessions_started.labels(pipeline, model_id)
        if managed:
            self.entry_replicas_running.labels(pipeline, model_id)
        for reason in SESSION_END_REASONS:
            self.sessions_ended.labels(pipeline, model_id, reason)
        for reason in START_REFUSALS if managed else EXTERNAL_REFUSALS:
            self.session_starts_refused.labels(pipeline, model_id, reason)
            self.requests_refused.labels(pipeline, model_id, reason)
        for where in LIVE_RUNNER_WHERE:
            self.live_runner_sessions.labels(pipeline, model_id, where)

    def remove_entry(self, pipeline: str, model_id: str) -> None:
        """Drop a removed entry's series, so a reload leaves no ghosts behind."""
        for metric, extra in (
            (self.sessions_ended, SESSION_END_REASONS),
            (self.session_starts_refused, START_REFUSALS),
            (self.requests_refused, START_REFUSALS),
            (self.live_runner_sessions, LIVE_RUNNER_WHERE),
        ):
            for value in extra:
                _discard(metric, pipeline, model_id, value)
        for each in (
            self.entry_replicas,
            self.capability_capacity,
            self.sessions_started,
            self.entry_replicas_running,
            self.entry_cold_start,
        ):
            _discard(each, pipeline, model_id)
        for action in SCALE_ACTIONS:
            for reason in SCALE_REASONS:
                _discard(self.scale_events, pipeline, model_id, action, reason)

    def add_replica(self, pipeline: str, model_id: str, replica: str, capacity: int) -> None:
        """Create one replica's series at zero."""
        for state in WORKER_STATES:
            self.worker_state.labels(pipeline, model_id, replica, state)
        self.worker_capacity.labels(pipeline, model_id, replica).set(capacity)
        self.probe_duration.labels(pipeline, model_id, replica)
        for reason in PROBE_FAILURE_REASONS:
            self.probe_failures.labels(pipeline, model_id, replica, reason)
        self.container_restarts.labels(pipeline, model_id, replica)
        self.time_to_warm.labels(pipeline, model_id, replica)
        self.sessions_active.labels(pipeline, model_id, replica)
        self.requests_in_flight.labels(pipeline, model_id, replica)

    def remove_replica(self, pipeline: str, model_id: str, replica: str) -> None:
        for metric, extra in (
            (self.worker_state, WORKER_STATES),
            (self.probe_failures, PROBE_FAILURE_REASONS),
        ):
            for value in extra:
                _discard(metric, pipeline, model_id, replica, value)
        plain: tuple[Gauge | Counter | Histogram, ...] = (
            self.worker_capacity,
            self.probe_duration,
            self.container_restarts,
            self.time_to_warm,
            self.sessions_active,
            self.requests_in_flight,
        )
        for each in plain:
            _discard(each, pipeline, model_id, replica)
        self.set_worker_gpus(pipeline, model_id, replica, None)

    def set_worker_gpus(
        self, pipeline: str, model_id: str, replica: str, gpus: Sequence[GpuLike] | None
    ) -> None:
        """The GPUs a replica runs on (None or empty: none, or not known); replaces the last set."""
        key = (pipeline, model_id, replica)
        wanted = tuple((str(gpu.index), gpu.uuid) for gpu in gpus or ())
        for gpu, uuid in self._worker_gpus.pop(key, ()):
            if (gpu, uuid) not in wanted:
                _discard(self.worker_gpu_info, *key, gpu, uuid)
        for gpu, uuid in wanted:
            self.worker_gpu_info.labels(*key, gpu, uuid).set(1)
        if wanted:
            self._worker_gpus[key] = wanted

    def add_worker(self, pipeline: str, model_id: str, capacity: int) -> None:
        """An entry with one replica (index 0): what tests and tools create most often."""
        self.add_entry(pipeline, model_id, 1)
        self.add_replica(pipeline, model_id, "0", capacity)

    def remove_worker(self, pipeline: str, model_id: str) -> None:
        self.remove_replica(pipeline, model_id, "0")
        self.remove_entry(pipeline, model_id)

    def set_state(self, pipeline: str, model_id: str, replica: str, state: str) -> None:
        for each in WORKER_STATES:
            self.worker_state.labels(pipeline, model_id, replica, each).set(
                1 if each == state else 0
            )

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        """The text exposition; call it off the event loop (collectors may touch NVML)."""
        return generate_latest(self.registry)

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's current value, for tests and the status command."""
        return self.registry.get_sample_value(name, labels or {})


def _discard(metric: Gauge | Counter | Histogram, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)
