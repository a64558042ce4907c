"""The systemd notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from byoc_orch.logging import configure_logging
from byoc_orch.sd_notify import Notifier, run_watchdog


class FakeSystemd:
    """A bound datagram socket and the messages it received, each split into its lines."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    fake = FakeSystemd(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield fake
    fake.sock.close()


def test_ready_status_watchdog_arrive_in_order(systemd: FakeSystemd) -> None:
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("5/6 warm")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert systemd.receive() == ["READY=1"]
    assert systemd.receive() == ["STATUS=5/6 warm"]
    assert systemd.receive() == ["WATCHDOG=1"]
    assert systemd.receive() == ["STOPPING=1"]
    notifier.close()


def test_ready_can_carry_a_status_in_the_same_datagram(systemd: FakeSystemd) -> None:
    Notifier().ready("6/6 warm")
    assert systemd.receive() == ["READY=1", "STATUS=6/6 warm"]


def test_status_is_kept_to_one_line(systemd: FakeSystemd) -> None:
    Notifier().status("reloading\nWATCHDOG=1  now")
    assert systemd.receive() == ["STATUS=reloading WATCHDOG=1 now"]


def test_reloading_sends_the_monotonic_timestamp(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier().reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic = systemd.receive()
    assert reloading == "RELOADING=1"
    key, _, value = monotonic.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_extend_timeout_is_in_microseconds(systemd: FakeSystemd) -> None:
    Notifier().extend_timeout(90)
    assert systemd.receive() == ["EXTEND_TIMEOUT_USEC=90000000"]


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"byoc-orch-test-{uuid.uuid4().hex}"
    fake = FakeSystemd(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        assert Notifier().ready()
        assert fake.receive() == ["READY=1"]
    finally:
        fake.sock.close()


def test_no_socket_means_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_unsupported_address_is_a_no_op() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert notifier.ready() is False


@pytest.fixture
def json_logs() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_send_failure_never_raises_and_is_logged_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], json_logs: None
) -> None:
    configure_logging("info", "json")
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    (logged,) = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert logged["event"] == "cannot notify systemd"
    assert logged["socket"] == str(tmp_path / "gone.sock")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert Notifier(environ).watchdog_interval() == expected


async def test_run_watchdog_pings_at_half_the_interval(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    notifier = Notifier()
    started = time.monotonic()
    task = asyncio.create_task(run_watchdog(notifier))
    try:
        pings = [await asyncio.to_thread(systemd.receive) for _ in range(3)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elapsed = time.monotonic() - started
    assert pings == [["WATCHDOG=1"]] * 3
    assert elapsed >= 0.2, "three pings at 0.1 s spacing take at least 0.2 s"


async def test_a_blocked_loop_stops_the_pings(systemd: FakeSystemd) -> None:
    """The pings come from the event loop itself, not a thread that outlives a hung loop."""
    notifier = Notifier()
    task = asyncio.create_task(run_watchdog(notifier, interval=0.1))
    assert await asyncio.to_thread(systemd.receive) == ["WATCHDOG=1"]
    while not systemd.nothing_pending():
        pass
    time.sleep(0.3)  # noqa: ASYNC251 (blocks the loop on purpose: six pings fall due)
    pending = systemd.nothing_pending()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert pending, "no ping while the event loop was blocked"


async def test_run_watchdog_returns_when_no_watchdog_is_expected(systemd: FakeSystemd) -> None:
    await asyncio.wait_for(run_watchdog(Notifier({"NOTIFY_SOCKET": "/x"})), timeout=1)
    await asyncio.wait_for(run_watchdog(Notifier({"WATCHDOG_USEC": "1000000"})), timeout=1)
    assert systemd.nothing_pending()
