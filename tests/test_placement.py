"""Replica placement: deterministic, stable, and every refusal names entry, field and fix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from byoc_orch.aimodels import GpuRequest, ModelEntry, ModelsFile, ModelsFileError, parse_models
from byoc_orch.aimodels.placement import GpuPoolError, ReplicaSlot, plan, pool_from
from byoc_orch.gpu import GpuInfo

FOUR = ("0", "1", "2", "3")
UUIDS = tuple(f"GPU-{n}aaa0000-0000-0000-0000-000000000000" for n in range(4))
INVENTORY = [GpuInfo(n, UUIDS[n], "NVIDIA L4", 24 << 30) for n in range(4)]
API = {9935: "byoc-orch's own HTTP API (BYOC_ORCH_PORT)"}


def managed(model_id: str, port: int, **fields: Any) -> dict[str, Any]:
    return {
        "pipeline": "live-video-to-video",
        "model_id": model_id,
        "container": "livepeer/comfystream:latest",
        "url": f"http://127.0.0.1:{port}",
        **fields,
    }


def load(
    *entries: dict[str, Any],
    pool: tuple[str, ...] | None = FOUR,
    configured: bool = False,
    inventory: list[GpuInfo] | None = None,
) -> ModelsFile:
    return parse_models(
        json.dumps(list(entries)),
        source="aiModels.json",
        reserved_ports=API,
        gpu_pool=pool,
        pool_configured=configured,
        gpu_inventory=inventory or [],
    )


def devices(models: ModelsFile, model_id: str) -> list[list[str]]:
    return [list(slot.devices) for slot in slots_of(models, model_id)]


def slots_of(models: ModelsFile, model_id: str) -> tuple[ReplicaSlot, ...]:
    (entry,) = (e for e in models.entries if e.model_id == model_id)
    return models.replicas[entry.worker_id]


def refusal(*entries: dict[str, Any], **kwargs: Any) -> ModelsFileError:
    with pytest.raises(ModelsFileError) as caught:
        load(*entries, **kwargs)
    return caught.value


def only_problem(*entries: dict[str, Any], **kwargs: Any) -> str:
    found = [str(problem) for problem in refusal(*entries, **kwargs).problems]
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- placing


def test_replicas_take_one_gpu_each_in_pool_order_on_consecutive_ports() -> None:
    models = load(managed("a", 8001, replicas=3))
    assert slots_of(models, "a") == (
        ReplicaSlot(0, 8001, GpuRequest(count=None, device_ids=("0",))),
        ReplicaSlot(1, 8002, GpuRequest(count=None, device_ids=("1",))),
        ReplicaSlot(2, 8003, GpuRequest(count=None, device_ids=("2",))),
    )


def test_per_gpu_fills_the_pool() -> None:
    models = load(managed("a", 8001, replicas="per-gpu"))
    assert devices(models, "a") == [["0"], ["1"], ["2"], ["3"]]
    assert [slot.host_port for slot in slots_of(models, "a")] == [8001, 8002, 8003, 8004]


def test_replicas_per_gpu_shares_each_gpu() -> None:
    models = load(managed("a", 8001, replicas=4, replicas_per_gpu=2), pool=("0", "1"))
    assert devices(models, "a") == [["0"], ["0"], ["1"], ["1"]]


def test_replicas_per_gpu_with_an_odd_count_uses_a_partial_last_gpu() -> None:
    models = load(managed("a", 8001, replicas=3, replicas_per_gpu=2), pool=("0", "1"))
    assert devices(models, "a") == [["0"], ["0"], ["1"]]


def test_per_gpu_with_sharing_runs_that_many_per_gpu() -> None:
    models = load(managed("a", 8001, replicas="per-gpu", replicas_per_gpu=3), pool=("0", "1"))
    assert devices(models, "a") == [["0"]] * 3 + [["1"]] * 3


def test_several_gpus_per_replica_are_consecutive_runs() -> None:
    models = load(managed("a", 8001, replicas=2, gpus=2))
    assert devices(models, "a") == [["0", "1"], ["2", "3"]]


def test_per_gpu_with_two_gpus_each_leaves_the_odd_gpu_out() -> None:
    models = load(managed("a", 8001, replicas="per-gpu", gpus=2), pool=("0", "1", "2"))
    assert devices(models, "a") == [["0", "1"]]


def test_device_lists_are_claimed_first_and_skipped() -> None:
    models = load(
        managed("a", 8001, replicas=2),
        managed("pinned", 8010, gpus=[0]),
        managed("b", 8020, replicas="per-gpu"),
    )
    assert devices(models, "pinned") == [["0"]]
    assert devices(models, "a") == [["1"], ["2"]]
    assert devices(models, "b") == [["3"]]


def test_counted_entries_are_placed_before_per_gpu_ones_whatever_the_file_order() -> None:
    models = load(managed("all-left", 8001, replicas="per-gpu"), managed("two", 8020, replicas=2))
    assert devices(models, "two") == [["0"], ["1"]]
    assert devices(models, "all-left") == [["2"], ["3"]]


def test_gpus_all_gives_every_replica_every_gpu_and_claims_none() -> None:
    models = load(managed("a", 8001, replicas=2, gpus="all"), managed("b", 8010, replicas=4))
    assert [slot.gpus for slot in slots_of(models, "a")] == [GpuRequest(count=-1)] * 2
    assert [slot.devices for slot in slots_of(models, "a")] == [(), ()]
    assert devices(models, "b") == [["0"], ["1"], ["2"], ["3"]]


def test_gpus_none_gives_replicas_no_gpu_and_needs_no_pool() -> None:
    models = load(managed("a", 8001, replicas=2, gpus="none"), pool=None)
    assert slots_of(models, "a") == (ReplicaSlot(0, 8001, None), ReplicaSlot(1, 8002, None))


def test_a_configured_pool_restricts_placement() -> None:
    models = load(managed("a", 8001, replicas="per-gpu"), pool=("2", "3"), configured=True)
    assert devices(models, "a") == [["2"], ["3"]]


def test_with_a_configured_pool_all_means_the_pools_gpus() -> None:
    models = load(managed("a", 8001, replicas=2, gpus="all"), pool=("1", "3"), configured=True)
    assert [slot.gpus for slot in slots_of(models, "a")] == [
        GpuRequest(count=None, device_ids=("1", "3"))
    ] * 2


def test_uuids_in_the_pool_are_given_to_docker_as_written() -> None:
    models = load(managed("a", 8001, replicas=2), pool=UUIDS[:2], configured=True)
    assert devices(models, "a") == [[UUIDS[0]], [UUIDS[1]]]


def test_a_device_list_by_index_claims_the_pools_uuid_of_that_gpu() -> None:
    models = load(
        managed("pinned", 8010, gpus=[0]),
        managed("a", 8001, replicas="per-gpu"),
        pool=UUIDS,
        configured=True,
        inventory=INVENTORY,
    )
    assert devices(models, "a") == [[UUIDS[1]], [UUIDS[2]], [UUIDS[3]]]


def test_a_device_list_by_uuid_claims_that_gpus_index() -> None:
    pinned = managed("pinned", 8010, gpus=[UUIDS[2].lower()])
    models = load(pinned, managed("a", 8001, replicas="per-gpu"), inventory=INVENTORY)
    assert devices(models, "a") == [["0"], ["1"], ["3"]]


# --------------------------------------------------------------------------- stability


def test_an_entry_added_below_moves_nothing_above() -> None:
    before = load(managed("a", 8001, replicas=2), managed("pinned", 8010, gpus=[3]))
    after = load(
        managed("a", 8001, replicas=2),
        managed("pinned", 8010, gpus=[3]),
        managed("new", 8020, replicas=1),
        managed("more", 8030, replicas=2, gpus="none"),
    )
    assert slots_of(after, "a") == slots_of(before, "a")
    assert slots_of(after, "pinned") == slots_of(before, "pinned")


def test_raising_replicas_keeps_the_existing_replicas_where_they_are() -> None:
    two = load(managed("a", 8001, replicas=2, replicas_per_gpu=2))
    five = load(managed("a", 8001, replicas=5, replicas_per_gpu=2))
    assert slots_of(five, "a")[:2] == slots_of(two, "a")
    assert devices(five, "a") == [["0"], ["0"], ["1"], ["1"], ["2"]]


def test_placement_is_deterministic() -> None:
    entries = [
        managed("a", 8001, replicas=2),
        managed("b", 8010, replicas="per-gpu", gpus=2),
        managed("c", 8020, gpus=[0]),
    ]
    first = load(*entries, pool=tuple(str(n) for n in range(8)))
    again = load(*entries, pool=tuple(str(n) for n in range(8)))
    assert first.replicas == again.replicas
    assert devices(first, "a") == [["1"], ["2"]]
    assert devices(first, "b") == [["3", "4"], ["5", "6"]]


# ------------------------------------------------------------------ entries without replicas


@pytest.mark.parametrize("gpus", ["all", 2, [1, "GPU-x"], "none", None])
def test_an_entry_without_replicas_keeps_its_own_request(gpus: object) -> None:
    fields = {} if gpus is None else {"gpus": gpus}
    for pool in (FOUR, None, ("2",)):
        models = load(managed("a", 8001, **fields), pool=pool)
        (entry,) = models.entries
        assert slots_of(models, "a") == (ReplicaSlot(0, 8001, entry.gpu_request()),)


def test_external_entries_get_no_slot() -> None:
    external = {"pipeline": "p", "model_id": "ext", "url": "http://127.0.0.1:9000"}
    assert load(external).replicas == {}


def test_slot_devices() -> None:
    assert ReplicaSlot(0, 1, None).devices == ()
    assert ReplicaSlot(0, 1, GpuRequest(count=-1)).devices == ()
    assert ReplicaSlot(0, 1, GpuRequest(count=None, device_ids=("1", "2"))).devices == ("1", "2")


# --------------------------------------------------------------------------- refusals


def test_no_pool_for_a_gpu_count() -> None:
    line = only_problem(managed("ok", 8001), managed("a", 8010, replicas=2), pool=None)
    assert line == (
        "entry 1 (a): replicas: no GPU pool to place replicas on: NVML lists no GPUs here and "
        "BYOC_ORCH_GPUS is not set — run on the GPU host, set BYOC_ORCH_GPUS=0,1,…, or use "
        '"gpus": "none"'
    )


def test_not_enough_free_gpus_says_who_holds_them() -> None:
    line = only_problem(
        managed("pinned", 8001, gpus=[1]),
        managed("a", 8010, replicas=2),
        managed("b", 8020, replicas=2),
    )
    assert line == (
        "entry 2 (b): replicas: 2 replicas with 1 GPU each need 2 GPUs, but the pool has 1 free "
        "of 4 (entry 0 (pinned) holds 1, entry 1 (a) holds 2) — lower replicas, or raise "
        "replicas_per_gpu (replicas sharing a GPU)"
    )


def test_not_enough_gpus_with_sharing_and_a_configured_pool() -> None:
    line = only_problem(
        managed("a", 8001, replicas=5, gpus=2, replicas_per_gpu=2),
        pool=("0", "1", "2", "3"),
        configured=True,
    )
    assert line == (
        "entry 0 (a): replicas: 5 replicas with 2 GPUs each, 2 per GPU need 6 GPUs, but the pool "
        "has 4 free of 4 — lower replicas, raise replicas_per_gpu (replicas sharing a GPU), "
        "lower gpus, or widen BYOC_ORCH_GPUS"
    )


def test_per_gpu_with_nothing_left_is_refused() -> None:
    line = only_problem(
        managed("first", 8001, replicas="per-gpu"), managed("second", 8010, replicas="per-gpu")
    )
    assert line == (
        'entry 1 (second): replicas: "per-gpu" places no replica: each needs 1 GPU, but the pool '
        "has 0 free of 4 (entry 0 (first) holds 4) — use a replica count"
    )


def test_per_gpu_on_an_empty_host_is_the_no_pool_refusal() -> None:
    line = only_problem(managed("a", 8001, replicas="per-gpu"), pool=None)
    assert "no GPU pool to place replicas on" in line


def test_two_device_lists_naming_one_gpu_are_refused_once_replicas_are_placed() -> None:
    line = only_problem(
        managed("a", 8001, gpus=[0]),
        managed("b", 8002, gpus=[UUIDS[0]]),
        managed("r", 8010, replicas=2),
        inventory=INVENTORY,
    )
    assert line == (
        f"entry 1 (b): gpus: GPU {UUIDS[0]} is also listed by entry 0 (a) as 0; with replicas in "
        "the file, a device list claims its GPUs — give each entry its own GPUs; to share GPUs "
        "use one entry with replicas and replicas_per_gpu"
    )


def test_two_device_lists_naming_one_gpu_only_warn_in_a_file_without_replicas() -> None:
    models = load(managed("a", 8001, gpus=[0, 1]), managed("b", 8002, gpus=[1]))
    assert [str(w) for w in models.warnings] == [
        "entry 1 (b): gpus: GPU 1 is also listed by entry 0 (a); the two containers share it — "
        "check that both fit in its memory, or give each entry its own GPU"
    ]


def test_one_entry_naming_a_gpu_by_index_and_uuid_is_not_a_conflict() -> None:
    models = load(
        managed("a", 8001, gpus=[0, UUIDS[0]]), managed("r", 8010, replicas=2), inventory=INVENTORY
    )
    assert models.warnings == []
    assert devices(models, "r") == [["1"], ["2"]]


def test_a_device_list_outside_the_configured_pool_warns() -> None:
    models = load(managed("a", 8001, gpus=[3]), pool=("0", "1"), configured=True)
    assert [str(w) for w in models.warnings] == [
        "entry 0 (a): gpus: GPU 3 is outside BYOC_ORCH_GPUS (0,1) — add it to BYOC_ORCH_GPUS, "
        "or list a GPU from the pool"
    ]


def test_a_single_container_with_all_gpus_warns_when_the_pool_keeps_some_out() -> None:
    models = load(managed("a", 8001), pool=("0", "1"), configured=True, inventory=INVENTORY)
    assert [str(w) for w in models.warnings] == [
        "entry 0 (a): gpus: gives this container every GPU on the host, including 2, 3 that "
        "BYOC_ORCH_GPUS leaves out — list the GPUs it should use, e.g. [0, 1], or use replicas"
    ]
    assert load(managed("a", 8001), pool=FOUR, configured=True, inventory=INVENTORY).warnings == []


def test_replica_port_on_another_entrys_port() -> None:
    line = only_problem(managed("a", 8001, replicas=3), managed("b", 8003, gpus="none"))
    assert line == (
        "entry 0 (a): url: replica #2 would listen on host port 8003, also used by entry 1 (b) — "
        "move this entry's url port so its replicas' ports url+0…url+2 are free, e.g. "
        "http://127.0.0.1:8004"
    )


def test_overlapping_replica_ranges_blame_the_later_entry_once() -> None:
    line = only_problem(
        managed("a", 8001, replicas=2, gpus="none"), managed("b", 8000, replicas=3, gpus="none")
    )
    assert line == (
        "entry 1 (b): url: replica #1 would listen on host port 8001, also used by entry 0 (a) — "
        "move this entry's url port so its replicas' ports url+0…url+2 are free, e.g. "
        "http://127.0.0.1:8003"
    )


def test_replica_port_on_another_replica() -> None:
    line = only_problem(
        managed("a", 8001, replicas=3, gpus="none"), managed("b", 7999, replicas=4, gpus="none")
    )
    assert line.startswith(
        "entry 1 (b): url: replica #2 would listen on host port 8001, also used by entry 0 (a) — "
    )
    line = only_problem(
        managed("a", 8001, replicas=3, gpus="none"), managed("b", 8000, replicas=4, gpus="none")
    )
    assert "replica #1 would listen on host port 8001, also used by entry 0 (a)" in line


def test_replica_port_on_a_loopback_external_worker() -> None:
    external = {"pipeline": "p", "model_id": "ext", "url": "http://localhost:8002"}
    line = only_problem(managed("a", 8001, replicas=2), external)
    assert line.startswith(
        "entry 0 (a): url: replica #1 would listen on host port 8002, also used by entry 1 (ext)"
    )


def test_replica_port_on_the_api_port() -> None:
    line = only_problem(managed("a", 9934, replicas=2))
    assert line == (
        "entry 0 (a): url: replica #1 would listen on host port 9935, taken by byoc-orch's own "
        "HTTP API (BYOC_ORCH_PORT) — move this entry's url port so its replicas' ports "
        "url+0…url+1 are free, e.g. http://127.0.0.1:9936"
    )


def test_a_base_port_clash_is_reported_once_by_the_file_check() -> None:
    found = refusal(managed("a", 8001, replicas=2), managed("b", 8001)).problems
    assert [str(p) for p in found] == [
        "entry 1 (b): url: host port 8001 is also used by entry 0 (a) — give each worker its own "
        "port in url"
    ]


def test_per_gpu_ports_past_65535() -> None:
    line = only_problem(managed("a", 65534, replicas="per-gpu"))
    assert line == (
        "entry 0 (a): replicas: 4 replicas listen on ports 65534…65537, past 65535 — lower the "
        "url port to 65532 or less, or use a replica count"
    )


def test_every_placement_problem_is_listed_at_once() -> None:
    found = refusal(
        managed("a", 8001, replicas=5),
        managed("b", 8010, replicas=2, gpus="none"),
        managed("c", 8011),
        pool=("0",),
    ).problems
    assert [(p.entry_index, p.model_id, p.field) for p in found] == [
        (0, "a", "replicas"),
        (1, "b", "url"),
    ]


# --------------------------------------------------------------------------- the pool


def test_the_pool_is_nvmls_gpus_by_index() -> None:
    assert pool_from(None, INVENTORY) == FOUR
    assert pool_from(None, []) is None


def test_the_setting_wins_and_is_checked_against_nvml() -> None:
    assert pool_from(("3", UUIDS[1]), INVENTORY) == ("3", UUIDS[1])
    assert pool_from(("7",), []) == ("7",)
    assert pool_from(("MIG-abc", "0:1"), INVENTORY) == ("MIG-abc", "0:1")


def test_unknown_or_repeated_gpus_in_the_setting_are_refused() -> None:
    with pytest.raises(GpuPoolError) as caught:
        pool_from(("0", "7", UUIDS[0]), INVENTORY)
    assert [str(p) for p in caught.value.problems] == [
        "BYOC_ORCH_GPUS: GPU 7 is not on this host (NVML lists 0, 1, 2, 3) — list GPU indexes "
        "or UUIDs that `nvidia-smi -L` shows",
        f"BYOC_ORCH_GPUS: {UUIDS[0]} and 0 are the same GPU — list GPU 0 once",
    ]
    assert isinstance(caught.value, ModelsFileError)


def test_loading_raises_what_plan_reports() -> None:
    text = json.dumps([managed("a", 8001, replicas=2)])
    entries = [ModelEntry.model_validate(managed("a", 8001, replicas=2))]
    with pytest.raises(ModelsFileError) as caught:
        parse_models(text, source="x.json", gpu_pool=None)
    assert caught.value.problems[0].source == "x.json"
    assert caught.value.problems == plan(entries, None, source="x.json").problems
    result = plan(entries, ("5", "6"), source="x.json")
    assert result.problems == []
    assert [slot.devices for slot in result.slots[entries[0].worker_id]] == [("5",), ("6",)]
    assert parse_models(text, source="x.json", gpu_pool=("5", "6")).replicas == result.slots
