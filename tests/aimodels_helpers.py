"""Entries and parsing shortcuts shared by the aiModels.json tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from byoc_orch.aimodels import ModelsFile, ModelsFileError, parse_models

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
