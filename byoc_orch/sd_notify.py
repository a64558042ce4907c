"""The systemd notify protocol, spoken directly: one datagram per message to `$NOTIFY_SOCKET`.

No libsystemd: the protocol is a newline-separated `KEY=VALUE` datagram sent to an AF_UNIX
socket whose path (or abstract name, written `@name`) systemd puts in the environment. Outside
systemd the variable is unset and every call does nothing. A failed send is logged once and
never raised: a notification is a courtesy to the service manager, never a reason to crash.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Mapping

import structlog

__all__ = ["Notifier", "run_watchdog"]

log = structlog.get_logger("byoc_orch.sd_notify")


class Notifier:
    """Sends notifications for this process; built from the environment systemd gave it."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._environ = env
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening (NOTIFY_SOCKET is set to a usable address)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd marks the unit active and `systemctl start` returns."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """A one-line summary that `systemctl status` shows."""
        return self.send(f"STATUS={_one_line(text)}")

    def reloading(self) -> bool:
        """A reload began; call `ready()` when it is done.

        MONOTONIC_USEC is what systemd >= 253 requires with Type=notify-reload; older versions
        and Type=notify ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        """Keep-alive: without one every `WatchdogSec`, systemd kills and restarts the unit."""
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to finish starting or stopping than TimeoutStart/StopSec give."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval(self) -> float | None:
        """Seconds within which systemd expects `WATCHDOG=1`, or None when it expects none.

        WATCHDOG_PID, when set, names the process the watchdog is meant for; a child that
        inherited the variables must not answer for its parent.
        """
        usec = _positive_int(self._environ.get("WATCHDOG_USEC"))
        if usec is None:
            return None
        pid = self._environ.get("WATCHDOG_PID")
        if pid and _positive_int(pid) != os.getpid():
            return None
        return usec / 1_000_000

    def send(self, *fields: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; True when it was handed to the socket."""
        if self._address is None or not fields:
            return False
        message = "\n".join(fields).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                    self._socket.setblocking(False)
                self._socket.sendto(message, self._address)
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    log.warning(
                        "cannot notify systemd", socket=_shown(self._address), error=str(exc)
                    )
                return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


async def run_watchdog(notifier: Notifier, interval: float | None = None) -> None:
    """Send WATCHDOG=1 every half interval until cancelled; returns at once if none is expected.

    It runs on the event loop on purpose: a loop that is blocked stops the pings, and systemd
    then restarts a daemon that would otherwise look alive while serving nothing.
    """
    interval = interval if interval is not None else notifier.watchdog_interval()
    if interval is None or not notifier.enabled:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval / 2)


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET is not an AF_UNIX address; not notifying", socket=value)
    return None


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value or "")
    except ValueError:
        return None
    return number if number > 0 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())
