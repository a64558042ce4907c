"""What every advertiser shares: the interface the daemon drives, and the plumbing for calling
go-livepeer without ever exposing its secret.

An advertiser mirrors the capability registry's warm set into one outward protocol. The
registry calls subscribers synchronously inside the event loop, so an advertiser's callback
only records the change and wakes the advertiser's own task; every network call happens in that
task. A slow or refusing go-livepeer therefore delays nothing but that advertiser.

Every wait between calls — a retry's back-off, the refused-secret retry, BYOC's probe and
refresh, a Live Runner heartbeat — is jittered: drawn from `[1 - JITTER, 1]` of its nominal
length. A fleet of hosts whose orchestrator went away together backs off together; without it,
they would all come back at the same instant and re-register the whole fleet's warm set in one
burst. Jitter only shortens a wait, so each setting stays an upper bound and a heartbeat is never
later than the registry's interval, far inside its TTL.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import structlog

from byoc_orch.capabilities import Capability, CapabilityRegistry, Change
from byoc_orch.metrics import Metrics
from byoc_orch.redact import display_url
from byoc_orch.settings import Settings

CALL_TIMEOUT = 5.0
"""Seconds one call to go-livepeer may take; go-livepeer answers these from memory."""

JITTER = 0.2
"""The share of a wait that jitter may take off it (see the module docstring)."""


def jittered(delay: float, draw: float, spread: float = JITTER) -> float:
    """`delay` shortened by `draw` (in [0, 1), from the random source) × `spread` of itself:
    never longer than `delay`, never shorter than `(1 - spread) × delay`."""
    return delay * (1.0 - spread * min(max(draw, 0.0), 1.0))


class Result(StrEnum):
    """Outcome of one outward call, as counted in byoc_orch_advertiser_calls_total."""

    OK = "ok"
    REFUSED = "refused"
    """go-livepeer refused our credential (the orchestrator secret)."""
    REJECTED = "rejected"
    """go-livepeer refused this request's content; repeating it would fail the same way."""
    UNAVAILABLE = "unavailable"
    """No answer: connection refused or dropped, timeout, or a 5xx."""


class OrchState(StrEnum):
    """What an advertiser last learned about go-livepeer."""

    UP = "up"
    DOWN = "down"
    REFUSED = "refused"


@dataclass(frozen=True)
class Reply:
    status: int | None
    text: str
    result: Result
    error: str | None = None
    """What went wrong, without URL credentials or headers; None when an answer came back."""


HANDOVER_WAIT = 1.0
"""Seconds a stop that withdraws nothing waits for the call to go-livepeer in flight: one that
answers at all answers well within it, and one that does not must not delay the restart (an
unrecorded first registration is recovered by the next process as a held runner id)."""


class Advertiser(abc.ABC):
    """Mirrors the warm set into one outward protocol; built by `build_advertisers`."""

    name: ClassVar[str]
    calls: ClassVar[tuple[str, ...]]
    """The `call` label values it counts, created at zero on start."""
    survives_restart: ClassVar[bool] = False
    """Whether what it registered can be taken over by the next byoc-orch process (so a
    shutdown that leaves the containers running withdraws nothing)."""

    def __init__(
        self,
        settings: Settings,
        registry: CapabilityRegistry,
        http: httpx.AsyncClient,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] | None = None,
    ) -> None:
        """`clock` is what every retry, probe, refresh and heartbeat is timed by (monotonic
        seconds); tests move it by hand. `draw` is the jitter's random source (uniform in
        [0, 1)); by default one seeded from the OS, so no two hosts draw alike."""
        self.settings = settings
        self._clock = clock
        self._draw = draw if draw is not None else random.Random().random
        self.registry = registry
        self.metrics = metrics
        self._shared_http = http
        self._own_http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._last_call: dict[str, Any] | None = None
        self._last_error: str | None = None
        self.log = structlog.get_logger(f"byoc_orch.advertisers.{self.name}")
        self._retry_max = settings.register_retry_max
        self._backoff = Backoff(settings.register_retry_initial, settings.register_retry_max)
        self._state = OrchState.UP
        self._retry_at = 0.0
        if settings.orch_url and display_url(settings.orch_url) != settings.orch_url:
            self.log.warning(
                "ignoring the user:password part of BYOC_ORCH_ORCH_URL; go-livepeer "
                "authenticates with BYOC_ORCH_ORCH_SECRET",
                orch_url=display_url(settings.orch_url),
            )

    def _jitter(self, delay: float) -> float:
        """One wait between calls, jittered (see the module docstring)."""
        return jittered(delay, self._draw())

    def _refused(self, now: float, reply: Reply, message: str) -> bool:
        """go-livepeer refused the secret: say so once, then ask only every retry_max."""
        if self._state is not OrchState.REFUSED:
            self.log.error(message, orch_url=self.orch_url, reply=reply.error)
        else:
            self.log.debug("go-livepeer still refuses the orchestrator secret")
        self._state = OrchState.REFUSED
        self._retry_at = now + self._jitter(self._retry_max)
        return False

    def _unreachable(self, now: float, reply: Reply, message: str) -> bool:
        """go-livepeer did not answer: back off, warning once per outage."""
        delay = self._jitter(self._backoff.next())
        if self._state is not OrchState.DOWN:
            self.log.warning(message, orch_url=self.orch_url, error=reply.error, retry_in=delay)
        else:
            self.log.debug("go-livepeer still unreachable", error=reply.error, retry_in=delay)
        self._state = OrchState.DOWN
        self._retry_at = now + delay
        return False

    async def start(self) -> None:
        """Subscribe, take in what is already warm, and start this advertiser's task."""
        for call in self.calls:
            for result in Result:
                self.metrics.advertiser_calls.labels(self.name, call, str(result))
        self._unsubscribe = self.registry.subscribe(self._on_change)
        self._on_change(Change(added=tuple(self.registry.warm())))
        self._task = asyncio.create_task(self._guarded_run(), name=f"advertiser-{self.name}")

    async def aclose(self, unregister: bool = True, timeout: float = 5.0) -> None:
        """Stop; with `unregister`, withdraw from go-livepeer everything this advertiser put
        there. The call in flight is let finish (so nothing go-livepeer accepted goes unrecorded),
        and all of it gives up after `timeout` seconds so shutdown is never held hostage — after
        HANDOVER_WAIT when nothing is withdrawn (a restart: the next process takes over)."""
        if not unregister:
            timeout = min(timeout, HANDOVER_WAIT)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout):
                if self._task is not None:
                    await asyncio.wait({self._task})
                if unregister:
                    await self._withdraw_everything()
        except TimeoutError:
            self.log.warning(
                "gave up withdrawing from go-livepeer at shutdown",
                advertiser=self.name,
                after_seconds=timeout,
                still_registered=self.registered_names(),
            )
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
                self._task = None
            if self._own_http is not None:
                await self._own_http.aclose()
                self._own_http = None

    def describe(self) -> dict[str, Any]:
        """For the HTTP API: never contains a secret."""
        return {
            "advertiser": self.name,
            "running": self._task is not None and not self._task.done(),
            "last_call": self._last_call,
            "last_error": self._last_error,
            "registered": self.registered_names(),
        }

    @abc.abstractmethod
    def registered_names(self) -> list[str]:
        """What go-livepeer was last told this advertiser offers."""

    @abc.abstractmethod
    def _on_change(self, change: Change) -> None:
        """Record the change and wake the task; runs inside the registry's notify, so no I/O."""

    @abc.abstractmethod
    def _delay(self) -> float:
        """Seconds until the next pass is due (a change wakes it sooner)."""

    @abc.abstractmethod
    async def _pass(self) -> None:
        """Bring go-livepeer up to date with the warm set, as far as it answers."""

    async def _run(self) -> None:
        """The advertiser's loop; returns once `_stopping` is set."""
        while not self._stopping:
            await self._sleep_until_woken(self._delay())
            if not self._stopping:
                await self._pass()

    @abc.abstractmethod
    async def _withdraw_everything(self) -> None:
        """Undo every registration (shutdown)."""

    async def _guarded_run(self) -> None:
        while not self._stopping:
            try:
                await self._run()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("advertiser loop failed; restarting it", advertiser=self.name)
                await asyncio.sleep(1.0)

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    # ---------------------------------------------------------------- calling go-livepeer

    @property
    def orch_url(self) -> str:
        """go-livepeer's base URL without any user:password part: the Authorization header
        belongs to the orchestrator secret, and httpx logs request URLs."""
        assert self.settings.orch_url is not None
        return display_url(self.settings.orch_url)

    def _client(self) -> httpx.AsyncClient:
        """go-livepeer serves these routes on its TLS service port with a self-signed
        certificate it regenerates at every start, so it cannot be pinned: unless
        ORCH_TLS_VERIFY is set, an https orchestrator gets a client of our own that skips
        verification (as pytrickle's registration does)."""
        verify = self.settings.orch_tls_verify
        if verify or urlsplit(self.orch_url).scheme != "https":
            return self._shared_http
        if self._own_http is None:
            self._own_http = httpx.AsyncClient(verify=False, trust_env=False)
        return self._own_http

    async def _call(
        self,
        call: str,
        method: str,
        path: str,
        *,
        authorization: str | None,
        content: bytes | None = None,
        subject: str | None = None,
        timeout: float = CALL_TIMEOUT,
        classify: Callable[[int, str], Result] | None = None,
    ) -> Reply:
        """One request to go-livepeer, counted in the metrics. Exceptions become a Reply whose
        error text names the exception type and message only (httpx puts no headers in its
        messages; the URL we build never carries the secret)."""
        headers = {"Authorization": authorization} if authorization is not None else {}
        if content is not None and content[:1] in (b"{", b"["):
            headers["Content-Type"] = "application/json"
        try:
            response = await self._client().request(
                method, self.orch_url + path, content=content, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            reply = Reply(None, "", Result.UNAVAILABLE, f"{type(exc).__name__}: {exc}".strip())
        else:
            text = response.text
            if response.status_code >= 500:
                result = Result.UNAVAILABLE
            elif classify is not None:
                result = classify(response.status_code, text)
            else:
                result = Result.OK if response.status_code < 400 else Result.REJECTED
            error = None if result is Result.OK else f"HTTP {response.status_code}: {text.strip()}"
            reply = Reply(response.status_code, text, result, error)
        self.metrics.advertiser_calls.labels(self.name, call, str(reply.result)).inc()
        self._last_call = {
            "call": call,
            "subject": subject,
            "result": str(reply.result),
            "status": reply.status,
            "at": time.time(),
        }
        if reply.error is not None:
            self._last_error = f"{call} {subject or ''}: {reply.error}".replace("  ", " ")
        return reply


class Backoff:
    """Exponential retry delays: `initial`, doubling, capped at `maximum` (nominal: the
    advertiser jitters each one)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self._next = initial

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


def secret_value(settings: Settings) -> str:
    assert settings.orch_secret is not None
    return settings.orch_secret.get_secret_value()


def warm_by_entry(change: Change, into: dict[str, Capability]) -> None:
    """Apply a registry change to an entry_id → Capability mirror, keeping first-seen order."""
    for capability in change.withdrawn:
        into.pop(capability.entry_id, None)
    for capability in change.added:
        into[capability.entry_id] = capability
