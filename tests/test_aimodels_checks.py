"""Checks of aiModels.json beyond one field: unknown and case-variant keys, warnings,
and what entries may not share."""

from __future__ import annotations

import re

import pytest

from byoc_orch.aimodels import ModelsFileError
from tests.aimodels_helpers import external, managed, only_problem, parse, problems, warnings_of


def test_case_variant_of_a_go_livepeer_field_is_an_error() -> None:
    line = only_problem(managed(Warm=False))
    assert line == (
        "entry 0 (comfyui): Warm: field names are case-sensitive here (go-livepeer reads it as "
        '"warm") — rename it to "warm"'
    )


def test_unknown_keys_warn_with_a_suggestion() -> None:
    assert warnings_of(managed(contianer_port=8000, hardware="a100")) == [
        "entry 0 (comfyui): contianer_port: unknown field, ignored — did you mean "
        '"container_port"?',
        "entry 0 (comfyui): hardware: unknown field, ignored — remove it if it is a typo",
    ]


def test_misspelt_container_warns_and_explains_the_error() -> None:
    entry = {"pipeline": "p", "model_id": "m", "contianer": "x", "url": "http://127.0.0.1:1"}
    (warning,) = warnings_of(entry)
    assert warning.endswith('did you mean "container"?')


def test_container_options_on_an_external_entry_warn() -> None:
    found = warnings_of(external(gpus=2, env={"A": "1"}))
    assert found == [
        f"entry 0 (remote): {field}: ignored: this entry has no container, so byoc-orch runs "
        'nothing for it — remove it, or add "container" for byoc-orch to run the worker'
        for field in ("gpus", "env")
    ]


def test_external_entries_on_one_loopback_port_warn() -> None:
    models = parse(external("a", "http://127.0.0.1:9000"), external("b", "http://localhost:9000"))
    (warning,) = (str(w) for w in models.warnings)
    assert warning.startswith("entry 1 (b): url: port 9000 is also used by entry 0 (a)")


def test_duplicate_pipeline_and_model_id_names_both_entries() -> None:
    line = only_problem(managed(port=8001), external(), managed(port=8002))
    assert line == (
        "entry 2 (comfyui): model_id: live-video-to-video/comfyui is already defined by entry 0;"
        " each pipeline+model_id may appear once — rename model_id in entry 0 or 2, or delete "
        "one of them"
    )


def test_same_model_id_in_other_pipeline_is_fine() -> None:
    assert len(parse(managed(port=8001), managed(port=8002, pipeline="text-to-image")).entries) == 2


def test_host_port_used_twice_by_managed_entries() -> None:
    line = only_problem(managed("a", 8001), managed("b", 8001))
    assert line == (
        "entry 1 (b): url: host port 8001 is also used by entry 0 (a)"
        " — give each worker its own port in url"
    )


def test_host_port_shared_by_managed_and_loopback_external() -> None:
    line = only_problem(external("ext", "http://localhost:8001"), managed("a", 8001))
    assert line.startswith("entry 1 (a): url: host port 8001 is also used by entry 0 (ext)")


def test_remote_external_port_does_not_conflict() -> None:
    assert len(parse(managed("a", 9000), external("b", "http://10.0.0.5:9000")).entries) == 2


def test_reserved_port() -> None:
    reserved = {9935: "byoc-orch's own HTTP API (BYOC_ORCH_PORT)"}
    line = only_problem(managed(port=9935), reserved=reserved)
    assert line == (
        "entry 0 (comfyui): url: port 9935 is taken by byoc-orch's own HTTP API (BYOC_ORCH_PORT)"
        " — choose another port for this entry's url"
    )


def test_every_problem_is_listed_in_file_order() -> None:
    found = problems(
        managed("a", 8001),
        managed("b", 8001),
        {"pipeline": "p"},
        managed("c", 8003, gpus="two", capacity=0, url="http://10.0.0.1:8003"),
        managed("d", 8004, warm="yes"),
    )
    indexes = [int(re.match(r"entry (\d+)", line).group(1)) for line in found]  # type: ignore[union-attr]
    assert indexes == sorted(indexes)
    assert len(found) == 7, found
    joined = "\n".join(found)
    for fragment in (
        "(b): url: host port",
        "entry 2: model_id:",
        "entry 2: container:",
        "(c): gpus:",
        "(c): capacity:",
        "(c): url: host 10.0.0.1",
        "(d): warm:",
    ):
        assert fragment in joined


def test_a_bad_field_does_not_hide_the_cross_field_rules() -> None:
    found = problems(managed(container="Bad/Image", url="http://10.0.0.1:8001", privileged=True))
    assert [line.split(": ")[1] for line in found] == ["container", "url", "privileged"]


def test_error_carries_the_warnings_too() -> None:
    with pytest.raises(ModelsFileError) as caught:
        parse(managed(capacity=0, contianer_port=1))
    assert [p.field for p in caught.value.warnings] == ["contianer_port"]
    assert [p.field for p in caught.value.problems] == ["capacity"]


def test_many_unknown_fields_warn_once_past_twenty() -> None:
    found = warnings_of(external(**{f"zz{index}": 1 for index in range(100)}))
    assert len(found) == 21
    assert found[-1] == (
        "entry 0 (remote): 80 more unknown fields, ignored — remove the fields byoc-orch and "
        "go-livepeer do not read"
    )


def test_container_limits_warn_on_external_entries() -> None:
    found = warnings_of(external(cap_add=["NET_RAW"], memory="1g", cpus=1))
    assert [line.split(": ")[1] for line in found] == ["cap_add", "memory", "cpus"]
    assert all("ignored: this entry has no container" in line for line in found)
