"""The session lifecycle without Docker or HTTP: one capacity decision per start, the replica
holding the session a call names, every end seen once with its reason, recovery from
pytrickle's status answers, and a session body parsed once. Workers are real `Worker`s that
are never started (no engine); their status answers come from a fake."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any, cast

import pytest

from byoc_orch import session_body, session_lifecycle
from byoc_orch.aimodels import ModelEntry
from byoc_orch.engine import Engine
from byoc_orch.forwarding import Answer, Unreachable
from byoc_orch.health import ProbeResult, Verdict
from byoc_orch.metrics import Metrics
from byoc_orch.orchestrator_sessions import RegistrySession
from byoc_orch.routing import Refusal, RefusalReason
from byoc_orch.session_body import MAX_JSON_DEPTH, SessionBody
from byoc_orch.session_lifecycle import (
    RECOVERY_CONCURRENCY,
    UNKNOWN_SESSION_PREFIX,
    Duplicate,
    Ended,
    Held,
    NotHeld,
    Opened,
    Opening,
    SessionLifecycle,
    idle_ended,
    named_session,
    running_streams,
    streams_to_adopt,
)
from byoc_orch.sessions import EndReason
from byoc_orch.worker import Worker
from byoc_orch.worker_state import Policy, State


def replica(index: int = 0, *, capacity: int = 1, reported: str | None = "OK") -> Worker:
    """A warm replica of entry `e` whose last health answer said `reported`."""
    entry = ModelEntry(pipeline="p", model_id="m", url="http://127.0.0.1:9", capacity=capacity)
    worker = Worker(
        entry,
        spec=None,
        engine=cast(Engine, None),
        policy=Policy(),
        proxy_url="http://byoc/proxy/x",
        probe_timeout=1.0,
        stop_timeout=1.0,
        worker_id=f"e-{index}",
        replica=index,
    )
    probe = ProbeResult(Verdict.WARM, "", reported=reported)
    worker.status = replace(worker.status, state=State.WARM, last_probe=probe)
    return worker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fixture:
    """A lifecycle over `workers`, with status answers, spawned tasks and ends recorded."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.registered = {w.worker_id: w for w in workers}
        self.answers: dict[str, Answer | Unreachable] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.ended: list[Ended] = []
        self.clock = Clock()
        self.metrics = Metrics()
        self.lifecycle = SessionLifecycle(
            workers=self.registered.get,
            ask_status=self.ask_status,
            spawn=self.spawn,
            metrics=self.metrics,
            clock=self.clock,
        )
        self.lifecycle.on_end(self.ended.append)

    async def ask_status(self, worker: Worker) -> Answer | Unreachable:
        await asyncio.sleep(0)
        return self.answers.get(worker.worker_id, Unreachable(502, "no answer"))

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.create_task(work, name=name))

    def start(self, session_id: str, replicas: list[Worker] | None = None) -> Opened:
        opened = self.lifecycle.open(opening(session_id), replicas or self.workers)
        assert isinstance(opened, Opened), opened
        self.lifecycle.confirm(opened)
        return opened


def opening(session_id: str, token: str | None = None) -> Opening:
    registry = None
    if token is not None:
        control = f"http://orch/runner/r/session/o-{session_id}"
        registry = RegistrySession(f"o-{session_id}", "r", control, token)
    return Opening(session_id, entry_id="e", pipeline="p", model_id="m", registry=registry)


def status_answer(status: int, body: Any) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, [], raw)


# -- one capacity decision per start --------------------------------------------------------------


async def test_concurrent_starts_never_over_reserve() -> None:
    workers = [replica(i, capacity=2) for i in range(3)]
    f = Fixture(workers)
    rng = random.Random(0)
    peak = 0

    async def start(n: int) -> Opened | Refusal | Duplicate:
        nonlocal peak
        opened = f.lifecycle.open(opening(f"s-{n}"), workers)
        peak = max(peak, *(w.in_use for w in workers))
        if isinstance(opened, Opened):
            await asyncio.sleep(rng.random() / 1000)  # the start forwarded to the worker
            f.lifecycle.confirm(opened)
        return opened

    results = await asyncio.gather(*(start(n) for n in range(20)))
    opened = [r for r in results if isinstance(r, Opened)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(opened) == 6 and len(refused) == 14
    assert peak == 2
    assert [f.lifecycle.table.in_use(w.worker_id) for w in workers] == [2, 2, 2]
    assert [w.sessions for w in workers] == [2, 2, 2]  # the mirror routing reads
    # The refusal is routing's own: every routable replica, every slot in use.
    assert set(refused) == {Refusal(RefusalReason.FULL, routable=3, in_use=6, capacity=6)}


async def test_a_start_goes_to_the_least_loaded_replica_and_batch_requests_count() -> None:
    workers = [replica(0, capacity=2), replica(1, capacity=2)]
    f = Fixture(workers)
    workers[0].add_request(1)  # a pass-through request holds one of its slots
    assert f.start("a").worker is workers[1]
    assert f.start("b").worker is workers[0]
    assert f.start("c").worker is workers[1]
    full = f.lifecycle.open(opening("d"), workers)
    assert full == Refusal(RefusalReason.FULL, routable=2, in_use=4, capacity=4)


async def test_a_full_worker_refuses_with_the_real_numbers() -> None:
    (worker,) = workers = [replica(0)]
    f = Fixture(workers)
    f.start("a")
    assert f.lifecycle.open(opening("b"), workers) == Refusal(RefusalReason.FULL, 1, 1, 1)
    assert f.lifecycle.table.get("b") is None
    worker.status = replace(worker.status, state=State.UNHEALTHY)
    assert f.lifecycle.open(opening("b"), workers) == Refusal(RefusalReason.NOT_WARM, 0, 0, 0)


async def test_a_duplicate_is_refused_after_routing_and_an_abandoned_start_frees_its_slot() -> None:
    workers = [replica(0, capacity=2)]
    f = Fixture(workers)
    first = f.lifecycle.open(opening("a", token="secret"), workers)
    assert isinstance(first, Opened) and first.session.registry is not None
    assert first.session.registry.token == "secret"
    shown = json.dumps(first.session.describe())
    assert "secret" not in shown and "http://orch" not in shown and "o-a" in shown
    assert f.lifecycle.table.by_orchestrator_session("o-a") == first.session
    again = f.lifecycle.open(opening("a"), workers)
    assert isinstance(again, Duplicate) and "already starting on e-0" in again.message
    f.lifecycle.abandon("a")
    assert f.lifecycle.table.get("a") is None and workers[0].sessions == 0
    assert f.ended == []  # a refused start is no session, so it never ends
    assert f.metrics.sample("byoc_orch_sessions_started_total", {"pipeline": "p"}) is None


# -- the holder of a session ----------------------------------------------------------------------


def held(f: Fixture, op: str = "stop", **call: Any) -> Held | NotHeld:
    named = named_session(
        call.get("headers", {}), call.get("query", {}), SessionBody(call.get("body", b""))
    )
    return f.lifecycle.holder(named, f.workers, op=op, target="p/m")


async def test_a_call_reaches_the_replica_holding_the_session_it_names() -> None:
    f = Fixture([replica(0), replica(1)])
    f.start("a")
    f.start("b")
    w1 = f.workers[1]
    assert held(f, headers={"x-gateway-request-id": "b"}) == Held(w1, "b")
    assert held(f, headers={"x-stream-id": " b "}) == Held(w1, "b")
    assert held(f, query={"gateway_request_id": "b"}) == Held(w1, "b")
    assert held(f, body=b'{"gateway_request_id": "b"}') == Held(w1, "b")
    # A header wins over the query, the query over the body.
    both = {"headers": {"x-stream-id": "b"}, "query": {"gateway_request_id": "a"}}
    assert held(f, **both) == Held(w1, "b")
    assert held(f, query={"gateway_request_id": "b"}, body=b'{"gateway_request_id": "a"}') == (
        Held(w1, "b")
    )


async def test_a_stop_naming_none_of_several_live_sessions_is_refused_with_their_ids() -> None:
    f = Fixture([replica(0), replica(1)])
    f.start("a")
    f.start("b")
    refused = held(f, body=b"{}")
    assert isinstance(refused, NotHeld) and refused.status == 400
    assert refused.message == "2 sessions are live on p/m; this stop names none of them"
    assert refused.details == {"sessions": ["a", "b"]}
    unknown = held(f, headers={"x-stream-id": "zzz"})
    assert isinstance(unknown, NotHeld) and unknown.status == 404
    assert unknown.details == {"session": "zzz", "live": ["a", "b"]}


async def test_the_only_session_is_the_default_and_one_replica_answers_for_itself() -> None:
    f = Fixture([replica(0), replica(1)])
    nothing = held(f, op="params")
    assert isinstance(nothing, NotHeld) and nothing.status == 400
    assert nothing.details == {"replicas": ["e-0", "e-1"]}
    f.start("a")
    assert held(f) == Held(f.workers[0], "a")
    f.lifecycle.end("a", EndReason.STOPPED)
    # An ended session is not live: one replica is left to answer for itself.
    single = Fixture([replica(0)])
    single.start("x")
    single.lifecycle.end("x", EndReason.STOPPED)
    assert held(single, headers={"x-stream-id": "x"}) == Held(single.workers[0], None)
    assert held(single) == Held(single.workers[0], None)


# -- ending ---------------------------------------------------------------------------------------


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


async def test_every_end_reaches_the_hook_once_with_its_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = Lines()
    monkeypatch.setattr(session_lifecycle, "log", lines)
    workers = [replica(0, capacity=3), replica(1, capacity=3)]
    f = Fixture(workers)
    for sid in ("a", "b", "c"):
        f.start(sid, [workers[0]])
    starting = f.lifecycle.open(opening("d"), [workers[1]])
    assert isinstance(starting, Opened)  # still in flight: not yet accepted
    f.lifecycle.end("a", EndReason.STOPPED)
    f.lifecycle.end("a", EndReason.CRASHED)  # already ended: nothing
    f.lifecycle.end_worker("e-0", EndReason.CRASHED, "exit 137")
    f.lifecycle.end_worker("e-1", EndReason.REMOVED, "aiModels.json changed")
    f.lifecycle.end_worker("e-1", EndReason.REMOVED)  # nothing left
    seen = [(e.session.id, e.reason, e.session.end_detail, e.accepted) for e in f.ended]
    assert seen == [
        ("a", EndReason.STOPPED, None, True),
        ("b", EndReason.CRASHED, "exit 137", True),
        ("c", EndReason.CRASHED, "exit 137", True),
        ("d", EndReason.REMOVED, "aiModels.json changed", False),
    ]
    assert f.lifecycle.confirm(starting) is None  # its start answered after the end
    assert [w.sessions for w in workers] == [0, 0]

    def ended(reason: str) -> float | None:
        labels = {"pipeline": "p", "model_id": "m", "reason": reason}
        return f.metrics.sample("byoc_orch_sessions_ended_total", labels)

    # Only sessions the worker had accepted count as ended sessions.
    assert (ended("stopped"), ended("crashed"), ended("removed")) == (1.0, 2.0, None)
    await asyncio.sleep(0)  # "session started" is logged on the next loop turn
    logged = [(e, fields.get("session"), fields.get("reason")) for e, fields in lines.lines]
    assert [line for line in logged if line[0] == "session ended"] == [
        ("session ended", "b", "crashed"),
        ("session ended", "c", "crashed"),
        ("session ended", "d", "removed"),
    ]  # a stop is answered to its caller; the line is for ends nobody asked for
    assert [s for e, s, _ in logged if e == "session started"] == ["a", "b", "c"]


async def test_idle_ends_only_sessions_older_than_the_grace() -> None:
    (worker,) = workers = [replica(0, capacity=2, reported="IDLE")]
    f = Fixture(workers)
    f.start("old")
    f.clock.now += session_lifecycle.IDLE_GRACE
    f.start("new")
    f.lifecycle.worker_idle(worker)
    assert [(e.session.id, e.reason) for e in f.ended] == [("old", EndReason.ENDED_BY_WORKER)]
    assert [s.id for s in f.lifecycle.table.live()] == ["new"]
    live = f.lifecycle.table.live()
    assert idle_ended(live, f.clock.now, 0.0) == live
    assert idle_ended(live, f.clock.now, 0.1) == []



async def test_an_idle_report_while_its_stop_is_with_the_worker_is_that_stop() -> None:
    """Found on the real engine: the worker went IDLE on the client's stop and a probe said so
    before the stop's answer came back, so the session ended as ended_by_worker (and, from a
    Live Runner, was released a second time)."""
    (worker,) = workers = [replica(0, capacity=2, reported="IDLE")]
    f = Fixture(workers)
    f.start("stopping")
    f.start("other")
    f.clock.now += session_lifecycle.IDLE_GRACE
    with f.lifecycle.stopping("stopping"):
        f.lifecycle.worker_idle(worker)
        assert [e.session.id for e in f.ended] == ["other"]
        f.lifecycle.end("stopping", EndReason.STOPPED)
    assert [(e.session.id, e.reason) for e in f.ended] == [
        ("other", EndReason.ENDED_BY_WORKER),
        ("stopping", EndReason.STOPPED),
    ]
    f.start("failed-stop")
    f.clock.now += session_lifecycle.IDLE_GRACE
    with f.lifecycle.stopping("failed-stop"):
        pass  # the stop call failed: the worker's next IDLE ends it
    f.lifecycle.worker_idle(worker)
    assert f.ended[-1].session.id == "failed-stop"
    assert f.ended[-1].reason is EndReason.ENDED_BY_WORKER

# -- reading pytrickle's status answers -----------------------------------------------------------

URLS = {"subscribe_url": "http://t/in", "publish_url": "http://t/out"}


@pytest.mark.parametrize(
    ("answer", "streams"),
    [
        (status_answer(200, {"status": "IDLE", "current_params": {"gateway_request_id": "x"}}), []),
        (status_answer(200, {"status": " idle "}), []),
        (status_answer(200, {"client_active": False, "gateway_request_id": "x"}), []),
        (status_answer(200, {"active_streams": 0, "gateway_request_id": "x"}), []),
        (
            status_answer(200, {"status": "OK", "current_params": {"gateway_request_id": "g"}}),
            [("g", {})],
        ),
        (
            status_answer(200, {"current_params": {"gateway_request_id": " g ", **URLS, "x": 1}}),
            [("g", URLS)],
        ),
        (status_answer(200, {"gateway_request_id": "top"}), [("top", {})]),
        (status_answer(200, {"status": "OK", "client_active": True}), None),
        (status_answer(200, {"status": "ok", "current_params": {}}), None),
        (status_answer(200, {"client_active": True, "gateway_request_id": " "}), None),
        (status_answer(200, {"status": "LOADING"}), []),
        (status_answer(200, b"not json"), None),
        (status_answer(200, [1, 2]), None),
        (status_answer(500, {"gateway_request_id": "x"}), None),
        (status_answer(503, b""), None),
        (Unreachable(502, "could not be reached"), None),
        (Unreachable(504, "too slow"), None),
        (status_answer(404, {"detail": "Not Found"}), []),
        (status_answer(405, b""), []),
        (status_answer(401, b""), []),
    ],
)
def test_status_answers_say_which_streams_run(
    answer: Answer | Unreachable, streams: list[tuple[str, dict[str, str]]] | None
) -> None:
    assert running_streams(answer) == streams


def test_a_busy_worker_that_cannot_name_its_stream_gets_a_placeholder_unless_idle() -> None:
    busy = status_answer(200, {"status": "OK", "client_active": True})
    placeholder = [(UNKNOWN_SESSION_PREFIX + "e-0", {})]
    assert streams_to_adopt(busy, "e-0", reports_idle=False) == placeholder
    assert streams_to_adopt(Unreachable(502, "down"), "e-0", reports_idle=False) == placeholder
    assert streams_to_adopt(busy, "e-0", reports_idle=True) == []
    named = status_answer(200, {"current_params": {"gateway_request_id": "g"}})
    assert streams_to_adopt(named, "e-0", reports_idle=True) == [("g", {})]


# -- recovery -------------------------------------------------------------------------------------


async def test_recovery_records_what_each_worker_runs_once() -> None:
    busy, idle, naming = replica(0), replica(1, reported="IDLE"), replica(2)
    f = Fixture([busy, idle, naming])
    f.answers["e-2"] = status_answer(200, {"current_params": {"gateway_request_id": "g", **URLS}})
    for worker in f.workers:
        worker.sessions_known = False
        f.lifecycle.recover(worker)
        f.lifecycle.recover(worker)  # asked once, however often WARM is reported
    assert len(f.tasks) == 3
    await asyncio.gather(*f.tasks)
    placeholder, adopted = f.lifecycle.table.live("e-0")[0], f.lifecycle.table.live("e-2")[0]
    assert (placeholder.id, placeholder.recovered) == (UNKNOWN_SESSION_PREFIX + "e-0", True)
    assert (adopted.id, adopted.request, adopted.state) == ("g", URLS, "active")
    assert f.lifecycle.table.live("e-1") == []
    assert [w.sessions_known for w in f.workers] == [True, True, True]
    assert [w.load.free for w in f.workers] == [0, 1, 0]
    # The placeholder goes once the worker reports IDLE.
    f.clock.now += session_lifecycle.IDLE_GRACE
    f.lifecycle.worker_idle(busy)
    assert f.lifecycle.table.live("e-0") == []


async def test_recovery_of_a_replaced_worker_is_dropped_and_asks_a_few_at_a_time() -> None:
    workers = [replica(i) for i in range(RECOVERY_CONCURRENCY + 4)]
    f = Fixture(workers)
    gate = asyncio.Event()
    asking = peak = 0

    async def slow(worker: Worker) -> Answer | Unreachable:
        nonlocal asking, peak
        asking += 1
        peak = max(peak, asking)
        await gate.wait()
        asking -= 1
        return status_answer(200, {"status": "IDLE"})

    f.lifecycle = SessionLifecycle(
        workers=f.registered.get, ask_status=slow, spawn=f.spawn, metrics=f.metrics
    )
    for worker in workers:
        worker.sessions_known = False
        f.lifecycle.recover(worker)
    gone = workers[0]
    f.registered[gone.worker_id] = replica(0)  # replaced while it was being asked
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*f.tasks)
    assert peak == RECOVERY_CONCURRENCY
    assert not gone.sessions_known
    assert all(w.sessions_known for w in workers[1:])


# -- a session body, parsed once ------------------------------------------------------------------


def test_a_body_is_parsed_once_for_its_name_its_check_and_its_params(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    loads = json.loads

    def counting(raw: bytes) -> Any:
        calls.append(raw)
        return loads(raw)

    monkeypatch.setattr(session_body.json, "loads", counting)
    body = SessionBody(b'{"gateway_request_id": "g", "params": {"p": 1}}')
    assert named_session({}, {}, body) == "g"
    assert body.error is None
    assert body.params() == {"p": 1}
    assert body.json()["gateway_request_id"] == "g"
    assert len(calls) == 1
    named = SessionBody(b'{"gateway_request_id": "g"}')
    assert named_session({"x-stream-id": "h"}, {}, named) == "h"
    assert calls == [body.raw]  # named by its header: never parsed


def test_a_body_too_deep_or_not_json_says_why() -> None:
    deep = b'{"gateway_request_id": "g", "params": ' + b"[" * MAX_JSON_DEPTH + b"]" * 64 + b"}"
    too_deep = SessionBody(deep)
    assert too_deep.named() == "g"  # naming reads any JSON object
    assert too_deep.error == f"nested deeper than {MAX_JSON_DEPTH} levels"
    assert too_deep.params() is None
    with pytest.raises(ValueError, match="nested deeper than 64 levels"):
        too_deep.json()
    recursing = SessionBody(b"[" * 100_000 + b"]" * 100_000)
    assert recursing.error == "nested deeper than 64 levels"
    assert SessionBody(b"{nope").error == (
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    assert SessionBody(b"").error is not None and SessionBody(b"").params() is None
    assert SessionBody(b'{"params": [1], "gateway_request_id": "g"}').params() == [1]
    assert SessionBody(b'{"a": 1, "params": 2}').params() == {"a": 1, "params": 2}
    assert SessionBody(b"[1]").params() == [1] and SessionBody(b"[1]").named() is None
