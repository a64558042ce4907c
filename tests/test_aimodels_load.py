"""Loading aiModels.json: problems as the operator reads them, and the file read safely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from byoc_orch.aimodels import ModelsFileError, Problem, UnreadableModelsFileError, load_models
from tests.aimodels_helpers import external, managed


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
