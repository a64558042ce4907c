"""Host ports: every rule about them, in one place. Replica i of a managed entry listens on its url
port + i, on loopback; an external entry on loopback takes its url port too. A port has one
listener, and byoc-orch's own ports (reserved) have none from the file.

Ports are checked twice because replicas have no port before placement: each entry's url port
with the file's other checks, then the ports replicas add once they are placed. Entries are
seen here as `Listener`s, so these rules need nothing else of an entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType

from byoc_orch.aimodels.limits import MAX_PORT
from byoc_orch.aimodels.problems import Problem

NO_PORTS: Mapping[int, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Listener:
    """One worker listening on a loopback port: replica ``replica`` of ``replicas`` of the entry
    at ``entry_index`` (an external worker is replica 0 of 1)."""

    entry_index: int
    model_id: str
    managed: bool
    port: int
    replica: int = 0
    replicas: int = 1

    @property
    def url_port(self) -> int:
        return self.port - self.replica


def past_the_last_port(url_port: int, replicas: int, *, counted: bool) -> tuple[str, str] | None:
    """Why ``replicas`` ports from ``url_port`` up run past the last port, with the fix; None when
    they fit. ``counted``: the file gives the count (else "per-gpu" made it)."""
    last = url_port + replicas - 1
    if last <= MAX_PORT:
        return None
    lower = f"lower the url port to {MAX_PORT - replicas + 1} or less"
    if counted:
        return (
            f"replica ports url port + 0…{replicas - 1} run to {last}, past {MAX_PORT}",
            f"{lower}, or lower replicas",
        )
    return (
        f"{replicas} replicas listen on ports {url_port}…{last}, past {MAX_PORT}",
        f"{lower}, or use a replica count",
    )


def url_port_conflicts(
    listeners: Iterable[Listener], reserved: Mapping[int, str]
) -> tuple[list[Problem], list[Problem]]:
    """Url ports (replica 0) against the reserved ports and each other, in file order: problems
    where a managed container would bind one, warnings where two external entries share one."""
    problems: list[Problem] = []
    warnings: list[Problem] = []
    holders: dict[int, Listener] = {}
    for mine in listeners:
        port = mine.port
        at = partial(Problem, mine.entry_index, mine.model_id, "url")
        if port in reserved:
            problems.append(
                at(
                    f"port {port} is taken by {reserved[port]}",
                    "choose another port for this entry's url",
                )
            )
        if port not in holders:
            holders[port] = mine
            continue
        other = holders[port]
        if mine.managed or other.managed:
            problems.append(
                at(
                    f"host port {port} is also used by entry {other.entry_index} "
                    f"({other.model_id})",
                    "give each worker its own port in url",
                )
            )
        else:
            warnings.append(
                at(
                    f"port {port} is also used by entry {other.entry_index} ({other.model_id}); "
                    "both reach the same worker",
                    "check that one worker really serves both",
                )
            )
    return problems, warnings


def replica_port_problems(
    listeners: Sequence[Listener], reserved: Mapping[int, str], source: str
) -> list[Problem]:
    """Replica ports (url port + 1 and up) against every other port in use, once placed. Url
    ports against each other are `url_port_conflicts`'; this blames the entry whose replica
    range reaches the other port (the later one when both ranges do)."""
    by_port: dict[int, list[Listener]] = {}
    for listener in listeners:
        by_port.setdefault(listener.port, []).append(listener)
    problems: dict[tuple[int, int], Problem] = {}
    for port in sorted(by_port):
        for mine in by_port[port]:
            if mine.replica == 0:
                continue
            for key, clash in _clashes(mine, by_port[port], reserved):
                if key not in problems:
                    taken = _taken(mine, by_port, reserved)
                    problems[key] = _replica_port_problem(mine, clash, taken, source)
    return list(problems.values())


def _clashes(
    mine: Listener, here: list[Listener], reserved: Mapping[int, str]
) -> Iterator[tuple[tuple[int, int], str]]:
    """What a replica's port clashes with, keyed so each pair of entries is reported once."""
    if mine.port in reserved:
        yield (mine.entry_index, -1), f"taken by {reserved[mine.port]}"
    for other in here:
        if other.entry_index == mine.entry_index or (
            other.replica and other.entry_index > mine.entry_index
        ):
            continue
        whose = f"entry {other.entry_index} ({other.model_id})"
        if other.replica:
            whose = f"replica #{other.replica} of {whose}"
        yield (mine.entry_index, other.entry_index), f"also used by {whose}"


def _taken(
    mine: Listener, by_port: Mapping[int, list[Listener]], reserved: Mapping[int, str]
) -> set[int]:
    """Ports that anything but this entry uses."""
    others = {
        port
        for port, here in by_port.items()
        if any(other.entry_index != mine.entry_index for other in here)
    }
    return others | set(reserved)


def _replica_port_problem(mine: Listener, clash: str, taken: set[int], source: str) -> Problem:
    count = mine.replicas
    fix = f"move this entry's url port so its replicas' ports url+0…url+{count - 1} are free"
    suggestion = _free_run(count, taken, start=mine.url_port)
    if suggestion is not None:
        fix += f", e.g. http://127.0.0.1:{suggestion}"
    return Problem(
        mine.entry_index,
        mine.model_id,
        "url",
        f"replica #{mine.replica} would listen on host port {mine.port}, {clash}",
        fix,
        source,
    )


def _free_run(length: int, taken: set[int], *, start: int) -> int | None:
    """The first port from ``start`` up that begins ``length`` free ports, if any."""
    port = start
    while port + length - 1 <= MAX_PORT:
        clash = [p for p in range(port, port + length) if p in taken]
        if not clash:
            return port
        port = max(clash) + 1
    return None
