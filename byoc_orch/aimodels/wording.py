"""How aiModels.json problems word what the operator wrote: a value shown short (never a secret),
a size in bytes, a field's place (``volumes[2]``), and pydantic's own errors turned into a
message and a fix."""

from __future__ import annotations

import json

from pydantic_core import ErrorDetails

from byoc_orch.aimodels.problems import Issue, Loc


def json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


def kind_of(value: object) -> str:
    """The value's JSON type with its article, for when the value itself must not show."""
    kind = json_type(value)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def describe(value: object) -> str:
    """A value as the operator wrote it, short enough for one line."""
    kind = json_type(value)
    if isinstance(value, dict | list):
        return kind_of(value)
    text = json.dumps(value)
    if len(text) > 40:
        text = text[:37] + "…"
    return f"{kind} {text}" if value is not None else "null"


def show_bytes(size: int) -> str:
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size / unit:.4g} {name}"
    return f"{size} bytes"


# --------------------------------------------------------------------------- error wording

_EXPECTED = {
    "string_type": ("a string", "string"),
    "bool_type": ("true or false", "boolean"),
    "int_type": ("an integer", "number"),
    "float_type": ("a number", "number"),
    "dict_type": ("an object", "object"),
    "list_type": ("an array", "array"),
}
_MISSING_FIX = {
    "pipeline": 'add "pipeline": "<pipeline name>", e.g. "live-video-to-video"',
    "model_id": 'add "model_id": "<model name>"',
}
# Values never echoed in messages: the token, and container env that may carry credentials.
_SECRET_FIELDS = frozenset({"token", "env", "optimization_flags"})


def issues_from_error(error: ErrorDetails) -> list[Issue]:
    ctx = error.get("ctx") or {}
    if error["type"] == "entry_rules":
        return list(ctx["issues"])
    loc = tuple(error["loc"])
    if "fix" in ctx:
        return [Issue((*loc, *ctx.get("at", ())), ctx["message"], ctx["fix"])]
    return [Issue(loc, *_wording(error, loc))]


def _wording(error: ErrorDetails, loc: Loc) -> tuple[str, str]:
    kind, value = error["type"], error.get("input")
    ctx = error.get("ctx") or {}
    name = str(loc[0]) if loc else "value"
    got = f"got {kind_of(value)}" if name in _SECRET_FIELDS else f"got {describe(value)}"
    if kind == "missing":
        return "required but missing", _MISSING_FIX.get(name, f'add "{name}"')
    if kind in _EXPECTED:
        expected, json_kind = _EXPECTED[kind]
        return f"expected {expected}, {got}", _type_fix(expected, json_kind, value, name)
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", '"')
        return f"must be {choices}, {got}", f"use {choices}"
    bounds = {
        "greater_than_equal": ("ge", "at least {}", "use {} or more"),
        "greater_than": ("gt", "more than {}", "use a value above {}"),
        "less_than_equal": ("le", "at most {}", "use {} or less"),
    }
    if kind in bounds:
        key, rule, fix = bounds[kind]
        limit = ctx[key]
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {rule.format(limit)}, {got}", fix.format(limit)
    if kind == "string_too_short":
        return "must not be empty", "give it a value"
    if kind == "too_short":
        return "must not be empty", f'give at least one item, or remove "{name}"'
    if kind == "too_long":
        limit = ctx.get("max_length")
        return f"has more than {limit} items", f"keep at most {limit}"
    return error["msg"], "see the aiModels.json schema in config/aimodels.schema.json"


def _type_fix(expected: str, json_kind: str, value: object, name: str) -> str:
    if isinstance(value, str) and name not in _SECRET_FIELDS:
        try:
            unquoted = json.loads(value)
        except ValueError:
            unquoted = None
        if unquoted is not None and json_type(unquoted) == json_kind:
            return f"remove the quotes: write {value}"
    if json_kind == "string" and isinstance(value, int | float | bool):
        if name in _SECRET_FIELDS:
            return "put the value in double quotes"
        return f"put it in double quotes: {json.dumps(json.dumps(value))}"
    return f"write {expected}"


def render_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, str) and not part.isprintable():
            part = json.dumps(part)  # NUL, surrogates, control characters: escaped, quoted
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
