"""The JSON Schema of aiModels.json, generated from the pydantic model.

Shipped as config/aimodels.schema.json so editors can check the file as it is typed; generating
it from the model keeps the two from drifting (a test compares them).
Regenerate with ``python -m byoc_orch.schema > config/aimodels.schema.json``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from byoc_orch.aimodels import ModelEntry

__all__ = ["aimodels_json_schema", "render"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def aimodels_json_schema() -> dict[str, Any]:
    """The schema of the whole file: an array of entries."""
    schema = TypeAdapter(list[ModelEntry]).json_schema()
    return {
        "$schema": _DIALECT,
        "title": "aiModels.json",
        "description": "Models served by go-livepeer and byoc-orch. An entry with 'container' "
        "is run by byoc-orch (managed); one with only 'url' is a worker run elsewhere "
        "(external). Unknown keys are allowed: go-livepeer ignores them, byoc-orch warns.",
        **schema,
    }


def render() -> str:
    """The schema as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(aimodels_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render(), end="")
