"""The session table and the proxy's path rules, without I/O."""

from __future__ import annotations

import pytest

from byoc_orch.proxy import session_op, status_class
from byoc_orch.sessions import EndReason, Refused, Session, SessionState, SessionTable


def table() -> tuple[SessionTable, list[tuple[str, int]], list[str]]:
    counts: list[tuple[str, int]] = []
    ended: list[str] = []

    def on_end(session: Session, accepted: bool) -> None:
        if accepted:
            ended.append(f"{session.id}:{session.end_reason}")

    t = SessionTable(on_count=lambda w, n: counts.append((w, n)), on_end=on_end, keep_ended=2)
    return t, counts, ended


def reserve(t: SessionTable, sid: str, worker: str = "w") -> None:
    t.reserve(sid, worker_id=worker, pipeline="p", model_id="m", now=1.0)


def test_reserving_takes_a_slot_on_the_worker_named() -> None:
    # Whether the worker has room is routing's decision, made with the reservation in one
    # step: tests/test_session_lifecycle.py checks a full worker's refusal.
    t, counts, _ = table()
    reserve(t, "a")
    assert t.in_use("w") == 1
    reserve(t, "b", worker="other")
    assert counts == [("w", 1), ("other", 1)]


def test_a_refused_start_releases_its_slot_and_leaves_no_record() -> None:
    t, counts, ended = table()
    reserve(t, "a")
    t.release("a")
    assert t.in_use("w") == 0
    assert t.get("a") is None
    assert counts == [("w", 1), ("w", 0)]
    assert ended == []


def test_duplicate_live_ids_are_refused() -> None:
    t, _, _ = table()
    reserve(t, "a")
    with pytest.raises(Refused) as refused:
        reserve(t, "a")
    assert refused.value.reason == "duplicate"


def test_confirmed_sessions_end_with_a_reason_and_stay_readable() -> None:
    t, _, ended = table()
    reserve(t, "a")
    reserve(t, "b")
    reserve(t, "c")
    t.confirm("a")
    t.confirm("b")
    t.set_params("a", {"x": 1}, now=2.0)
    assert t.get("a").params == {"x": 1}  # type: ignore[union-attr]
    gone = t.end_worker("w", EndReason.CRASHED, now=3.0, detail="exit 137")
    assert {s.id for s in gone} == {"a", "b", "c"}
    assert t.in_use("w") == 0
    # Only sessions the worker had accepted count as ended sessions.
    assert sorted(ended) == ["a:crashed", "b:crashed"]
    a = t.get("b")
    assert a is not None and a.state is SessionState.ENDED and a.end_detail == "exit 137"
    assert [s.id for s in t.ended()] == ["c", "b"]  # bounded, newest first
    assert t.get("a") is None


def test_ending_twice_is_harmless() -> None:
    t, counts, ended = table()
    reserve(t, "a")
    t.confirm("a")
    assert t.end("a", EndReason.STOPPED, now=2.0) is not None
    assert t.end("a", EndReason.CRASHED, now=3.0) is None
    assert ended == ["a:stopped"]
    assert counts[-1] == ("w", 0)


@pytest.mark.parametrize(
    ("path", "method", "op"),
    [
        ("stream/start", "POST", "start"),
        ("api/stream/start", "POST", "start"),
        ("/api/stream/stop", "POST", "stop"),
        ("stream/params", "POST", "params"),
        ("api/stream/update", "POST", "params"),
        ("stream/status", "GET", "status"),
        ("stream/status/", "GET", "status"),
        ("stream/start", "GET", None),
        ("stream/status", "POST", None),
        ("v1/stream/start", "POST", None),
        ("api/stream/startx", "POST", None),
        ("text-to-image", "POST", None),
    ],
)
def test_session_paths_in_both_generations(path: str, method: str, op: str | None) -> None:
    assert session_op(path, method) == op


def test_status_classes_are_bounded() -> None:
    assert [status_class(s) for s in (101, 200, 302, 404, 503, 599)] == [
        "2xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "5xx",
    ]
