"""One aiModels.json entry: what a valid one means, the rules across its fields, its
ids, and replicas."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from pydantic import ValidationError

from byoc_orch.aimodels import GpuRequest, ModelEntry, ModelsFileError, load_models, worker_id
from byoc_orch.aimodels.placement import ReplicaSlot
from byoc_orch.image_ref import parse_image_ref
from tests.aimodels_helpers import (
    EXAMPLE,
    SECRET,
    external,
    managed,
    only_problem,
    parse,
    problems,
    warnings_of,
)


def test_example_file_validates_without_warnings() -> None:
    models = load_models(EXAMPLE)
    assert models.warnings == []
    assert [entry.managed for entry in models.entries] == [True, True, False, True]
    assert [entry.warm for entry in models.entries] == [True, True, True, False]
    assert models.entries[1].gpus == [1]
    assert models.source == str(EXAMPLE)


def test_defaults_of_a_minimal_managed_entry() -> None:
    (entry,) = parse(managed()).entries
    assert entry.managed
    assert entry.capacity == 1
    assert entry.container_port == 8000
    assert entry.gpus == "all"
    assert entry.pull == "missing"
    assert entry.health_path == "/health"
    assert entry.stream_prefix == "auto"
    assert entry.startup_timeout is None
    assert (entry.privileged, entry.network_mode, entry.pid_mode) == (False, "bridge", "")


def test_derived_helpers() -> None:
    (entry,) = parse(managed(container="ghcr.io/org/worker:2")).entries
    assert entry.image == parse_image_ref("ghcr.io/org/worker:2")
    assert entry.host_port == 8001
    assert entry.capability == "live-video-to-video/comfyui"
    assert entry.worker_id == worker_id("live-video-to-video", "comfyui")


def test_external_entry_has_no_image_but_a_port() -> None:
    (entry,) = parse(external()).entries
    assert not entry.managed
    assert entry.image is None
    assert entry.host_port == 9000
    assert parse(external(url="https://worker.example")).entries[0].host_port == 443


def test_empty_array_is_valid() -> None:
    assert parse().entries == []


def test_go_livepeer_fields_are_accepted_unchanged() -> None:
    (entry,) = parse(
        managed(
            token=SECRET,
            capacity=3,
            optimization_flags={"SFAST": True, "DEEPCACHE": "false"},
            gateway="0xabc",
            price_per_unit=0.5,
            pixels_per_unit=1,
            currency="USD",
        )
    ).entries
    assert entry.optimization_flags == {"SFAST": True, "DEEPCACHE": "false"}
    assert entry.price_per_unit == Fraction(1, 2)
    assert entry.pixels_per_unit == 1
    assert entry.token is not None
    assert entry.token.get_secret_value() == SECRET
    dumped = entry.model_dump(mode="json")
    assert dumped["price_per_unit"] == 0.5
    assert dumped["pixels_per_unit"] == 1


def test_prices_are_exact_rationals() -> None:
    (entry,) = parse(managed(price_per_unit=0.1)).entries
    assert entry.price_per_unit == Fraction(1, 10)
    assert parse(managed(price_per_unit=1200)).entries[0].price_per_unit == 1200


def test_byoc_orch_options() -> None:
    (entry,) = parse(
        managed(
            container_port=9000,
            gpus=[0, "GPU-6f2a"],
            env={"HF_HOME": "/models"},
            command=["python", "-m", "worker"],
            volumes=["/srv/models:/models:ro", "/tmp:/scratch"],
            shm_size="2g",
            pull="always",
            health_path="/healthz",
            stream_prefix="/api",
            startup_timeout=600,
        )
    ).entries
    assert entry.shm_size == 2 * 1024**3
    assert entry.startup_timeout == 600.0
    assert entry.volumes == ["/srv/models:/models:ro", "/tmp:/scratch"]


@pytest.mark.parametrize(
    ("size", "expected"), [("512m", 512 * 1024**2), ("1GB", 1024**3), ("64k", 65536), (1000, 1000)]
)
def test_shm_size_units(size: object, expected: int) -> None:
    assert parse(managed(shm_size=size)).entries[0].shm_size == expected


@pytest.mark.parametrize(
    ("gpus", "request_"),
    [
        ("all", GpuRequest(count=-1)),
        (2, GpuRequest(count=2)),
        ([1], GpuRequest(count=None, device_ids=("1",))),
        ([0, "GPU-abc"], GpuRequest(count=None, device_ids=("0", "GPU-abc"))),
        ("none", None),
    ],
)
def test_gpu_request(gpus: object, request_: GpuRequest | None) -> None:
    assert parse(managed(gpus=gpus)).entries[0].gpu_request() == request_


def test_neither_container_nor_url() -> None:
    line = only_problem({"pipeline": "p", "model_id": "m", "warm": True})
    assert line.startswith("entry 0 (m): container: the entry has neither container nor url")
    assert '"url"' in line


def test_managed_entry_needs_a_url() -> None:
    entry = managed()
    del entry["url"]
    line = only_problem(entry)
    assert line == (
        "entry 0 (comfyui): url: a managed entry (one with container) needs url to choose its "
        'host port — add "url": "http://127.0.0.1:<free port>", e.g. "http://127.0.0.1:8001"'
    )


def test_managed_url_must_be_loopback() -> None:
    line = only_problem(managed(url="http://10.0.0.5:8001"))
    assert line.startswith("entry 0 (comfyui): url: host 10.0.0.5 cannot reach a managed container")
    assert "127.0.0.1 only" in line
    assert 'use "http://127.0.0.1:8001"' in line
    assert 'remove "container"' in line


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1", "https://127.0.0.1:8001", "http://localhost:8001/worker"]
)
def test_managed_url_must_be_plain_http_with_a_port(url: str) -> None:
    line = only_problem(managed(url=url))
    assert line.startswith("entry 0 (comfyui): url: ")
    assert "must be exactly http://127.0.0.1:PORT" in line


def test_localhost_is_loopback_too() -> None:
    assert parse(managed(url="http://localhost:8001")).entries[0].host_port == 8001


def test_host_network_needs_matching_ports() -> None:
    line = only_problem(managed(allow_host_access=True, network_mode="host"))
    assert line.startswith("entry 0 (comfyui): container_port: with network_mode host")
    assert "set container_port to 8001" in line


@pytest.mark.parametrize("name", ["PIPELINE", "MODEL_ID"])
def test_env_cannot_override_what_byoc_orch_sets(name: str) -> None:
    line = only_problem(managed(env={name: "x"}))
    assert line == (
        f"entry 0 (comfyui): env.{name}: {name} is set by byoc-orch from {name.lower()}"
        f" — remove it; set the entry's {name.lower()} instead"
    )


def test_optimization_flags_cannot_override_pipeline() -> None:
    line = only_problem(managed(optimization_flags={"PIPELINE": "x"}))
    assert line.startswith("entry 0 (comfyui): optimization_flags.PIPELINE: ")


def test_env_and_optimization_flags_cannot_share_a_key() -> None:
    line = only_problem(managed(env={"SFAST": "0"}, optimization_flags={"SFAST": True}))
    assert line.startswith("entry 0 (comfyui): env.SFAST: SFAST is also set in optimization_flags")
    assert "— keep it in one place" in line


def test_invalid_entries_cannot_be_constructed() -> None:
    with pytest.raises(ValidationError, match="needs url"):
        ModelEntry(pipeline="p", model_id="m", container="busybox")
    entry = ModelEntry(pipeline="p", model_id="m", container="busybox", url="http://127.0.0.1:1")
    assert entry.managed


def test_entries_are_immutable() -> None:
    (entry,) = parse(managed()).entries
    with pytest.raises(ValidationError):
        entry.warm = False


def test_worker_id_is_stable_readable_and_unique() -> None:
    first = worker_id("live-video-to-video", "comfyui")
    assert first == worker_id("live-video-to-video", "comfyui")
    assert first.startswith("live-video-to-video-comfyui-")
    assert worker_id("a", "b/c") != worker_id("a", "b-c")
    assert worker_id("a", "B") != worker_id("a", "b")


@pytest.mark.parametrize(
    ("pipeline", "model_id"),
    [
        ("text-to-image", "stabilityai/sd-turbo"),
        ("live-video-to-video", "x" * 200),
        ("p", "éé/…"),
        ("--", "__"),
        ("Text To Image", "Model.V2@latest"),
    ],
)
def test_worker_id_is_url_safe_and_a_container_name(pipeline: str, model_id: str) -> None:
    wid = worker_id(pipeline, model_id)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", wid), wid
    assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+", f"byoc-orch-main-{wid}")
    assert len(wid) <= 49
    assert not wid.endswith("-")
    assert "--" not in wid


def test_replicas_default_to_one_container_as_before() -> None:
    (entry,) = parse(managed()).entries
    assert (entry.replicas, entry.replicas_per_gpu) == (1, 1)
    assert not entry.replicated
    assert entry.gpus_per_replica == "all"
    assert entry.gpu_request() == GpuRequest(count=-1)


@pytest.mark.parametrize("replicas", [2, "per-gpu"])
def test_replicated_entries_get_one_gpu_each_by_default(replicas: object) -> None:
    entry = ModelEntry.model_validate(managed(replicas=replicas))
    assert entry.replicated
    assert entry.gpus == entry.gpus_per_replica == 1
    assert entry.gpu_request() == GpuRequest(count=1)


def test_replicas_one_is_not_replicated_and_keeps_all() -> None:
    (entry,) = parse(managed(replicas=1)).entries
    assert not entry.replicated
    assert entry.gpus_per_replica == "all"


@pytest.mark.parametrize("gpus", ["all", "none", 2])
def test_an_explicit_gpus_value_is_what_each_replica_gets(gpus: object) -> None:
    entry = ModelEntry.model_validate(managed(replicas=2, gpus=gpus))
    assert entry.gpus_per_replica == gpus


def test_a_default_and_an_explicit_gpu_per_replica_are_the_same_entry() -> None:
    implicit = ModelEntry.model_validate(managed(replicas=2))
    explicit = ModelEntry.model_validate(managed(replicas=2, gpus=1))
    assert implicit == explicit


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        (0, "replicas: must be from 1 to 64, got 0 — use 1 for a single container"),
        (-2, "replicas: must be from 1 to 64, got -2 — use 1 for a single container"),
        (
            65,
            'replicas: must be from 1 to 64, got 65 — use a count from 1 to 64, or "per-gpu" '
            "for one replica per GPU",
        ),
        ("3", 'replicas: unknown replicas value string "3" — write the count without quotes: 3'),
        ("per_gpu", 'unknown replicas value string "per_gpu" — write it exactly "per-gpu"'),
        ("PerGPU", 'unknown replicas value string "PerGPU" — write it exactly "per-gpu"'),
        (True, "unknown replicas value boolean true — use a count"),
        (1.5, "unknown replicas value number 1.5 — use a count"),
        (None, "unknown replicas value null — use a count"),
    ],
)
def test_bad_replicas_values(replicas: object, expected: str) -> None:
    line = only_problem(managed(replicas=replicas))
    assert line.startswith("entry 0 (comfyui): replicas: ")
    assert expected in line


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "replicas_per_gpu: must be at least 1, got number 0 — use 1 or more"),
        (17, "replicas_per_gpu: must be at most 16, got number 17 — use 16 or less"),
        ("2", 'replicas_per_gpu: expected an integer, got string "2" — remove the quotes'),
    ],
)
def test_bad_replicas_per_gpu_values(value: object, expected: str) -> None:
    line = only_problem(managed(replicas=2, replicas_per_gpu=value))
    assert line.startswith("entry 0 (comfyui): ")
    assert expected in line


def test_a_device_list_cannot_be_replicated() -> None:
    line = only_problem(managed(replicas=3, gpus=[0, 1]))
    assert line == (
        "entry 0 (comfyui): gpus: a device list names one container's GPUs, but replicas is 3 "
        "— with replicas use a count per replica (e.g. 1), or drop replicas"
    )


def test_a_device_list_with_replicas_one_is_today_s_container() -> None:
    (entry,) = parse(managed(replicas=1, gpus=[1])).entries
    assert entry.gpu_request() == GpuRequest(count=None, device_ids=("1",))


@pytest.mark.parametrize(
    ("gpus", "meaning"),
    [("all", "gives every replica every GPU"), ("none", "gives replicas no GPU")],
)
def test_per_gpu_needs_a_gpu_count(gpus: str, meaning: str) -> None:
    line = only_problem(managed(replicas="per-gpu", gpus=gpus))
    assert line.startswith(
        f'entry 0 (comfyui): replicas: "per-gpu" places one replica per GPU, but gpus "{gpus}" '
        f"{meaning} — "
    )
    assert '"gpus": 1' in line


def test_replicas_cannot_share_the_host_network() -> None:
    line = only_problem(
        managed(replicas=2, network_mode="host", allow_host_access=True, container_port=8001)
    )
    assert line == (
        "entry 0 (comfyui): replicas: with network_mode host every replica would listen on the "
        "host's own port 8001; they cannot share it — drop replicas, or use network_mode "
        '"bridge"'
    )


def test_replica_ports_must_stay_below_65536() -> None:
    assert parse(managed(port=65533, replicas=3, gpus="none")).entries
    line = only_problem(managed(port=65534, replicas=3, gpus="none"))
    assert line == (
        "entry 0 (comfyui): replicas: replica ports url port + 0…2 run to 65536, past 65535 — "
        "lower the url port to 65533 or less, or lower replicas"
    )


def test_a_bad_url_hides_the_replica_port_check() -> None:
    found = problems(managed(replicas=3, gpus="none", url="http://10.0.0.1:65534"))
    assert [line.split(": ")[1] for line in found] == ["url"]


def test_replica_fields_on_an_external_entry_warn() -> None:
    found = warnings_of(external(replicas=3, replicas_per_gpu=2))
    assert found == [
        f"entry 0 (remote): {field}: ignored: this entry has no container, so byoc-orch runs "
        'nothing for it — remove it, or add "container" for byoc-orch to run the worker'
        for field in ("replicas", "replicas_per_gpu")
    ]


def test_an_external_entry_with_replicas_is_not_checked_as_replicated() -> None:
    (entry,) = parse(external(replicas="per-gpu", gpus="none")).entries
    assert entry.gpus == "none"


def test_replicas_per_gpu_without_replicas_warns() -> None:
    assert warnings_of(managed(replicas_per_gpu=2)) == [
        "entry 0 (comfyui): replicas_per_gpu: has no effect: replicas is 1, so there is one "
        'container — set "replicas" (a count or "per-gpu"), or remove replicas_per_gpu'
    ]


def test_replicas_per_gpu_without_placed_gpus_warns() -> None:
    assert warnings_of(managed(replicas=2, gpus="all", replicas_per_gpu=2)) == [
        'entry 0 (comfyui): replicas_per_gpu: has no effect with gpus "all": no GPU is placed, '
        "so none is shared — give each replica a GPU count, or remove replicas_per_gpu"
    ]


def test_every_managed_entry_gets_a_slot_even_without_a_gpu_pool() -> None:
    models = parse(
        managed("a", 8001),
        managed("b", 8002, gpus=[1]),
        managed("c", 8003, gpus=2),
        managed("d", 8004, gpus="none"),
        external(),
    )
    slots = {entry.model_id: models.replicas.get(entry.worker_id) for entry in models.entries}
    assert slots == {
        "a": (ReplicaSlot(0, 8001, GpuRequest(count=-1)),),
        "b": (ReplicaSlot(0, 8002, GpuRequest(count=None, device_ids=("1",))),),
        "c": (ReplicaSlot(0, 8003, GpuRequest(count=2)),),
        "d": (ReplicaSlot(0, 8004, None),),
        "remote": None,
    }


def test_placement_problems_come_after_the_file_is_otherwise_valid() -> None:
    with pytest.raises(ModelsFileError) as caught:
        parse(managed("a", 8001, replicas=2), managed("b", 8002, contianer_port=1))
    assert [(p.entry_index, p.field) for p in caught.value.problems] == [(0, "replicas")]
    assert [p.field for p in caught.value.warnings] == ["contianer_port"]
