"""Container spec: name, labels, env, GPUs and the spec hash that decides adopt vs replace."""

from __future__ import annotations

import json
from typing import Any

import pytest

from byoc_orch.aimodels import DROPPED_CAPABILITIES, GpuRequest, ModelEntry, parse_models
from byoc_orch.container_spec import (
    LABEL_ENTRY,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MODEL_ID,
    LABEL_PIPELINE,
    LABEL_REPLICA,
    LABEL_SPEC_HASH,
    LABEL_WORKER,
    MANAGED_BY,
    build_container_spec,
    container_env,
    container_name,
    ownership_labels,
)

BASE: dict[str, Any] = {
    "pipeline": "live-video-to-video",
    "model_id": "comfyui",
    "container": "livepeer/comfystream:latest",
    "url": "http://127.0.0.1:8001",
    "warm": True,
    "capacity": 1,
    "optimization_flags": {"SFAST": True, "COMPILE": False, "WORKSPACE": "/workspace"},
    "env": {"HF_HOME": "/models"},
    "price_per_unit": 1200,
    "pixels_per_unit": 1,
    "token": "secret-one",
    "currency": "WEI",
}


def entry(raw: dict[str, Any] | None = None, **changes: Any) -> ModelEntry:
    data = {**(BASE if raw is None else raw), **changes}
    return parse_models(json.dumps([data]), source="t").entries[0]


def spec_hash_of(**changes: Any) -> str:
    return build_container_spec(entry(**changes), "default").spec_hash


def test_name_is_instance_and_worker_id() -> None:
    e = entry()
    spec = build_container_spec(e, "gpu-box")
    assert spec.name == f"byoc-orch-gpu-box-{e.worker_id}"
    assert spec.name == container_name("gpu-box", e.worker_id)
    assert spec.worker_id == e.worker_id


def test_labels_carry_ownership_identity_and_hash() -> None:
    e = entry()
    spec = build_container_spec(e, "gpu-box")
    assert spec.labels == {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_INSTANCE: "gpu-box",
        LABEL_WORKER: e.worker_id,
        LABEL_ENTRY: e.worker_id,
        LABEL_REPLICA: "0",
        LABEL_PIPELINE: "live-video-to-video",
        LABEL_MODEL_ID: "comfyui",
        LABEL_SPEC_HASH: spec.spec_hash,
    }
    assert ownership_labels("gpu-box").items() <= spec.labels.items()
    assert len(spec.spec_hash) == 16
    int(spec.spec_hash, 16)


def test_env_has_pipeline_model_flags_and_entry_env() -> None:
    spec = build_container_spec(entry(), "default")
    assert dict(spec.env) == {
        "PIPELINE": "live-video-to-video",
        "MODEL_ID": "comfyui",
        "SFAST": "true",
        "COMPILE": "false",
        "WORKSPACE": "/workspace",
        "HF_HOME": "/models",
    }
    assert container_env(entry()) == dict(spec.env)


def test_ports_image_and_container_options() -> None:
    spec = build_container_spec(
        entry(
            container_port=9000,
            command=["python", "-m", "worker"],
            volumes=["/srv/models:/models:ro"],
            shm_size="2g",
        ),
        "default",
    )
    assert spec.host_port == 8001
    assert spec.container_port == 9000
    assert spec.image.canonical == "docker.io/livepeer/comfystream:latest"
    assert spec.command == ("python", "-m", "worker")
    assert spec.volumes == ("/srv/models:/models:ro",)
    assert spec.shm_size == 2 << 30
    assert spec.privileged is False
    assert spec.network_mode == "bridge"


def test_hash_is_stable_across_calls() -> None:
    e = entry()
    assert build_container_spec(e, "default").spec_hash == build_container_spec(e, "x").spec_hash
    assert spec_hash_of() == spec_hash_of()


def test_hash_does_not_depend_on_json_key_order() -> None:
    reordered = dict(reversed(list(BASE.items())))
    reordered["optimization_flags"] = dict(reversed(list(BASE["optimization_flags"].items())))
    reordered["env"] = {"HF_HOME": "/models"}
    assert list(reordered) != list(BASE)
    assert build_container_spec(entry(reordered), "default").spec_hash == spec_hash_of()


@pytest.mark.parametrize(
    "change",
    [
        {"container": "livepeer/comfystream:v2"},
        {"container": "ghcr.io/livepeer/comfystream:latest"},
        {"env": {"HF_HOME": "/other"}},
        {"env": {"HF_HOME": "/models", "EXTRA": "1"}},
        {"optimization_flags": {"SFAST": False, "COMPILE": False, "WORKSPACE": "/workspace"}},
        {"optimization_flags": {"SFAST": True, "WORKSPACE": "/workspace"}},
        {"gpus": [1]},
        {"gpus": 2},
        {"gpus": "none"},
        {"container_port": 9000},
        {"url": "http://127.0.0.1:8005"},
        {"command": ["python", "-m", "worker"]},
        {"volumes": ["/srv/models:/models:ro"]},
        {"shm_size": "1g"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_hash_changes_with_container_shaping_fields(change: dict[str, Any]) -> None:
    assert spec_hash_of(**change) != spec_hash_of()


@pytest.mark.parametrize(
    "change",
    [
        {"price_per_unit": 99},
        {"pixels_per_unit": 1000},
        {"capacity": 4},
        {"warm": False},
        {"token": "secret-two"},
        {"currency": "USD"},
        {"health_path": "/healthz"},
        {"startup_timeout": 30},
    ],
    ids=lambda change: next(iter(change)),
)
def test_hash_ignores_fields_that_do_not_shape_the_container(change: dict[str, Any]) -> None:
    assert spec_hash_of(**change) == spec_hash_of()


def test_shm_size_spelling_does_not_matter() -> None:
    assert spec_hash_of(shm_size="1g") == spec_hash_of(shm_size=1 << 30)


def test_gpus_all_asks_for_every_device() -> None:
    assert build_container_spec(entry(gpus="all"), "default").gpus == GpuRequest(count=-1)


def test_gpus_list_asks_for_device_ids() -> None:
    gpus = build_container_spec(entry(gpus=[1]), "default").gpus
    assert gpus == GpuRequest(count=None, device_ids=("1",))


def test_gpus_count_asks_for_that_many() -> None:
    assert build_container_spec(entry(gpus=2), "default").gpus == GpuRequest(count=2)


def test_gpus_none_asks_for_nothing() -> None:
    assert build_container_spec(entry(gpus="none"), "default").gpus is None


def test_gpus_default_is_all() -> None:
    assert build_container_spec(entry(), "default").gpus == GpuRequest(count=-1)


def test_external_entry_is_refused() -> None:
    external = entry(
        {
            "pipeline": "live-video-to-video",
            "model_id": "remote",
            "url": "http://10.0.0.12:9000",
        }
    )
    assert not external.managed
    with pytest.raises(ValueError, match="live-video-to-video/remote is not a managed entry"):
        build_container_spec(external, "default")


# -- containment -----------------------------------------------------------------------------


def test_every_container_is_contained_by_default() -> None:
    spec = build_container_spec(entry(), "default")
    assert spec.security_opt == ("no-new-privileges:true",)
    assert spec.cap_drop == ("NET_RAW", "MKNOD", "SYS_CHROOT", "AUDIT_WRITE")
    assert spec.cap_add == ()
    assert spec.pids_limit == 4096
    assert spec.log_driver == "json-file"
    assert dict(spec.log_options) == {"max-size": "20m", "max-file": "5"}
    assert spec.memory is None
    assert spec.nano_cpus is None


def test_host_access_entries_are_contained_too() -> None:
    spec = build_container_spec(
        entry(allow_host_access=True, privileged=True, pid_mode="host"), "default"
    )
    assert spec.security_opt == ("no-new-privileges:true",)
    assert spec.cap_drop == DROPPED_CAPABILITIES
    assert spec.pids_limit == 4096


def test_cap_add_gives_dropped_capabilities_back() -> None:
    spec = build_container_spec(entry(cap_add=["net_raw", "CAP_MKNOD"]), "default")
    assert spec.cap_add == ("NET_RAW", "MKNOD")
    assert spec.cap_drop == ("SYS_CHROOT", "AUDIT_WRITE")


def test_cap_add_of_another_capability_keeps_every_drop() -> None:
    spec = build_container_spec(entry(cap_add=["SYS_PTRACE"], allow_host_access=True), "default")
    assert spec.cap_add == ("SYS_PTRACE",)
    assert spec.cap_drop == DROPPED_CAPABILITIES


def test_cap_add_all_drops_nothing() -> None:
    spec = build_container_spec(entry(cap_add=["ALL"], allow_host_access=True), "default")
    assert spec.cap_add == ("ALL",)
    assert spec.cap_drop == ()


def test_memory_and_cpus_limits() -> None:
    spec = build_container_spec(entry(memory="512m", cpus=1.5), "default")
    assert spec.memory == 512 << 20
    assert spec.nano_cpus == 1_500_000_000
    assert build_container_spec(entry(cpus=0.25), "default").nano_cpus == 250_000_000


# Hashes an older byoc-orch (before the containment defaults, cap_add, memory and cpus) gave
# these entries: their containers must still be adopted, not restarted, after an upgrade.
HASHES_BEFORE_CONTAINMENT = {
    "base": ({}, "3ecf18bbb67af3d0"),
    "minimal": (
        {
            "pipeline": "p",
            "model_id": "m",
            "container": "example/worker:1",
            "url": "http://127.0.0.1:9000",
        },
        "e91b87e9c89bb580",
    ),
    "options": (
        {
            **BASE,
            "gpus": "none",
            "command": ["python", "-m", "worker"],
            "volumes": ["/srv/models:/models:ro"],
            "shm_size": "2g",
            "container_port": 9000,
        },
        "8d5bd704a23c8b96",
    ),
}


@pytest.mark.parametrize("name", sorted(HASHES_BEFORE_CONTAINMENT))
def test_entries_without_the_new_fields_keep_their_old_hash(name: str) -> None:
    raw, old_hash = HASHES_BEFORE_CONTAINMENT[name]
    assert build_container_spec(entry(raw or None), "default").spec_hash == old_hash


@pytest.mark.parametrize(
    "change",
    [{"cap_add": ["NET_RAW"]}, {"memory": "1g"}, {"cpus": 2}],
    ids=lambda change: next(iter(change)),
)
def test_hash_changes_when_cap_add_memory_or_cpus_is_set(change: dict[str, Any]) -> None:
    assert spec_hash_of(**change) != spec_hash_of()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({"cap_add": []}, {}),
        ({"cap_add": ["NET_RAW", "MKNOD"]}, {"cap_add": ["cap_mknod", "net_raw"]}),
        ({"memory": "1g"}, {"memory": 1 << 30}),
        ({"cpus": 2}, {"cpus": 2.0}),
    ],
    ids=["empty-cap-add", "cap-add-order-and-spelling", "memory-spelling", "cpus-spelling"],
)
def test_hash_ignores_how_cap_add_memory_and_cpus_are_written(
    one: dict[str, Any], other: dict[str, Any]
) -> None:
    assert spec_hash_of(**one) == spec_hash_of(**other)


def test_hash_tells_different_limits_apart() -> None:
    assert spec_hash_of(memory="1g") != spec_hash_of(memory="2g")
    assert spec_hash_of(cpus=1) != spec_hash_of(cpus=1.5)
    assert spec_hash_of(cap_add=["NET_RAW"]) != spec_hash_of(cap_add=["MKNOD"])
