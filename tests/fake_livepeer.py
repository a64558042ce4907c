"""A fake go-livepeer orchestrator: a real HTTP/1.1 server on loopback that follows go-livepeer's
contract for the routes byoc-orch calls and the routes its clients use, written from its source
(byoc/job_orchestrator.go, core/external_capabilities.go, server/ai_http.go, server/webserver.go,
ai/runner/live_runner.go @176aa415):

* `/capability/register`: POST only (else 405 "Method not allowed"); `Authorization` must equal
  the secret exactly (else 400 "invalid authorization"); the body is decoded the way Go's
  encoding/json fills `core.ExternalCapability` (ints must be integer literals, strings strings,
  field names matched case-insensitively, unknown ones ignored) — else 400 "Error registering
  capability: …"; a currency other than wei/eth without a price feed panics the handler, which
  drops the connection; registering replaces the entry with `load` 0; 200 "ok".
* `/capability/unregister`: same checks; the body is the raw name; always 200 "ok".
* `POST /process/request/<path>`: a batch job forwarded as byoc/job_orchestrator.go's
  processJob does it — the capability named in the base64 JSON `Livepeer` header (signature not
  checked), `POST {url}/<path>` with the query dropped, the client's body raw, only its
  `Content-Type` and the capability's token as `Authorization: Bearer`, `timeout_seconds` as
  the deadline for the answer's headers; the worker's status and body come back (a connection
  error or a 401 removes the capability and answers 500). Each forward is in `forwarded`.
* The Live Runner registry (tests/fake_live_runner.py models its functions) behind the routes
  server/ai_http.go serves: `POST /runners/heartbeat`, `POST /runners/{id}/unregister`, the
  runner callback `POST /runner/{id}/session/{sid}/stop`, and for clients `GET /discovery`,
  `POST /apps/{id}/session` (reserve), `POST /apps/{id}/session/{sid}/stop` and
  `/apps/{id}/session/{sid}/app/{path...}` — reverse-proxied to `runner_url` + path with the four
  `Livepeer-*` headers `proxyLiveRunner` sets. `POST /registerLiveRunners` (go-livepeer serves
  it on its CLI port; here on the same one) registers static runners, whose `health_url` is
  polled every `health_interval` with a 3 s timeout; expired dynamic runners are swept every
  heartbeat interval (`expiryLoop`).

`flavor="livepeer-node"` answers as livepeer/node's orchestrator does where it differs (notes in
/work/notes are not shipped; docs/http-api.md there): 409 "runner at capacity" on a full reserve,
200 `{"ok":true}` on unregister and on the runner's stop, 403 "invalid session token", JSON
`{"error": …}` bodies, a 30 s TTL, and `720p` prices refused.

Every request is recorded with its time on `clock` (monotonic unless a test shares its own);
`restart()` stops the server, forgets every capability and runner (as a go-livepeer restart
does) and listens again on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import httpx

from tests.conftest import free_port
from tests.fake_live_runner import LiveRunnerRegistry, RunnerError
from tests.go_livepeer_json import (
    EXTERNAL_CAPABILITY,
    HEARTBEAT_REQUEST,
    GoJSONError,
    check_static_runner_config,
    go_decode,
    normalize_heartbeat,
)

__all__ = [
    "EXTERNAL_CAPABILITY",
    "FakeLivepeer",
    "check_static_runner_config",
    "go_decode",
    "normalize_heartbeat",
]

Flavor = Literal["go-livepeer", "livepeer-node"]
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "content-length", "host",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Call:
    at: float
    method: str
    path: str
    authorization: str | None
    body: bytes
    status: int | None
    """None: the connection was dropped without an answer."""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    extra: tuple[tuple[str, str], ...] = ()


REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _go_error(message: str, status: int) -> _Response:
    """Go's http.Error: plain text, a trailing newline, nosniff."""
    return _Response(
        status, (message + "\n").encode(), extra=(("X-Content-Type-Options", "nosniff"),)
    )


def _is_app_path(path: str) -> bool:
    """`/apps/{runner_id}/session/{session_id}/app/{app_path...}`."""
    parts = path.split("/", 6)
    return len(parts) >= 6 and parts[1] == "apps" and parts[3] == "session" and parts[5] == "app"


def _json(value: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(value).encode(), "application/json")


class FakeLivepeer:
    """Start with `await start()`; `url` is its base; `calls` every request it served."""

    def __init__(
        self,
        secret: str,
        *,
        port: int | None = None,
        live_runners: bool = True,
        onchain: bool = False,
        price_feed: bool = False,
        heartbeat_interval: float = 5.0,
        heartbeat_ttl: float | None = None,
        health_interval: float = 5.0,
        health_timeout: float = 3.0,
        flavor: Flavor = "go-livepeer",
        live_runner_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        """What calls are stamped with and runners expire by; a test may share its own."""
        self.port = port or free_port()
        self.live_runners = live_runners
        self.onchain = onchain
        self.price_feed = price_feed
        self.flavor = flavor
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.calls: list[Call] = []
        self.forwarded: list[dict[str, Any]] = []
        self.proxied: list[dict[str, Any]] = []
        """Every call the registry reverse-proxied to a runner: route, session, path, status."""
        self.capabilities: dict[str, dict[str, Any]] = {}
        self.registry = LiveRunnerRegistry(
            registration_secret=secret,
            service_url=lambda: self.url,
            live_runner_url=(lambda: live_runner_url) if live_runner_url else None,
            onchain=onchain,
            heartbeat_interval=heartbeat_interval,
            heartbeat_ttl=heartbeat_ttl or (30.0 if flavor == "livepeer-node" else 20.0),
            clock=clock,
        )
        self._server: asyncio.Server | None = None
        self._runner_client: httpx.AsyncClient | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def secret(self) -> str:
        """The orchestrator secret (`-orchSecret`): BYOC's and the registry's registration one."""
        return self.registry.registration_secret

    @secret.setter
    def secret(self, value: str) -> None:
        self.registry.registration_secret = value

    @property
    def heartbeat_interval(self) -> float:
        return self.registry.heartbeat_interval

    @property
    def heartbeat_ttl(self) -> float:
        return self.registry.heartbeat_ttl

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._loops = [
            asyncio.create_task(self._every(self.heartbeat_interval, self._sweep)),
            asyncio.create_task(self._every(self.health_interval, self.check_static_health)),
        ]

    async def stop(self) -> None:
        """Stop listening and cut every open connection, as a killed process would."""
        if self._server is None:
            return
        for loop in self._loops:
            loop.cancel()
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        await self._server.wait_closed()
        self._server = None
        if self._runner_client is not None:
            await self._runner_client.aclose()
            self._runner_client = None

    async def restart(self, *, downtime: float = 0.0) -> None:
        """Stop, forget everything registered, and come back on the same port."""
        await self.stop()
        self.capabilities.clear()
        self.registry.clear()
        if downtime:
            await asyncio.sleep(downtime)
        await self.start()

    # -------------------------------------------------------------- views for tests

    def calls_to(self, path: str, method: str = "POST") -> list[Call]:
        return [c for c in self.calls if c.path == path and c.method == method]

    @property
    def registered(self) -> set[str]:
        return set(self.capabilities)

    @property
    def runners(self) -> dict[str, dict[str, Any]]:
        """Registered runners that have not expired, by runner id, without their secrets."""
        reg = self.registry
        return {
            r.runner_id: r.public()
            for r in reg.runners.values()
            if not r.removed and not reg.expired(r)
        }

    def runner_labelled(self, label: str) -> dict[str, Any] | None:
        runner = self.registry.by_label(label)
        return None if runner is None else runner.public()

    @property
    def released(self) -> list[Any]:
        return list(self.registry.released)

    # -------------------------------------------------------------- a client of the registry

    async def reserve(self, route: str) -> httpx.Response:
        """`POST /apps/{route}/session`, as a client reserves a session."""
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.post(f"{self.url}/apps/{route}/session", timeout=10)

    async def client_stop(self, route: str, session_id: str) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.post(
                f"{self.url}/apps/{route}/session/{session_id}/stop", timeout=10
            )

    async def app_call(
        self,
        route: str,
        session_id: str,
        path: str,
        *,
        method: str = "POST",
        json_body: Any = None,
        timeout: float = 15.0,
    ) -> httpx.Response:
        """A call to the app through the registry's reverse proxy."""
        async with httpx.AsyncClient(trust_env=False) as client:
            return await client.request(
                method,
                f"{self.url}/apps/{route}/session/{session_id}/app/{path.lstrip('/')}",
                json=json_body,
                timeout=timeout,
            )

    # -------------------------------------------------------------- loops

    async def _every(self, seconds: float, work: Any) -> None:
        while True:
            await asyncio.sleep(seconds)
            result = work()
            if asyncio.iscoroutine(result):
                await result

    def _sweep(self) -> None:
        """`expiryLoop` → `removeExpiredRunners`."""
        self.registry.remove_expired()

    async def check_static_health(self) -> None:
        """`checkStaticRunnerHealth`: GET every static runner's health_url; one answer other
        than its healthy status (or none within the timeout) releases its sessions."""
        checks = self.registry.static_checks()
        if not checks:
            return
        async with httpx.AsyncClient(trust_env=False, timeout=self.health_timeout) as client:
            for runner, url, wanted in checks:
                self.registry.static_health(runner, await self._healthy(client, url, wanted))

    @staticmethod
    async def _healthy(client: httpx.AsyncClient, url: str, wanted: int) -> bool:
        try:
            return (await client.get(url)).status_code == wanted
        except httpx.HTTPError:
            return False

    # -------------------------------------------------------------- HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                raw_headers: list[tuple[str, str]] = []
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers.setdefault(name.strip().lower(), value.strip())
                        raw_headers.append((name.strip(), value.strip()))
                body = await self._read_body(reader, headers)
                parts = urlsplit(target)
                path = parts.path
                if path.startswith("/process/request/"):
                    response = await self._process_job(method, path, headers, body)
                elif _is_app_path(path):
                    response = await self._proxy_app(method, parts, raw_headers, body)
                elif path == "/registerLiveRunners":
                    response = await self._register_static(method, body)
                else:
                    response = self._handle(method, path, headers, body)
                self.calls.append(
                    Call(
                        self.clock(),
                        method,
                        path,
                        headers.get("authorization"),
                        body,
                        response.status if response else None,
                        tuple(raw_headers),
                    )
                )
                if response is None:
                    return
                writer.write(self._render(response))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except ConnectionError:
            return
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:-2])
        length = int(headers.get("content-length", "0") or 0)
        return await reader.readexactly(length) if length else b""

    @staticmethod
    def _render(response: _Response) -> bytes:
        head = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Status')}"]
        if response.status != 204:
            head.append(f"Content-Type: {response.content_type}")
            head.append(f"Content-Length: {len(response.body)}")
        head += [f"{name}: {value}" for name, value in response.extra]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + (
            b"" if response.status == 204 else response.body
        )

    def _error(self, message: str, status: int) -> _Response:
        if self.flavor == "livepeer-node":
            return _json({"error": message}, status)
        return _go_error(message, status)

    def _runner_error(self, exc: RunnerError) -> _Response:
        """`respondWithLiveRunnerError` (http.Error), or livepeer/node's differences."""
        status, message = exc.status, exc.message
        if self.flavor == "livepeer-node":
            if message == "no capacity available for runner":
                status, message = 409, "runner at capacity"
            elif message == "invalid authorization" and status == 401:
                status, message = 401, "invalid runner credential"
            elif message == "runner session not found":
                message = "session not found"
        return self._error(message, status)

    def _ok(self) -> _Response:
        """go-livepeer answers 204 where livepeer/node answers 200 {"ok":true}."""
        return _json({"ok": True}) if self.flavor == "livepeer-node" else _Response(204)

    def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> _Response | None:
        auth = headers.get("authorization", "")
        if path == "/capability/register":
            return self._register(method, auth, body)
        if path == "/capability/unregister":
            return self._unregister(method, auth, body)
        if path == "/runners/heartbeat":
            if method != "POST":
                return _go_error("Method Not Allowed", 405)
            return self._heartbeat(auth, body)
        if path == "/discovery" and method == "GET":
            return _json(self.registry.discovery())
        parts = path.split("/")
        try:
            if len(parts) == 4 and parts[1] == "runners" and parts[3] == "unregister" and parts[2]:
                if method != "POST":
                    return _go_error("Method Not Allowed", 405)
                self._live_runners_on()
                self.registry.unregister(parts[2], auth)
                return self._ok()
            stop = len(parts) == 6 and parts[3] == "session" and parts[5] == "stop"
            if stop and parts[1] == "runner" and method == "POST":
                return self._runner_stop(parts[2], parts[4], headers)
            if len(parts) == 4 and parts[1] == "apps" and parts[3] == "session":
                if method != "POST":
                    return _go_error("Method Not Allowed", 405)
                self._live_runners_on()
                session_id, app_url, control_url = self.registry.reserve(parts[2])
                return _json(
                    {"session_id": session_id, "app_url": app_url, "control_url": control_url}
                )
            if stop and parts[1] == "apps" and method == "POST":
                self._live_runners_on()
                self.registry.release_session(parts[2], parts[4], "client stop")
                return self._ok()
        except RunnerError as exc:
            return self._runner_error(exc)
        return _go_error("404 page not found", 404)

    def _live_runners_on(self) -> None:
        if not self.live_runners:
            raise RunnerError(404, "live runners are not supported")

    def _runner_stop(self, route: str, session_id: str, headers: dict[str, str]) -> _Response:
        """`StopLiveRunnerSessionInternal`."""
        self._live_runners_on()
        token = headers.get("livepeer-session-token", "")
        try:
            self.registry.stop_internal(route, session_id, token)
        except RunnerError as exc:
            if self.flavor == "livepeer-node" and exc.status == 401:
                return self._error("invalid session token", 403)
            raise
        return self._ok()

    # -------------------------------------------------------------- Live Runner

    def _heartbeat(self, auth: str, body: bytes) -> _Response:
        """`LiveRunnerHeartbeat` → `Heartbeat`."""
        if not self.live_runners:
            return _go_error("live runners are not supported", 404)
        try:
            req = go_decode(body, HEARTBEAT_REQUEST, "runner.LiveRunnerHeartbeatRequest")
        except GoJSONError as exc:
            return _go_error(str(exc), 400)
        if self.flavor == "livepeer-node":
            unit = str((req.get("price_info") or {}).get("unit", "")).strip().lower()
            if unit == "720p":
                return self._error("720p pricing is unsupported", 400)
        try:
            answer = self.registry.heartbeat(req, auth)
        except RunnerError as exc:
            if self.flavor == "livepeer-node" and exc.status == 401:
                return self._error("invalid runner credential", 401)
            return self._runner_error(exc)
        return _json(answer)

    async def _register_static(self, method: str, body: bytes) -> _Response:
        """server/webserver.go `registerLiveRunnersHandler` → `RegisterStaticRunnersJSON`."""
        if method != "POST":
            return _go_error("Method not allowed", 405)
        if not self.live_runners:
            return _go_error("live runners are not supported", 404)
        try:
            entries = check_static_runner_config(body, onchain=self.onchain, strict=False)
        except (ValueError, GoJSONError) as exc:
            return _go_error(str(exc), 400)
        async with httpx.AsyncClient(trust_env=False, timeout=self.health_timeout) as client:
            healthy = [
                await self._healthy(client, e["health_url"], e["healthy_status_code"])
                for e in entries
            ]
        return _json({"runners": self.registry.register_static(entries, healthy)})

    async def _proxy_app(
        self,
        method: str,
        target: Any,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> _Response:
        """`ProxyLiveRunnerSession` → `proxyLiveRunner`: to `runner_url` + app path, query
        kept, the client's headers passed on with the four `Livepeer-*` headers set."""
        parts = target.path.split("/", 6)
        # ['', 'apps', route, 'session', sid, 'app', rest]
        if len(parts) < 6 or parts[1] != "apps" or parts[3] != "session" or parts[5] != "app":
            return _go_error("404 page not found", 404)
        route, session_id = unquote(parts[2]), unquote(parts[4])
        app_path = unquote(parts[6]) if len(parts) > 6 else ""
        try:
            self._live_runners_on()
            _runner, endpoint, token = self.registry.endpoint_for_session(route, session_id)
        except RunnerError as exc:
            return self._runner_error(exc)
        base = urlsplit(endpoint)
        path = "/" + "/".join(p.strip("/") for p in (base.path, app_path) if p.strip("/"))
        if app_path.endswith("/") and not path.endswith("/"):
            path += "/"
        url = f"{base.scheme}://{base.netloc}{quote(path, safe='/:@!$&()*+,;=-._~')}"
        if target.query:
            url += "?" + target.query
        out = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        out = [(k, v) for k, v in out if not k.lower().startswith("livepeer-")]
        out += [
            ("Livepeer-Runner-Route", route),
            ("Livepeer-Session-Id", session_id),
            ("Livepeer-Session-Token", token),
            ("Livepeer-Session-Control", self.registry.control_url(route, session_id)),
            ("X-Forwarded-For", "127.0.0.1"),
        ]
        if self._runner_client is None:
            # One client for every runner, as go-livepeer's ReverseProxy keeps its Transport's
            # connections alive between calls.
            self._runner_client = httpx.AsyncClient(trust_env=False)
        try:
            reply = await self._runner_client.request(
                method, url, content=body, headers=out, timeout=60.0
            )
        except httpx.HTTPError as exc:
            self.proxied.append(
                {"route": route, "session": session_id, "path": path, "status": 502}
            )
            return _go_error(str(exc) or type(exc).__name__, 502)
        self.proxied.append(
            {"route": route, "session": session_id, "path": path, "status": reply.status_code}
        )
        return _Response(
            reply.status_code,
            reply.content,
            content_type=reply.headers.get("content-type", "application/octet-stream"),
        )

    # -------------------------------------------------------------- BYOC

    async def _process_job(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> _Response:
        if method != "POST":
            return _go_error("Method not allowed", 405)
        try:
            job = json.loads(base64.b64decode(headers.get("livepeer", "")))
            capability = self.capabilities[job["capability"]]
        except (ValueError, KeyError, TypeError):
            return _go_error("Could not verify job creds", 400)
        rest = path[len("/process/request/") :]
        url = capability["url"] + ("/" + rest if rest else "")
        forward_headers = {"Content-Type": headers.get("content-type", "")}
        if capability.get("token"):
            forward_headers["Authorization"] = "Bearer " + capability["token"]
        self.forwarded.append({"url": url, "authorization": forward_headers.get("Authorization")})
        timeout = float(job.get("timeout_seconds") or 10)
        try:
            async with httpx.AsyncClient(trust_env=False) as client:
                reply = await client.post(
                    url, content=body, headers=forward_headers, timeout=timeout
                )
        except httpx.TimeoutException:
            return _go_error("Error sending request to worker", 500)
        except httpx.HTTPError:
            self.capabilities.pop(job["capability"], None)
            return _go_error("Orchestrator worker failure", 500)
        if reply.status_code == 401:
            self.capabilities.pop(job["capability"], None)
            return _go_error("Orchestrator worker failure", 500)
        return _Response(
            reply.status_code,
            reply.content,
            content_type=reply.headers.get("content-type", "application/octet-stream"),
        )

    def _register(self, method: str, auth: str, body: bytes) -> _Response | None:
        if method != "POST":
            return _go_error("Method not allowed", 405)
        if auth != self.secret:
            return _go_error("invalid authorization", 400)
        try:
            cap = go_decode(body, EXTERNAL_CAPABILITY, "core.ExternalCapability")
        except GoJSONError as exc:
            return _Response(
                400, f"Error registering capability: {exc}".encode(), "application/json"
            )
        cap = {**{k: "" if v == "string" else 0 for k, v in EXTERNAL_CAPABILITY.items()}, **cap}
        if cap["price_scaling"] == 0:
            cap["price_scaling"] = 1
        if cap["currency"].lower() not in ("", "wei", "eth") and not self.price_feed:
            return None
        self.capabilities[cap["name"]] = {**cap, "load": 0}
        return _Response(200, b"ok", "application/json")

    def _unregister(self, method: str, auth: str, body: bytes) -> _Response:
        if method != "POST":
            return _go_error("Method not allowed", 405)
        if auth != self.secret:
            return _go_error("invalid authorization", 400)
        self.capabilities.pop(body.decode("utf-8", "replace"), None)
        return _Response(200, b"ok", "application/json")
