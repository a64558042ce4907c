"""aiModels.json: each mistake is reported with its entry, model_id, field and fix."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from byoc_orch.aimodels import (
    GpuRequest,
    ModelEntry,
    ModelsFile,
    ModelsFileError,
    Problem,
    UnreadableModelsFileError,
    load_models,
    parse_models,
    redact_url,
    worker_id,
)
from byoc_orch.image_ref import parse_image_ref
from byoc_orch.placement import ReplicaSlot

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "aiModels.example.json"
SECRET = "s3cr3t-t0ken-value"


def managed(model_id: str = "comfyui", port: int = 8001, **fields: Any) -> dict[str, Any]:
    return {
        "pipeline": "live-video-to-video",
        "model_id": model_id,
        "container": "livepeer/comfystream:latest",
        "url": f"http://127.0.0.1:{port}",
        "warm": True,
        **fields,
    }


def external(
    model_id: str = "remote", url: str = "http://10.0.0.5:9000", **fields: Any
) -> dict[str, Any]:
    return {"pipeline": "text-to-image", "model_id": model_id, "url": url, **fields}


def parse(*entries: object, reserved: dict[int, str] | None = None) -> ModelsFile:
    return parse_models(
        json.dumps(list(entries)), source="aiModels.json", reserved_ports=reserved or {}
    )


def problems_of(text: str, reserved: dict[int, str] | None = None) -> list[str]:
    with pytest.raises(ModelsFileError) as caught:
        parse_models(text, source="aiModels.json", reserved_ports=reserved or {})
    return [str(problem) for problem in caught.value.problems]


def problems(*entries: object, reserved: dict[int, str] | None = None) -> list[str]:
    return problems_of(json.dumps(list(entries)), reserved)


def only_problem(*entries: object, reserved: dict[int, str] | None = None) -> str:
    found = problems(*entries, reserved=reserved)
    assert len(found) == 1, found
    return found[0]


def warnings_of(*entries: object) -> list[str]:
    return [str(warning) for warning in parse(*entries).warnings]


# --------------------------------------------------------------------------- valid files


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


def test_host_access_is_allowed_when_asked_for() -> None:
    (entry,) = parse(
        managed(
            allow_host_access=True,
            privileged=True,
            network_mode="host",
            container_port=8001,
            pid_mode="host",
            volumes=["/var/run/docker.sock:/var/run/docker.sock"],
        )
    ).entries
    assert entry.privileged


# --------------------------------------------------------------------------- JSON syntax


def test_trailing_comma_in_array_names_the_comma() -> None:
    text = '[\n  {"pipeline": "p", "model_id": "m", "url": "http://10.0.0.1:1"},\n]\n'
    column = text.splitlines()[1].rindex(",") + 1
    (line,) = problems_of(text)
    assert line.startswith(f"aiModels.json: line 2 column {column}: trailing comma before ']'")
    assert "delete this comma" in line


def test_trailing_comma_in_object() -> None:
    text = '[{"pipeline": "p",\n  "model_id": "m",\n  }]'
    (line,) = problems_of(text)
    assert line.startswith("aiModels.json: line 2 column 18: trailing comma before '}'")


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('[{"pipeline": "p" "model_id": "m"}]', "line 1 column 19", "comma is missing"),
        ("[{'pipeline': 'p'}]", "line 1 column 3", "double quotes"),
        ('[{"pipeline": }]', "line 1 column 15", "expected a value"),
        ("[]\n[]", "line 2 column 1", "after the end of the top-level array"),
        ('[{"pipeline": "p\n"}]', "line 1 column 17", "control character"),
        ('[{"pipeline": "p"', "line 1 column 18", "comma is missing"),
        ('[{"capacity": NaN}]', "line 1 column 15", "NaN is not valid JSON"),
    ],
)
def test_syntax_errors_give_line_and_column(text: str, where: str, what: str) -> None:
    (line,) = problems_of(text)
    assert line.startswith(f"aiModels.json: {where}: ")
    assert what in line
    assert " — " in line


def test_empty_file() -> None:
    assert problems_of("  \n") == [
        "aiModels.json: the file is empty — write [] for no models, or an array of entries"
    ]


def test_byte_order_mark() -> None:
    (line,) = problems_of("\ufeff[]")
    assert "byte-order mark" in line


def test_top_level_must_be_an_array() -> None:
    (line,) = problems_of(json.dumps(managed()))
    assert line == (
        "aiModels.json: the top level is an object; aiModels.json must be an array of entries"
        " — wrap the entry in [ ]: [ {...} ]"
    )
    assert "array of entries" in problems_of('"x"')[0]


def test_entry_must_be_an_object() -> None:
    line = only_problem(managed(), ["p", "m"])
    assert line.startswith("entry 1: expected an object, got an array — ")


def test_repeated_key_in_an_entry() -> None:
    text = (
        '[{"pipeline": "p", "model_id": "m", "url": "http://10.0.0.1:1",'
        ' "warm": true, "warm": false}]'
    )
    (line,) = problems_of(text)
    assert line.startswith('entry 0 (m): warm: key "warm" appears more than once')
    assert line.endswith("— keep only one of them")


def test_repeated_key_in_a_nested_object() -> None:
    text = json.dumps([managed()])[:-2] + ', "env": {"A": "1", "A": "2"}}]'
    (line,) = problems_of(text)
    assert line.startswith('entry 0 (comfyui): env.A: key "A" appears more than once')


# --------------------------------------------------------------------------- one entry


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


@pytest.mark.parametrize("url", ["127.0.0.1:8001", "ftp://host:1", "http://", "http://h:x"])
def test_unusable_url(url: str) -> None:
    line = only_problem(external(url=url))
    assert line.startswith("entry 0 (remote): url: ")
    assert 'http://127.0.0.1:8001"' in line


def test_host_network_needs_matching_ports() -> None:
    line = only_problem(managed(allow_host_access=True, network_mode="host"))
    assert line.startswith("entry 0 (comfyui): container_port: with network_mode host")
    assert "set container_port to 8001" in line


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"privileged": True}, "privileged"),
        ({"network_mode": "host", "container_port": 8001}, "network_mode"),
        ({"pid_mode": "host"}, "pid_mode"),
    ],
)
def test_host_access_options_need_allow_host_access(fields: dict[str, Any], field: str) -> None:
    line = only_problem(managed(**fields))
    assert line.startswith(f"entry 0 (comfyui): {field}: ")
    assert line.endswith(
        '— set "allow_host_access": true on this entry if you trust the image with the host, '
        "or remove it"
    )


@pytest.mark.parametrize(
    "host",
    [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/home/op/.docker/desktop/docker.sock",
        "/var/run",
        "/run",
        "/",
        "/var/run/",
        "/var/../run",
    ],
)
def test_docker_socket_mount_needs_allow_host_access(host: str) -> None:
    line = only_problem(managed(volumes=["/srv:/srv", f"{host}:/sock"]))
    assert line.startswith(f'entry 0 (comfyui): volumes[1]: "{host}" exposes the Docker socket')
    assert "allow_host_access" in line


def test_harmless_mount_under_var_is_fine() -> None:
    assert parse(managed(volumes=["/var/lib/models:/models"])).entries[0].volumes


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


def test_case_variant_of_a_go_livepeer_field_is_an_error() -> None:
    line = only_problem(managed(Warm=False))
    assert line == (
        "entry 0 (comfyui): Warm: field names are case-sensitive here (go-livepeer reads it as "
        '"warm") — rename it to "warm"'
    )


# --------------------------------------------------------------------------- warnings


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


# --------------------------------------------------------------------------- across entries


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


# --------------------------------------------------------------------------- secrets


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


# --------------------------------------------------------------------------- model and ids


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


# --------------------------------------------------------------------------- problems and files


def test_problem_rendering() -> None:
    assert str(Problem(3, "m", "url", "bad", "fix it")) == "entry 3 (m): url: bad — fix it"
    assert str(Problem(3, None, "pipeline", "bad", "fix")) == "entry 3: pipeline: bad — fix"
    assert str(Problem(1, "m", None, "bad", "")) == "entry 1 (m): bad"
    assert str(Problem(None, None, None, "line 7 column 3: x", "y", "aiModels.json")) == (
        "aiModels.json: line 7 column 3: x — y"
    )


def test_models_file_error_lists_every_problem() -> None:
    error = ModelsFileError([Problem(0, "a", "f", "x", "y"), Problem(1, "b", "g", "z", "w")])
    assert str(error) == "entry 0 (a): f: x — y\nentry 1 (b): g: z — w"
    assert isinstance(error, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "aiModels.json"
    with pytest.raises(UnreadableModelsFileError) as caught:
        load_models(path)
    (problem,) = caught.value.problems
    assert str(problem).startswith(f"{path}: cannot read the file: No such file or directory")


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(UnreadableModelsFileError):
        load_models(tmp_path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "aiModels.json"
    path.write_bytes(b'[\n{"pipeline": "\xff"}]')
    with pytest.raises(ModelsFileError) as caught:
        load_models(path)
    assert "line 2: the file is not UTF-8" in str(caught.value)


def test_load_models_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aiModels.json"
    path.write_text(json.dumps([managed(), external()]))
    models = load_models(path, reserved_ports={9935: "api"})
    assert [entry.model_id for entry in models.entries] == ["comfyui", "remote"]
    assert models.source == str(path)


# --------------------------------------------------------------------------- replicas


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


# --------------------------------------------------------------------------- hostile input


def test_deep_nesting_is_one_problem_with_its_position() -> None:
    (line,) = problems_of("[" * 100_000)
    assert line.startswith("aiModels.json: line 1 column 65: arrays and objects are nested more")
    assert "runaway" in line


def test_nesting_inside_strings_does_not_count() -> None:
    text = json.dumps([external(env={"A": "[" * 500})])
    assert parse_models(text, source="aiModels.json").entries


def test_a_huge_integer_is_refused_with_its_position() -> None:
    text = '[\n  {"pipeline": "p", "model_id": "m", "url": "http://10.0.0.5:1",\n   "capacity": '
    (line,) = problems_of(text + "1" * 5000 + "}]")
    assert line.startswith("aiModels.json: line 3 column 16: a number 5000 characters long;")
    assert "at most 100" in line


def test_a_float_too_large_for_a_double_is_refused() -> None:
    (line,) = problems_of('[{"pipeline": "p", "model_id": "m", "price_per_unit": 1e400}]')
    assert line.startswith("aiModels.json: line 1 column 55: 1e400 is too large for a number")


def test_too_many_entries() -> None:
    (line,) = problems_of(json.dumps([{}] * 2000))
    assert line.startswith("aiModels.json: the file has 2000 entries; aiModels.json may have")


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


def test_many_unknown_fields_warn_once_past_twenty() -> None:
    found = warnings_of(external(**{f"zz{index}": 1 for index in range(100)}))
    assert len(found) == 21
    assert found[-1] == (
        "entry 0 (remote): 80 more unknown fields, ignored — remove the fields byoc-orch and "
        "go-livepeer do not read"
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


# --------------------------------------------------------------------------- host access


@pytest.fixture
def fake_engine(tmp_path: Path) -> Path:
    """A stand-in engine socket in a directory of its own (no root, no Docker needed)."""
    engine = tmp_path / "engine" / "run"
    engine.mkdir(parents=True)
    socket = engine / "engine.sock"
    socket.write_text("")
    return socket


def host_access_problem(volume: str, engine_socket: str | None = None) -> str:
    with pytest.raises(ModelsFileError) as caught:
        parse_models(
            json.dumps([managed(volumes=[volume])]),
            source="aiModels.json",
            engine_socket=engine_socket,
        )
    (problem,) = caught.value.problems
    assert problem.field == "volumes[0]"
    return problem.message


def test_a_symlink_to_the_engine_socket_is_the_socket(tmp_path: Path, fake_engine: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to(fake_engine)
    message = host_access_problem(f"{link}:/var/run/docker.sock", str(fake_engine))
    assert message == (
        f'"{link}" exposes the Docker socket: it resolves to {fake_engine}, the Docker engine '
        "socket, which gives the container root on the host"
    )


def test_the_configured_engine_socket_may_be_a_unix_url(fake_engine: Path) -> None:
    message = host_access_problem(f"{fake_engine}:/s", f"unix://{fake_engine}")
    assert "the Docker engine socket" in message


def test_a_symlink_to_the_socket_directory_exposes_it(tmp_path: Path, fake_engine: Path) -> None:
    link = tmp_path / "rundir"
    link.symlink_to(fake_engine.parent)
    message = host_access_problem(f"{link}:/run", str(fake_engine))
    assert message.startswith(
        f'"{link}" exposes the Docker socket: it resolves to {fake_engine.parent}, which holds '
        f"{fake_engine}, the Docker engine socket"
    )


@pytest.mark.parametrize("suffix", ["/..", "/../..", ""])
def test_parents_of_the_socket_expose_it(fake_engine: Path, suffix: str) -> None:
    spelled = f"{fake_engine.parent}//.{suffix}"
    message = host_access_problem(f"{spelled}:/x", str(fake_engine))
    assert message.startswith(f'"{spelled}" exposes the Docker socket')


def test_the_socket_check_follows_relative_dot_dot(tmp_path: Path, fake_engine: Path) -> None:
    spelled = f"{tmp_path}/elsewhere/../engine/run/./engine.sock"
    message = host_access_problem(f"{spelled}:/x", str(fake_engine))
    assert f"resolves to {fake_engine}, the Docker engine socket" in message


def test_a_sibling_of_the_socket_directory_is_fine(tmp_path: Path, fake_engine: Path) -> None:
    models = tmp_path / "engine" / "models"
    models.mkdir()
    text = json.dumps([managed(volumes=[f"{models}:/models"])])
    assert parse_models(text, source="x", engine_socket=str(fake_engine)).entries


def test_non_unix_engine_endpoints_add_nothing() -> None:
    text = json.dumps([managed(volumes=["/srv/tcp:/x"])])
    assert parse_models(text, source="x", engine_socket="tcp://10.0.0.1:2375").entries


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("//var/run", "exposes the Docker socket"),
        ("/run/containerd", "exposes containerd: it resolves to /run/containerd, containerd's"),
        ("/var/run/containerd/containerd.sock", "exposes containerd"),
        ("/proc", "exposes the host's /proc: it resolves to /proc, the host's processes"),
        ("/proc/sys/kernel", "exposes the host's /proc: it resolves to /proc/sys/kernel, inside"),
        ("/sys", "exposes the host's /sys"),
        ("/dev", "exposes the host's /dev: it resolves to /dev, the host's devices"),
        ("/dev/../dev/sda", "exposes the host's /dev"),
        ("/", "exposes the Docker socket"),
    ],
)
def test_sensitive_host_paths_need_allow_host_access(host: str, reason: str) -> None:
    message = host_access_problem(f"{host}:/mnt")
    assert message.startswith(f'"{host}" {reason}'), message
    text = json.dumps([managed(volumes=[f"{host}:/mnt"], allow_host_access=True)])
    assert parse_models(text, source="x").entries


def test_a_symlink_to_proc_is_proc(tmp_path: Path) -> None:
    link = tmp_path / "p"
    link.symlink_to("/proc")
    assert host_access_problem(f"{link}:/p").startswith(
        f'"{link}" exposes the host\'s /proc: it resolves to /proc,'
    )


@pytest.mark.parametrize("volume", ["/etc:/host-etc", "/etc:/host-etc:rw", "/etc/ssh:/x"])
def test_writable_etc_needs_allow_host_access(volume: str) -> None:
    message = host_access_problem(volume)
    host = volume.split(":")[0]
    assert message.startswith(f'"{host}" mounts the host\'s /etc writable: it resolves to {host};')
    line = only_problem(managed(volumes=[volume]))
    assert line.endswith(
        '— add ":ro" to mount it read-only, or set "allow_host_access": true on this entry if '
        "you trust the image with the host, or mount another path"
    )


@pytest.mark.parametrize(
    "volume", ["/etc/ssl/certs:/etc/ssl/certs:ro", "/etc:/host-etc:ro", "/srv/etc:/etc"]
)
def test_read_only_etc_and_ordinary_paths_are_fine(volume: str) -> None:
    assert parse(managed(volumes=[volume])).entries[0].volumes == [volume]


# --------------------------------------------------------------------------- container limits


def test_cap_add_names_are_normalised() -> None:
    entry = parse(managed(cap_add=["net_raw", "CAP_MKNOD", "cap_sys_chroot", "Audit_Write"]))
    assert entry.entries[0].cap_add == ("NET_RAW", "MKNOD", "SYS_CHROOT", "AUDIT_WRITE")


def test_cap_add_defaults_to_nothing() -> None:
    (entry,) = parse(managed()).entries
    assert entry.cap_add == ()
    assert entry.memory is None
    assert entry.cpus is None


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ("SYS_ADMIN", "cap_add[0]: SYS_ADMIN is beyond Docker's default capabilities"),
        ("cap_net_admin", "cap_add[0]: NET_ADMIN is beyond Docker's default capabilities"),
        ("CHOWN", "cap_add[0]: CHOWN is already in Docker's default set"),
        ("ALL", "cap_add[0]: ALL gives the container every capability"),
    ],
)
def test_capabilities_beyond_those_dropped_need_allow_host_access(
    capability: str, expected: str
) -> None:
    line = only_problem(managed(cap_add=[capability]))
    assert line.startswith(f"entry 0 (comfyui): {expected}")
    assert "allow_host_access" in line
    allowed = parse(managed(cap_add=[capability], allow_host_access=True)).entries[0]
    assert allowed.cap_add == (capability.upper().removeprefix("CAP_"),)


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


def test_container_limits_warn_on_external_entries() -> None:
    found = warnings_of(external(cap_add=["NET_RAW"], memory="1g", cpus=1))
    assert [line.split(": ")[1] for line in found] == ["cap_add", "memory", "cpus"]
    assert all("ignored: this entry has no container" in line for line in found)
