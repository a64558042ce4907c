"""BYOC external capabilities: keep go-livepeer's `/capability/register` list equal to the warm
set.

The contract, as go-livepeer implements it (byoc/job_orchestrator.go, core/external_capabilities.go,
core/ai_orchestrator.go):

* `POST {orch}/capability/register`, header `Authorization: <orchSecret>` (raw). The body is the
  JSON of `core.ExternalCapability`: `name`, `description`, `url`, `currency`, `token` strings;
  `capacity` an int; `price_per_unit`, `price_scaling` int64s (a float or a quoted number is a
  400). 200 `ok`; 400 `invalid authorization` for a wrong secret; 400 `Error registering
  capability: …` for a body it cannot read. A currency other than wei/eth without a price feed
  makes its handler panic, which drops the connection without an answer.
* `POST {orch}/capability/unregister`, same header, body = the raw name; always 200 `ok`.
* Registering an existing name replaces the entry with a fresh one whose `Load` is 0.
* go-livepeer counts load itself: it reserves a slot (`Load++`) when it accepts a job or stream
  for the capability and frees it when that ends; gateways see `capacity - Load`.
* It forgets every capability when it restarts, removes one when a call to its `url` fails to
  connect or answers 401, and never health-checks it.

Decisions:

* **Name** — the entry's `model_id`. A BYOC capability name is the flat, application-chosen key a
  gateway asks for (the `capability` of the signed job request and the `Livepeer-Capability`
  header); go-livepeer keys its table, prices and balances by it and never puts it in a URL path,
  so any string works, slashes included. `pipeline` has no meaning in BYOC, so `model_id` is what
  an operator will tell gateway builders to ask for. aiModels.json only keeps `pipeline/model_id`
  unique, so when two warm workers share a `model_id` the first to become warm holds the name;
  the other is reported (log, describe) and takes over when the first is withdrawn.
* **Capacity** — follows the entry's warm replicas (warm, undrained replicas × per-replica
  `capacity`), and is re-registered as soon as that changes (a replica died, came back, drained).
  go-livepeer has no call that changes a capacity: registering again replaces the entry with one
  whose `Load` is 0, even while sessions run, and `Load` has no floor, so after such a reset the
  ends of those sessions would push `Load` below zero and gateways would be offered slots that do
  not exist (a gateway ignores the status of a stream start, so a 503 there fails the stream
  silently). So the capacity sent is the warm capacity **minus the sessions in use at that
  moment**: right after the register `Capacity - Load` — the only number gateways use — equals
  byoc-orch's real free slots, and it stays equal as go-livepeer counts starts (`Load++`) and
  ends (`Load--`) from there. Changes of sessions in use alone never re-register. byoc-orch's proxy
  still refuses a start beyond capacity (503).
* **Price** — BYOC charges `price_per_unit / price_scaling` per second of compute in `currency`
  (wei when empty). The entry's `price_per_unit / pixels_per_unit` is sent as that ratio, reduced
  to int64 numerator and denominator.
* **token** — BYOC_ORCH_API_TOKEN: go-livepeer sends it as `Authorization: Bearer` on every call
  to `url`, which is byoc-orch's proxy, whose guard expects exactly that.
* **Restoring the warm set** — re-registering resets go-livepeer's `Load`, so blind periodic
  re-registration would make a busy worker look idle to gateways (and drive `Load` negative as
  its sessions end). Instead: (1) a cheap probe every `register_probe_interval` seconds
  (`GET /capability/register`, which go-livepeer answers 405 without authentication or side
  effects) notices go-livepeer going away; as soon as any call succeeds after a failure, the whole
  warm set is re-registered — a restarted go-livepeer has no sessions to lose; (2) every
  `register_refresh_interval` seconds, capabilities with no session in use are re-registered,
  which costs nothing (their `Load` should be 0) and repairs what the probe cannot see: a restart
  quicker than the probe, or a capability go-livepeer dropped after a failed call. Busy ones wait
  for an idle moment.
* **Retries** — connection errors, timeouts and 5xx back off from `register_retry_initial`
  doubling to `register_retry_max`, each wait jittered down by up to a fifth (base.JITTER), as
  are the probe and refresh intervals, so hosts that lost one orchestrator together do not
  all re-register the moment it is back; withdrawals queue meanwhile and go first when it
  comes back. A refused secret is logged once as an error and then retried only every
  `register_retry_max` seconds with a single call, so fixing `-orchSecret` (a go-livepeer
  restart) is picked up without restarting byoc-orch while go-livepeer's log is not flooded. A
  body go-livepeer cannot read is logged with its reason and not sent again until it changes.

The secret only ever travels in the Authorization header: never in a URL, a log line,
describe() or an error text.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from typing import Any, ClassVar, Protocol

from byoc_orch.advertisers.base import (
    Advertiser,
    OrchState,
    Reply,
    Result,
    secret_value,
    warm_by_entry,
)
from byoc_orch.capabilities import Capability, Change

INVALID_AUTHORIZATION = "invalid authorization"
REFUSED_MESSAGE = (
    "go-livepeer refused the orchestrator secret (400) — check BYOC_ORCH_ORCH_SECRET matches "
    "-orchSecret"
)
INT64_MAX = 2**63 - 1


def capability_name(capability: Capability) -> str:
    """The name go-livepeer and gateways know the capability by (see the module docstring)."""
    return capability.model_id


def byoc_price(
    price_per_unit: Fraction | None, pixels_per_unit: Fraction | None
) -> tuple[int, int]:
    """(price_per_unit, price_scaling) as go-livepeer's int64s; ValueError when the price has
    no int64 form even approximated."""
    if price_per_unit is None or price_per_unit == 0:
        return 0, 1
    rate = Fraction(price_per_unit) / (pixels_per_unit or 1)
    if rate.numerator > INT64_MAX or rate.denominator > INT64_MAX:
        rate = rate.limit_denominator(INT64_MAX)
    if not 0 <= rate.numerator <= INT64_MAX:
        raise ValueError(f"price {float(rate):g} per unit does not fit go-livepeer's int64 price")
    return rate.numerator, rate.denominator


def registration_body(
    capability: Capability, token: str, capacity: int | None = None
) -> dict[str, Any]:
    """The register JSON, with exactly the JSON types go-livepeer's struct accepts; `capacity`
    (default: the capability's) is what is sent."""
    offer = capability.offer
    price, scaling = byoc_price(offer.price_per_unit, offer.pixels_per_unit)
    return {
        "name": capability_name(capability),
        "description": f"byoc-orch {capability.pipeline}/{capability.model_id}",
        "url": capability.url,
        "capacity": int(capability.capacity if capacity is None else capacity),
        "price_per_unit": price,
        "price_scaling": scaling,
        "currency": offer.currency or "wei",
        "token": token,
    }


def classify(status: int, text: str) -> Result:
    if status < 300:
        return Result.OK
    if (status == 400 and text.strip() == INVALID_AUTHORIZATION) or status in (401, 403):
        return Result.REFUSED
    return Result.REJECTED


class Remembered(Protocol):
    """Where BYOC registrations are remembered across a restart (the state file)."""

    def restored(self) -> dict[str, str]: ...

    def changed(self, registered: dict[str, str]) -> None: ...


RESTORE_GRACE = 10.0
"""Seconds the previous process's registrations wait for their capability to be warm again
before they are withdrawn."""


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


class ByocRegisterAdvertiser(Advertiser):
    """Registers each warm capability with go-livepeer and unregisters it when withdrawn."""

    name: ClassVar[str] = "byoc_register"
    calls: ClassVar[tuple[str, ...]] = ("register", "unregister", "probe")
    survives_restart: ClassVar[bool] = True
    """A restart leaves what it registered: go-livepeer keeps the sessions' Load and their
    stop/params keep working (an unregister would break both), and the next process registers
    the warm set again, capacity net of the running sessions."""

    def __init__(self, *args: Any, remembered: Remembered | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._remembered = remembered
        s = self.settings
        self._secret = secret_value(s)
        self._token = s.api_token.get_secret_value() if s.api_token is not None else ""
        self._refresh_interval = s.register_refresh_interval
        self._probe_interval = s.register_probe_interval
        self._warm: dict[str, Capability] = {}
        self._registered: dict[str, bytes] = {}
        self._told: dict[str, str] = {}
        """name → digest of a registration the previous process made, until matched."""
        self._told_until = 0.0
        self._rejected: dict[str, tuple[bytes, str]] = {}
        self._conflicts: dict[str, str] = {}
        self._force_all = False
        self._refresh_idle = False
        now = self._clock()
        self._next_refresh = now + self._jitter(self._refresh_interval)
        self._next_probe = now + self._jitter(self._probe_interval)

    # ------------------------------------------------------------------ interface

    def registered_names(self) -> list[str]:
        return sorted(self._registered)

    def describe(self) -> dict[str, Any]:
        retry_in = self._retry_at - self._clock() if self._state is not OrchState.UP else None
        return {
            **super().describe(),
            "orch_url": self.orch_url,
            "state": str(self._state),
            "next_retry_in": round(max(retry_in, 0.0), 3) if retry_in is not None else None,
            "rejected": {name: reason for name, (_, reason) in sorted(self._rejected.items())},
            "name_conflicts": {
                entry_id: f"{capability_name(self._warm[entry_id])} is held by {owner}"
                for entry_id, owner in sorted(self._conflicts.items())
                if entry_id in self._warm
            },
        }

    async def start(self) -> None:
        """What the previous process registered (the state file) counts as registered: the
        same capability is not registered again, so go-livepeer's Load counts stay."""
        if self._remembered is not None:
            self._told = dict(self._remembered.restored())
            self._told_until = self._clock() + RESTORE_GRACE
        await super().start()

    def _on_change(self, change: Change) -> None:
        warm_by_entry(change, self._warm)
        self._wake.set()

    def _note_registered(self) -> None:
        if self._remembered is not None:
            self._remembered.changed({n: _digest(b) for n, b in self._registered.items()})

    async def _withdraw_everything(self) -> None:
        for name in list(self._registered):
            reply = await self._unregister(name)
            if reply.result is Result.UNAVAILABLE:
                self.log.warning(
                    "go-livepeer unreachable at shutdown; it drops these when it restarts or "
                    "first fails to reach them",
                    still_registered=self.registered_names(),
                    error=reply.error,
                )
                return
            self._registered.pop(name, None)
        self._note_registered()

    # ------------------------------------------------------------------ the loop

    def _delay(self) -> float:
        now = self._clock()
        if self._state is not OrchState.UP:
            return max(self._retry_at - now, 0.0)
        due = min(self._next_probe, self._next_refresh)
        if self._told:
            due = min(due, self._told_until)
        return max(due - now, 0.0)

    async def _pass(self) -> None:
        now = self._clock()
        if self._state is not OrchState.UP and now < self._retry_at:
            return
        if self._state is OrchState.UP and now >= self._next_refresh:
            self._next_refresh = now + self._jitter(self._refresh_interval)
            self._refresh_idle = True
        desired = self._desired()
        if self._told and now >= self._told_until:
            # Registered by the previous process and not warm again since: withdrawn below.
            for name in self._told:
                self._registered.setdefault(name, b"")
            self._told.clear()
        for gone in [n for n in self._rejected if n not in desired]:
            del self._rejected[gone]
        called = False
        for name in [n for n in self._registered if n not in desired]:
            if self._stopping:
                return
            called = True
            reply = await self._unregister(name)
            if reply.result in (Result.OK, Result.REJECTED):
                self._registered.pop(name, None)
                self._note_registered()
            if not self._after(reply):
                return
        for name, (capability, body) in desired.items():
            if self._stopping:
                return
            forced = self._force_all or (self._refresh_idle and capability.in_use == 0)
            told = self._told.get(name)
            if not forced and told is not None:
                if told == _digest(body):
                    del self._told[name]
                    self._registered[name] = body  # registered by the previous process, as is
                    self._note_registered()
                    continue
                if now < self._told_until:
                    # Its replicas are still coming back after the restart: wait for the
                    # registration go-livepeer has, rather than resetting its Load twice.
                    continue
                del self._told[name]
            if not forced and self._registered.get(name) == body:
                continue
            rejected = self._rejected.get(name)
            if rejected is not None and rejected[0] == body and not self._force_all:
                continue
            if not body:
                continue
            called = True
            reply = await self._register(name, capability, body)
            if reply.result is Result.OK:
                self._registered[name] = body
                self._rejected.pop(name, None)
                self._note_registered()
            elif reply.result is Result.REJECTED:
                self._registered.pop(name, None)
                self._note_registered()
                self._reject(name, capability, body, reply.error or "")
            if not self._after(reply):
                return
        self._force_all = False
        self._refresh_idle = False
        if called:
            return
        if self._state is OrchState.REFUSED:
            self._retry_at = now + self._jitter(self._retry_max)
        elif self._state is OrchState.DOWN or now >= self._next_probe:
            self._after(await self._probe())

    def _desired(self) -> dict[str, tuple[Capability, bytes]]:
        """name → (capability, its registration at full capacity: what decides whether it must
        be registered again); the first warm entry holding a name wins."""
        desired: dict[str, tuple[Capability, bytes]] = {}
        owners: dict[str, str] = {}
        conflicts: dict[str, str] = {}
        for entry_id, capability in self._warm.items():
            name = capability_name(capability)
            if name in owners:
                conflicts[entry_id] = owners[name]
                if self._conflicts.get(entry_id) != owners[name]:
                    self.log.error(
                        "two warm workers share a BYOC capability name; go-livepeer knows "
                        "capabilities by name only, so only the first is registered — give "
                        "one of the entries another model_id",
                        capability=name,
                        registered_entry=owners[name],
                        waiting_entry=entry_id,
                    )
                continue
            owners[name] = entry_id
            try:
                body = json.dumps(registration_body(capability, self._token)).encode()
            except ValueError as exc:
                if name not in self._rejected:
                    self._reject(name, capability, b"", str(exc))
                body = b""
            desired[name] = (capability, body)
        self._conflicts = conflicts
        return desired

    def _after(self, reply: Reply) -> bool:
        """Track go-livepeer's state from a reply; False means stop this pass."""
        now = self._clock()
        if reply.result in (Result.OK, Result.REJECTED):
            self._next_probe = now + self._jitter(self._probe_interval)
            if self._state is not OrchState.UP:
                self.log.info(
                    "go-livepeer answers again; re-registering the warm set",
                    orch_url=self.orch_url,
                    warm=len(self._warm),
                    was=str(self._state),
                )
                self._state = OrchState.UP
                self._backoff.reset()
                self._force_all = True
                self._wake.set()
                return False
            return True
        if reply.result is Result.REFUSED:
            return self._refused(now, reply, REFUSED_MESSAGE)
        return self._unreachable(now, reply, "go-livepeer unreachable; retrying with back-off")

    def _reject(self, name: str, capability: Capability, body: bytes, reason: str) -> None:
        self._rejected[name] = (body, reason)
        self.log.error(
            "go-livepeer cannot take this capability; not sending it again until it changes",
            capability=name,
            entry_id=capability.entry_id,
            reason=reason,
        )

    # ------------------------------------------------------------------ calls

    async def _register(self, name: str, capability: Capability, body: bytes) -> Reply:
        free = max(capability.capacity - capability.in_use, 0)
        reply = await self._call(
            "register",
            "POST",
            "/capability/register",
            authorization=self._secret,
            content=json.dumps(registration_body(capability, self._token, free)).encode(),
            subject=name,
            classify=classify,
        )
        if reply.result is Result.OK:
            self.log.info(
                "registered with go-livepeer",
                capability=name,
                entry_id=capability.entry_id,
                url=capability.url,
                capacity=capability.capacity,
                in_use=capability.in_use,
                registered_capacity=free,
            )
        elif reply.error is not None and reply.error.startswith("RemoteProtocolError"):
            probe = await self._probe()
            if probe.result is Result.OK:
                hint = (
                    "go-livepeer dropped the connection while registering it (its handler "
                    "failed; see its log). A currency other than wei/eth needs a price feed "
                    "(-priceFeedAddr)"
                )
                return Reply(reply.status, reply.text, Result.REJECTED, hint)
        return reply

    async def _unregister(self, name: str) -> Reply:
        reply = await self._call(
            "unregister",
            "POST",
            "/capability/unregister",
            authorization=self._secret,
            content=name.encode(),
            subject=name,
            classify=classify,
        )
        if reply.result is Result.OK:
            self.log.info("unregistered from go-livepeer", capability=name)
        return reply

    async def _probe(self) -> Reply:
        """Any HTTP answer means go-livepeer is there; no secret is sent."""
        return await self._call(
            "probe",
            "GET",
            "/capability/register",
            authorization=None,
            timeout=min(self._probe_interval, 2.0),
            classify=lambda _status, _text: Result.OK,
        )
