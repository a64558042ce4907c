"""aiModels.json as JSON: syntax errors by line and column with their fix, and input
that would exhaust the parser refused in one problem."""

from __future__ import annotations

import json

import pytest

from byoc_orch.aimodels import parse_models
from tests.aimodels_helpers import external, managed, only_problem, problems_of


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
