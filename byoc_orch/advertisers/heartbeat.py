"""Live Runner dynamic registration: one runner per warm replica, kept alive by heartbeats.

The protocol, as go-livepeer implements it (server/ai_http.go, ai/runner/live_runner.go; on the
orchestrator's service port; needs `-useLiveRunners -orchSecret`):

* `POST {orch}/runners/heartbeat` with JSON `LiveRunnerHeartbeatRequest` (`runner_id`, `label`,
  `runner_url`, `app`, `status`, `mode` strings, `capacity` int, `price_info` {`price` number,
  `currency`, `unit`}). Without a known `runner_id` it registers a new runner and needs
  `Authorization: <orchSecret>`; the answer carries `runner_id`, `heartbeat_secret`,
  `heartbeat_interval` and `heartbeat_ttl` (Go durations, "5s" and "20s" today). Later
  heartbeats name the `runner_id` and carry `Authorization: <heartbeat_secret>`; they may change
  anything, capacity included, without touching the runner's sessions.
* 401 wrong secret; 404 unknown or expired runner (register again) or live runners off; 400 a
  body it refuses (an on-chain node needs a USD `price_info`).
* A runner that sends no heartbeat within the TTL is dropped with its sessions.
* `POST {orch}/runners/{runner_id}/unregister` with `Authorization: <heartbeat_secret>` → 204.

So a go-livepeer restart heals itself: the next heartbeat gets 404 and the worker registers
again. byoc-orch lets go-livepeer pick runner ids: after a byoc-orch crash, its old runners
(which still reach the same workers) expire within the TTL instead of blocking a proposed id
with 401s. Neither secret is ever logged or shown.

Every warm replica of an entry is its own runner: the same `app` (the entry's
`pipeline/model_id`), its own `label` and `runner_url` (`/proxy/<worker id>`, which reaches only
that replica), its own `capacity` (go-livepeer counts the sessions it reserves per runner), its
GPU when it has exactly one, and the ids of the sessions it runs. go-livepeer does not balance
between runners itself; gateways pick among the runners its discovery lists, so one entry's
replicas — and the replicas of the same entry on several byoc-orch hosts heartbeating into one
orchestrator — are spread over as runners of one app. A replica that dies or drains stops being a
runner at once; the others go on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from byoc_orch.advertisers.base import (
    Advertiser,
    OrchState,
    Reply,
    Result,
    secret_value,
    warm_by_entry,
)
from byoc_orch.advertisers.live_runner import live_runner_price
from byoc_orch.capabilities import Capability, Change, ReplicaShare

DEFAULT_INTERVAL = 5.0
DEFAULT_TTL = 20.0
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def go_duration(text: object, default: float) -> float:
    """Seconds in a Go `time.Duration.String()` such as "5s" or "1m30s"; `default` if unreadable
    or not positive."""
    if not isinstance(text, str) or not text:
        return default
    parts = _GO_DURATION_PART.findall(text)
    if "".join(number + unit for number, unit in parts) != text:
        return default
    seconds = sum(float(number) * _GO_UNITS[unit] for number, unit in parts)
    return seconds if seconds > 0 else default


@dataclass
class _Runner:
    runner_id: str | None = None
    secret: str | None = field(default=None, repr=False)
    sent: bytes | None = None
    last_ok: float = 0.0
    interval: float = DEFAULT_INTERVAL
    ttl: float = DEFAULT_TTL
    next_due: float = 0.0
    rejected: tuple[bytes, str] | None = None


@dataclass(frozen=True)
class _Replica:
    """One warm replica as a runner: its share and the capability it belongs to."""

    capability: Capability
    share: ReplicaShare

    @property
    def app(self) -> str:
        return self.capability.name


def heartbeat_body(
    capability: Capability, share: ReplicaShare | None, runner_id: str | None
) -> dict[str, Any]:
    share = share or capability.shares()[0]
    body: dict[str, Any] = {
        "label": share.worker_id,
        "runner_url": share.url,
        "app": capability.name,
        "status": "ready",
        "mode": "persistent",
        "capacity": int(share.capacity),
    }
    if runner_id is not None:
        body = {"runner_id": runner_id, **body}
    if share.gpu is not None:
        body["gpu"] = share.gpu
    price = live_runner_price(capability.offer)
    if price is not None:
        body["price_info"] = price
    if share.session_ids:
        body["session_ids"] = list(share.session_ids)
    return body


class LiveRunnerHeartbeatAdvertiser(Advertiser):
    """Registers each warm worker as a dynamic live runner and heartbeats it until withdrawn."""

    name: ClassVar[str] = "live_runner_heartbeat"
    calls: ClassVar[tuple[str, ...]] = ("heartbeat", "unregister")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        self._secret = secret_value(s)
        self._capabilities: dict[str, Capability] = {}
        self._warm: dict[str, _Replica] = {}
        self._runners: dict[str, _Runner] = {}
        self._leaving: dict[str, _Runner] = {}
        self._refusal: str | None = None

    def registered_names(self) -> list[str]:
        return sorted(
            f"{self._warm[worker_id].app} ({runner.runner_id})"
            for worker_id, runner in self._runners.items()
            if runner.runner_id is not None and worker_id in self._warm
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "orch_url": self.orch_url,
            "state": str(self._state),
            "refusal": self._refusal,
            "rejected": {
                self._warm[worker_id].app: runner.rejected[1]
                for worker_id, runner in sorted(self._runners.items())
                if runner.rejected is not None and worker_id in self._warm
            },
        }

    def _on_change(self, change: Change) -> None:
        warm_by_entry(change, self._capabilities)
        before = set(self._warm)
        self._warm = {
            share.worker_id: _Replica(capability, share)
            for capability in self._capabilities.values()
            for share in capability.shares()
        }
        for worker_id in before - set(self._warm):
            runner = self._runners.pop(worker_id, None)
            if runner is not None and runner.runner_id is not None:
                self._leaving[worker_id] = runner
        for worker_id in set(self._warm) - before:
            back = self._leaving.pop(worker_id, None)
            if back is not None:
                self._runners[worker_id] = back
        self._wake.set()

    def _delay(self) -> float:
        now = self._clock()
        if self._state is not OrchState.UP:
            return max(self._retry_at - now, 0.0)
        if self._leaving:
            return 0.0
        dues = [
            runner.next_due if runner is not None else now
            for runner in (self._runners.get(worker_id) for worker_id in self._warm)
            if runner is None or runner.rejected is None
        ]
        return max(min(dues, default=now + 3600) - now, 0.0)

    async def _pass(self) -> None:
        now = self._clock()
        if self._state is not OrchState.UP and now < self._retry_at:
            return
        called = False
        for worker_id, runner in list(self._leaving.items()):
            if self._stopping:
                return
            called = True
            reply = await self._unregister(runner)
            expired = self._clock() - runner.last_ok > runner.ttl
            if reply.result is not Result.UNAVAILABLE or expired:
                self._leaving.pop(worker_id, None)
            if not self._after(reply):
                return
        for worker_id, replica in list(self._warm.items()):
            if self._stopping:
                return
            runner = self._runners.setdefault(worker_id, _Runner())
            for _attempt in range(2):
                body = json.dumps(
                    heartbeat_body(replica.capability, replica.share, runner.runner_id)
                ).encode()
                if runner.rejected is not None and runner.rejected[0] == body:
                    break
                due = runner.runner_id is None or body != runner.sent or now >= runner.next_due
                if not due:
                    break
                called = True
                reply = await self._heartbeat(replica, runner, body)
                if reply.status in (401, 404) and runner.runner_id is not None:
                    self.log.info(
                        "go-livepeer no longer knows this live runner; registering it again",
                        app=replica.app,
                        runner_id=runner.runner_id,
                    )
                    runner = self._runners[worker_id] = _Runner()
                    continue
                if not self._after(reply):
                    return
                break
        if not called and self._state is not OrchState.UP:
            self._retry_at = now + self._retry_max

    def _after(self, reply: Reply) -> bool:
        now = self._clock()
        if reply.result in (Result.OK, Result.REJECTED):
            if self._state is not OrchState.UP:
                self.log.info("go-livepeer answers live runner heartbeats again")
                self._state = OrchState.UP
                self._refusal = None
                self._backoff.reset()
            return True
        if reply.result is Result.REFUSED:
            return self._refused(
                now, reply, self._refusal or "go-livepeer refused live runner registration"
            )
        return self._unreachable(
            now, reply, "go-livepeer unreachable for live runner heartbeats; retrying with back-off"
        )

    async def _heartbeat(self, replica: _Replica, runner: _Runner, body: bytes) -> Reply:
        bootstrap = runner.runner_id is None
        capability, share = replica.capability, replica.share
        reply = await self._call(
            "heartbeat",
            "POST",
            "/runners/heartbeat",
            authorization=self._secret if bootstrap else runner.secret,
            content=body,
            subject=capability.name,
            classify=lambda status, text: self._classify(status, text, bootstrap),
        )
        now = self._clock()
        if reply.result is Result.OK:
            try:
                answer = json.loads(reply.text)
                runner_id = str(answer["runner_id"])
            except (ValueError, KeyError, TypeError):
                return Reply(reply.status, "", Result.REJECTED, "unreadable heartbeat answer")
            if bootstrap:
                runner.runner_id = runner_id
                runner.secret = str(answer.get("heartbeat_secret") or "")
                body = json.dumps(heartbeat_body(capability, share, runner_id)).encode()
                self.log.info(
                    "registered as a go-livepeer live runner",
                    app=capability.name,
                    worker_id=share.worker_id,
                    runner_id=runner_id,
                    runner_url=share.url,
                )
            runner.interval = go_duration(answer.get("heartbeat_interval"), DEFAULT_INTERVAL)
            runner.ttl = go_duration(answer.get("heartbeat_ttl"), DEFAULT_TTL)
            runner.sent, runner.last_ok, runner.rejected = body, now, None
            runner.next_due = now + runner.interval
        elif reply.result is Result.REJECTED and reply.status not in (401, 404):
            runner.rejected = (body, reply.error or "")
            self.log.error(
                "go-livepeer refused this live runner; not sending it again until it changes",
                app=capability.name,
                worker_id=share.worker_id,
                reason=reply.error,
            )
        return reply

    def _classify(self, status: int, text: str, bootstrap: bool) -> Result:
        if status < 300:
            return Result.OK
        if bootstrap and status == 401:
            self._refusal = (
                "go-livepeer refused the orchestrator secret for live runner registration "
                "(401) — check BYOC_ORCH_ORCH_SECRET matches -orchSecret"
            )
            return Result.REFUSED
        if bootstrap and status == 404:
            self._refusal = (
                "go-livepeer does not take dynamic live runners (404) — start it with "
                "-useLiveRunners and -orchSecret, or turn BYOC_ORCH_LIVE_RUNNER_HEARTBEAT off"
            )
            return Result.REFUSED
        return Result.REJECTED

    async def _unregister(self, runner: _Runner) -> Reply:
        reply = await self._call(
            "unregister",
            "POST",
            f"/runners/{runner.runner_id}/unregister",
            authorization=runner.secret,
            subject=runner.runner_id,
        )
        if reply.result is Result.OK or reply.status in (401, 404):
            self.log.info("unregistered live runner", runner_id=runner.runner_id)
            return Reply(reply.status, reply.text, Result.OK)
        return reply

    async def _withdraw_everything(self) -> None:
        leaving = {**self._runners, **self._leaving}
        self._runners.clear()
        self._leaving.clear()
        for runner in leaving.values():
            if runner.runner_id is None:
                continue
            reply = await self._unregister(runner)
            if reply.result is Result.UNAVAILABLE:
                self.log.warning(
                    "go-livepeer unreachable at shutdown; its live runners expire after the "
                    "heartbeat TTL",
                    error=reply.error,
                )
                return
