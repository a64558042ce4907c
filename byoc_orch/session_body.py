"""A session call's body (start, stop, params), parsed at most once and passed along.

Three readers want it: naming the session (a `gateway_request_id` field), checking a start or
params body is acceptable JSON, and the params kept in the session table. Each reads the one
parse; a body nobody needs to read (a stop named by its header) is never parsed. The session
table keeps params and relays them in /sessions, so nesting is bounded (MAX_JSON_DEPTH).
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64
_DEEP = f"nested deeper than {MAX_JSON_DEPTH} levels"


class SessionBody:
    """The raw bytes, and what JSON makes of them on first use."""

    __slots__ = ("_checked", "_loaded", "_problem", "_value", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._loaded = False
        self._value: Any = None
        self._problem: str | None = None
        """Why the body is not JSON (or too deep for json to read); None once it loaded."""
        self._checked = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            self._value = json.loads(self.raw)
        except RecursionError:
            self._problem = _DEEP
        except (ValueError, UnicodeDecodeError) as exc:
            self._problem = str(exc)

    @property
    def error(self) -> str | None:
        """Why the body is not an acceptable JSON document (not JSON, or nested deeper than
        MAX_JSON_DEPTH), or None."""
        self._load()
        if self._problem is None and not self._checked:
            self._checked = True
            if _depth(self._value) > MAX_JSON_DEPTH:
                self._problem = _DEEP
        return self._problem

    def json(self) -> Any:
        """The parsed document, or ValueError saying why there is none."""
        problem = self.error
        if problem is not None:
            raise ValueError(problem)
        return self._value

    def named(self) -> str | None:
        """The `gateway_request_id` of a JSON object body (read leniently: any JSON object,
        however deep), else None."""
        if self.raw[:1] != b"{":
            return None
        self._load()
        value = self._value
        found = value.get("gateway_request_id") if isinstance(value, dict) else None
        if isinstance(found, str) and found.strip():
            return found.strip()
        return None

    def params(self) -> Any:
        """What a params call sets: the `params` field when that is all there is (besides the
        session's id), else the whole body; None when it is not acceptable JSON."""
        if self.error is not None:
            return None
        payload = self._value
        if isinstance(payload, dict):
            payload = {k: v for k, v in payload.items() if k != "gateway_request_id"}
            if set(payload) == {"params"}:
                return payload["params"]
        return payload


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level > MAX_JSON_DEPTH:
                return level
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest
