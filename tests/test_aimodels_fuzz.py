"""Whatever aiModels.json holds, loading it raises ModelsFileError or returns, and `validate`
exits 0 or 1 with its findings on stdout/stderr: never another exception, never a hang.

Property-based (hypothesis), derandomised and kept to a few seconds so the suite stays fast
and a failure is reproducible; the examples are JSON-shaped documents built from the entry's
own field names with hostile values, raw bytes, and mutations of the shipped example file.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byoc_orch.aimodels import ModelEntry, ModelsFile, ModelsFileError, load_models, parse_models
from byoc_orch.aimodels.placement import GpuPoolError, pool_from
from byoc_orch.gpu import GpuInfo
from byoc_orch.validate_cmd import run_validate

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "aiModels.example.json").read_text()
GPUS = [GpuInfo(0, "GPU-0", "NVIDIA L4", 24 << 30), GpuInfo(1, "GPU-1", "NVIDIA L4", 24 << 30)]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NASTY_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff x",
    "\x1b[31m",
    "all",
    "none",
    "per-gpu",
    "host",
    "2g",
    "99999999999999999999p",
    "1" * 40,
    "NET_RAW",
    "cap_sys_admin",
    "ALL",
    "busybox",
    "livepeer/comfystream:latest",
    "http://127.0.0.1:8001",
    "http://localhost:0",
    "http://u:p@127.0.0.1:8002",
    "http://[::1",
    "https://10.0.0.5:99999",
    "/var/run/docker.sock:/s",
    "//var/run:/r:rw",
    "/etc:/e",
    "/proc/../dev:/d:ro",
    "/srv:/srv:rx",
    "relative:/x",
    "/health",
    "/api",
]
NASTY_NUMBERS: list[Any] = [
    0,
    1,
    -1,
    2,
    8000,
    65535,
    65536,
    10_000,
    10_001,
    2**63,
    10**20,
    10**99,
    -(10**99),
    0.5,
    -0.0,
    1e-30,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
]

FIELDS = [*ModelEntry.model_fields, "Warm", "contianer_port", "gpu", "\x00", "\ud800"]

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(NASTY_NUMBERS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NASTY_TEXT),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=12),
)
json_values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=12,
)
entries = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10)
documents = st.one_of(st.lists(entries, max_size=4), json_values)


def plausible(entry: dict[str, Any], index: int) -> dict[str, Any]:
    """An entry that gets past the first checks, so the deeper ones run too."""
    base = {"pipeline": "p", "model_id": f"m{index}", "container": "busybox"}
    return {**base, "url": f"http://127.0.0.1:{8001 + 10 * index}", **entry}


def dumped(document: object) -> str:
    """JSON text as go-livepeer might be handed it: NaN/Infinity included, surrogates kept."""
    return json.dumps(document, allow_nan=True)


def check_problems(found: list[Any]) -> None:
    for problem in found:
        text = str(problem)
        assert "\x00" not in text
        assert problem.fix or problem.message


def parses_or_refuses(text: str, **kwargs: Any) -> None:
    try:
        models = parse_models(text, source="aiModels.json", **kwargs)
    except ModelsFileError as exc:
        assert exc.problems
        check_problems(exc.problems + exc.warnings)
    else:
        assert isinstance(models, ModelsFile)
        check_problems(models.warnings)


@FUZZ
@given(documents)
def test_any_json_document_parses_or_raises_models_file_error(document: object) -> None:
    parses_or_refuses(dumped(document))


@FUZZ
@given(st.lists(entries, min_size=1, max_size=3), st.booleans())
def test_any_plausible_entries_parse_or_raise_models_file_error(
    raw: list[dict[str, Any]], with_pool: bool
) -> None:
    text = dumped([plausible(entry, index) for index, entry in enumerate(raw)])
    pool = pool_from(None, GPUS) if with_pool else None
    parses_or_refuses(text, gpu_pool=pool, gpu_inventory=GPUS, engine_socket="unix:///run/x.sock")


replica_fields = st.fixed_dictionaries(
    {},
    optional={
        "replicas": st.one_of(st.integers(0, 70), st.just("per-gpu")),
        "gpus": st.one_of(
            st.integers(0, 1030),
            st.sampled_from(["all", "none"]),
            st.lists(st.one_of(st.integers(0, 3), st.sampled_from(["GPU-0", "GPU-1", "x"]))),
        ),
        "replicas_per_gpu": st.integers(0, 17),
        "url": st.integers(1, 65535).map(lambda port: f"http://127.0.0.1:{port}"),
        "network_mode": st.sampled_from(["bridge", "host"]),
        "allow_host_access": st.booleans(),
        "container_port": st.integers(1, 65535),
        "warm": st.booleans(),
    },
)


@FUZZ
@given(
    st.lists(replica_fields, min_size=1, max_size=4),
    st.one_of(st.none(), st.lists(st.sampled_from(["0", "1", "GPU-1", "7"]), max_size=3)),
)
def test_any_replica_layout_places_or_raises_models_file_error(
    raw: list[dict[str, Any]], configured: list[str] | None
) -> None:
    try:
        pool = pool_from(tuple(configured) if configured is not None else None, GPUS)
    except GpuPoolError:
        return
    text = dumped([plausible(entry, index) for index, entry in enumerate(raw)])
    parses_or_refuses(
        text, gpu_pool=pool, gpu_inventory=GPUS, pool_configured=configured is not None
    )


@FUZZ
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=200))
def test_any_text_parses_or_raises_models_file_error(text: str) -> None:
    parses_or_refuses(text)


@FUZZ
@given(st.data())
def test_mutated_example_files_parse_or_raise_models_file_error(data: st.DataObject) -> None:
    text = EXAMPLE
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 8)))
        insert = data.draw(st.sampled_from(['"', ",", "[", "]", "{", "}", "", "\\", "1e999", "-"]))
        text = text[:start] + insert + text[end:]
    parses_or_refuses(text)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_load_or_raise_models_file_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "aiModels.json"
    path.write_bytes(data)
    try:
        load_models(path)
    except ModelsFileError as exc:
        assert exc.problems


@FUZZ
@given(
    st.one_of(
        documents.map(dumped),
        st.lists(entries, max_size=3).map(
            lambda raw: dumped([plausible(entry, index) for index, entry in enumerate(raw)])
        ),
    ),
    st.booleans(),
)
def test_validate_always_exits_0_or_1_with_its_findings_shown(
    tmp_path: Path, text: str, with_gpus: bool
) -> None:
    path = tmp_path / "aiModels.json"
    path.write_text(text, errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    code = run_validate(path, gpu_inventory=(lambda: GPUS) if with_gpus else None, out=out, err=err)
    assert code in (0, 1)
    if code == 0:
        assert out.getvalue().splitlines()[-1].split(":")[0].endswith(("entry", "entries"))
    else:
        assert err.getvalue().strip()
    assert "\x00" not in out.getvalue() + err.getvalue()
    (out.getvalue() + err.getvalue()).encode("utf-8")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 10_000,
        "{" * 10_000,
        '[{"a":' * 5_000,
        '[{"capacity": ' + "9" * 10_000 + "}]",
        '[{"capacity": -' + "9" * 10_000 + "}]",
        '[{"price_per_unit": 1e400}]',
        '[{"price_per_unit": 0.' + "1" * 5000 + "}]",
        '[{"memory": "' + "9" * 10_000 + 'g"}]',
        '[{"pipeline": "p", "model_id": "m", "url": "http://h:1", "token": "\\u0000"}]',
        '["\\ud800"]',
        '{"\\ud800": 1}',
    ],
)
def test_known_hostile_documents(text: str) -> None:
    parses_or_refuses(text)
