"""Tests for the reference worker (deploy/demo-worker/worker.py), run as a real subprocess.

Each worker listens on PORT=0 and reports the port it got in its first stdout line, so tests
never race for a free port. Waits poll for a condition with a deadline instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

WORKER = Path(__file__).resolve().parents[1] / "deploy" / "demo-worker" / "worker.py"
START_BODY = {
    "subscribe_url": "http://127.0.0.1:1/in",
    "publish_url": "http://127.0.0.1:1/out",
    "gateway_request_id": "req-1",
    "params": {"prompt": "a cat"},
}
PREFIXES = ["/stream", "/api/stream"]


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


class DemoWorker:
    """A running worker.py: its process, its stdout lines (parsed) and a client bound to it."""

    def __init__(self, env: dict[str, str]) -> None:
        full_env = {**os.environ, "PORT": "0", **env}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""
        self.client = httpx.Client(timeout=5.0)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == name), None)

    def wait_listening(self) -> DemoWorker:
        start = wait_for(lambda: self.event("start"))
        self.url = f"http://127.0.0.1:{start['port']}"
        return self

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(self.url + path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(self.url + path, **kw)

    def health(self) -> str:
        return self.get("/health").json()["status"]

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., DemoWorker]]:
    """Start workers with env switches (``load=`` sets DEMO_LOAD_SECONDS); kill them after."""
    workers: list[DemoWorker] = []

    def _spawn(load: float = 0.0, listen: bool = True, **env: str) -> DemoWorker:
        worker = DemoWorker({"DEMO_LOAD_SECONDS": str(load), **env})
        workers.append(worker)
        return worker.wait_listening() if listen else worker

    yield _spawn
    for worker in workers:
        worker.close()


@pytest.fixture
def ready(spawn: Callable[..., DemoWorker]) -> DemoWorker:
    worker = spawn()
    wait_for(lambda: worker.health() == "IDLE")
    return worker


# --- health --------------------------------------------------------------------------------


def test_loading_then_idle_and_ready_line(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(load=0.4)
    first = worker.get("/health")
    assert (first.status_code, first.json()) == (200, {"status": "LOADING"})
    wait_for(lambda: worker.health() == "IDLE")
    ready_line = wait_for(lambda: worker.event("ready"))
    assert isinstance(ready_line["ts"], float)
    assert ready_line["ts"] - worker.events[0]["ts"] >= 0.35
    assert [e["event"] for e in worker.events].count("ready") == 1


def test_docs_style_health(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(load=0.3, DEMO_HEALTH_STYLE="docs", DEMO_ERROR_AFTER="0.6")
    first = worker.get("/health")
    assert (first.status_code, first.json()) == (503, {"status": "loading"})
    wait_for(lambda: worker.get("/health").status_code == 200)
    assert worker.get("/health").json() == {"status": "ok"}
    wait_for(lambda: worker.get("/health").status_code == 500)
    assert worker.get("/health").json() == {"status": "error"}


def test_error_after_is_sticky_and_still_200(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(DEMO_ERROR_AFTER="0.3")
    assert worker.health() == "IDLE"
    wait_for(lambda: worker.health() == "ERROR")
    assert worker.post("/stream/start", json=START_BODY).status_code == 200
    for _ in range(3):
        response = worker.get("/health")
        assert (response.status_code, response.json()) == (200, {"status": "ERROR"})
    assert worker.event("error") is not None


def test_health_hangs_but_other_routes_answer(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(DEMO_HEALTH_HANG_AFTER="0.3")
    assert worker.health() == "IDLE"

    def hung() -> bool:
        try:
            worker.get("/health", timeout=0.2)
        except httpx.ReadTimeout:
            return True
        return False

    wait_for(hung)
    status = worker.get("/stream/status", timeout=1.0)
    assert status.status_code == 200
    assert status.json()["status"] == "IDLE"


# --- session routes ------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_session_lifecycle(ready: DemoWorker, prefix: str) -> None:
    started = ready.post(f"{prefix}/start", json=START_BODY)
    assert started.status_code == 200
    assert started.json()["status"] == "success"
    assert started.json()["request_id"] == "req-1"
    assert ready.health() == "OK"

    status = ready.get(f"{prefix}/status").json()
    assert status["client_active"] is True
    assert status["request_id"] == "req-1"
    assert status["params"] == {"prompt": "a cat"}
    assert status["status"] == "OK"

    for route, prompt in (("params", "a dog"), ("update", "a fox")):
        answer = ready.post(f"{prefix}/{route}", json={"prompt": prompt})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "success"
        assert ready.get(f"{prefix}/status").json()["params"] == {"prompt": prompt}

    stopped = ready.post(f"{prefix}/stop")
    assert (stopped.status_code, stopped.json()["status"]) == (200, "success")
    assert ready.health() == "IDLE"
    status = ready.get(f"{prefix}/status").json()
    assert (status["client_active"], status["request_id"]) == (False, None)

    again = ready.post(f"{prefix}/stop")
    assert again.status_code == 400
    assert again.json() == {"status": "error", "message": "No active stream to stop"}
    no_stream = ready.post(f"{prefix}/params", json={"prompt": "x"})
    assert no_stream.status_code == 400
    assert no_stream.json()["message"] == "No active stream to update"


@pytest.mark.parametrize(
    ("routes", "served", "absent"), [("stream", *PREFIXES), ("api", *PREFIXES[::-1])]
)
def test_route_generation_selection(
    spawn: Callable[..., DemoWorker], routes: str, served: str, absent: str
) -> None:
    worker = spawn(DEMO_ROUTES=routes)
    assert worker.get(f"{served}/status").status_code == 200
    missing = worker.get(f"{absent}/status")
    assert missing.status_code == 404
    assert missing.json()["status"] == "error"
    assert worker.post(f"{absent}/start", json=START_BODY).status_code == 404
    assert worker.post(f"{served}/start", json=START_BODY).status_code == 200


def test_second_start_is_503(ready: DemoWorker) -> None:
    assert ready.post("/stream/start", json=START_BODY).status_code == 200
    second = ready.post("/api/stream/start", json={**START_BODY, "gateway_request_id": "req-2"})
    assert second.status_code == 503
    assert second.json()["message"] == "Pipeline is still in use"
    assert ready.get("/stream/status").json()["request_id"] == "req-1"


def test_start_while_loading_is_503(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(load=30)
    answer = worker.post("/stream/start", json=START_BODY)
    assert answer.status_code == 503
    assert answer.json()["status"] == "error"
    assert answer.json()["current_state"]["status"] == "LOADING"


@pytest.mark.parametrize("field", ["gateway_request_id", "subscribe_url", "publish_url"])
def test_start_missing_field_is_400_naming_it(ready: DemoWorker, field: str) -> None:
    body = {k: v for k, v in START_BODY.items() if k != field}
    answer = ready.post("/stream/start", json=body)
    assert answer.status_code == 400
    assert field in answer.json()["message"]
    assert ready.health() == "IDLE"


def test_start_bad_body_is_400(ready: DemoWorker) -> None:
    not_json = ready.post(
        "/stream/start", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400
    wrong_type = ready.post("/stream/start", content=json.dumps(START_BODY).encode())
    assert wrong_type.status_code == 400
    assert "content type" in wrong_type.json()["message"]


def test_chunked_request_body(ready: DemoWorker) -> None:
    def chunks() -> Iterator[bytes]:
        yield json.dumps(START_BODY)[:10].encode()
        yield json.dumps(START_BODY)[10:].encode()

    answer = ready.post(
        "/stream/start", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text


def test_unknown_path_and_wrong_method(ready: DemoWorker) -> None:
    missing = ready.get("/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json()["status"] == "error"
    wrong = ready.get("/stream/start")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


# --- auth, echo, recorder, info -----------------------------------------------------------


def test_auth_token(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(DEMO_AUTH_TOKEN="s3cret")
    assert worker.get("/health").status_code == 200
    assert worker.get("/stream/status").status_code == 401
    wrong = worker.get("/stream/status", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["status"]) == (401, "error")
    good = {"Authorization": "Bearer s3cret"}
    assert worker.get("/stream/status", headers=good).status_code == 200
    assert worker.post("/stream/start", json=START_BODY, headers=good).status_code == 200
    assert worker.get("/_demo/info").json()["config"]["auth_token_set"] is True
    assert "s3cret" not in worker.get("/_demo/info").text


def test_no_auth_token_means_open(ready: DemoWorker) -> None:
    assert ready.get("/stream/status").status_code == 200
    assert ready.get("/_demo/info").json()["config"]["auth_token_set"] is False


def test_echo(ready: DemoWorker) -> None:
    answer = ready.post(
        "/v1/echo?a=1&b=2",
        content=b'{"x": 1}',
        headers={"Content-Type": "application/json", "X-Trace": "t1", "Authorization": "k"},
    )
    assert answer.status_code == 200
    assert answer.headers["x-demo-echo"] == "1"
    body = answer.json()
    assert (body["method"], body["path"], body["query"]) == ("POST", "/v1/echo", "a=1&b=2")
    assert body["headers"]["x-trace"] == "t1"
    assert body["headers"]["authorization"] == "k"
    assert (body["body"], body["json"]) == ('{"x": 1}', {"x": 1})


def test_call_recorder_and_info(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(DEMO_AUTH_TOKEN="tok")
    auth = {"Authorization": "Bearer tok", "X-Request-Id": "abc"}
    worker.post("/api/stream/start", json=START_BODY, headers=auth)
    worker.post("/stream/stop", headers={"Authorization": "Bearer bad"})
    worker.post("/stream/params", content=b"plain", headers=auth)
    worker.get("/health")

    calls = worker.get("/_demo/calls").json()
    assert [(c["method"], c["path"], c["status"]) for c in calls] == [
        ("POST", "/api/stream/start", 200),
        ("POST", "/stream/stop", 401),
        ("POST", "/stream/params", 500),
    ]
    assert calls[0]["authorization"] == "Bearer tok"
    assert calls[0]["x_headers"] == {"x-request-id": "abc"}
    assert calls[0]["body"] == START_BODY
    assert calls[2]["body"] == "plain"
    assert isinstance(calls[0]["ts"], float)
    assert [e["path"] for e in worker.events if e["event"] == "call"] == [
        "/api/stream/start",
        "/stream/stop",
        "/stream/params",
    ]

    assert worker.post("/_demo/reset").status_code == 200
    assert worker.get("/_demo/calls").json() == []

    info = worker.get("/_demo/info").json()
    assert info["pid"] == worker.proc.pid
    assert info["config"]["routes"] == "both"
    assert info["config"]["health_style"] == "pytrickle"


# --- process lifecycle ---------------------------------------------------------------------


def test_exit_after(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(DEMO_EXIT_AFTER="0.3", DEMO_EXIT_CODE="3")
    assert worker.health() == "IDLE"
    assert worker.proc.wait(timeout=5) == 3


def test_exit_at_start(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(listen=False, DEMO_EXIT_AT_START="1", DEMO_EXIT_CODE="7")
    assert worker.proc.wait(timeout=5) == 7
    wait_for(lambda: worker.event("exit"))
    assert worker.event("start") is None


def test_exit_at_start_default_code(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(listen=False, DEMO_EXIT_AT_START="1")
    assert worker.proc.wait(timeout=5) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero_quickly(spawn: Callable[..., DemoWorker], signum: int) -> None:
    worker = spawn(DEMO_HEALTH_HANG_AFTER="0")
    hung = threading.Thread(target=lambda: _swallow(lambda: worker.get("/health", timeout=3)))
    hung.start()  # a /health request stuck in the server must not delay the exit
    wait_for(lambda: worker.get("/_demo/info").status_code == 200)
    sent = time.monotonic()
    worker.proc.send_signal(signum)
    assert worker.proc.wait(timeout=2) == 0
    assert time.monotonic() - sent < 0.5
    hung.join(timeout=5)


def _swallow(call: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()


# --- memory --------------------------------------------------------------------------------


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None, status
    return int(match.group(1)) / 1024


def test_allocate_mb_really_uses_that_much_memory(spawn: Callable[..., DemoWorker]) -> None:
    worker = spawn(DEMO_ALLOCATE_MB="96")
    done = wait_for(lambda: worker.event("allocated"))
    assert done["mb"] == 96
    assert worker.event("allocating") is not None
    assert _rss_mib(worker.proc.pid) >= 96
    assert worker.health() == "IDLE"
    assert worker.get("/_demo/info").json()["config"]["allocate_mb"] == 96


def test_no_allocation_by_default(ready: DemoWorker) -> None:
    assert ready.get("/_demo/info").json()["config"]["allocate_mb"] == 0
    assert ready.event("allocating") is None
    assert _rss_mib(ready.proc.pid) < 96


@pytest.mark.parametrize("value", ["lots", "-5", "1.5"])
def test_allocate_mb_must_be_a_whole_number(spawn: Callable[..., DemoWorker], value: str) -> None:
    worker = spawn(listen=False, DEMO_ALLOCATE_MB=value)
    assert worker.proc.wait(timeout=5) == 1
    assert worker.proc.stderr is not None
    assert "DEMO_ALLOCATE_MB" in worker.proc.stderr.read()
