"""aiModels.json fields: each wrong value is named with its field and fix, and no
secret or unusable character gets through."""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import pytest
from pydantic import ValidationError

from byoc_orch.aimodels import ModelEntry, ModelsFileError, parse_models, redact_url
from tests.aimodels_helpers import (
    SECRET,
    external,
    managed,
    only_problem,
    parse,
    problems,
    problems_of,
)


def test_missing_required_fields() -> None:
    found = problems({"url": "http://10.0.0.1:1"})
    assert found == [
        'entry 0: pipeline: required but missing — add "pipeline": "<pipeline name>", '
        'e.g. "live-video-to-video"',
        'entry 0: model_id: required but missing — add "model_id": "<model name>"',
    ]


@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_required_field(blank: str) -> None:
    line = only_problem(managed(pipeline=blank))
    assert line == "entry 0 (comfyui): pipeline: must not be empty — give it a value"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (
            "warm",
            "true",
            'warm: expected true or false, got string "true" — remove the quotes: write true',
        ),
        (
            "capacity",
            "2",
            'capacity: expected an integer, got string "2" — remove the quotes: write 2',
        ),
        ("capacity", 2.5, "capacity: expected an integer, got number 2.5 — write an integer"),
        ("capacity", True, "capacity: expected an integer, got boolean true — write an integer"),
        ("pipeline", 5, 'pipeline: expected a string, got number 5 — put it in double quotes: "5"'),
        (
            "optimization_flags",
            [],
            "optimization_flags: expected an object, got an array — write an object",
        ),
        ("command", "python app.py", 'command: expected an array, got string "python app.py"'),
        (
            "env",
            {"N": 8},
            "env.N: expected a string, got a number — put the value in double quotes",
        ),
        ("container_port", 70000, "container_port: must be at most 65535, got number 70000"),
        (
            "pull",
            "sometimes",
            'pull: must be "missing", "always" or "never", got string '
            '"sometimes" — use "missing", "always" or "never"',
        ),
        ("stream_prefix", "/v1", 'stream_prefix: must be "auto", "" or "/api"'),
        ("health_path", "health", "health_path: \"health\" must be a path starting with '/'"),
        ("startup_timeout", 0, "startup_timeout: must be more than 0, got number 0"),
        ("shm_size", "lots", 'shm_size: "lots" is not a size'),
        (
            "optimization_flags",
            {"STEPS": 4},
            "optimization_flags.STEPS: expected a string or true/false, got a number — put "
            "the value in double quotes; go-livepeer reads flags only as strings or booleans",
        ),
    ],
)
def test_wrong_types_name_the_field_and_both_types(
    field: str, value: object, expected: str
) -> None:
    line = only_problem({**managed(), field: value})
    assert line.startswith("entry 0 (comfyui): "), line
    assert expected in line


def test_capacity_must_be_positive() -> None:
    for capacity in (0, -1):
        line = only_problem(managed(capacity=capacity))
        assert line == (
            f"entry 0 (comfyui): capacity: must be at least 1, got number {capacity}"
            " — use 1 or more"
        )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"price_per_unit": "1/3"}, 'price_per_unit: expected a JSON number, got string "1/3"'),
        ({"price_per_unit": "0.5"}, "go-livepeer's JSONRat refuses quoted values"),
        ({"price_per_unit": -1}, "price_per_unit: must not be negative"),
        ({"price_per_unit": None}, "price_per_unit: expected a JSON number, got null"),
        ({"pixels_per_unit": 0.5}, "pixels_per_unit: must be a positive whole number"),
        ({"pixels_per_unit": 0}, "pixels_per_unit: must be a positive whole number"),
    ],
)
def test_invalid_prices(fields: dict[str, Any], expected: str) -> None:
    line = only_problem(managed(**fields))
    assert line.startswith("entry 0 (comfyui): ")
    assert expected in line
    assert " — " in line


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        (
            "two",
            'unknown gpus value string "two" — use "all", a count such as 2, a list of '
            'device indexes or UUIDs such as [0], or "none"',
        ),
        (0, 'a GPU count must be at least 1, got 0 — use "none" for no GPUs'),
        (-1, 'a GPU count must be at least 1, got -1 — use "all"'),
        ("0,1", 'unknown gpus value string "0,1" — write the devices as a JSON list: [0, 1]'),
        ("2", "write the count without quotes: 2, or the device as a list: [2]"),
        (True, "unknown gpus value boolean true"),
        (1.5, "unknown gpus value number 1.5"),
        ([], 'the device list is empty — use "none"'),
        ([0, 0], "device 0 is listed twice"),
        ([-1], "number -1 is not a device index"),
        (["GPU 1"], 'string "GPU 1" is not a device index'),
    ],
)
def test_unknown_gpus_values(gpus: object, expected: str) -> None:
    line = only_problem(managed(gpus=gpus))
    assert line.startswith("entry 0 (comfyui): gpus: ")
    assert expected in line


def test_bad_image_reference_includes_the_reason() -> None:
    line = only_problem(managed(container="Livepeer/ComfyStream:latest"))
    assert line.startswith("entry 0 (comfyui): container: invalid image reference: ")
    assert "uppercase" in line
    assert "— write it as docker pull takes it" in line


@pytest.mark.parametrize("url", ["127.0.0.1:8001", "ftp://host:1", "http://", "http://h:x"])
def test_unusable_url(url: str) -> None:
    line = only_problem(external(url=url))
    assert line.startswith("entry 0 (remote): url: ")
    assert 'http://127.0.0.1:8001"' in line


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        ("models:/models", 'host path "models" is not absolute'),
        ("./models:/models", 'host path "./models" is not absolute'),
        ("/srv/models", "is not host_path:container_path"),
        ("/srv/models:/models:rx", "is not host_path:container_path"),
        ("/srv/models:models", 'container path "models" is not absolute'),
    ],
)
def test_bad_volumes(volume: str, expected: str) -> None:
    line = only_problem(managed(volumes=[volume]))
    assert line.startswith("entry 0 (comfyui): volumes[0]: ")
    assert expected in line
    assert '— write "/host/path:/container/path"' in line


def test_env_names_must_be_valid() -> None:
    line = only_problem(managed(env={"GOOD": "1", "1BAD": "x", "A-B": "y"}))
    assert line == (
        'entry 0 (comfyui): env: not valid environment variable names: "1BAD", "A-B" — use '
        "letters, digits and '_', not starting with a digit (e.g. MY_FLAG)"
    )


def test_token_never_shows() -> None:
    (entry,) = parse(managed(token=SECRET)).entries
    assert SECRET not in repr(entry)
    assert SECRET not in str(entry)
    assert SECRET not in str(entry.model_dump())
    assert SECRET not in entry.model_dump_json()
    assert SECRET not in json.dumps(entry.model_dump(mode="json"))


def test_token_never_shows_in_errors() -> None:
    with pytest.raises(ModelsFileError) as caught:
        parse(managed(token=SECRET, capacity=0, url="http://10.0.0.1:8001"))
    assert SECRET not in str(caught.value)
    with pytest.raises(ValidationError) as direct:
        ModelEntry.model_validate(managed(token=SECRET, url="http://10.0.0.1:1"))
    assert SECRET not in str(direct.value)


def test_env_values_of_the_wrong_type_are_not_echoed() -> None:
    for fields in ({"env": {"HF_TOKEN": 987654321}}, {"optimization_flags": {"K": 987654321}}):
        line = only_problem(managed(**fields))
        assert "987654321" not in line


def test_token_of_the_wrong_type_is_not_echoed() -> None:
    line = only_problem(managed(token=123456789))
    assert line == (
        "entry 0 (comfyui): token: expected a string, got a number — put the value in double quotes"
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model_id": "m\x00x"}, "model_id"),
        ({"pipeline": "p\x00"}, "pipeline"),
        ({"url": "http://127.0.0.1:8001/\x00"}, "url"),
        ({"container": "busybox\x00"}, "container"),
        ({"env": {"A": "x\x00y"}}, "env.A"),
        ({"env": {"A\x00": "x"}}, 'env."A\\u0000"'),
        ({"command": ["run", "x\x00"]}, "command[1]"),
        ({"volumes": ["/srv:/srv", "/a\x00:/b"]}, "volumes[1]"),
        ({"optimization_flags": {"F": "a\x00"}}, "optimization_flags.F"),
        ({"cap_add": ["NET_RAW\x00"]}, "cap_add[0]"),
        ({"health_path": "/h\x00"}, "health_path"),
        ({"gpus": ["GPU-\x00"]}, "gpus[0]"),
        ({"comment": {"deep": ["\x00"]}}, "comment.deep[0]"),
        ({"x\x00": 1}, '"x\\u0000"'),
    ],
)
def test_nul_characters_are_refused_naming_the_field(fields: dict[str, Any], field: str) -> None:
    found = problems(managed(**fields))
    expected = f"{field}: " + ("the key " if '\\u0000"' in field else "")
    nul = [line for line in found if "NUL character" in line]
    assert len(nul) == 1, found
    assert f": {expected}contains a NUL character (\\u0000) — remove it" in nul[0]
    assert "\x00" not in "".join(found)


def test_a_nul_in_model_id_leaves_it_out_of_the_entry_name() -> None:
    (line,) = problems(managed(model_id="a\x00b"))
    assert line.startswith("entry 0: model_id: contains a NUL character")


def test_unpaired_surrogates_are_refused() -> None:
    (line,) = problems_of('[{"pipeline": "p", "model_id": "m\\ud800", "url": "http://h:1"}]')
    assert line == (
        "entry 0: model_id: contains an unpaired surrogate (\\ud800), which is not a character "
        "— write the character itself, or a complete \\uXXXX\\uXXXX surrogate pair"
    )


def test_a_nul_is_refused_when_the_model_is_built_directly() -> None:
    with pytest.raises(ValidationError, match="NUL character"):
        ModelEntry.model_validate(managed(env={"A": "\x00"}))


def test_other_problems_of_an_entry_with_a_nul_are_still_reported() -> None:
    found = problems(managed(command=["\x00"], capacity=0))
    assert [line.split(": ")[1] for line in found] == ["command[0]", "capacity"]


def test_capacity_is_bounded_and_says_it_is_per_replica() -> None:
    assert parse(managed(capacity=10_000)).entries[0].capacity == 10_000
    line = only_problem(managed(capacity=10**20))
    assert line == (
        "entry 0 (comfyui): capacity: must be at most 10000, got number 100000000000000000000: "
        "capacity is the sessions one container (each replica) serves at once, not a total — "
        "use what one container can really serve, e.g. 1; for more sessions, add replicas"
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"startup_timeout": 1e20}, "startup_timeout: must be at most 604800"),
        ({"gpus": 10**6}, "gpus: a GPU count must be at most 1024"),
        ({"gpus": [5000]}, "gpus: number 5000 is not a device index"),
        ({"shm_size": 10**30}, "shm_size: must be at most 16 TiB"),
        ({"shm_size": "9" * 50}, "shm_size: the size has 50 digits"),
        ({"shm_size": "99999999p"}, "shm_size: must be at most 16 TiB"),
        ({"volumes": ["/srv:/srv"] * 300}, "volumes: has more than 256 items"),
    ],
)
def test_absurd_numbers_are_refused(fields: dict[str, Any], expected: str) -> None:
    assert only_problem(managed(**fields)).startswith(f"entry 0 (comfyui): {expected}")


def test_prices_keep_accepting_what_go_livepeer_accepts() -> None:
    entry = parse(managed(price_per_unit=1e-30, pixels_per_unit=10**90, currency="USD")).entries[0]
    assert entry.price_per_unit == Fraction(1, 10**30)
    assert entry.pixels_per_unit == 10**90
    huge = "1" + "0" * 98
    text = json.dumps([managed(pixels_per_unit=1)]).replace(
        '"pixels_per_unit": 1', f'"pixels_per_unit": {huge}'
    )
    assert parse_models(text, source="x").entries[0].pixels_per_unit == 10**98


def test_non_finite_prices_are_refused_when_the_model_is_built_directly() -> None:
    with pytest.raises(ValidationError, match="not a finite number"):
        ModelEntry.model_validate(managed(price_per_unit=float("inf")))


@pytest.mark.parametrize("token", ["", " ", "\t\n"])
def test_blank_tokens_are_refused_without_echoing(token: str) -> None:
    line = only_problem(managed(token=token))
    assert line == (
        "entry 0 (comfyui): token: is empty or only whitespace, so the worker would get no "
        'usable token — give the worker\'s token, or remove "token" to send none'
    )


def test_url_credentials_never_show_in_problems() -> None:
    line = only_problem(managed(url="http://op:hunter2@127.0.0.1:8001/x"))
    assert '"http://***@127.0.0.1:8001/x" must be exactly http://127.0.0.1:PORT' in line
    assert "hunter2" not in only_problem(managed(url="http://op:hunter2@10.0.0.1:8001"))
    line = only_problem(external(url="http://op:hunter2@10.0.0.1:x"))
    assert "hunter2" not in line
    assert '"http://***@10.0.0.1:x" is not a valid URL' in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@h:1/x", "http://***@h:1/x"),
        ("https://token@h", "https://***@h"),
        ("http://h:1/a@b", "http://h:1/a@b"),
        ("http://h:1?x=@", "http://h:1?x=@"),
        ("http://a@b@h:1#f", "http://***@h:1#f"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_cap_add_names_are_normalised() -> None:
    entry = parse(managed(cap_add=["net_raw", "CAP_MKNOD", "cap_sys_chroot", "Audit_Write"]))
    assert entry.entries[0].cap_add == ("NET_RAW", "MKNOD", "SYS_CHROOT", "AUDIT_WRITE")


def test_cap_add_defaults_to_nothing() -> None:
    (entry,) = parse(managed()).entries
    assert entry.cap_add == ()
    assert entry.memory is None
    assert entry.cpus is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["NET_RAWW"], 'cap_add[0]: string "NET_RAWW" is not a Linux capability — did you mean '),
        (["NET_RAW", "FOO"], 'cap_add[1]: string "FOO" is not a Linux capability — use one of'),
        ([1], "cap_add[0]: expected a capability name, got number 1"),
        ("NET_RAW", 'cap_add: expected an array of capability names, got string "NET_RAW"'),
        (["NET_RAW", "cap_net_raw"], "cap_add[1]: NET_RAW is listed twice"),
    ],
)
def test_bad_capabilities(value: object, expected: str) -> None:
    line = only_problem(managed(cap_add=value))
    assert line.startswith(f"entry 0 (comfyui): {expected}")


def test_unknown_capability_lists_the_valid_ones() -> None:
    line = only_problem(managed(cap_add=["FOO"]))
    assert "AUDIT_CONTROL, AUDIT_READ," in line
    assert "WAKE_ALARM (with or without CAP_)" in line


@pytest.mark.parametrize(
    ("memory", "expected"),
    [("8g", 8 << 30), ("512m", 512 << 20), (6 << 20, 6 << 20), ("1.5g", 3 << 29)],
)
def test_memory_takes_bytes_or_docker_sizes(memory: object, expected: int) -> None:
    assert parse(managed(memory=memory)).entries[0].memory == expected


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        (1000, "memory: must be at least 6 MiB (Docker refuses a smaller limit), got 1000 bytes"),
        ("5m", "memory: must be at least 6 MiB (Docker refuses a smaller limit), got 5 MiB"),
        ("1p", "memory: must be at most 16 TiB, got 1024 TiB"),
        ("lots", 'memory: "lots" is not a size'),
        (True, "memory: expected an integer, got boolean true"),
        (8.5e9, "memory: expected an integer, got number 8500000000.0"),
    ],
)
def test_bad_memory(memory: object, expected: str) -> None:
    assert only_problem(managed(memory=memory)).startswith(f"entry 0 (comfyui): {expected}")


@pytest.mark.parametrize("cpus", [0.5, 2, 1024])
def test_cpus(cpus: float) -> None:
    assert parse(managed(cpus=cpus)).entries[0].cpus == cpus


@pytest.mark.parametrize(
    ("cpus", "expected"),
    [
        (0, "cpus: must be more than 0, got number 0"),
        (-1, "cpus: must be more than 0"),
        (1025, "cpus: must be at most 1024, got number 1025"),
        ("2", 'cpus: expected a number, got string "2" — remove the quotes: write 2'),
        (True, "cpus: expected a number, got boolean true"),
    ],
)
def test_bad_cpus(cpus: object, expected: str) -> None:
    assert only_problem(managed(cpus=cpus)).startswith(f"entry 0 (comfyui): {expected}")
