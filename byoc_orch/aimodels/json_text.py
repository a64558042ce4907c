"""aiModels.json's text as JSON: decoded within the MAX_* bounds (depth, number size, entries),
keys written twice remembered (Go keeps the last silently), and a syntax error told as the
operator can fix it: a trailing comma, a missing quote or a comment, by line and column."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from functools import partial
from typing import Any

from byoc_orch.aimodels.limits import MAX_ENTRIES, MAX_JSON_DEPTH, MAX_NUMBER_CHARS
from byoc_orch.aimodels.problems import Loc, ModelsFileError, Problem
from byoc_orch.aimodels.wording import describe


class JsonObject(dict[str, Any]):
    """A JSON object that remembers keys written more than once (Go keeps the last silently)."""

    repeated: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            counts = Counter(key for key, _ in pairs)
            obj.repeated = tuple(key for key, n in counts.items() if n > 1)
        return obj


class _NotJson(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


class _BadNumber(ValueError):
    def __init__(self, token: str, message: str) -> None:
        super().__init__(message)
        self.token = token
        self.message = message


def _reject_constant(token: str) -> object:
    raise _NotJson(token)


def _number_size(token: str) -> None:
    if len(token) > MAX_NUMBER_CHARS:
        raise _BadNumber(
            token,
            f"a number {len(token)} characters long; aiModels.json numbers may have at most "
            f"{MAX_NUMBER_CHARS}",
        )


def _parse_int(token: str) -> int:
    _number_size(token)
    return int(token)


def _parse_float(token: str) -> float:
    _number_size(token)
    value = float(token)
    if not math.isfinite(value):
        raise _BadNumber(token, f"{token} is too large for a number")
    return value


# A JSON string (closed or not), a bracket, or a number: enough to find depth and numbers.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]|-?[0-9][0-9.eE+-]*')


def _too_deep(text: str) -> int | None:
    """Where nesting first goes past MAX_JSON_DEPTH (json would recurse into a RecursionError)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return None
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return match.start()
        elif token in ("]", "}"):
            depth -= 1
    return None


def _number_position(text: str, token: str) -> int:
    """Where the number ``token`` first stands outside a string."""
    for match in _TOKENS.finditer(text):
        if match.group() == token:
            return match.start()
    return max(text.find(token), 0)


def decode(text: str, source: str) -> list[Any]:
    at = partial(Problem, None, None, None, source=source)
    deep = _too_deep(text)
    if deep is not None:
        line, column = _line_column(text, deep)
        raise ModelsFileError(
            [
                at(
                    f"line {line} column {column}: arrays and objects are nested more than "
                    f"{MAX_JSON_DEPTH} deep",
                    "an aiModels.json entry nests two or three levels; check for a runaway "
                    "'[' or '{'",
                )
            ]
        )
    try:
        document = json.loads(
            text,
            object_pairs_hook=JsonObject.from_pairs,
            parse_constant=_reject_constant,
            parse_int=_parse_int,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as exc:
        raise ModelsFileError([_syntax_problem(text, exc, source)]) from None
    except _NotJson as exc:
        line, column = _line_column(text, max(text.find(exc.token), 0))
        raise ModelsFileError(
            [
                at(
                    f"line {line} column {column}: {exc.token} is not valid JSON",
                    "use a number, or a string if it is text",
                )
            ]
        ) from None
    except _BadNumber as exc:
        line, column = _line_column(text, _number_position(text, exc.token))
        raise ModelsFileError(
            [
                at(
                    f"line {line} column {column}: {exc.message}",
                    "write a number of a sensible size: aiModels.json numbers are counts, "
                    "ports, seconds, sizes and prices",
                )
            ]
        ) from None
    except RecursionError:
        raise ModelsFileError(
            [
                at(
                    f"arrays and objects are nested more than {MAX_JSON_DEPTH} deep",
                    "check for a runaway '[' or '{'",
                )
            ]
        ) from None
    if not isinstance(document, list):
        fix = "write a JSON array of entries: [ {...}, {...} ]"
        if isinstance(document, dict):
            fix = "wrap the entry in [ ]: [ {...} ]"
        raise ModelsFileError(
            [
                at(
                    f"the top level is {describe(document)}; aiModels.json must be an array "
                    "of entries",
                    fix,
                )
            ]
        )
    if len(document) > MAX_ENTRIES:
        raise ModelsFileError(
            [
                at(
                    f"the file has {len(document)} entries; aiModels.json may have at most "
                    f"{MAX_ENTRIES}",
                    "check that this is the right file; each entry is one model on this host",
                )
            ]
        )
    return document


_SYNTAX_HINTS: tuple[tuple[str, str, str], ...] = (
    (
        "Expecting property name",
        "expected a key in double quotes",
        'quote keys with double quotes, e.g. "model_id"; JSON has no comments or single quotes',
    ),
    ("Expecting ',' delimiter", "a comma is missing between two items", "add ',' here"),
    ("Expecting ':' delimiter", "a ':' is missing after a key", 'write "key": value'),
    (
        "Expecting value",
        "expected a value",
        "check for a missing value, a comment (JSON has none) or a single-quoted string",
    ),
    (
        "Extra data",
        "there is text after the end of the top-level array",
        "keep the whole file one JSON array; move extra entries inside its [ ]",
    ),
    ("Unterminated string", "a string is not closed", 'add the closing "'),
    (
        "Invalid control character",
        "a raw control character (tab or newline) is inside a string",
        "escape it as \\t or \\n",
    ),
    ("Invalid \\escape", "invalid backslash escape in a string", "write a backslash as \\\\"),
)


def _syntax_problem(text: str, exc: json.JSONDecodeError, source: str) -> Problem:
    at = partial(Problem, None, None, None, source=source)
    if text.startswith("\ufeff"):
        return at(
            "line 1 column 1: the file starts with a byte-order mark",
            "save it as UTF-8 without BOM (go-livepeer refuses it too)",
        )
    if not text.strip():
        return at("the file is empty", "write [] for no models, or an array of entries")
    comma = _trailing_comma(text, exc.pos)
    if comma is not None:
        line, column = _line_column(text, comma)
        closer = text[exc.pos]
        return at(
            f"line {line} column {column}: trailing comma before '{closer}'",
            "delete this comma; JSON allows none after the last item",
        )
    message, fix = exc.msg, "fix the JSON syntax here"
    for prefix, hint, hint_fix in _SYNTAX_HINTS:
        if exc.msg.startswith(prefix):
            message, fix = hint, hint_fix
            break
    return at(f"line {exc.lineno} column {exc.colno}: {message}", fix)


def _trailing_comma(text: str, pos: int) -> int | None:
    """Where the comma is when the parser stopped at ']' or '}' right after one."""
    if pos >= len(text) or text[pos] not in "]}":
        return None
    before = text[:pos].rstrip()
    return len(before) - 1 if before.endswith(",") else None


def _line_column(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def repeated_keys(value: object, loc: Loc = ()) -> Iterator[Loc]:
    if isinstance(value, JsonObject):
        for key in value.repeated:
            yield (*loc, key)
        for key, child in value.items():
            yield from repeated_keys(child, (*loc, key))
    elif isinstance(value, list):
        for position, child in enumerate(value):
            yield from repeated_keys(child, (*loc, position))
