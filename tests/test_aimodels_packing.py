"""Replica ranges in aiModels.json: the contract, validate's errors, and packing by vram_mb."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from byoc_orch.aimodels import ModelsFile, ModelsFileError, parse_models
from byoc_orch.aimodels.fields import ReplicaRange
from byoc_orch.aimodels.packing import Claim, Need, PoolGpu, PoolState
from byoc_orch.console import _print_scaling
from byoc_orch.gpu import GpuInfo
from byoc_orch.validate_cmd import describe_entry

POOL = ("0", "1", "2", "3")


def entry(model_id: str, port: int, **fields: Any) -> dict[str, Any]:
    return {
        "pipeline": "live-video-to-video",
        "model_id": model_id,
        "container": "127.0.0.1:5000/demo:1",
        "url": f"http://127.0.0.1:{port}",
        "warm": True,
        **fields,
    }


def load(entries: list[dict[str, Any]], **options: Any) -> ModelsFile:
    options.setdefault("gpu_pool", POOL)
    options.setdefault("pool_configured", True)
    return parse_models(json.dumps(entries), source="test", **options)


def problems(entries: list[dict[str, Any]], **options: Any) -> list[str]:
    with pytest.raises(ModelsFileError) as caught:
        load(entries, **options)
    return [str(p) for p in caught.value.problems]


def devices(models: ModelsFile, model_id: str) -> list[tuple[str, ...]]:
    entry = next(e for e in models.entries if e.model_id == model_id)
    return [slot.devices for slot in models.replicas[entry.worker_id]]


# --------------------------------------------------------------------------- the contract


def test_a_range_with_its_defaults() -> None:
    models = load([entry("a", 8100, replicas={"min": 1, "max": 3})])
    (a,) = models.entries
    assert a.replicas == ReplicaRange(1, 3)
    assert (a.headroom, a.scale_down_after, a.vram_mb, a.gpus) == (1, 300.0, None, 1)
    assert a.ranged and a.replicated
    # only the minimum is placed; the rest is claimed by demand at run time
    assert devices(models, "a") == [("0",)]


def test_a_plain_count_keeps_its_meaning() -> None:
    models = load([entry("a", 8100, replicas=3)])
    (a,) = models.entries
    assert not a.ranged
    assert devices(models, "a") == [("0",), ("1",), ("2",)]
    assert models.pool.claims and {c.device for c in models.pool.claims} == {"0", "1", "2"}


def test_static_entries_hold_their_gpus_before_ranges_are_placed() -> None:
    models = load(
        [
            entry("a", 8100, replicas={"min": 2, "max": 4}),
            entry("b", 8200, replicas=2),
        ]
    )
    assert devices(models, "b") == [("0",), ("1",)]
    assert devices(models, "a") == [("2",), ("3",)]


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        (
            {"min": 0, "max": 2},
            "entry 0 (a): replicas.min: min must be at least 1, got 0: the capability must stay "
            'warm and advertised — use "min": 1',
        ),
        ({"min": 3, "max": 2}, "entry 0 (a): replicas.max: max 2 is below min 3 — raise max"),
        ({"min": 1, "max": 65}, "entry 0 (a): replicas.max: max must be at most 64, got 65"),
        ({"min": 1}, 'entry 0 (a): replicas.max: the replica range has no "max"'),
        ({"min": 1, "max": 2, "step": 1}, 'replicas: unknown key "step" in the replica range'),
        ({"min": "1", "max": 2}, 'replicas.min: min must be a whole number, got string "1"'),
    ],
)
def test_a_bad_range_names_entry_and_field(replicas: Any, expected: str) -> None:
    (problem,) = problems([entry("a", 8100, replicas=replicas)])
    assert problem.startswith(expected) or expected in problem


def test_minimums_that_cannot_fit_are_refused_naming_the_entry() -> None:
    found = problems(
        [
            entry("a", 8100, replicas={"min": 3, "max": 4}),
            entry("b", 8200, replicas={"min": 2, "max": 4}),
        ]
    )
    assert found == [
        "entry 1 (b): replicas: min 2 replicas need 1 whole GPU each, but only 1 fit in the "
        "pool (GPU 0: held whole, GPU 1: held whole, GPU 2: held whole, GPU 3: held whole) — "
        "lower min, lower vram_mb if the model needs less, give the pool GPUs that "
        "other entries hold, or widen BYOC_ORCH_GPUS"
    ]


def test_vram_over_every_gpu_is_refused() -> None:
    (problem,) = problems(
        [entry("a", 8100, replicas={"min": 1, "max": 2}, vram_mb=30000)], gpu_memory_mb=24000
    )
    assert problem.startswith(
        "entry 0 (a): vram_mb: 30000 MiB is more than any GPU of the pool has (the largest: "
        "24000 MiB)"
    )


def test_vram_without_known_gpu_memory_says_how_to_give_it() -> None:
    (problem,) = problems([entry("a", 8100, replicas={"min": 1, "max": 2}, vram_mb=8000)])
    assert "vram_mb: the memory of the pool's GPUs is not known" in problem
    assert "set BYOC_ORCH_GPU_MEMORY_MB" in problem


def test_nvml_memory_wins_over_the_setting() -> None:
    inventory = [GpuInfo(i, f"GPU-{i}", "H100", 80 * 1024 * 1024 * 1024) for i in range(4)]
    models = load(
        [entry("a", 8100, replicas={"min": 1, "max": 2}, vram_mb=30000)],
        gpu_memory_mb=24000,
        gpu_inventory=inventory,
    )
    assert {g.memory_mb for g in models.pool.gpus} == {80 * 1024}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"gpus": "all"}, 'gpus: gpus "all" gives every replica every GPU'),
        ({"replicas_per_gpu": 2}, "replicas_per_gpu: a replica range shares GPUs by memory"),
        ({"gpus": 2, "vram_mb": 1000}, "vram_mb: vram_mb packs replicas onto one GPU each"),
        ({"headroom": -1}, "headroom:"),
        ({"scale_down_after": 0}, "scale_down_after:"),
        ({"vram_mb": 0}, "vram_mb:"),
    ],
)
def test_fields_a_range_cannot_use(fields: dict[str, Any], expected: str) -> None:
    found = problems(
        [entry("a", 8100, replicas={"min": 1, "max": 2}, **fields)], gpu_memory_mb=24000
    )
    assert any(expected in p for p in found), found
    assert all(p.startswith("entry 0 (a): ") for p in found)


def test_ports_are_checked_up_to_the_maximum() -> None:
    (problem,) = problems([entry("a", 8100, replicas={"min": 1, "max": 4}), entry("b", 8103)])
    assert "replica #3 would listen on host port 8103, also used by entry 1 (b)" in problem


def test_range_fields_without_a_range_warn() -> None:
    models = load([entry("a", 8100, replicas=2, headroom=2)])
    assert [str(w) for w in models.warnings] == [
        "entry 0 (a): headroom: has no effect: replicas is not a range, so nothing scales — set "
        '"replicas": {"min": 1, "max": 4} for replicas that follow demand, or remove headroom'
    ]


def test_a_headroom_beyond_max_warns() -> None:
    models = load([entry("a", 8100, replicas={"min": 1, "max": 2}, headroom=3)])
    assert any("3 free slots can never be kept" in str(w) for w in models.warnings)


# --------------------------------------------------------------------------- packing


def test_small_replicas_of_two_entries_share_a_gpu_and_a_third_that_does_not_fit_is_refused() -> (
    None
):
    models = load(
        [
            entry("a", 8100, replicas={"min": 1, "max": 2}, vram_mb=10000),
            entry("b", 8200, replicas={"min": 1, "max": 2}, vram_mb=12000),
        ],
        gpu_pool=("0",),
        gpu_memory_mb=24000,
    )
    assert devices(models, "a") == [("0",)]
    assert devices(models, "b") == [("0",)]
    found = problems(
        [
            entry("a", 8100, replicas={"min": 1, "max": 2}, vram_mb=10000),
            entry("b", 8200, replicas={"min": 1, "max": 2}, vram_mb=12000),
            entry("c", 8300, replicas={"min": 1, "max": 2}, vram_mb=4000),
        ],
        gpu_pool=("0",),
        gpu_memory_mb=24000,
    )
    assert found == [
        "entry 2 (c): replicas: min 1 replicas need 4000 MiB of one GPU each, but only 0 fit "
        "in the pool (GPU 0: 2000 of 24000 MiB free) — lower min, lower vram_mb if the model "
        "needs less, give the pool GPUs that other entries hold, or widen BYOC_ORCH_GPUS"
    ]


def test_best_fit_keeps_whole_gpus_free() -> None:
    pool = PoolState((PoolGpu("0", 24000), PoolGpu("1", 24000)))
    pool.add(Claim("x-r0", "x", "1", 16000))
    assert pool.where(Need(1, 8000)) == ("1",)
    assert pool.where(Need(1, 9000)) == ("0",)
    assert pool.where(Need(1)) == ("0",)
    pool.claim("y-r0", "y", Need(1, 9000))
    assert pool.where(Need(1)) is None


def test_a_whole_gpu_replica_takes_no_shared_gpu() -> None:
    pool = PoolState((PoolGpu("0", 24000),))
    pool.claim("a-r0", "a", Need(1, 1000))
    assert pool.claim("b-r0", "b", Need(1)) is None
    pool.release("a-r0")
    assert pool.claim("b-r0", "b", Need(1)) == ("0",)
    assert pool.claim("c-r0", "c", Need(1, 1000)) is None


def test_adoption_fits_only_where_there_is_room() -> None:
    pool = PoolState((PoolGpu("0", 24000), PoolGpu("1", 24000)))
    assert pool.claim("a-r1", "a", Need(1, 20000), devices=("1",)) == ("1",)
    assert pool.claim("b-r0", "b", Need(1, 8000), devices=("1",)) is None
    assert pool.claim("b-r0", "b", Need(1, 8000), devices=("7",)) is None


def test_validate_says_where_a_range_goes() -> None:
    models = load(
        [entry("a", 8100, replicas={"min": 2, "max": 4}, vram_mb=8000)], gpu_memory_mb=24000
    )
    (a,) = models.entries
    line = describe_entry(0, a, models.replicas[a.worker_id])
    assert "replicas 2–4 on the pool (ports 127.0.0.1:8100–8103, headroom 1" in line
    assert "vram_mb=8000); min placed: #0 gpus=[0], #1 gpus=[0]" in line


def test_status_shows_a_range_and_its_last_decision() -> None:
    shown = io.StringIO()
    _print_scaling(
        [
            {
                "capability": "live-video-to-video/a",
                "replicas_min": 1,
                "replicas_max": 3,
                "replicas_desired": 2,
                "replicas_running": 2,
                "replicas_warm": 1,
                "cold_start_median_s": 12.5,
                "scale": {"action": "up", "reason": "headroom", "detail": "0 free warm slots"},
            }
        ],
        shown,
    )
    text = shown.getvalue()
    assert "1/3/2/2/1" in text
    assert "12.5 s (> 10 s)" in text
    assert "up (headroom): 0 free warm slots" in text
