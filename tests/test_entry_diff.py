"""A reload's changes field by field, secrets hidden, and how `reload` prints them."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest

from byoc_orch import console
from byoc_orch.aimodels import ModelEntry
from byoc_orch.entry_diff import entry_changes
from byoc_orch.settings import Settings

BASE: dict[str, Any] = {
    "pipeline": "live-video-to-video",
    "model_id": "m",
    "container": "127.0.0.1:5000/worker:1",
    "url": "http://127.0.0.1:8100",
    "warm": True,
    "gpus": "none",
}


def entry(**fields: Any) -> ModelEntry:
    return ModelEntry.model_validate({**BASE, **fields})


def test_each_changed_field_old_to_new_and_secrets_hidden() -> None:
    old = entry(capacity=1, env={"HF_TOKEN": "hf-old", "MODE": "a"})
    new = entry(
        capacity=3,
        container="127.0.0.1:5000/worker:2",
        token="tok-secret-1",
        env={"HF_TOKEN": "hf-new", "MODE": "a"},
    )
    changes = {c["field"]: (c["old"], c["new"]) for c in entry_changes(old, new, replicas=(1, 1))}
    assert changes == {
        "token": ("(unset)", "(set, hidden)"),
        "capacity": ("1", "3"),
        "container": ("127.0.0.1:5000/worker:1", "127.0.0.1:5000/worker:2"),
        "env.HF_TOKEN": ("(set, hidden)", "(set, hidden)"),
    }
    shown = repr(changes)
    assert "hf-old" not in shown and "hf-new" not in shown and "tok-secret-1" not in shown


def test_a_pool_change_shows_as_placed_replicas() -> None:
    same = entry()
    assert entry_changes(same, same, replicas=(3, 2)) == [
        {"field": "replicas (placed)", "old": "3", "new": "2"}
    ]


def test_reload_prints_a_scale_down_as_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {
        "result": "planned",
        "added": [],
        "removed": [],
        "replaced": [],
        "scaled": ["e1"],
        "updated": [],
        "unchanged": ["e2"],
        "changes": {"e1": [{"field": "replicas", "old": "3", "new": "2"}]},
    }

    def answer(self: console.DaemonClient, method: str, path: str, **_: Any) -> httpx.Response:
        return httpx.Response(200, json=body)

    monkeypatch.setattr(console.DaemonClient, "call", answer)
    out = io.StringIO()
    assert console.reload(Settings(), dry_run=True, out=out) == 0
    text = out.getvalue()
    assert "e1: scaled down 3 → 2 replicas (the extra replicas drain, then stop" in text
    assert "replicas: 3 → 2" in text
    assert "replaced" not in text
