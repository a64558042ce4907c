"""Crash → withdrawn (byoc-orch's Docker-event path vs go-livepeer's poll-only policy) and
healthy → listed, on in-process daemons driving real containers.

Both sides run the same trial: wait until a worker is listed, wait a random fraction of the
side's probe interval (so the kill lands at a uniformly random point of the probe cycle, as a
real crash would), SIGKILL its container through dockerd, and time until the capability leaves
the registry. byoc-orch's judged figure takes one crash at a time among 4 warm workers; a
reference figure lets all 4 crash and restart at once, which loads dockerd (SIGKILL → `die`
grows) and the 2-core machine. The go-livepeer side's 4 workers also crash independently at
once, to fit its 5-10 s trials in the time; its figure is dominated by the 5 s probe cycle.

The registry is what `GET /capabilities` serves, synchronously, so the moment a subscriber
hears of the change is the moment the listing changes; no HTTP polling blurs it.

The go-livepeer side is byoc-orch's own supervisor with go-livepeer's policy (probe every 5 s,
5 s timeout, 2 failures to give up) and an engine whose event stream never yields, because
go-livepeer's worker manager does not follow Docker events. After each withdrawal it is told to
relaunch at once, which go-livepeer would not do; that only shortens the wait between trials.

With tests/fake_livepeer.py and the BYOC-register advertiser present, byoc-orch's side also
registers with a fake go-livepeer, and "crash → fake go-livepeer got the unregister" times the
withdrawal as go-livepeer sees it (the `Observer` hook; more observers can be added).

Each relaunch also yields a healthy → listed sample: from the demo worker's own `ready`
timestamp (printed when its /health turns IDLE) to the registry change.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import docker

from byoc_orch.aimodels import parse_models
from byoc_orch.capabilities import Capability, CapabilityRegistry, Change
from byoc_orch.daemon import Daemon
from byoc_orch.engine import Engine, EventStream
from byoc_orch.settings import Settings
from byoc_orch.worker import Worker
from byoc_orch.worker_state import Launch
from tests.bench import targets
from tests.bench.common import (
    DieWatch,
    Figure,
    Run,
    free_port,
    log,
    managed_entries,
    ready_ts_async,
    until,
)

WORKERS = 4
LOAD_SECONDS = 1.0
GO_LIVEPEER_POLICY = {"probe_interval": 5.0, "probe_timeout": 5.0, "failure_threshold": 2}


# -- the hook for advertisers ----------------------------------------------------------------


@dataclass
class Observer:
    """Someone outside byoc-orch who must also learn of a withdrawal (the fake go-livepeer
    receiving `/capability/unregister`); each gives its own figure, "crash → <label>".

    `settings` are merged into the byoc-orch side's Settings before its daemon starts (where
    go-livepeer is, its secret). `withdrawn(daemon, capability)` is called just before each kill
    and returns an awaitable resolving to the `time.monotonic()` at which the observer saw that
    capability withdrawn (the fake go-livepeer records its requests on that clock).
    """

    label: str
    settings: dict[str, Any]
    withdrawn: Callable[[Daemon, Capability], Awaitable[float]]
    aclose: Callable[[], Awaitable[None]]


async def fake_go_livepeer(run: Run) -> Observer | None:
    """The fake go-livepeer (tests/fake_livepeer.py) receiving the BYOC unregister that
    byoc-orch's BYOC-register advertiser sends on withdrawal. None, with a note, where either
    is missing, so the suite still runs on a tree without them."""
    try:
        from byoc_orch.advertisers.byoc_register import capability_name
        from tests.fake_livepeer import FakeLivepeer
    except ImportError as exc:
        run.notes.append(f"crash: no fake go-livepeer figure ({exc})")
        return None
    secret = f"bench-{run.run_id}"
    fake = FakeLivepeer(secret, live_runners=False)
    await fake.start()

    def withdrawn(daemon: Daemon, capability: Capability) -> Awaitable[float]:
        name = capability_name(capability).encode()
        seen_before = len(fake.calls)

        async def unregistered() -> float:
            while True:
                for call in fake.calls[seen_before:]:
                    if call.path == "/capability/unregister" and call.body.strip() == name:
                        return call.at
                await asyncio.sleep(0.002)

        return unregistered()

    return Observer(
        "fake go-livepeer got the unregister",
        {"orch_url": fake.url, "orch_secret": secret},
        withdrawn,
        fake.stop,
    )


OBSERVERS: list[Callable[[Run], Awaitable[Observer | None]]] = [fake_go_livepeer]


# -- go-livepeer's side: no Docker events ----------------------------------------------------


class _NoEvents:
    """An event stream that never yields: the poll-only supervisor learns nothing from Docker."""

    def __init__(self) -> None:
        self._never = asyncio.Event()

    def __aiter__(self) -> _NoEvents:
        return self

    async def __anext__(self) -> Any:
        await self._never.wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        return None


class EventBlindEngine(Engine):
    """The real engine adapter, minus its event stream (go-livepeer ignores Docker events)."""

    def events(self, *, reconnect_max_delay: float = 5.0) -> EventStream:
        return _NoEvents()  # type: ignore[return-value]


# -- one side --------------------------------------------------------------------------------


class _Recorder:
    """Hears every registry change the moment it happens, and when."""

    def __init__(self, registry: CapabilityRegistry, workers: dict[str, Worker]) -> None:
        self._workers = workers
        self.listed: dict[str, tuple[float, str | None]] = {}
        self._waiting: dict[str, asyncio.Future[float]] = {}
        registry.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        now = time.time()
        for cap in change.appeared:
            worker = self._workers.get(cap.entry_id)
            self.listed[cap.entry_id] = (now, worker.status.container_id if worker else None)
        for cap in change.withdrawn:
            waiting = self._waiting.pop(cap.entry_id, None)
            if waiting is not None and not waiting.done():
                waiting.set_result(now)

    def next_withdrawal(self, worker_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[worker_id] = future
        return future


@dataclass
class SideResult:
    kill_to_withdrawn: list[float] = field(default_factory=list)
    kill_to_die: list[float] = field(default_factory=list)
    die_to_withdrawn: list[float] = field(default_factory=list)
    healthy_to_listed: list[float] = field(default_factory=list)
    observed: dict[str, list[float]] = field(default_factory=dict)


async def run_side(
    run: Run,
    *,
    name: str,
    rounds: int,
    settings: dict[str, Any],
    engine_cls: type[Engine] | None,
    phase: float,
    relaunch: bool,
    together: bool,
    observers: list[Observer],
) -> SideResult:
    """`rounds` kills of each of WORKERS warm workers.

    `together`: every worker runs its own kill loop at once, so crashes and restarts overlap.
    Otherwise one crash at a time, each on a host where every other worker is warm and still.
    """
    instance = run.instance(name)
    extra = {k: v for o in observers for k, v in o.settings.items()}
    settings_ = Settings(
        docker_host=run.docker_host,
        instance=instance,
        port=free_port(),
        # Only so that repeated kills of one worker do not wait minutes between trials; the
        # back-off is never inside a measured interval.
        backoff_initial=0.1,
        backoff_max=0.5,
        **{**settings, **extra},
    )
    models = parse_models(
        json.dumps(managed_entries(run.image, WORKERS, load_seconds=LOAD_SECONDS, prefix=name)),
        source=f"bench-{name}",
    )
    engine = None
    if engine_cls is not None:
        engine = engine_cls(
            docker_host=run.docker_host,
            instance=instance,
            timeout=settings_.docker_timeout,
            environment=os.environ,
        )
    daemon = Daemon(settings_, models, engine=engine)
    result = SideResult(observed={o.label: [] for o in observers})
    client = run.docker()
    try:
        async with DieWatch(run.docker_host, instance) as dies:
            side = _Side(daemon, client, _Recorder(daemon.registry, daemon.workers), dies, result)
            await daemon.start()
            workers = list(daemon.workers.values())
            if together:

                async def loop(worker: Worker) -> None:
                    for _ in range(rounds):
                        await side.trial(worker, phase, relaunch, observers)

                await asyncio.gather(*(loop(w) for w in workers))
            else:
                for _ in range(rounds):
                    for worker in workers:
                        await until(side.all_warm, 120, "every worker warm")
                        await side.trial(worker, phase, relaunch, observers)
    finally:
        await daemon.stop()
        await asyncio.to_thread(client.close)
    return result


@dataclass
class _Side:
    daemon: Daemon
    client: docker.DockerClient
    recorder: _Recorder
    dies: DieWatch
    result: SideResult

    def all_warm(self) -> bool:
        return all(
            self.daemon.registry.is_warm(w.worker_id) and w.status.container_id
            for w in self.daemon.workers.values()
        )

    async def trial(
        self, worker: Worker, phase: float, relaunch: bool, observers: list[Observer]
    ) -> None:
        """Wait until listed, take the healthy → listed sample, kill at a random phase, time
        the withdrawal, and wait for the replacement container."""
        registry, wid, result = self.daemon.registry, worker.worker_id, self.result
        await until(
            lambda: registry.is_warm(wid) and worker.status.container_id, 120, f"{wid} warm"
        )
        cid = worker.status.container_id
        assert cid is not None
        listed = self.recorder.listed.get(wid)
        if listed is not None and listed[1] == cid:
            ready = await ready_ts_async(self.client, cid)
            if ready is not None:
                result.healthy_to_listed.append((listed[0] - ready) * 1000)
        await asyncio.sleep(random.uniform(0, phase))
        capability = registry.get(wid)
        if worker.status.container_id != cid or capability is None:
            return  # it changed under us (it should not); take no sample
        withdrawn = self.recorder.next_withdrawal(wid)
        seen = {
            o.label: asyncio.ensure_future(o.withdrawn(self.daemon, capability)) for o in observers
        }
        killed, killed_mono = time.time(), time.monotonic()
        # In a thread: a blocking call here would hold the daemon's event loop.
        await asyncio.to_thread(self.client.api.kill, cid)
        gone = await asyncio.wait_for(withdrawn, 60)
        result.kill_to_withdrawn.append((gone - killed) * 1000)
        died = await self.dies.wait(cid)
        if died is not None:
            result.kill_to_die.append((died - killed) * 1000)
            result.die_to_withdrawn.append((gone - died) * 1000)
        for label, task in seen.items():
            seen_at = await asyncio.wait_for(task, 60)
            result.observed[label].append((seen_at - killed_mono) * 1000)
        if relaunch:
            worker.post(Launch())
        await until(lambda: worker.status.container_id not in (None, cid), 120, "relaunch")


# -- the benchmarks --------------------------------------------------------------------------


async def _event_side(run: Run) -> SideResult:
    """byoc-orch as shipped (defaults, back-off shortened); shared by `crash` and `healthy`."""
    if "event_side" not in run.shared:
        trials = run.trial_count(full=40, quick=12)
        observers = [o for f in OBSERVERS if (o := await f(run)) is not None]
        log(f"crash/healthy: byoc-orch event-driven side, {WORKERS} workers, ~{trials} kills")
        try:
            run.shared["event_side"] = await run_side(
                run,
                name="crash-events",
                rounds=math.ceil(trials / WORKERS),
                settings={},
                engine_cls=None,
                phase=1.0,
                relaunch=False,
                together=False,
                observers=observers,
            )
        finally:
            for observer in observers:
                await observer.aclose()
    result: SideResult = run.shared["event_side"]
    return result


async def crash(run: Run) -> list[Figure]:
    events = await _event_side(run)
    trials = run.trial_count(full=20, quick=8)
    log(f"crash: go-livepeer policy side (poll every 5 s, 2 failures), ~{trials} kills")
    poll = await run_side(
        run,
        name="crash-poll",
        rounds=math.ceil(trials / WORKERS),
        settings=GO_LIVEPEER_POLICY,
        engine_cls=EventBlindEngine,
        phase=GO_LIVEPEER_POLICY["probe_interval"],
        relaunch=True,
        together=True,
        observers=[],
    )
    churn_trials = run.trial_count(full=12, quick=8)
    log(f"crash: byoc-orch with {WORKERS} workers crashing and restarting together")
    churn = await run_side(
        run,
        name="crash-churn",
        rounds=math.ceil(churn_trials / WORKERS),
        settings={},
        engine_cls=None,
        phase=1.0,
        relaunch=False,
        together=True,
        observers=[],
    )
    figures = [
        Figure(
            "crash.events.kill_to_withdrawn",
            "crash → withdrawn, byoc-orch (Docker events)",
            "ms",
            events.kill_to_withdrawn,
            **targets.CRASH_WITHDRAWN.figure(),
        ),
        Figure(
            "crash.events.kill_to_die",
            "  of which SIGKILL → dockerd `die` event",
            "ms",
            events.kill_to_die,
        ),
        Figure(
            "crash.events.die_to_withdrawn",
            "  of which `die` event → withdrawn (byoc-orch's own share)",
            "ms",
            events.die_to_withdrawn,
            **targets.CRASH_OWN_SHARE.figure(),
        ),
    ]
    figures += [
        Figure(
            f"crash.events.observed.{label}",
            f"crash → {label}",
            "ms",
            samples,
            **targets.CRASH_WITHDRAWN.figure(),
        )
        for label, samples in events.observed.items()
    ]
    figures += [
        Figure(
            "crash.poll.kill_to_withdrawn",
            "crash → withdrawn, go-livepeer policy (poll 5 s, 2 fails)",
            "ms",
            poll.kill_to_withdrawn,
            note="kills overlap across the 4 workers; the 5 s probe cycle dominates",
        ),
        Figure(
            "crash.churn.kill_to_withdrawn",
            f"crash → withdrawn, byoc-orch, {WORKERS} crashing at once",
            "ms",
            churn.kill_to_withdrawn,
            note="every worker killed within the same second while the others restart",
        ),
        Figure(
            "crash.churn.kill_to_die",
            "  of which SIGKILL → dockerd `die` event",
            "ms",
            churn.kill_to_die,
        ),
    ]
    return figures


async def healthy(run: Run) -> list[Figure]:
    events = await _event_side(run)
    return [
        Figure(
            "healthy.to_listed",
            f"first healthy → listed (start-up probe 0.1 s, load {LOAD_SECONDS:g} s)",
            "ms",
            events.healthy_to_listed,
            **targets.HEALTHY_TO_LISTED.figure(),
        )
    ]
