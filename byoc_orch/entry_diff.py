"""What a reload changes in one entry, field by field (old → new), for `reload --dry-run` and
the reload's answer. Secrets stay secret: a token or an env value is only said to be set,
changed or removed; credentials in a url are masked."""

from __future__ import annotations

import json
from typing import Any

from byoc_orch.aimodels import ModelEntry
from byoc_orch.redact import display_url

SHOWN_CHARS = 80


def entry_changes(
    old: ModelEntry, new: ModelEntry, *, replicas: tuple[int, int]
) -> list[dict[str, str]]:
    """Each changed field as {"field", "old", "new"}; `replicas`: how many containers the
    entry ran and will run (``"per-gpu"`` or a changed GPU pool changes it without the field)."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    changes: list[dict[str, str]] = []
    for name in ModelEntry.model_fields:
        was, now = before.get(name), after.get(name)
        if was == now:
            continue
        if name == "token":
            changes.append(_change(name, _presence(was), _presence(now)))
        elif name == "env" and isinstance(was, dict) and isinstance(now, dict):
            for key in sorted(was.keys() | now.keys()):
                if was.get(key) != now.get(key):
                    changes.append(
                        _change(f"env.{key}", _presence(was.get(key)), _presence(now.get(key)))
                    )
        elif name == "url":
            changes.append(_change(name, _url(was), _url(now)))
        else:
            changes.append(_change(name, _shown(was), _shown(now)))
    if replicas[0] != replicas[1] and before.get("replicas") == after.get("replicas"):
        changes.append(_change("replicas (placed)", str(replicas[0]), str(replicas[1])))
    return changes


def _change(field: str, old: str, new: str) -> dict[str, str]:
    return {"field": field, "old": old, "new": new}


def _presence(value: Any) -> str:
    return "(unset)" if value is None else "(set, hidden)"


def _url(value: Any) -> str:
    return "(unset)" if value is None else display_url(str(value))


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
