"""The shipped JSON Schema matches the model, and describes the example file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from byoc_orch.schema import aimodels_json_schema, render

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "config" / "aimodels.schema.json"
REGENERATE = "python -m byoc_orch.schema > config/aimodels.schema.json"
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def test_committed_schema_is_current() -> None:
    assert COMMITTED.read_text() == render(), (
        f"{COMMITTED.relative_to(ROOT)} is out of date with the pydantic model; "
        f"regenerate it with: {REGENERATE}"
    )


def test_module_prints_the_schema() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "byoc_orch.schema"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert result.stdout == render()
    assert result.stdout.endswith("}\n")


def test_schema_shape() -> None:
    schema = aimodels_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "aiModels.json"
    assert schema["type"] == "array"
    entry = resolve(schema, schema["items"])
    assert entry["required"] == ["pipeline", "model_id"]
    token_types = [option.get("type") for option in entry["properties"]["token"]["anyOf"]]
    assert "string" in token_types
    undocumented = [
        name for name, prop in entry["properties"].items() if not prop.get("description")
    ]
    assert undocumented == []


def test_example_file_matches_the_schema() -> None:
    example = json.loads((ROOT / "aiModels.example.json").read_text())
    schema = aimodels_json_schema()
    assert check(schema, schema, example) == []


def test_the_schema_check_catches_wrong_types() -> None:
    schema = aimodels_json_schema()
    bad = [{"pipeline": "p", "warm": "true", "gpus": "two", "capacity": 0}]
    assert set(check(schema, schema, bad)) == {
        "$[0]: missing model_id",
        "$[0].capacity: below minimum 1",
        "$[0].gpus: matches no alternative",
        "$[0].warm: not boolean",
    }


def test_the_schema_has_the_container_limits_and_the_bounds() -> None:
    schema = aimodels_json_schema()
    entry = resolve(schema, schema["items"])
    for name in ("cap_add", "memory", "cpus"):
        assert name in entry["properties"]
    good = [{"pipeline": "p", "model_id": "m", "cap_add": ["NET_RAW"], "memory": "8g", "cpus": 2}]
    assert check(schema, schema, good) == []
    bad = [{"pipeline": "p", "model_id": "m", "capacity": 10_001, "memory": 1024, "cpus": 2000}]
    assert set(check(schema, schema, bad)) == {
        "$[0].capacity: above maximum 10000",
        "$[0].memory: matches no alternative",
        "$[0].cpus: matches no alternative",
    }


def resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def check(root: dict[str, Any], node: dict[str, Any], value: Any, where: str = "$") -> list[str]:
    """Just enough JSON Schema (type, enum, bounds, pattern, required, items) for these tests."""
    node = resolve(root, node)
    if "anyOf" in node:
        if any(not check(root, option, value, where) for option in node["anyOf"]):
            return []
        return [f"{where}: matches no alternative"]
    kind = node.get("type")
    if kind is not None:
        is_bool = isinstance(value, bool)
        if not isinstance(value, JSON_TYPES[kind]) or (is_bool and kind != "boolean"):
            return [f"{where}: not {kind}"]
    if "enum" in node and value not in node["enum"]:
        return [f"{where}: not one of {node['enum']}"]
    if "minimum" in node and value < node["minimum"]:
        return [f"{where}: below minimum {node['minimum']}"]
    if "maximum" in node and value > node["maximum"]:
        return [f"{where}: above maximum {node['maximum']}"]
    if "pattern" in node and not re.search(node["pattern"], value):
        return [f"{where}: does not match {node['pattern']}"]
    errors: list[str] = []
    if isinstance(value, list) and "items" in node:
        for index, item in enumerate(value):
            errors += check(root, node["items"], item, f"{where}[{index}]")
    if isinstance(value, dict):
        errors += [
            f"{where}: missing {name}" for name in node.get("required", []) if name not in value
        ]
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                errors += check(root, sub, item, f"{where}.{key}")
    return errors
