"""go-livepeer's Live Runner registry, modelled function by function for the fake orchestrator.

Written from ai/runner/live_runner.go and server/ai_http.go (go-livepeer @176aa415); each method
names the function it follows. What matters to byoc-orch, because the registry ends sessions on
its own:

* `heartbeat` (`Heartbeat`): a runner id that is not registered is a new registration — the
  proposed id is taken as is and needs the registration (orchestrator) secret; the heartbeat
  secret is returned on that first registration only. A registered id needs its heartbeat
  secret (401 otherwise); an expired one that the sweep has not removed yet answers 404. The
  answer's `session_ids` are the registry's own, oldest first (`sessionIDsLocked`), whatever
  the request claimed.
* Sessions are released (`releaseSessionLocked`) by `Unregister` and TTL expiry
  (`removeRunnerWithRunnerLocked`), by a failed static health poll (`checkStaticRunnerHealth`:
  one failure), by the client (`StopLiveRunnerSession`) and by the runner's callback
  (`StopLiveRunnerSessionInternal`, with the session token). Every release is recorded with
  the reason in `released`, for tests.
* Every session route checks `isReadyStatus`: a runner whose last heartbeat said a status other
  than ""/"ready" answers 404 for sessions already running (`RunnerEndpointForSession`,
  `SessionTokenForSession`, `ValidSessionToken`, `ReserveSession`).
* Capacity 0 becomes 1 (`normalizeHeartbeat`); a reservation beyond capacity is 503.
* Tokens and secrets are HMAC-SHA256 of a per-runner seed, base32 without padding, lower case
  (`deriveSecret`); ids are `runner_`/`session_` + 5 random bytes in base32 (`randomStr`).

Pure bookkeeping with an injected clock; the HTTP side (and the reverse proxy) is
tests/fake_livepeer.py's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.go_livepeer_json import normalize_heartbeat


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def random_str(n: int) -> str:
    """`randomStr`."""
    return _b32(secrets.token_bytes(n))


def derive_secret(seed: bytes, label: str) -> str:
    """`deriveSecret`."""
    return _b32(hmac.new(seed, label.encode(), hashlib.sha256).digest())


def go_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


class RunnerError(Exception):
    """`RunnerError`: answered as http.Error(message, status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Released:
    at: float
    runner_id: str
    session_id: str
    reason: str
    """unregister, heartbeat timeout, unhealthy, client stop, runner stop."""
    wall: float = 0.0
    """time.time() of the release, to compare with byoc-orch's session end times."""


@dataclass
class Runner:
    """`liveRunner`."""

    runner_id: str
    seed: bytes = field(repr=False)
    heartbeat_secret: str = field(default="", repr=False)
    static: bool = False
    request: dict[str, Any] = field(default_factory=dict)
    last_heartbeat: float = 0.0
    removed: bool = False
    health_url: str = ""
    health_status: int = 200
    route: str = ""
    sessions: dict[str, float] = field(default_factory=dict)
    """session id → created at."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """What `sendSessionEvent` queued on the O2R channel."""

    @property
    def status(self) -> str:
        return str(self.request.get("status", ""))

    @property
    def capacity(self) -> int:
        return int(self.request.get("capacity", 1))

    @property
    def ready(self) -> bool:
        """`isReadyStatus`."""
        return self.status in ("", "ready")

    def session_token(self, session_id: str) -> str:
        """`sessionToken`."""
        return derive_secret(self.seed, "session:" + session_id)

    def session_ids(self) -> list[str]:
        """`sessionIDsLocked`: oldest first, ties by id."""
        return [sid for sid, _ in sorted(self.sessions.items(), key=lambda kv: (kv[1], kv[0]))]

    def public(self) -> dict[str, Any]:
        """What a test may look at: never a secret."""
        return {
            **{k: v for k, v in self.request.items()},
            "runner_id": self.runner_id,
            "static": self.static,
            "sessions": self.session_ids(),
        }


class LiveRunnerRegistry:
    """`LiveRunnerRegistry`, offchain unless `onchain`."""

    def __init__(
        self,
        *,
        registration_secret: str,
        service_url: Callable[[], str],
        live_runner_url: Callable[[], str] | None = None,
        onchain: bool = False,
        heartbeat_interval: float = 5.0,
        heartbeat_ttl: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registration_secret = registration_secret
        self.service_url = service_url
        self.live_runner_url = live_runner_url or service_url
        self.onchain = onchain
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_ttl = heartbeat_ttl
        self.clock = clock
        self.runners: dict[str, Runner] = {}
        """route → runner (dynamic runners' route is their id; static ones' may be a label)."""
        self.released: list[Released] = []

    def clear(self) -> None:
        self.runners.clear()

    # -- normalising -------------------------------------------------------------------------

    def normalize_heartbeat(self, runner_id: str, req: dict[str, Any]) -> dict[str, Any]:
        """`normalizeHeartbeat`: ValueError with its message, or the normalised request."""
        req = normalize_heartbeat(req, onchain=self.onchain)
        req["runner_id"] = runner_id
        return req

    # -- dynamic runners ---------------------------------------------------------------------

    def expired(self, runner: Runner, now: float | None = None) -> bool:
        """`liveRunnerExpiredLocked`."""
        now = self.clock() if now is None else now
        return not runner.static and now - runner.last_heartbeat > self.heartbeat_ttl

    def heartbeat(self, req: dict[str, Any], auth: str) -> dict[str, Any]:
        """`Heartbeat`."""
        runner_id = str(req.get("runner_id", "")).strip() or "runner_" + random_str(5)
        try:
            req = self.normalize_heartbeat(runner_id, req)
        except ValueError as exc:
            raise RunnerError(400, str(exc)) from None
        answer: dict[str, Any] = {
            "runner_id": runner_id,
            "orchestrator": self.live_runner_url(),
            "heartbeat_interval": go_duration(self.heartbeat_interval),
            "heartbeat_ttl": go_duration(self.heartbeat_ttl),
        }
        runner = self.runners.get(runner_id)
        if runner is None:
            if not self.registration_secret:
                raise RunnerError(404, "dynamic live runner registration is disabled")
            if not hmac.compare_digest(auth.encode(), self.registration_secret.encode()):
                raise RunnerError(401, "invalid registration authorization")
            seed = secrets.token_bytes(32)
            runner = Runner(
                runner_id,
                seed,
                heartbeat_secret=derive_secret(seed, "heartbeat"),
                route=runner_id,
            )
            self.runners[runner_id] = runner
            runner.request = req
            runner.last_heartbeat = self.clock()
            answer["heartbeat_secret"] = runner.heartbeat_secret
            answer["o2r"] = {
                "name": "o2r",
                "channel_name": f"{runner_id}-{derive_secret(seed, 'trickle:o2r')[:16]}-o2r",
                "url": "",
                "mime_type": "application/json",
            }
            answer["session_ids"] = runner.session_ids()
            return answer
        if runner.removed or self.expired(runner):
            raise RunnerError(404, "runner not found")
        if not hmac.compare_digest(auth.encode(), runner.heartbeat_secret.encode()):
            raise RunnerError(401, "invalid heartbeat authorization")
        if runner.static:
            raise RunnerError(400, "static runner cannot heartbeat")
        runner.request = req
        runner.last_heartbeat = self.clock()
        answer["session_ids"] = runner.session_ids()
        return answer

    def unregister(self, runner_id: str, auth: str) -> None:
        """`Unregister`."""
        runner = self.runners.get(runner_id)
        if runner is None or runner.removed or self.expired(runner):
            raise RunnerError(404, "runner not found")
        if runner.static:
            raise RunnerError(400, "static runner cannot unregister with heartbeat credentials")
        if not hmac.compare_digest(auth.encode(), runner.heartbeat_secret.encode()):
            raise RunnerError(401, "invalid authorization")
        self.remove_runner(runner_id, runner, "unregister")

    def remove_runner(self, route: str, runner: Runner, reason: str) -> None:
        """`removeRunnerWithRunnerLocked`: every session of the runner is released."""
        runner.removed = True
        for session_id in list(runner.sessions):
            self.release(runner, session_id, reason)
        if self.runners.get(route) is runner:
            del self.runners[route]

    def remove_expired(self, now: float | None = None) -> None:
        """`removeExpiredRunners` (the expiry loop runs it every heartbeat interval)."""
        now = self.clock() if now is None else now
        for route, runner in list(self.runners.items()):
            if not runner.removed and self.expired(runner, now):
                self.remove_runner(route, runner, "heartbeat timeout")

    # -- static runners ----------------------------------------------------------------------

    def register_static(
        self, entries: list[dict[str, Any]], healthy: list[bool]
    ) -> list[dict[str, Any]]:
        """`RegisterStaticRunners` after `normalizeStaticLiveRunnerConfig` (the entries come
        from fake_livepeer.check_static_runner_config; `healthy` is each one's first poll)."""
        existing = {r.request.get("label"): r for r in self.runners.values() if r.static}
        registrations = []
        for entry, ok in zip(entries, healthy, strict=True):
            label = entry["label"]
            runner = existing.get(label)
            if runner is None:
                runner = Runner("runner_" + random_str(5), secrets.token_bytes(32), static=True)
            fields = (
                "label", "proxy", "runner_url", "version", "metadata", "mode", "gpu", "app",
                "capacity", "price_info",
            )  # fmt: skip
            req = {k: entry[k] for k in fields if k in entry}
            req["runner_id"] = runner.runner_id
            req["status"] = "ready" if ok else "unavailable"
            if not ok:
                for session_id in list(runner.sessions):
                    self.release(runner, session_id, "unhealthy")
            runner.removed = False
            runner.request = req
            runner.last_heartbeat = self.clock()
            runner.health_url = entry["health_url"]
            runner.health_status = entry["healthy_status_code"]
            runner.route = label if entry["routing"] == "label" else runner.runner_id
            for route, other in list(self.runners.items()):
                if other is runner and route != runner.route:
                    del self.runners[route]
            self.runners[runner.route] = runner
            registrations.append(
                {
                    "runner_id": runner.runner_id,
                    "label": label,
                    "app": req.get("app", ""),
                    "runner_url": req.get("runner_url", ""),
                    "mode": req.get("mode", ""),
                    "health_url": runner.health_url,
                    "healthy_status_code": runner.health_status,
                    "healthy": ok,
                }
            )
        return registrations

    def static_checks(self) -> list[tuple[Runner, str, int]]:
        return [
            (r, r.health_url, r.health_status)
            for r in self.runners.values()
            if r.static and not r.removed
        ]

    def static_health(self, runner: Runner, healthy: bool) -> None:
        """`checkStaticRunnerHealth`'s verdict for one runner: one failed poll releases every
        session it holds."""
        if runner.removed or not runner.static:
            return
        if healthy:
            runner.request["status"] = "ready"
            return
        runner.request["status"] = "unavailable"
        for session_id in list(runner.sessions):
            self.release(runner, session_id, "unhealthy")

    # -- sessions ----------------------------------------------------------------------------

    def lock(self, route: str) -> Runner:
        """`lockLiveRunner`."""
        runner = self.runners.get(route)
        if runner is None or runner.removed or self.expired(runner):
            raise RunnerError(404, "runner not found")
        return runner

    def runner_mode(self, route: str) -> str:
        """`RunnerMode`."""
        runner = self.lock(route)
        if not runner.ready:
            raise RunnerError(404, "runner not found")
        return str(runner.request.get("mode") or "persistent")

    def reserve(self, route: str) -> tuple[str, str, str]:
        """`ReserveLiveRunnerSession` → `ReserveSession` (offchain: no payment): the session
        id, its app URL and its control URL."""
        if self.runner_mode(route) != "persistent":
            raise RunnerError(400, "only persistent runners have sessions")
        runner = self.lock(route)
        if not runner.ready:
            raise RunnerError(404, "runner not found")
        if len(runner.sessions) >= runner.capacity:
            raise RunnerError(503, "no capacity available for runner")
        session_id = "session_" + random_str(5)
        while session_id in runner.sessions:
            session_id = "session_" + random_str(5)
        runner.sessions[session_id] = self.clock()
        runner.events.append({"event": "reserved", "session": session_id})
        base = self.service_url().rstrip("/")
        app_url = f"{base}/apps/{runner.route}/session/{session_id}/app"
        control_url = f"{base}/apps/{route}/session/{session_id}"
        return session_id, app_url, control_url

    def release(self, runner: Runner, session_id: str, reason: str) -> None:
        """`releaseSessionLocked`."""
        if session_id in runner.sessions:
            runner.events.append({"event": "released", "session": session_id})
            self.released.append(
                Released(self.clock(), runner.runner_id, session_id, reason, time.time())
            )
        runner.sessions.pop(session_id, None)

    def release_session(self, route: str, session_id: str, reason: str = "client stop") -> None:
        """`ReleaseSession` (a session the runner does not hold is no error)."""
        self.release(self.lock(route), session_id, reason)

    def endpoint_for_session(self, route: str, session_id: str) -> tuple[Runner, str, str]:
        """`RunnerEndpointForSession` then `SessionTokenForSession`: the runner, its
        runner_url and the session token."""
        runner = self.lock(route)
        if not runner.ready:
            raise RunnerError(404, "runner not found")
        if session_id not in runner.sessions:
            raise RunnerError(404, "runner session not found")
        return runner, str(runner.request.get("runner_url", "")), runner.session_token(session_id)

    def valid_session_token(self, route: str, session_id: str, token: str) -> Runner:
        """`ValidSessionToken`."""
        runner = self.lock(route)
        if not runner.ready:
            raise RunnerError(404, "runner not found")
        if session_id not in runner.sessions:
            raise RunnerError(404, "runner session not found")
        if not hmac.compare_digest(token.encode(), runner.session_token(session_id).encode()):
            raise RunnerError(401, "invalid authorization")
        return runner

    def stop_internal(self, route: str, session_id: str, token: str) -> None:
        """`StopLiveRunnerSessionInternal`: the runner releases a session itself."""
        runner = self.valid_session_token(route, session_id, token)
        self.release(runner, session_id, "runner stop")

    def control_url(self, route: str, session_id: str) -> str:
        """The `Livepeer-Session-Control` base `proxyLiveRunner` sets (`liveRunnerURI`)."""
        return f"{self.live_runner_url().rstrip('/')}/runner/{route}/session/{session_id}"

    # -- discovery ---------------------------------------------------------------------------

    def discovery(self) -> list[dict[str, Any]]:
        """`Runners` as `DiscoverLiveRunners` lists them (offchain: no price)."""
        base = self.service_url().rstrip("/")
        listed = []
        for runner in self.runners.values():
            if runner.removed or self.expired(runner) or not runner.ready:
                continue
            req = runner.request
            item: dict[str, Any] = {
                "url": f"{base}/apps/{runner.route}/session",
                "app": req.get("app", ""),
                "mode": req.get("mode", ""),
                "capacity": runner.capacity,
                "capacity_used": len(runner.sessions),
                "capacity_available": runner.capacity - len(runner.sessions),
            }
            if req.get("gpu"):
                item["gpu"] = req["gpu"]
            listed.append(item)
        return [{"address": base, "runners": listed}]

    def sessions_of(self, runner_id: str) -> list[str]:
        for runner in self.runners.values():
            if runner.runner_id == runner_id:
                return runner.session_ids()
        return []

    def by_label(self, label: str) -> Runner | None:
        for runner in self.runners.values():
            if runner.request.get("label") == label and not self.expired(runner):
                return runner
        return None


def answer_json(value: Any) -> bytes:
    return json.dumps(value).encode()
