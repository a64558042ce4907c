"""/metrics during a real-engine scenario: the series exist up front and the counters move."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import docker
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from byoc_orch.api import create_app
from byoc_orch.daemon import Daemon
from byoc_orch.metrics import WORKER_STATES, Metrics
from tests.conftest import Harness, eventually
from tests.test_daemon import only, running, worker_entry


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = await client.get("/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


# prometheus_client's standard collectors, registered beside byoc-orch's own families.
STANDARD_PREFIXES = ("process_", "python_")


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    metrics.add_worker("p", "m", 1)
    metrics.set_worker_gpus("p", "m", "0", [Gpu(0, "GPU-a")])
    families = list(text_string_to_metric_families(metrics.render().decode()))
    assert families
    for family in families:
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.name.startswith(STANDARD_PREFIXES):
            continue
        assert family.name.startswith("byoc_orch_"), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert set(sample.labels) <= {
                "pipeline",
                "model_id",
                "state",
                "reason",
                "result",
                "route",
                "status_class",
                "advertiser",
                "call",
                "le",
                "version",
                "python",
                "gpu",
                "uuid",
                "name",
                "replica",
                "where",
            }, sample


def test_no_created_series() -> None:
    """`_created` samples double every counter and histogram for nothing a dashboard reads."""
    metrics = Metrics()
    metrics.add_worker("p", "m", 1)
    metrics.container_restarts.labels("p", "m", "0").inc()
    metrics.probe_duration.labels("p", "m", "0").observe(0.01)
    metrics.image_pulls.labels("pulled").inc()
    text = metrics.render().decode()
    assert "byoc_orch_container_restarts_total" in text
    assert "_created" not in text
    names = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    assert not {name for name in names if name.endswith("_created")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process_* reads /proc")
def test_process_metrics_are_in_the_daemons_registry() -> None:
    metrics = Metrics()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ):
        reading = metrics.sample(name)
        assert reading is not None and reading > 0, name
    assert metrics.sample("python_gc_collections_total", {"generation": "0"}) is not None
    text = metrics.render().decode()
    assert "# TYPE process_resident_memory_bytes gauge" in text
    assert text.count("# TYPE process_open_fds gauge") == 1, "one process collector per daemon"


@dataclass(frozen=True)
class Gpu:
    """What set_worker_gpus reads from byoc_orch.gpu.GpuInfo."""

    index: int
    uuid: str


def gpu_series(metrics: Metrics) -> set[tuple[str, str, str, str, str]]:
    text = metrics.render().decode()
    return {
        (
            sample.labels["pipeline"],
            sample.labels["model_id"],
            sample.labels["replica"],
            sample.labels["gpu"],
            sample.labels["uuid"],
        )
        for family in text_string_to_metric_families(text)
        if family.name == "byoc_orch_worker_gpu_info"
        for sample in family.samples
        if sample.value == 1
    }


def test_worker_gpu_info_joins_each_replica_to_its_gpus() -> None:
    metrics = Metrics()
    metrics.add_entry("p", "m", 2)
    metrics.add_replica("p", "m", "0", 1)
    metrics.add_replica("p", "m", "1", 1)
    assert gpu_series(metrics) == set(), "no series until the daemon says which GPUs"
    metrics.set_worker_gpus("p", "m", "0", [Gpu(0, "GPU-a"), Gpu(1, "GPU-b")])
    metrics.set_worker_gpus("p", "m", "1", [Gpu(2, "GPU-c")])
    assert gpu_series(metrics) == {
        ("p", "m", "0", "0", "GPU-a"),
        ("p", "m", "0", "1", "GPU-b"),
        ("p", "m", "1", "2", "GPU-c"),
    }
    # A relaunch on other GPUs replaces the replica's set, it does not add to it.
    metrics.set_worker_gpus("p", "m", "0", [Gpu(1, "GPU-b"), Gpu(3, "GPU-d")])
    assert gpu_series(metrics) == {
        ("p", "m", "0", "1", "GPU-b"),
        ("p", "m", "0", "3", "GPU-d"),
        ("p", "m", "1", "2", "GPU-c"),
    }
    metrics.set_worker_gpus("p", "m", "1", None)
    assert gpu_series(metrics) == {("p", "m", "0", "1", "GPU-b"), ("p", "m", "0", "3", "GPU-d")}
    metrics.set_worker_gpus("p", "m", "1", [Gpu(2, "GPU-c")])
    metrics.set_worker_gpus("p", "m", "1", [])
    assert {series[2] for series in gpu_series(metrics)} == {"0"}
    metrics.remove_replica("p", "m", "0")
    assert gpu_series(metrics) == set()
    assert 'replica="0"' not in metrics.render().decode()


def test_worker_gpu_info_takes_the_daemons_gpu_inventory() -> None:
    from byoc_orch.gpu import GpuInfo

    metrics = Metrics()
    metrics.add_worker("p", "m", 1)
    gpu = GpuInfo(index=4, uuid="GPU-1234", name="NVIDIA H100", memory_total_bytes=80 << 30)
    metrics.set_worker_gpus("p", "m", "0", [gpu])
    assert (
        metrics.sample(
            "byoc_orch_worker_gpu_info",
            {"pipeline": "p", "model_id": "m", "replica": "0", "gpu": "4", "uuid": "GPU-1234"},
        )
        == 1
    )
    metrics.remove_worker("p", "m")
    assert gpu_series(metrics) == set()


def test_removed_workers_leave_no_series() -> None:
    metrics = Metrics()
    metrics.add_worker("p", "m", 2)
    metrics.set_state("p", "m", "0", "warm")
    metrics.remove_worker("p", "m")
    assert 'model_id="m"' not in metrics.render().decode()


@pytest.mark.engine
async def test_counters_move_in_a_real_scenario(
    harness: Harness, instance: str, docker_client: docker.DockerClient
) -> None:
    entry = worker_entry(harness, "metered")
    labels = {"pipeline": entry["pipeline"], "model_id": "metered"}
    replica = {**labels, "replica": "0"}
    async with running(harness, instance, [entry]) as daemon:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(daemon)), base_url="http://byoc"
        )
        async with client:
            first = await scrape(client)
            assert not [name for name, _ in first if name.endswith("_created")]
            assert value(first, "process_resident_memory_bytes") > 0
            # Known workers read 0 before anything happened, not absent.
            assert value(first, "byoc_orch_container_restarts_total", **replica) == 0
            assert value(first, "byoc_orch_sessions_started_total", **labels) == 0
            assert (
                value(
                    first,
                    "byoc_orch_build_info",
                    version=first_version(first),
                    python=first_python(first),
                )
                == 1
            )
            worker = only(daemon)
            await eventually(lambda: daemon.registry.is_warm(worker.worker_id), what="warm")
            warm = await scrape(client)
            assert value(warm, "byoc_orch_worker_state", state="warm", **replica) == 1
            assert (
                sum(
                    value(warm, "byoc_orch_worker_state", state=s, **replica) for s in WORKER_STATES
                )
                == 1
            )
            assert value(warm, "byoc_orch_capabilities_warm") == 1
            assert value(warm, "byoc_orch_time_to_warm_seconds_count", **replica) == 1
            assert value(warm, "byoc_orch_health_probe_duration_seconds_count", **replica) >= 1
            assert value(warm, "byoc_orch_image_pulls_total", result="present") == 1

            base = f"/proxy/{worker.worker_id}/stream"
            body = {"subscribe_url": "a", "publish_url": "b", "gateway_request_id": "m-1"}
            assert (await client.post(f"{base}/start", json=body)).status_code == 200
            active = await scrape(client)
            assert value(active, "byoc_orch_sessions_active", **replica) == 1
            assert value(active, "byoc_orch_sessions_started_total", **labels) == 1
            assert (
                value(
                    active,
                    "byoc_orch_proxy_request_duration_seconds_count",
                    route="start",
                    status_class="2xx",
                )
                == 1
            )

            container_id = worker.status.container_id
            await asyncio.to_thread(docker_client.containers.get(container_id).kill)
            await eventually(
                lambda: (
                    daemon.registry.is_warm(worker.worker_id)
                    and worker.status.container_id != container_id
                ),
                what="relaunched and warm again",
            )
            after = await scrape(client)
            assert value(after, "byoc_orch_container_restarts_total", **replica) == 1
            assert value(after, "byoc_orch_sessions_ended_total", reason="crashed", **labels) == 1
            assert value(after, "byoc_orch_sessions_active", **replica) == 0
            assert value(after, "byoc_orch_time_to_warm_seconds_count", **replica) == 2


def first_version(samples: dict) -> str:
    return next(dict(k[1])["version"] for k in samples if k[0] == "byoc_orch_build_info")


def first_python(samples: dict) -> str:
    return next(dict(k[1])["python"] for k in samples if k[0] == "byoc_orch_build_info")


def test_daemon_metrics_are_its_own(tmp_path: object) -> None:
    """Two daemons in one process (as in tests) never share series."""
    from byoc_orch.aimodels import parse_models
    from byoc_orch.settings import Settings

    models = parse_models(
        '[{"pipeline": "p", "model_id": "m", "url": "http://127.0.0.1:9"}]', source="t"
    )
    a, b = Daemon(Settings(), models), Daemon(Settings(), models)
    a.metrics.config_reloads.labels("applied").inc()
    assert b.metrics.sample("byoc_orch_config_reloads_total", {"result": "applied"}) == 0
