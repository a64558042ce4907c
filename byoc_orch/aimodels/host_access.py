"""Host access: what an entry may ask of Docker only with ``allow_host_access``, because each
gives the container control of the host (privileged, the host's network or processes, a
capability beyond Docker's defaults, or a volume reaching the engine's socket, /proc, /sys,
/dev, / or a writable /etc).

Volume host paths are checked as written and as this host resolves them (symlinks, '..', '//'),
so a link to the Docker socket is the Docker socket.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Literal, Protocol

from byoc_orch.aimodels.fields import bad_text
from byoc_orch.aimodels.limits import DROPPED_CAPABILITIES
from byoc_orch.aimodels.problems import Issue

_HOST_ACCESS_FIX = (
    'set "allow_host_access": true on this entry if you trust the image with the host, or remove it'
)


class AsksForHost(Protocol):
    """The fields of an entry that may reach the host (a ModelEntry is one)."""

    allow_host_access: bool
    privileged: bool
    network_mode: Literal["bridge", "host"]
    pid_mode: Literal["", "host"]
    cap_add: tuple[str, ...]
    volumes: list[str]


def host_access_issues(entry: AsksForHost, host_paths: HostPaths) -> list[Issue]:
    """What in ``entry`` gives its container the host, unless it allows host access."""
    if entry.allow_host_access:
        return []
    issues: list[Issue] = []
    if entry.privileged:
        issues.append(
            Issue(("privileged",), "a privileged container controls the host", _HOST_ACCESS_FIX)
        )
    if entry.network_mode == "host":
        issues.append(
            Issue(
                ("network_mode",),
                "network_mode host shares the host's network stack",
                _HOST_ACCESS_FIX,
            )
        )
    if entry.pid_mode == "host":
        issues.append(
            Issue(("pid_mode",), "pid_mode host shares the host's processes", _HOST_ACCESS_FIX)
        )
    for index, capability in enumerate(entry.cap_add):
        found = _capability_issue(capability)
        if found is not None:
            issues.append(Issue(("cap_add", index), *found))
    for index, volume in enumerate(entry.volumes):
        found = _volume_exposure(volume, host_paths)
        if found is not None:
            issues.append(Issue(("volumes", index), *found))
    return issues


# Docker's default capability set (moby's oci/caps/defaults.go).
_DOCKER_DEFAULT_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)


def _capability_issue(capability: str) -> tuple[str, str] | None:
    """Why adding ``capability`` needs allow_host_access, with the fix; None when it doesn't."""
    if capability in DROPPED_CAPABILITIES:
        return None
    given_back = ", ".join(DROPPED_CAPABILITIES)
    if capability == "ALL":
        return "ALL gives the container every capability, as much as privileged", _HOST_ACCESS_FIX
    if capability in _DOCKER_DEFAULT_CAPABILITIES:
        return (
            f"{capability} is already in Docker's default set; without allow_host_access "
            f"cap_add may only give back what byoc-orch drops ({given_back})",
            'remove it (the container has it already), or set "allow_host_access": true',
        )
    return (
        f"{capability} is beyond Docker's default capabilities and widens what the container "
        f"may do to the host; without allow_host_access cap_add may only give back what "
        f"byoc-orch drops ({given_back})",
        _HOST_ACCESS_FIX,
    )


_DEFAULT_ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
_CONTAINERD_DIRS = ("/run/containerd", "/var/run/containerd")
_KERNEL_PATHS = (
    ("/proc", "the host's processes and kernel settings"),
    ("/sys", "the host's kernel and device settings"),
    ("/dev", "the host's devices"),
)
HOST_PATHS_CONTEXT = "byoc_orch.host_paths"
_VOLUME_FIX = (
    'set "allow_host_access": true on this entry if you trust the image with the host, or '
    "mount another path"
)


def _plain(path: str) -> str:
    """``path`` without '..', '.' or repeated slashes (POSIX keeps a leading '//'; Linux
    doesn't)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _resolved(path: str) -> str:
    """``path`` as this host resolves it: symlinks followed, '..' and repeated slashes gone."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError, RecursionError):
        real = posixpath.normpath(path)
    return "/" + real.lstrip("/")


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _engine_socket_path(engine_socket: str | None) -> str | None:
    """The unix socket path of a Docker endpoint: a path, or a unix:// URL; None for others."""
    if not engine_socket:
        return None
    if engine_socket.startswith("unix://"):
        engine_socket = engine_socket.removeprefix("unix://")
    if not engine_socket.startswith("/") or bad_text(engine_socket) is not None:
        return None
    return engine_socket


@dataclass(frozen=True, slots=True)
class HostPaths:
    """The Docker engine sockets a volume may not reach without allow_host_access: the default
    ones and the configured one, each as written and as this host resolves it."""

    sockets: tuple[str, ...]

    @classmethod
    def for_engine(cls, engine_socket: str | None) -> HostPaths:
        configured = _engine_socket_path(engine_socket)
        candidates = ([configured] if configured else []) + list(_DEFAULT_ENGINE_SOCKETS)
        sockets: list[str] = []
        for candidate in candidates:
            for form in (_resolved(candidate), _plain(candidate)):
                if form not in sockets:
                    sockets.append(form)
        return cls(tuple(sockets))


def _volume_exposure(volume: str, host_paths: HostPaths) -> tuple[str, str] | None:
    """Why mounting ``volume`` hands the container the host, with the fix; None when it
    doesn't. The host path is checked as written and as it resolves here (symlinks, '..',
    '//'), so a symlink to the engine socket or the directory holding it counts as the socket.
    """
    parts = volume.split(":")
    host = parts[0]
    writable = len(parts) < 3 or parts[2] == "rw"
    resolved = _resolved(host)
    forms = [(resolved, "resolves to")]
    if _plain(host) != resolved:
        forms.append((_plain(host), "is written as"))
    shown = json.dumps(host)

    def reach(form: str, target: str) -> str | None:
        if form == target:
            return target
        if _within(form, target):
            return f"{form}, inside {target}"
        if _within(target, form):
            return f"{form}, which holds {target}"
        return None

    for form, verb in forms:
        for socket in host_paths.sockets:
            if _within(socket, form):  # the socket itself, or a directory holding it
                where = socket if form == socket else f"{form}, which holds {socket}"
                return (
                    f"{shown} exposes the Docker socket: it {verb} {where}, the Docker engine "
                    "socket, which gives the container root on the host",
                    _VOLUME_FIX,
                )
        if form.endswith("docker.sock"):
            return (
                f"{shown} exposes the Docker socket: it {verb} {form}, named like a Docker "
                "engine socket, which gives the container root on the host",
                _VOLUME_FIX,
            )
    for form, verb in forms:
        for directory in _CONTAINERD_DIRS:
            reached = reach(form, directory)
            if reached is not None:
                return (
                    f"{shown} exposes containerd: it {verb} {reached}, containerd's socket and "
                    "state, which control every container on the host",
                    _VOLUME_FIX,
                )
        for directory, what in _KERNEL_PATHS:
            reached = reach(form, directory)
            if reached is not None:
                return (
                    f"{shown} exposes the host's {directory}: it {verb} {reached}, {what}",
                    _VOLUME_FIX,
                )
        if writable and _within(form, "/etc"):
            return (
                f"{shown} mounts the host's /etc writable: it {verb} {form}; a writable /etc "
                "lets the container change the host's users, sudoers and services",
                'add ":ro" to mount it read-only, or ' + _VOLUME_FIX,
            )
        if form == "/":
            return (
                f"{shown} exposes the host's whole filesystem: it {verb} /",
                _VOLUME_FIX,
            )
    return None
