"""Reference BYOC worker ("demo worker") for byoc-orch.

A standard-library-only HTTP server that speaks the worker contract byoc-orch relies on
(DESIGN.md §2.2): pytrickle-style ``GET /health`` and the session routes ``/stream/*`` and
``/api/stream/*``. Status codes and bodies follow pytrickle's ``server.py`` so that byoc-orch's
pass-through behaviour is tested against what real workers answer, without needing a GPU,
aiohttp or trickle media. Env switches (``DEMO_*``) simulate slow loads, errors, hangs and
crashes, or (``DEMO_ALLOCATE_MB``) memory use beyond a container's limit. It runs as PID 1 in
a container, hence the explicit SIGTERM handler.

Operators can read it as a minimal example of what a BYOC worker must serve.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# Health states, as pytrickle / ai-runner spell them.
LOADING, IDLE, OK, ERROR = "LOADING", "IDLE", "OK", "ERROR"

REQUIRED_START_FIELDS = ("subscribe_url", "publish_url", "gateway_request_id")


def _env_float(name: str, default: float | None) -> float | None:
    """Read a number of seconds from the environment; empty or unset means ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        sys.exit(f"demo-worker: {name} must be a number of seconds, got {raw!r}")


def _env_mb(name: str) -> int:
    """Read a whole number of MiB from the environment; empty or unset means 0."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        sys.exit(f"demo-worker: {name} must be a whole number of MiB, got {raw!r}")
    return int(raw)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Config:
    """Everything the env switches control; echoed by ``GET /_demo/info``."""

    port: int
    health_style: str
    load_seconds: float
    error_after: float | None
    health_hang_after: float | None
    exit_after: float | None
    exit_code: int
    exit_at_start: bool
    allocate_mb: int
    routes: str
    auth_token_set: bool

    @classmethod
    def from_env(cls) -> tuple[Config, str | None]:
        """Return the config and the auth token (kept out of the config so it is never shown)."""
        style = os.environ.get("DEMO_HEALTH_STYLE", "pytrickle").strip().lower() or "pytrickle"
        routes = os.environ.get("DEMO_ROUTES", "both").strip().lower() or "both"
        if style not in ("pytrickle", "docs"):
            sys.exit(f"demo-worker: DEMO_HEALTH_STYLE must be pytrickle or docs, got {style!r}")
        if routes not in ("both", "stream", "api"):
            sys.exit(f"demo-worker: DEMO_ROUTES must be both, stream or api, got {routes!r}")
        token = os.environ.get("DEMO_AUTH_TOKEN") or None
        config = cls(
            port=int(os.environ.get("PORT", "8000")),
            health_style=style,
            load_seconds=_env_float("DEMO_LOAD_SECONDS", 1.0) or 0.0,
            error_after=_env_float("DEMO_ERROR_AFTER", None),
            health_hang_after=_env_float("DEMO_HEALTH_HANG_AFTER", None),
            exit_after=_env_float("DEMO_EXIT_AFTER", None),
            exit_code=int(os.environ.get("DEMO_EXIT_CODE", "1")),
            exit_at_start=_env_flag("DEMO_EXIT_AT_START"),
            allocate_mb=_env_mb("DEMO_ALLOCATE_MB"),
            routes=routes,
            auth_token_set=token is not None,
        )
        return config, token


_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Print one JSON line to stdout, flushed, so ``docker logs`` readers get it at once."""
    line = json.dumps({"event": event, "ts": time.time(), **fields})
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Worker:
    """The worker's state: one stream at a time, the time-driven health, the call record."""

    def __init__(self, config: Config, token: str | None) -> None:
        self.config = config
        self.token = token
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.stream: dict[str, Any] | None = None  # the start body of the running stream
        self.last_params: dict[str, Any] | None = None
        self.calls: list[dict[str, Any]] = []
        self.aborts: list[dict[str, Any]] = []
        """Streamed answers the client went away from (seen as a failed write)."""
        prefixes = {"both": ("/stream", "/api/stream"), "stream": ("/stream",)}
        self.prefixes = prefixes.get(config.routes, ("/api/stream",))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def health(self) -> str:
        """Health is a pure function of uptime and the stream, so ERROR is sticky by design."""
        after = self.config.error_after
        elapsed = self.elapsed()
        if after is not None and elapsed >= after:
            return ERROR
        if elapsed < self.config.load_seconds:
            return LOADING
        return OK if self.stream is not None else IDLE

    def health_hangs(self) -> bool:
        after = self.config.health_hang_after
        return after is not None and self.elapsed() >= after

    def pipeline_state(self) -> dict[str, Any]:
        """The ``current_state`` object pytrickle attaches to start/status answers."""
        status = self.health()
        return {
            "status": status,
            "state": status,
            "pipeline_ready": status != LOADING,
            "startup_complete": status != LOADING,
            "active_streams": 0 if self.stream is None else 1,
        }

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(entry)


Reply = tuple[int, dict[str, Any] | list[Any]]


class Handler(BaseHTTPRequestHandler):
    """Routes requests; keep-alive (HTTP/1.1) so proxy overhead benchmarks are fair."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client waits
    # ~40 ms for the delayed ACK on every request, which would swamp proxy benchmarks.
    disable_nagle_algorithm = True
    server: DemoServer

    # --- plumbing -------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr line; ``emit`` logs what matters."""

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> bytes:
        """Read the whole body, chunked too: a streaming proxy may forward it that way."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self, raw: bytes) -> dict[str, Any]:
        """Parse the body like pytrickle: JSON content type and a JSON object, else ValueError."""
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("application/json"):
            raise ValueError(f"Unknown content type: {ctype or 'none'}")
        try:
            data = json.loads(raw or b"null")
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON body: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        return data

    def _dispatch(self) -> None:
        app = self.server.app
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if path == "/health":
            if self.command == "GET":
                self._health()
            else:
                self._read_body()
                msg = f"Method {self.command} not allowed on /health"
                self._send(405, {"status": "error", "message": msg}, {"Allow": "GET"})
            return
        batch = BATCH_ROUTES.get((self.command, path))
        if batch is not None:
            batch(self, app, parse_qs(url.query))
            return
        raw = self._read_body()
        status, body, headers = self._route(app, path, url.query, raw)
        if not path.startswith("/_demo/"):
            # Recorded before answering, so a test that got the answer also sees the record.
            self._record(app, path, url.query, raw, status)
        self._send(status, body, headers)

    def _record(self, app: Worker, path: str, query: str, raw: bytes, status: int) -> None:
        try:
            parsed: Any = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = raw.decode(errors="replace")
        app.record(
            {
                "ts": time.time(),
                "method": self.command,
                "path": path,
                "query": query,
                "authorization": self.headers.get("Authorization"),
                "x_headers": {k.lower(): v for k, v in self.headers.items() if _is_x(k)},
                "body": parsed,
                "status": status,
            }
        )
        emit("call", method=self.command, path=path, status=status)

    # --- routing --------------------------------------------------------------------------

    def _route(
        self, app: Worker, path: str, query: str, raw: bytes
    ) -> tuple[int, Any, dict[str, str] | None]:
        if path == "/v1/echo" or path.startswith("/v1/echo/"):
            return 200, self._echo(path, query, raw), {"X-Demo-Echo": "1"}
        demo: dict[tuple[str, str], Callable[[], Reply]] = {
            ("GET", "/_demo/calls"): lambda: (200, list(app.calls)),
            ("GET", "/_demo/aborts"): lambda: (200, list(app.aborts)),
            ("POST", "/_demo/reset"): lambda: _reset(app),
            ("GET", "/_demo/info"): lambda: (200, _info(app)),
        }
        session: dict[tuple[str, str], Callable[[], Reply]] = {}
        for prefix in app.prefixes:
            session[("POST", f"{prefix}/start")] = lambda: self._start(app, raw)
            session[("POST", f"{prefix}/stop")] = lambda: _stop(app)
            session[("POST", f"{prefix}/params")] = lambda: self._params(app, raw)
            session[("POST", f"{prefix}/update")] = lambda: self._params(app, raw)
            session[("GET", f"{prefix}/status")] = lambda: (200, _status(app))
        routes = demo | session
        handler = routes.get((self.command, path))
        if handler is None:
            allowed = sorted(m for m, p in routes if p == path)
            if allowed:
                msg = f"Method {self.command} not allowed on {path}"
                return 405, {"status": "error", "message": msg}, {"Allow": ", ".join(allowed)}
            return 404, {"status": "error", "message": f"Not found: {path}"}, None
        if (self.command, path) in session and not self._authorized(app):
            body = {"status": "error", "message": "Unauthorized"}
            return 401, body, {"WWW-Authenticate": "Bearer"}
        status, body = handler()
        return status, body, None

    def _authorized(self, app: Worker) -> bool:
        if app.token is None:
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {app.token}".encode())

    # --- handlers ---------------------------------------------------------------------------

    def _health(self) -> None:
        """pytrickle answers 200 for every state; the docs' style maps states to codes."""
        app = self.server.app
        if app.health_hangs():
            # Never answer: the prober must notice through its own timeout.
            app.stopping.wait()
            self.close_connection = True
            return
        state = app.health()
        if app.config.health_style == "pytrickle":
            self._send(200, {"status": state})
            return
        code = {LOADING: 503, ERROR: 500}.get(state, 200)
        self._send(code, {"status": {LOADING: "loading", ERROR: "error"}.get(state, "ok")})

    def _start(self, app: Worker, raw: bytes) -> Reply:
        """pytrickle order: 503 while loading, then 400 on a bad body, then 503 if busy."""
        if app.health() == LOADING:
            return 503, {
                "status": "error",
                "message": "Pipeline is still initializing. Please wait for IDLE status.",
                "current_state": app.pipeline_state(),
            }
        try:
            body = self._json_body(raw)
            missing = [f for f in REQUIRED_START_FIELDS if not body.get(f)]
            if missing:
                raise ValueError(f"missing required field(s): {', '.join(missing)}")
            if not isinstance(body.get("params") or {}, dict):
                raise ValueError("params must be a JSON object")
        except ValueError as exc:
            return 400, {
                "status": "error",
                "message": f"Error starting stream: {exc}",
                "current_state": app.pipeline_state(),
            }
        with app.lock:
            if app.stream is not None:
                return 503, {
                    "status": "error",
                    "message": "Pipeline is still in use",
                    "current_state": app.pipeline_state(),
                }
            app.stream = body
            app.last_params = body.get("params")
        return 200, {
            "status": "success",
            "message": "Stream started successfully",
            "request_id": body["gateway_request_id"],
            "current_state": app.pipeline_state(),
        }

    def _params(self, app: Worker, raw: bytes) -> Reply:
        """pytrickle validates first (a bad body is a 500 there), then needs a stream (400)."""
        try:
            params = self._json_body(raw)
        except ValueError as exc:
            return 500, {"status": "error", "message": f"Parameter update failed: {exc}"}
        with app.lock:
            if app.stream is None:
                return 400, {"status": "error", "message": "No active stream to update"}
            app.last_params = params
        return 200, {"status": "success", "message": "Parameters updated successfully"}

    def _echo(self, path: str, query: str, raw: bytes) -> dict[str, Any]:
        """Let transparent-proxy tests see exactly what reached the worker."""
        keep = ("content-type", "content-length", "authorization", "user-agent", "accept", "host")
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() in keep or _is_x(k)}
        text = raw.decode(errors="replace")
        try:
            parsed: Any = json.loads(text) if text else None
        except json.JSONDecodeError:
            parsed = None
        return {
            "method": self.command,
            "path": path,
            "query": query,
            "headers": headers,
            "body": text,
            "json": parsed,
        }


# --- batch routes: bodies and answers streamed, never held whole -------------------------------


def _body_chunks(handler: Handler) -> Iterator[bytes]:
    """The request body piece by piece, sized or chunked."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        while size := int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16):
            yield handler.rfile.read(size)
            handler.rfile.readline()
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return
    left = int(handler.headers.get("Content-Length") or 0)
    while left > 0:
        chunk = handler.rfile.read(min(left, 1 << 16))
        if not chunk:
            return
        left -= len(chunk)
        yield chunk


def pattern(size: int) -> Iterator[bytes]:
    """`size` deterministic bytes in 64 KiB pieces (tests compute the same sha256)."""
    block = bytes(range(256)) * 256
    while size > 0:
        piece = block[: min(size, len(block))]
        size -= len(piece)
        yield piece


def _number(query: dict[str, list[str]], name: str, default: float) -> float:
    try:
        return float(query.get(name, [default])[0])
    except ValueError:
        return default


def _batch_sha256(handler: Handler, app: Worker, query: dict[str, list[str]]) -> None:
    """POST /v1/sha256: hash the body as it arrives."""
    digest, size = hashlib.sha256(), 0
    for chunk in _body_chunks(handler):
        digest.update(chunk)
        size += len(chunk)
    app.record({"ts": time.time(), "method": "POST", "path": "/v1/sha256", "bytes": size})
    handler._send(200, {"sha256": digest.hexdigest(), "bytes": size})


def _batch_bytes(handler: Handler, app: Worker, query: dict[str, list[str]]) -> None:
    """GET /v1/bytes?n=N&delay=S: N pattern bytes, S seconds apart per 64 KiB, sized."""
    size, delay = int(_number(query, "n", 0)), _number(query, "delay", 0.0)
    digest = hashlib.sha256()
    for piece in pattern(size):
        digest.update(piece)
    app.record({"ts": time.time(), "method": "GET", "path": "/v1/bytes", "bytes": size})
    handler.send_response(200)
    handler.send_header("Content-Type", "application/octet-stream")
    handler.send_header("Content-Length", str(size))
    handler.send_header("X-Demo-Sha256", digest.hexdigest())
    handler.end_headers()
    sent = 0
    try:
        for piece in pattern(size):
            handler.wfile.write(piece)
            sent += len(piece)
            if delay:
                handler.wfile.flush()
                time.sleep(delay)
    except (BrokenPipeError, ConnectionResetError) as exc:
        app.aborts.append({"path": "/v1/bytes", "sent": sent, "error": type(exc).__name__})
        emit("aborted", path="/v1/bytes", sent=sent)
        handler.close_connection = True


def _batch_sse(handler: Handler, app: Worker, query: dict[str, list[str]]) -> None:
    """GET /v1/sse?events=N&interval=S: N server-sent events S seconds apart, chunked."""
    events, interval = int(_number(query, "events", 5)), _number(query, "interval", 0.4)
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    sent: list[float] = []
    try:
        for n in range(events):
            if n:
                time.sleep(interval)
            data = f"id: {n}\ndata: {json.dumps({'n': n, 'ts': time.time()})}\n\n".encode()
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()
            sent.append(time.time())
        handler.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError) as exc:
        app.aborts.append({"path": "/v1/sse", "sent": len(sent), "error": type(exc).__name__})
        handler.close_connection = True
    app.record({"ts": time.time(), "method": "GET", "path": "/v1/sse", "sent": sent})


def _batch_sleep(handler: Handler, app: Worker, query: dict[str, list[str]]) -> None:
    """POST /v1/sleep?seconds=S: a slow batch job (the body is read first)."""
    for _chunk in _body_chunks(handler):
        pass
    started = time.time()
    app.record({"ts": started, "method": "POST", "path": "/v1/sleep"})
    time.sleep(_number(query, "seconds", 1.0))
    handler._send(200, {"slept_from": started, "until": time.time()})


BatchHandler = Callable[["Handler", Worker, dict[str, list[str]]], None]
BATCH_ROUTES: dict[tuple[str, str], BatchHandler] = {
    ("POST", "/v1/sha256"): _batch_sha256,
    ("GET", "/v1/bytes"): _batch_bytes,
    ("GET", "/v1/sse"): _batch_sse,
    ("POST", "/v1/sleep"): _batch_sleep,
}


def _is_x(name: str) -> bool:
    return name.lower().startswith("x-")


def _stop(app: Worker) -> Reply:
    with app.lock:
        if app.stream is None:
            return 400, {"status": "error", "message": "No active stream to stop"}
        app.stream = None
    return 200, {"status": "success", "message": "Stream stopped successfully"}


def _status(app: Worker) -> dict[str, Any]:
    """pytrickle's pipeline state plus the stream's identity and the params last sent."""
    stream = app.stream
    body = app.pipeline_state()
    body["client_active"] = stream is not None
    body["request_id"] = stream["gateway_request_id"] if stream else None
    if stream:
        keys = ("subscribe_url", "publish_url", "gateway_request_id")
        body["current_params"] = {k: stream.get(k) for k in keys}
    body["params"] = app.last_params
    return body


def _reset(app: Worker) -> Reply:
    with app.lock:
        app.calls.clear()
    return 200, {"status": "success"}


def _info(app: Worker) -> dict[str, Any]:
    return {"pid": os.getpid(), "uptime": app.elapsed(), "config": asdict(app.config)}


class DemoServer(ThreadingHTTPServer):
    """Carries the Worker to the handlers; daemon threads so hung /health never blocks exit."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: Worker) -> None:
        self.app = app
        super().__init__(address, Handler)


def _after(seconds: float | None, action: Callable[[], None]) -> None:
    """Run ``action`` once after ``seconds`` on a daemon timer (so it never delays exit)."""
    if seconds is None:
        return
    timer = threading.Timer(max(seconds, 0.0), action)
    timer.daemon = True
    timer.start()


_held: list[bytes] = []  # what DEMO_ALLOCATE_MB allocated, held until exit


def _allocate(mb: int) -> None:
    """Allocate ``mb`` MiB, one MiB at a time, writing every page so it is really used."""
    emit("allocating", mb=mb)
    for _ in range(mb):
        _held.append(b"\x5a" * (1 << 20))
    emit("allocated", mb=mb)


def main() -> int:
    config, token = Config.from_env()
    if config.exit_at_start:
        emit("exit", code=config.exit_code, reason="DEMO_EXIT_AT_START")
        os._exit(config.exit_code)

    app = Worker(config, token)
    server = DemoServer(("0.0.0.0", config.port), app)
    port = server.server_address[1]
    emit("start", pid=os.getpid(), port=port, config=asdict(config))

    def ready() -> None:
        if app.health() != ERROR:
            emit("ready")

    def crash() -> None:
        emit("exit", code=config.exit_code, reason="DEMO_EXIT_AFTER")
        os._exit(config.exit_code)

    _after(config.load_seconds, ready)
    _after(config.error_after, lambda: emit("error"))
    _after(config.exit_after, crash)
    if config.allocate_mb:
        _after(0.0, lambda: _allocate(config.allocate_mb))

    # The handler only flips a flag: taking locks (Event.set) inside a signal handler can
    # deadlock against the interrupted main thread. The main loop polls the flag instead.
    signalled: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        signalled.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.daemon = True
    serving.start()
    while not signalled:
        time.sleep(0.05)
    app.stopping.set()  # releases hung /health requests
    server.shutdown()
    server.server_close()
    emit("stopped", signal=signalled[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
