"""Pull coordinator: one pull per key at a time, shared by every caller that wants it."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

import pytest

from byoc_orch.pull_coordinator import PullCoordinator, Shared


class Gate:
    """A controllable pull: counts its starts, blocks until released, then returns or raises."""

    def __init__(self, value: str = "sha256:abc") -> None:
        self.value = value
        self.started = 0
        self.running = asyncio.Event()
        self.release = asyncio.Event()
        self.error: BaseException | None = None
        self.cancelled = False

    async def __call__(self) -> str:
        self.started += 1
        self.running.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return self.value


async def settle() -> None:
    """Let every ready task run until each is blocked again."""
    for _ in range(5):
        await asyncio.sleep(0)


def spawn(
    coordinator: PullCoordinator[str], key: str, start: Callable[[], Awaitable[str]]
) -> asyncio.Task[Shared[str]]:
    return asyncio.create_task(coordinator.pull(key, start))


async def test_concurrent_callers_share_one_pull() -> None:
    coordinator: PullCoordinator[str] = PullCoordinator()
    gate = Gate("sha256:one")
    first = spawn(coordinator, "img:1", gate)
    await gate.running.wait()
    others = [spawn(coordinator, "img:1", gate) for _ in range(7)]
    await settle()
    assert coordinator.in_flight() == ["img:1"]
    assert not any(task.done() for task in [first, *others])

    gate.release.set()
    results = await asyncio.gather(first, *others)
    assert gate.started == 1
    assert coordinator.pulls_started == 1
    assert [r.value for r in results] == ["sha256:one"] * 8
    assert [r.joined for r in results] == [False] + [True] * 7
    assert coordinator.in_flight() == []


async def test_joiners_do_not_call_their_own_start() -> None:
    coordinator: PullCoordinator[str] = PullCoordinator()
    gate = Gate()
    other = Gate("never")
    first = spawn(coordinator, "img", gate)
    await gate.running.wait()
    second = spawn(coordinator, "img", other)
    await settle()
    gate.release.set()
    assert (await second).value == gate.value
    await first
    assert other.started == 0


async def test_different_keys_pull_separately() -> None:
    coordinator: PullCoordinator[str] = PullCoordinator()
    gate_a, gate_b = Gate("a"), Gate("b")
    task_a = spawn(coordinator, "img:a", gate_a)
    task_b = spawn(coordinator, "img:b", gate_b)
    await asyncio.gather(gate_a.running.wait(), gate_b.running.wait())
    assert coordinator.in_flight() == ["img:a", "img:b"]

    gate_b.release.set()
    result_b = await task_b
    assert result_b == Shared("b", joined=False)
    assert not task_a.done()  # b finishing does not finish a
    assert coordinator.in_flight() == ["img:a"]

    gate_a.release.set()
    assert await task_a == Shared("a", joined=False)
    assert coordinator.pulls_started == 2


async def test_a_call_after_completion_starts_a_new_pull() -> None:
    coordinator: PullCoordinator[str] = PullCoordinator()
    first_gate, second_gate = Gate("old"), Gate("new")
    first_gate.release.set()
    assert await coordinator.pull("img", first_gate) == Shared("old", joined=False)
    assert coordinator.in_flight() == []

    second_gate.release.set()
    assert await coordinator.pull("img", second_gate) == Shared("new", joined=False)
    assert (first_gate.started, second_gate.started) == (1, 1)
    assert coordinator.pulls_started == 2


async def test_an_error_reaches_every_waiter_and_frees_the_key() -> None:
    coordinator: PullCoordinator[str] = PullCoordinator()
    gate = Gate()
    gate.error = RuntimeError("manifest unknown")
    tasks = [spawn(coordinator, "img", gate)]
    await gate.running.wait()
    tasks += [spawn(coordinator, "img", gate) for _ in range(3)]
    await settle()
    gate.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert {str(r) for r in results} == {"manifest unknown"}
    assert gate.started == 1
    assert coordinator.in_flight() == []

    retry = Gate("ok")
    retry.release.set()
    assert await coordinator.pull("img", retry) == Shared("ok", joined=False)
    assert coordinator.pulls_started == 2


@pytest.mark.parametrize("cancel_index", [0, 1], ids=["starter", "joiner"])
async def test_cancelling_one_waiter_leaves_the_pull_to_the_others(cancel_index: int) -> None:
    coordinator: PullCoordinator[str] = PullCoordinator()
    gate = Gate("shared")
    tasks = [spawn(coordinator, "img", gate)]
    await gate.running.wait()
    tasks += [spawn(coordinator, "img", gate) for _ in range(2)]
    await settle()

    tasks[cancel_index].cancel()
    await settle()
    assert tasks[cancel_index].cancelled()
    assert not gate.cancelled
    assert coordinator.in_flight() == ["img"]

    gate.release.set()
    survivors = [task for i, task in enumerate(tasks) if i != cancel_index]
    results = await asyncio.gather(*survivors)
    assert [r.value for r in results] == ["shared", "shared"]
    assert gate.started == 1
    assert not gate.cancelled


async def test_pull_finishes_even_when_every_waiter_gave_up() -> None:
    coordinator: PullCoordinator[str] = PullCoordinator()
    gate = Gate("late")
    task = spawn(coordinator, "img", gate)
    await gate.running.wait()
    task.cancel()
    await settle()
    assert task.cancelled()
    assert coordinator.in_flight() == ["img"]  # still running: a new caller would join it

    joiner = spawn(coordinator, "img", Gate("unused"))
    await settle()
    gate.release.set()
    assert await joiner == Shared("late", joined=True)
    assert not gate.cancelled
    assert coordinator.pulls_started == 1


async def test_failure_with_no_waiters_left_is_not_reported_as_unretrieved() -> None:
    """asyncio logs "exception was never retrieved" when a failed task is collected unread."""
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    coordinator: PullCoordinator[str] = PullCoordinator()
    gate = Gate()
    gate.error = RuntimeError("registry down")
    task = spawn(coordinator, "img", gate)
    await gate.running.wait()
    task.cancel()
    await settle()
    gate.release.set()
    await settle()
    assert coordinator.in_flight() == []
    del task
    gc.collect()
    await settle()
    assert reported == []
