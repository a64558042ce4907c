"""What must survive a restart of byoc-orch to re-attach (nomad's `state.go`): the Live Runner
runners it registered with their heartbeat secrets, the orchestrator credentials of each live
session, and the replicas an operator drained.

go-livepeer returns a runner's heartbeat secret on its first registration only, so a restart that
forgets it registers new runners while the old ones — holding every session — expire. The file
is therefore written whenever one of these changes (coalesced, off the event loop), atomically
(a temporary file, fsync, rename) and readable by its owner only (0600). Reading it never fails
the daemon: a missing, unreadable, corrupt, foreign (another instance's) or too widely readable
file is one warning and a fresh start; no message ever carries a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

LOGGER = "byoc_orch.state_file"

FORMAT = 1
"""Bumped only with a reader for the previous format beside it: an upgrade must not lose runners."""
MAX_STATE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class RunnerRecord:
    """One registered dynamic Live Runner: which replica it stands for and how to heartbeat it."""

    worker_id: str
    runner_id: str
    orch_url: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class SessionRecord:
    """A live session's identity at the orchestrator, by byoc-orch's session id."""

    session: str
    worker_id: str
    orch_session: str
    route: str
    control_url: str
    token: str = field(repr=False)


@dataclass
class DaemonState:
    runners: dict[str, RunnerRecord] = field(default_factory=dict)
    """worker id → its runner."""
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    """byoc-orch session id → its identity at the orchestrator."""
    drained: set[str] = field(default_factory=set)
    """Worker ids an operator drained (`byoc-orch drain`), until `undrain`."""
    byoc: dict[str, str] = field(default_factory=dict)
    """BYOC capability name → a digest of what go-livepeer was last told about it (the next
    process registers again only what changed)."""

    def encode(self, instance: str) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "instance": instance,
                "written_at": time.time(),
                "runners": [vars(r) for r in self.runners.values()],
                "sessions": [vars(s) for s in self.sessions.values()],
                "drained": sorted(self.drained),
                "byoc": self.byoc,
            },
            indent=1,
        ).encode()


class StateFileError(Exception):
    """Why a state file is not used; the message names the file and never its contents."""


def decode(raw: bytes, instance: str) -> DaemonState:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise StateFileError("it is not valid JSON (truncated or corrupt)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateFileError(f"it is not a byoc-orch state file of format {FORMAT}")
    if data.get("instance") != instance:
        raise StateFileError(
            f"it belongs to instance {data.get('instance')!r}, not {instance!r} (a copied file?)"
        )
    state = DaemonState()
    try:
        for item in data.get("runners", []):
            runner = RunnerRecord(**{k: str(item[k]) for k in _fields(RunnerRecord)})
            state.runners[runner.worker_id] = runner
        for item in data.get("sessions", []):
            session = SessionRecord(**{k: str(item[k]) for k in _fields(SessionRecord)})
            state.sessions[session.session] = session
        state.drained = {str(w) for w in data.get("drained", [])}
        state.byoc = {str(k): str(v) for k, v in dict(data.get("byoc", {})).items()}
    except (KeyError, TypeError, AttributeError, ValueError):
        raise StateFileError("a record in it lacks a field byoc-orch needs") from None
    return state


def _fields(kind: type[RunnerRecord] | type[SessionRecord]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(kind))


class StateFile:
    """`<directory>/<instance>.state.json`; `directory` None keeps everything in memory."""

    def __init__(self, directory: Path | None, instance: str) -> None:
        self._log = structlog.get_logger(LOGGER)
        self.instance = instance
        self.path = directory / f"{instance}.state.json" if directory is not None else None
        self._writable = True
        self._pending: asyncio.Task[None] | None = None
        self._again = False

    def load(self) -> DaemonState:
        """What the last process left; an empty state (and one warning) when it cannot be used."""
        if self.path is None:
            return DaemonState()
        try:
            raw = self._read()
        except FileNotFoundError:
            self._log.info(
                "no state file yet; Live Runner runners register afresh", path=str(self.path)
            )
            return DaemonState()
        except StateFileError as exc:
            self._not_used(str(exc))
            return DaemonState()
        except OSError as exc:
            self._not_used(f"it cannot be read ({exc.strerror or exc})")
            return DaemonState()
        try:
            state = decode(raw, self.instance)
        except StateFileError as exc:
            self._not_used(str(exc))
            return DaemonState()
        self._log.info(
            "state restored",
            path=str(self.path),
            runners=len(state.runners),
            sessions=len(state.sessions),
            drained=len(state.drained),
        )
        return state

    def _read(self) -> bytes:
        assert self.path is not None
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise StateFileError("it is not a regular file")
            if info.st_uid != os.geteuid():
                raise StateFileError(
                    f"it is owned by uid {info.st_uid}, not by byoc-orch's user ({os.geteuid()})"
                )
            if info.st_mode & 0o077:
                raise StateFileError(
                    f"its mode is {stat.S_IMODE(info.st_mode):04o}: others may have read its "
                    "secrets (byoc-orch writes it 0600)"
                )
            if info.st_size > MAX_STATE_BYTES:
                raise StateFileError(f"it is larger than {MAX_STATE_BYTES} bytes")
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _not_used(self, why: str) -> None:
        self._log.warning(
            "state file not used: Live Runner runners register afresh and sessions running "
            "in adopted workers lose their orchestrator identity; it is rewritten at the "
            "next change",
            path=str(self.path),
            reason=why,
        )

    def save(self, state: DaemonState) -> None:
        """Write `state` now (blocking: call it off the event loop)."""
        self._save(state.encode(self.instance))

    def _save(self, data: bytes) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            if self._writable:
                self._log.warning(
                    "cannot write the state file: Live Runner runners and session identities "
                    "will not survive a restart; fix: make its directory writable by "
                    "byoc-orch's user (the unit's StateDirectory= does), or set "
                    "BYOC_ORCH_STATE_DIRECTORY",
                    path=str(self.path),
                    error=exc.strerror or str(exc),
                )
            self._writable = False
            return
        if not self._writable:
            self._log.info("state file written again", path=str(self.path))
        self._writable = True

    def save_soon(
        self,
        snapshot: Callable[[], DaemonState],
        off_loop: Callable[[Callable[[], None]], Any],
    ) -> None:
        """Coalesce bursts of changes into one write, done by `off_loop` (a thread)."""
        if self.path is None:
            return
        if self._pending is not None and not self._pending.done():
            self._again = True
            return
        self._pending = asyncio.get_running_loop().create_task(self._write(snapshot, off_loop))

    async def _write(
        self,
        snapshot: Callable[[], DaemonState],
        off_loop: Callable[[Callable[[], None]], Any],
    ) -> None:
        while True:
            self._again = False
            data = snapshot().encode(self.instance)  # on the loop: the records do not move
            await off_loop(functools.partial(self._save, data))
            if not self._again:
                return

    async def flush(self) -> None:
        """Wait for a write in flight (shutdown)."""
        if self._pending is not None:
            with contextlib.suppress(Exception):
                await self._pending
