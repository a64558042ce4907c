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

So a go-livepeer restart heals itself: the next heartbeat gets 401 or 404 and the runner
registers again, under the same id. byoc-orch proposes each replica's runner id
(runner_ids.py: stable per host, instance and replica) and keeps every runner's heartbeat secret
in the state file, so a restart of byoc-orch — planned or a crash — heartbeats the same runners
within their TTL and the registry keeps their sessions. When the state was lost, a proposed id
is still held by the old runner (401 for the registration secret): byoc-orch tries again every
interval until that runner expires (at most one TTL) and takes the id back. SIGTERM with the
containers left running unregisters nothing; neither secret is ever logged or shown.

A replica that drains (a rolling replacement, `byoc-orch drain`, fewer replicas, a removed
entry) stays a `ready` runner while it holds sessions, advertising capacity equal to the
sessions it runs, so nothing new is reserved on it and nothing already there is cut; it is
unregistered once the last one ends (the registry would turn capacity 0 into 1). Each answer's
`session_ids` — the registry's own — go to the session lifecycle (live_runner_sessions.py),
which stops the streams the registry released.

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
from typing import Any, ClassVar, Protocol

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
from byoc_orch.runner_ids import host_id, runner_id
from byoc_orch.state_file import RunnerRecord

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


RESTORE_GRACE = 10.0
"""Seconds a runner restored from the state file waits for its replica to be warm again after a
restart before it is unregistered (its sessions are then released at the orchestrator)."""


class RunnerHooks(Protocol):
    """What the heartbeat advertiser tells (and asks) the rest of byoc-orch."""

    def restored_runners(self) -> dict[str, RunnerRecord]: ...

    def runners_changed(self, runners: dict[str, RunnerRecord]) -> None: ...

    def sessions_mark(self, worker_id: str) -> frozenset[str]: ...

    def sessions_listed(
        self, worker_id: str, runner_id: str, listed: list[str], mark: frozenset[str]
    ) -> None: ...

    def runner_gone(self, worker_id: str) -> None: ...


class NoHooks:
    """An advertiser on its own (tests): nothing restored, nothing reconciled."""

    def restored_runners(self) -> dict[str, RunnerRecord]:
        return {}

    def runners_changed(self, runners: dict[str, RunnerRecord]) -> None:
        return None

    def sessions_mark(self, worker_id: str) -> frozenset[str]:
        return frozenset()

    def sessions_listed(
        self, worker_id: str, runner_id: str, listed: list[str], mark: frozenset[str]
    ) -> None:
        return None

    def runner_gone(self, worker_id: str) -> None:
        return None


@dataclass
class _Runner:
    runner_id: str
    """The registered id, or the id byoc-orch proposes before registration."""
    secret: str | None = field(default=None, repr=False)
    """The heartbeat secret; None until registered (the next call is a registration)."""
    sent: bytes | None = None
    last_ok: float = 0.0
    interval: float = DEFAULT_INTERVAL
    ttl: float = DEFAULT_TTL
    next_due: float = 0.0
    rejected: tuple[bytes, str] | None = None
    held_until: float = 0.0
    """While the proposed id is still held by a runner whose secret is lost: retry then."""
    listed: tuple[str, ...] = ()
    """The session ids the registry's last answer listed for it."""

    @property
    def registered(self) -> bool:
        return self.secret is not None


@dataclass(frozen=True)
class _Replica:
    """One warm replica as a runner: its share and the capability it belongs to."""

    capability: Capability
    share: ReplicaShare

    @property
    def app(self) -> str:
        return self.capability.name


def heartbeat_body(
    capability: Capability,
    share: ReplicaShare | None,
    runner_id: str | None,
    *,
    price_unit: str = "720p",
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
    price = live_runner_price(capability.offer, price_unit)
    if price is not None:
        body["price_info"] = price
    if share.session_ids:
        body["session_ids"] = list(share.session_ids)
    return body


class LiveRunnerHeartbeatAdvertiser(Advertiser):
    """Registers each replica taking (or still holding) sessions as a dynamic live runner and
    heartbeats it until withdrawn."""

    name: ClassVar[str] = "live_runner_heartbeat"
    calls: ClassVar[tuple[str, ...]] = ("heartbeat", "unregister")
    survives_restart: ClassVar[bool] = True

    def __init__(self, *args: Any, hooks: RunnerHooks | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        self._secret = secret_value(s)
        self._hooks: RunnerHooks = hooks or NoHooks()
        self._host = host_id()
        self._price_unit = s.live_runner_price_unit
        self._capabilities: dict[str, Capability] = {}
        self._warm: dict[str, _Replica] = {}
        self._runners: dict[str, _Runner] = {}
        self._leaving: dict[str, _Runner] = {}
        self._restored: dict[str, tuple[_Runner, float]] = {}
        self._refusal: str | None = None
        self._bootstrapped = False
        """Whether the registration secret was ever accepted (a 401 for it then means the
        proposed id is held, not that the secret is wrong)."""

    async def start(self) -> None:
        """Take over the runners the previous process registered (the state file), then go."""
        now = self._clock()
        for worker_id, record in self._hooks.restored_runners().items():
            if record.orch_url != self.orch_url:
                self.log.info(
                    "a runner in the state file belongs to another orchestrator; not used",
                    worker_id=worker_id,
                    runner_id=record.runner_id,
                )
                continue
            runner = _Runner(record.runner_id, record.secret, last_ok=now, next_due=now)
            self._restored[worker_id] = (runner, now + RESTORE_GRACE)
        await super().start()

    def proposed_id(self, worker_id: str) -> str:
        return runner_id(self._host, self.settings.instance, worker_id)

    def registered_names(self) -> list[str]:
        return sorted(
            f"{self._warm[worker_id].app} ({runner.runner_id})"
            for worker_id, runner in self._runners.items()
            if runner.registered and worker_id in self._warm
        )

    def runner_of(self, worker_id: str) -> dict[str, Any] | None:
        """One replica's runner, for /workers: never its secret."""
        runner = self._runners.get(worker_id) or self._leaving.get(worker_id)
        if runner is None:
            return None
        replica = self._warm.get(worker_id)
        return {
            "runner_id": runner.runner_id,
            "registered": runner.registered and worker_id in self._runners,
            "leaving": worker_id in self._leaving,
            "draining": bool(replica and replica.share.draining),
            "orchestrator_sessions": list(runner.listed),
        }

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
            if runner is not None and runner.registered:
                self._leaving[worker_id] = runner
        for worker_id in set(self._warm) - before:
            back = self._leaving.pop(worker_id, None)
            if back is not None:
                self._runners[worker_id] = back
            restored = self._restored.pop(worker_id, None)
            if restored is not None and worker_id not in self._runners:
                self._runners[worker_id] = restored[0]
        self._wake.set()

    def _new_runner(self, worker_id: str) -> _Runner:
        return _Runner(self.proposed_id(worker_id))

    def _persist(self) -> None:
        records = {
            worker_id: RunnerRecord(worker_id, runner.runner_id, self.orch_url, runner.secret)
            for worker_id, runner in {
                **{w: r for w, (r, _deadline) in self._restored.items()},
                **self._leaving,
                **self._runners,
            }.items()
            if runner.secret is not None
        }
        self._hooks.runners_changed(records)

    def _delay(self) -> float:
        now = self._clock()
        if self._state is not OrchState.UP:
            return max(self._retry_at - now, 0.0)
        if self._leaving:
            return 0.0
        dues = [
            max(runner.next_due, runner.held_until) if runner is not None else now
            for runner in (self._runners.get(worker_id) for worker_id in self._warm)
            if runner is None or runner.rejected is None
        ]
        dues += [deadline for _runner, deadline in self._restored.values()]
        return max(min(dues, default=now + 3600) - now, 0.0)

    async def _pass(self) -> None:
        now = self._clock()
        if self._state is not OrchState.UP and now < self._retry_at:
            return
        for worker_id, (runner, deadline) in list(self._restored.items()):
            if now >= deadline:
                self.log.info(
                    "a live runner restored from the state file has no warm replica; "
                    "unregistering it",
                    worker_id=worker_id,
                    runner_id=runner.runner_id,
                )
                del self._restored[worker_id]
                self._leaving[worker_id] = runner
        called = False
        for worker_id, runner in list(self._leaving.items()):
            if self._stopping:
                return
            called = True
            reply = await self._unregister(runner)
            expired = self._clock() - runner.last_ok > runner.ttl
            if reply.result is not Result.UNAVAILABLE or expired:
                self._leaving.pop(worker_id, None)
                self._hooks.runner_gone(worker_id)
                self._persist()
            if not self._after(reply):
                return
        for worker_id, replica in list(self._warm.items()):
            if self._stopping:
                return
            runner = self._runners.setdefault(worker_id, self._new_runner(worker_id))
            for _attempt in range(2):
                body = json.dumps(
                    heartbeat_body(
                        replica.capability,
                        replica.share,
                        runner.runner_id,
                        price_unit=self._price_unit,
                    )
                ).encode()
                if runner.rejected is not None and runner.rejected[0] == body:
                    break
                if not runner.registered and now < runner.held_until:
                    break
                due = not runner.registered or body != runner.sent or now >= runner.next_due
                if not due:
                    break
                called = True
                reply = await self._heartbeat(worker_id, replica, runner, body)
                if reply.status in (401, 404) and runner.registered:
                    self.log.info(
                        "the orchestrator no longer knows this live runner; registering it "
                        "again under the same id",
                        app=replica.app,
                        runner_id=runner.runner_id,
                    )
                    runner = self._runners[worker_id] = _Runner(runner.runner_id)
                    self._hooks.runner_gone(worker_id)
                    self._persist()
                    continue
                if not self._after(reply):
                    return
                break
        if not called and self._state is not OrchState.UP:
            self._retry_at = now + self._jitter(self._retry_max)

    def _after(self, reply: Reply) -> bool:
        now = self._clock()
        if reply.result in (Result.OK, Result.REJECTED):
            if self._state is not OrchState.UP:
                self.log.info("the orchestrator answers live runner heartbeats again")
                self._state = OrchState.UP
                self._refusal = None
                self._backoff.reset()
            return True
        if reply.result is Result.REFUSED:
            return self._refused(
                now, reply, self._refusal or "the orchestrator refused live runner registration"
            )
        return self._unreachable(
            now,
            reply,
            "the orchestrator is unreachable for live runner heartbeats; retrying with back-off",
        )

    async def _heartbeat(
        self, worker_id: str, replica: _Replica, runner: _Runner, body: bytes
    ) -> Reply:
        bootstrap = not runner.registered
        capability, share = replica.capability, replica.share
        mark = self._hooks.sessions_mark(worker_id)
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
                answered_id = str(answer["runner_id"])
                listed = answer.get("session_ids") or []
                if not isinstance(listed, list):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return Reply(reply.status, "", Result.REJECTED, "unreadable heartbeat answer")
            if bootstrap:
                self._bootstrapped = True
                runner.runner_id = answered_id
                runner.secret = str(answer.get("heartbeat_secret") or "")
                runner.held_until = 0.0
                body = json.dumps(
                    heartbeat_body(capability, share, answered_id, price_unit=self._price_unit)
                ).encode()
                self.log.info(
                    "registered as a live runner",
                    app=capability.name,
                    worker_id=share.worker_id,
                    runner_id=answered_id,
                    runner_url=share.url,
                )
                self._persist()
            runner.interval = go_duration(answer.get("heartbeat_interval"), DEFAULT_INTERVAL)
            runner.ttl = go_duration(answer.get("heartbeat_ttl"), DEFAULT_TTL)
            runner.sent, runner.last_ok, runner.rejected = body, now, None
            # A runner holding sessions asks twice per interval, so a session the registry
            # released is stopped here within half an interval (DESIGN §5: one). Jitter only
            # brings a heartbeat forward: never later than the registry's interval.
            runner.next_due = now + self._jitter(runner.interval / 2 if mark else runner.interval)
            runner.listed = tuple(str(i) for i in listed)
            self._hooks.sessions_listed(worker_id, runner.runner_id, list(runner.listed), mark)
        elif bootstrap and reply.status == 401 and reply.result is Result.REJECTED:
            if not runner.held_until:
                self.log.warning(
                    "this replica's runner id is still registered by a runner whose heartbeat "
                    "secret byoc-orch no longer has (the state file was lost or reset); it "
                    "expires within its TTL, then byoc-orch registers the id again",
                    app=capability.name,
                    worker_id=share.worker_id,
                    runner_id=runner.runner_id,
                )
            runner.held_until = now + self._jitter(runner.interval)
        elif reply.result is Result.REJECTED and reply.status not in (401, 404):
            runner.rejected = (body, reply.error or "")
            hint = ""
            if "720p" in (reply.error or ""):
                hint = (
                    " — this orchestrator takes no 720p prices: set "
                    "BYOC_ORCH_LIVE_RUNNER_PRICE_UNIT=hour"
                )
            self.log.error(
                "the orchestrator refused this live runner; not sending it again until it "
                "changes" + hint,
                app=capability.name,
                worker_id=share.worker_id,
                reason=reply.error,
            )
        return reply

    def _classify(self, status: int, text: str, bootstrap: bool) -> Result:
        if status < 300:
            return Result.OK
        if bootstrap and status == 401:
            if self._held(text):
                return Result.REJECTED
            self._refusal = (
                "the orchestrator refused the orchestrator secret for live runner registration "
                "(401) — check BYOC_ORCH_ORCH_SECRET matches -orchSecret (or, right after a "
                "restart that lost the state file, the runner ids are still held by the "
                "previous runners until they expire)"
            )
            return Result.REFUSED
        if bootstrap and status == 404:
            self._refusal = (
                "the orchestrator does not take dynamic live runners (404) — start go-livepeer "
                "with -useLiveRunners and -orchSecret, or turn BYOC_ORCH_LIVE_RUNNER_HEARTBEAT "
                "off"
            )
            return Result.REFUSED
        return Result.REJECTED

    def _held(self, text: str) -> bool:
        """A 401 for the registration secret that means "this id is taken": go-livepeer says
        so ("invalid heartbeat authorization"); livepeer/node says "invalid runner credential"
        for both, so there it is taken to mean so once the secret has been accepted."""
        if "invalid heartbeat authorization" in text:
            return True
        return self._bootstrapped and "invalid registration authorization" not in text

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
        leaving = {**{w: r for w, (r, _d) in self._restored.items()}, **self._runners}
        leaving.update(self._leaving)
        self._runners.clear()
        self._leaving.clear()
        self._restored.clear()
        for worker_id, runner in leaving.items():
            if not runner.registered:
                continue
            reply = await self._unregister(runner)
            if reply.result is Result.UNAVAILABLE:
                self.log.warning(
                    "the orchestrator is unreachable at shutdown; its live runners expire after "
                    "the heartbeat TTL",
                    error=reply.error,
                )
                self._leaving.update(
                    {w: r for w, r in leaving.items() if r.registered and w not in self._leaving}
                )
                break
            self._hooks.runner_gone(worker_id)
        self._persist()
