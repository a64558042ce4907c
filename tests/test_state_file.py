"""The state file: atomic, 0600, and never a crash or a leaked secret when it cannot be used."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
import structlog

from byoc_orch.state_file import DaemonState, RunnerRecord, SessionRecord, StateFile

SECRET = "heartbeat-secret-do-not-show"
TOKEN = "session-token-do-not-show"


def sample() -> DaemonState:
    state = DaemonState()
    state.runners["w-r0"] = RunnerRecord("w-r0", "byoc-abc-w-r0", "http://orch:8935", SECRET)
    state.sessions["s1"] = SessionRecord(
        "s1", "w-r0", "session_x", "byoc-abc-w-r0", "http://orch/runner/r/session/x", TOKEN
    )
    state.drained.add("w-r1")
    return state


def test_round_trip_is_owner_only_and_atomic(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "state", "inst")
    store.save(sample())
    path = tmp_path / "state" / "inst.state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["inst.state.json"], "no temporary left"
    back = StateFile(tmp_path / "state", "inst").load()
    assert back.runners == sample().runners
    assert back.sessions == sample().sessions
    assert back.drained == {"w-r1"}
    assert SECRET not in repr(back) and TOKEN not in repr(back)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:40]), "not valid JSON"),
        (lambda p: p.chmod(0o644), "mode is 0644"),
        (lambda p: p.write_text(json.dumps({"format": 1, "instance": "other"})), "instance"),
        (lambda p: p.write_text(json.dumps({"format": 99, "instance": "inst"})), "format 1"),
        (
            lambda p: p.write_text(json.dumps({"format": 1, "instance": "inst", "runners": [{}]})),
            "lacks a field",
        ),
    ],
    ids=["truncated", "0644", "another-instance", "future-format", "missing-field"],
)
def test_an_unusable_file_is_one_warning_and_a_fresh_start(
    tmp_path: Path, spoil: object, reason: str
) -> None:
    store = StateFile(tmp_path, "inst")
    store.save(sample())
    path = tmp_path / "inst.state.json"
    spoil(path)  # type: ignore[operator]
    with structlog.testing.capture_logs() as logs:
        state = StateFile(tmp_path, "inst").load()
    assert state.runners == {} and state.sessions == {} and state.drained == set()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert reason in warnings[0]["reason"]
    assert SECRET not in repr(logs) and TOKEN not in repr(logs)
    store.save(sample())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, "rewritten owner-only"
    assert StateFile(tmp_path, "inst").load().runners


def test_missing_directory_or_file_is_a_fresh_start(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        state = StateFile(tmp_path / "nothing-here", "inst").load()
    assert state.runners == {}
    assert all(e["log_level"] == "info" for e in logs)


def test_a_symlink_or_fifo_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    StateFile(tmp_path, "other").save(sample())
    (tmp_path / "other.state.json").rename(target)
    (tmp_path / "inst.state.json").symlink_to(target)
    with structlog.testing.capture_logs() as logs:
        assert StateFile(tmp_path, "inst").load().runners == {}
    assert [e["log_level"] for e in logs] == ["warning"]
    (tmp_path / "inst.state.json").unlink()
    os.mkfifo(tmp_path / "inst.state.json")
    with structlog.testing.capture_logs() as logs:
        assert StateFile(tmp_path, "inst").load().runners == {}
    assert "not a regular file" in logs[0]["reason"]


def test_an_unwritable_directory_is_one_warning_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    store = StateFile(blocker / "state", "inst")
    with structlog.testing.capture_logs() as logs:
        store.save(sample())
        store.save(sample())
    assert [e["log_level"] for e in logs] == ["warning"]
    assert SECRET not in repr(logs)


async def test_bursts_of_changes_are_coalesced(tmp_path: Path) -> None:
    store = StateFile(tmp_path, "inst")
    writes: list[int] = []
    state = DaemonState()

    async def off_loop(work: object) -> None:
        writes.append(1)
        await asyncio.to_thread(work)  # type: ignore[arg-type]

    for i in range(50):
        state.drained.add(f"w{i}")
        store.save_soon(lambda: state, off_loop)
    await store.flush()
    assert 1 <= len(writes) <= 2
    assert len(StateFile(tmp_path, "inst").load().drained) == 50
