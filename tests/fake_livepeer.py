"""A fake go-livepeer orchestrator: a real HTTP/1.1 server on loopback that follows go-livepeer's
contract for the routes byoc-orch calls, written from its source (byoc/job_orchestrator.go,
core/external_capabilities.go, server/ai_http.go, ai/runner/live_runner.go):

* `/capability/register`: POST only (else 405 "Method not allowed"); `Authorization` must equal
  the secret exactly (else 400 "invalid authorization"); the body is decoded the way Go's
  encoding/json fills `core.ExternalCapability` (ints must be integer literals, strings strings,
  field names matched case-insensitively, unknown ones ignored) — else 400 "Error registering
  capability: …"; a currency other than wei/eth without a price feed panics the handler, which
  drops the connection; registering replaces the entry with `load` 0; 200 "ok".
* `/capability/unregister`: same checks; the body is the raw name; always 200 "ok".
* `POST /runners/heartbeat` and `POST /runners/{id}/unregister`: dynamic live runners with
  bootstrap and derived heartbeat secrets, TTL expiry, 401/404/400 as go-livepeer answers.
* `POST /process/request/<path>`: a batch job forwarded as byoc/job_orchestrator.go's
  processJob does it — the capability named in the base64 JSON `Livepeer` header (signature not
  checked), `POST {url}/<path>` with the query dropped, the client's body raw, only its
  `Content-Type` and the capability's token as `Authorization: Bearer`, `timeout_seconds` as
  the deadline for the answer's headers; the worker's status and body come back (a connection
  error or a 401 removes the capability and answers 500). Each forward is in `forwarded`.

Every request is recorded with its time on `clock` (monotonic unless a test shares its own);
`restart()` stops the server, forgets every capability and runner (as a go-livepeer restart
does) and listens again on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.conftest import free_port

INT64 = (-(2**63), 2**63 - 1)
INT = INT64

EXTERNAL_CAPABILITY = {
    "name": "string",
    "description": "string",
    "url": "string",
    "capacity": "int",
    "price_per_unit": "int64",
    "price_scaling": "int64",
    "currency": "string",
    "token": "string",
}
PRICE_INFO = {"price": "number", "currency": "string", "unit": "string"}
GPU = {"id": "string", "name": "string", "vram_mb": "int"}
HEARTBEAT_REQUEST = {
    "runner_id": "string",
    "label": "string",
    "proxy": "bool",
    "runner_url": "string",
    "version": "string",
    "metadata": "string",
    "status": "string",
    "mode": "string",
    "gpu": "gpu",
    "app": "string",
    "capacity": "int",
    "price_info": PRICE_INFO,
    "session_ids": "[]string",
}
STATIC_RUNNER_ENTRY = {
    "label": "string",
    "routing": "string",
    "proxy": "bool",
    "runner_url": "string",
    "version": "string",
    "metadata": "string",
    "mode": "string",
    "gpu": "gpu",
    "app": "string",
    "capacity": "int",
    "price_info": PRICE_INFO,
    "health_url": "string",
    "healthy_status_code": "int",
}
STATIC_RUNNER_CONFIG = {"runners": ("[]", STATIC_RUNNER_ENTRY)}


class GoJSONError(ValueError):
    """What encoding/json would have returned."""


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _reject_constant(token: str) -> Any:
    raise GoJSONError(f"invalid character '{token[0]}' looking for beginning of value")


def go_decode(data: bytes, spec: dict[str, Any], type_name: str, *, strict: bool = False) -> dict:
    """Decode `data` into a struct described by `spec` as Go's json.Unmarshal would: the fields it
    sets, or GoJSONError. `strict` also refuses keys the struct does not have (Go ignores them;
    tests use it to catch misspelt fields)."""
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except GoJSONError:
        raise
    except ValueError as exc:
        raise GoJSONError(f"invalid JSON: {exc}") from None
    return _decode_struct(value, spec, type_name, type_name.rsplit(".", 1)[-1], strict)


def _decode_struct(value: Any, spec: dict, type_name: str, path: str, strict: bool) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GoJSONError(
            f"json: cannot unmarshal {_json_kind(value)} into Go value of type {type_name}"
        )
    out: dict[str, Any] = {}
    first: GoJSONError | None = None
    for key, item in value.items():
        field = key if key in spec else next((f for f in spec if f.lower() == key.lower()), None)
        if field is None:
            if strict:
                first = first or GoJSONError(f"unknown field {key!r} in {path}")
            continue
        try:
            out[field] = _decode_value(item, spec[field], f"{path}.{field}", strict)
        except GoJSONError as exc:
            first = first or exc
    if first is not None:
        raise first
    return out


def _decode_value(value: Any, kind: Any, path: str, strict: bool) -> Any:
    def mismatch(go_type: str) -> GoJSONError:
        shown = _json_kind(value)
        if shown == "number":
            shown = f"number {value}"
        return GoJSONError(
            f"json: cannot unmarshal {shown} into Go struct field {path} of type {go_type}"
        )

    if isinstance(kind, dict):
        return _decode_struct(value, kind, path, path, strict)
    if isinstance(kind, tuple):
        if value is None:
            return []
        if not isinstance(value, list):
            raise mismatch("[]struct")
        return [_decode_value(v, kind[1], path, strict) for v in value]
    if value is None:
        return {"string": "", "int": 0, "int64": 0, "bool": False, "number": ""}.get(kind)
    if kind == "string":
        if not isinstance(value, str):
            raise mismatch("string")
        return value
    if kind in ("int", "int64"):
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not INT64[0] <= value <= INT64[1]
        ):
            raise mismatch(kind)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise mismatch("bool")
        return value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise mismatch("json.Number")
        text = str(value)
        try:
            float(text)
        except ValueError:
            quoted = json.dumps(json.dumps(value))
            raise GoJSONError(
                f"json: invalid number literal, trying to unmarshal {quoted} into Number"
            ) from None
        return text
    if kind == "[]string":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise mismatch("[]string")
        return value
    if kind == "gpu":
        if isinstance(value, int) and not isinstance(value, bool):
            return {"id": str(value)}
        return _decode_struct(value, GPU, "runner.LiveRunnerGPU", path, strict)
    raise AssertionError(kind)


def _absolute_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and bool(parts.hostname)


def normalize_heartbeat(req: dict[str, Any], *, onchain: bool) -> dict[str, Any]:
    """go-livepeer's normalizeHeartbeat: ValueError with its message, or the normalised request."""
    req = dict(req)
    if not _absolute_http(req.get("runner_url", "")):
        raise ValueError("invalid runner_url")
    app = req.get("app", "")
    if not app or app != app.strip():
        raise ValueError("app must be trimmed")
    metadata = req.get("metadata", "")
    if len(metadata.encode()) > 1024:
        raise ValueError("metadata must be at most 1024 bytes")
    status = req.get("status", "")
    if status != status.strip().lower():
        raise ValueError("status must be lowercase and trimmed")
    mode = req.get("mode") or "persistent"
    mode = "single-shot" if mode == "single_shot" else mode
    if mode not in ("persistent", "single-shot"):
        raise ValueError('mode must be "persistent" or "single-shot"')
    req["mode"] = mode
    capacity = req.get("capacity", 0)
    if capacity < 0:
        raise ValueError("capacity must be >= 0")
    req["capacity"] = capacity or 1
    if onchain:
        price = req.get("price_info", {})
        text = str(price.get("price", "")).strip()
        if not text:
            raise ValueError("price_info.price is required")
        try:
            if float(text) <= 0:
                raise ValueError
        except ValueError:
            raise ValueError("price_info.price must be a positive decimal") from None
        if (price.get("currency") or "usd").strip().lower() != "usd":
            raise ValueError("price_info.currency must be usd")
        if (price.get("unit") or "hour").strip().lower() not in ("hour", "720p", "fixed"):
            raise ValueError("price_info.unit must be hour, 720p, or fixed")
    return req


def check_static_runner_config(data: bytes, *, onchain: bool, strict: bool = True) -> list[dict]:
    """What go-livepeer does with a `-liveRunnerConfig` file before registering it
    (ParseStaticLiveRunnerConfig, RegisterStaticRunners, buildStaticRunner): the normalised
    entries, or ValueError/GoJSONError with its message."""
    config = go_decode(data, STATIC_RUNNER_CONFIG, "runner.StaticLiveRunnerConfig", strict=strict)
    entries = config.get("runners", [])
    labels: set[str] = set()
    for i, entry in enumerate(entries):
        routing = (entry.get("routing") or "").strip() or "runner-id"
        if routing not in ("runner-id", "label"):
            raise ValueError(f'runners[{i}]: routing must be "runner-id" or "label"')
        entry["routing"] = routing
        entry["healthy_status_code"] = entry.get("healthy_status_code") or 200
        health = entry.get("health_url", "")
        if health.startswith("/") and not health.startswith("//"):
            if not _absolute_http(entry.get("runner_url", "")):
                raise ValueError(f"runners[{i}]: invalid runner_url")
            health = entry["runner_url"].rstrip("/") + health
        entry["health_url"] = health
        label = entry.get("label", "")
        try:
            if not label or label != label.strip():
                raise ValueError("label is required and must be trimmed")
            if not health:
                raise ValueError("health_url is required")
            if not _absolute_http(health):
                raise ValueError("invalid health_url")
            if not 100 <= entry["healthy_status_code"] <= 599:
                raise ValueError("healthy_status_code must be a valid HTTP status code")
            normalize_heartbeat(entry, onchain=onchain)
        except ValueError as exc:
            raise ValueError(f"runners[{i}]: {exc}") from None
        if label in labels:
            raise ValueError(f"runners[{i}]: duplicate label {label!r}")
        if routing == "label" and "/" in label:
            raise ValueError(f'runners[{i}]: label cannot contain / when routing is "label"')
        labels.add(label)
    return entries


def _go_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Call:
    at: float
    method: str
    path: str
    authorization: str | None
    body: bytes
    status: int | None
    """None: the connection was dropped without an answer."""


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
    404: "Not Found",
    405: "Method Not Allowed",
}


def _go_error(message: str, status: int) -> _Response:
    """Go's http.Error: plain text, a trailing newline, nosniff."""
    return _Response(
        status, (message + "\n").encode(), extra=(("X-Content-Type-Options", "nosniff"),)
    )


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
        heartbeat_ttl: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secret = secret
        self.clock = clock
        """What calls are stamped with and runners expire by; a test may share its own."""
        self.port = port or free_port()
        self.live_runners = live_runners
        self.onchain = onchain
        self.price_feed = price_feed
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.calls: list[Call] = []
        self.forwarded: list[dict[str, Any]] = []
        self.capabilities: dict[str, dict[str, Any]] = {}
        self._runners: dict[str, dict[str, Any]] = {}
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening and cut every open connection, as a killed process would."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._connections):
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        await self._server.wait_closed()
        self._server = None

    async def restart(self, *, downtime: float = 0.0) -> None:
        """Stop, forget everything registered, and come back on the same port."""
        await self.stop()
        self.capabilities.clear()
        self._runners.clear()
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
        self._expire()
        return {
            rid: {k: v for k, v in r.items() if k != "secret"} for rid, r in self._runners.items()
        }

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
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers.setdefault(name.strip().lower(), value.strip())
                body = await self._read_body(reader, headers)
                path = urlsplit(target).path
                if path.startswith("/process/request/"):
                    response = await self._process_job(method, path, headers, body)
                else:
                    response = self._handle(method, path, headers.get("authorization", ""), body)
                self.calls.append(
                    Call(
                        self.clock(),
                        method,
                        path,
                        headers.get("authorization"),
                        body,
                        response.status if response else None,
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

    def _handle(self, method: str, path: str, auth: str, body: bytes) -> _Response | None:
        if path == "/capability/register":
            return self._register(method, auth, body)
        if path == "/capability/unregister":
            return self._unregister(method, auth, body)
        if path == "/runners/heartbeat":
            if method != "POST":
                return _go_error("Method Not Allowed", 405)
            return self._heartbeat(auth, body)
        parts = path.split("/")
        if len(parts) == 4 and parts[1] == "runners" and parts[3] == "unregister" and parts[2]:
            if method != "POST":
                return _go_error("Method Not Allowed", 405)
            return self._runner_unregister(parts[2], auth)
        return _go_error("404 page not found", 404)

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

    # -------------------------------------------------------------- Live Runner

    def _expire(self) -> None:
        now = self.clock()
        for rid in [r for r, v in self._runners.items() if now - v["last"] > self.heartbeat_ttl]:
            del self._runners[rid]

    def _heartbeat(self, auth: str, body: bytes) -> _Response:
        if not self.live_runners:
            return _go_error("live runners are not supported", 404)
        try:
            req = go_decode(body, HEARTBEAT_REQUEST, "runner.LiveRunnerHeartbeatRequest")
        except GoJSONError as exc:
            return _go_error(str(exc), 400)
        runner_id = req.get("runner_id", "").strip() or "runner_" + secrets.token_hex(4)
        try:
            req = normalize_heartbeat(req, onchain=self.onchain)
        except ValueError as exc:
            return _go_error(str(exc), 400)
        req["runner_id"] = runner_id
        self._expire()
        runner = self._runners.get(runner_id)
        answer: dict[str, Any] = {
            "runner_id": runner_id,
            "orchestrator": self.url,
            "heartbeat_interval": _go_duration(self.heartbeat_interval),
            "heartbeat_ttl": _go_duration(self.heartbeat_ttl),
        }
        if runner is None:
            if not self.secret:
                return _go_error("dynamic live runner registration is disabled", 404)
            if not secrets.compare_digest(auth, self.secret):
                return _go_error("invalid registration authorization", 401)
            secret = secrets.token_hex(16)
            self._runners[runner_id] = {**req, "secret": secret, "last": self.clock()}
            answer["heartbeat_secret"] = secret
            answer["o2r"] = {
                "name": "o2r",
                "channel_name": runner_id + "-o2r",
                "url": "",
                "mime_type": "application/json",
            }
        else:
            if not secrets.compare_digest(auth, runner["secret"]):
                return _go_error("invalid heartbeat authorization", 401)
            runner.update(req, last=self.clock())
        answer["session_ids"] = []
        return _Response(200, json.dumps(answer).encode(), "application/json")

    def _runner_unregister(self, runner_id: str, auth: str) -> _Response:
        self._expire()
        runner = self._runners.get(runner_id)
        if runner is None:
            return _go_error("runner not found", 404)
        if not secrets.compare_digest(auth, runner["secret"]):
            return _go_error("invalid authorization", 401)
        del self._runners[runner_id]
        return _Response(204)
