"""Host access: what gives a container the host needs allow_host_access, with paths
resolved as this host resolves them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from byoc_orch.aimodels import ModelsFileError, parse_models
from tests.aimodels_helpers import managed, only_problem, parse


def test_host_access_is_allowed_when_asked_for() -> None:
    (entry,) = parse(
        managed(
            allow_host_access=True,
            privileged=True,
            network_mode="host",
            container_port=8001,
            pid_mode="host",
            volumes=["/var/run/docker.sock:/var/run/docker.sock"],
        )
    ).entries
    assert entry.privileged


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"privileged": True}, "privileged"),
        ({"network_mode": "host", "container_port": 8001}, "network_mode"),
        ({"pid_mode": "host"}, "pid_mode"),
    ],
)
def test_host_access_options_need_allow_host_access(fields: dict[str, Any], field: str) -> None:
    line = only_problem(managed(**fields))
    assert line.startswith(f"entry 0 (comfyui): {field}: ")
    assert line.endswith(
        '— set "allow_host_access": true on this entry if you trust the image with the host, '
        "or remove it"
    )


@pytest.mark.parametrize(
    "host",
    [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/home/op/.docker/desktop/docker.sock",
        "/var/run",
        "/run",
        "/",
        "/var/run/",
        "/var/../run",
    ],
)
def test_docker_socket_mount_needs_allow_host_access(host: str) -> None:
    line = only_problem(managed(volumes=["/srv:/srv", f"{host}:/sock"]))
    assert line.startswith(f'entry 0 (comfyui): volumes[1]: "{host}" exposes the Docker socket')
    assert "allow_host_access" in line


def test_harmless_mount_under_var_is_fine() -> None:
    assert parse(managed(volumes=["/var/lib/models:/models"])).entries[0].volumes


@pytest.fixture
def fake_engine(tmp_path: Path) -> Path:
    """A stand-in engine socket in a directory of its own (no root, no Docker needed)."""
    engine = tmp_path / "engine" / "run"
    engine.mkdir(parents=True)
    socket = engine / "engine.sock"
    socket.write_text("")
    return socket


def host_access_problem(volume: str, engine_socket: str | None = None) -> str:
    with pytest.raises(ModelsFileError) as caught:
        parse_models(
            json.dumps([managed(volumes=[volume])]),
            source="aiModels.json",
            engine_socket=engine_socket,
        )
    (problem,) = caught.value.problems
    assert problem.field == "volumes[0]"
    return problem.message


def test_a_symlink_to_the_engine_socket_is_the_socket(tmp_path: Path, fake_engine: Path) -> None:
    link = tmp_path / "innocent"
    link.symlink_to(fake_engine)
    message = host_access_problem(f"{link}:/var/run/docker.sock", str(fake_engine))
    assert message == (
        f'"{link}" exposes the Docker socket: it resolves to {fake_engine}, the Docker engine '
        "socket, which gives the container root on the host"
    )


def test_the_configured_engine_socket_may_be_a_unix_url(fake_engine: Path) -> None:
    message = host_access_problem(f"{fake_engine}:/s", f"unix://{fake_engine}")
    assert "the Docker engine socket" in message


def test_a_symlink_to_the_socket_directory_exposes_it(tmp_path: Path, fake_engine: Path) -> None:
    link = tmp_path / "rundir"
    link.symlink_to(fake_engine.parent)
    message = host_access_problem(f"{link}:/run", str(fake_engine))
    assert message.startswith(
        f'"{link}" exposes the Docker socket: it resolves to {fake_engine.parent}, which holds '
        f"{fake_engine}, the Docker engine socket"
    )


@pytest.mark.parametrize("suffix", ["/..", "/../..", ""])
def test_parents_of_the_socket_expose_it(fake_engine: Path, suffix: str) -> None:
    spelled = f"{fake_engine.parent}//.{suffix}"
    message = host_access_problem(f"{spelled}:/x", str(fake_engine))
    assert message.startswith(f'"{spelled}" exposes the Docker socket')


def test_the_socket_check_follows_relative_dot_dot(tmp_path: Path, fake_engine: Path) -> None:
    spelled = f"{tmp_path}/elsewhere/../engine/run/./engine.sock"
    message = host_access_problem(f"{spelled}:/x", str(fake_engine))
    assert f"resolves to {fake_engine}, the Docker engine socket" in message


def test_a_sibling_of_the_socket_directory_is_fine(tmp_path: Path, fake_engine: Path) -> None:
    models = tmp_path / "engine" / "models"
    models.mkdir()
    text = json.dumps([managed(volumes=[f"{models}:/models"])])
    assert parse_models(text, source="x", engine_socket=str(fake_engine)).entries


def test_non_unix_engine_endpoints_add_nothing() -> None:
    text = json.dumps([managed(volumes=["/srv/tcp:/x"])])
    assert parse_models(text, source="x", engine_socket="tcp://10.0.0.1:2375").entries


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("//var/run", "exposes the Docker socket"),
        ("/run/containerd", "exposes containerd: it resolves to /run/containerd, containerd's"),
        ("/var/run/containerd/containerd.sock", "exposes containerd"),
        ("/proc", "exposes the host's /proc: it resolves to /proc, the host's processes"),
        ("/proc/sys/kernel", "exposes the host's /proc: it resolves to /proc/sys/kernel, inside"),
        ("/sys", "exposes the host's /sys"),
        ("/dev", "exposes the host's /dev: it resolves to /dev, the host's devices"),
        ("/dev/../dev/sda", "exposes the host's /dev"),
        ("/", "exposes the Docker socket"),
    ],
)
def test_sensitive_host_paths_need_allow_host_access(host: str, reason: str) -> None:
    message = host_access_problem(f"{host}:/mnt")
    assert message.startswith(f'"{host}" {reason}'), message
    text = json.dumps([managed(volumes=[f"{host}:/mnt"], allow_host_access=True)])
    assert parse_models(text, source="x").entries


def test_a_symlink_to_proc_is_proc(tmp_path: Path) -> None:
    link = tmp_path / "p"
    link.symlink_to("/proc")
    assert host_access_problem(f"{link}:/p").startswith(
        f'"{link}" exposes the host\'s /proc: it resolves to /proc,'
    )


@pytest.mark.parametrize("volume", ["/etc:/host-etc", "/etc:/host-etc:rw", "/etc/ssh:/x"])
def test_writable_etc_needs_allow_host_access(volume: str) -> None:
    message = host_access_problem(volume)
    host = volume.split(":")[0]
    assert message.startswith(f'"{host}" mounts the host\'s /etc writable: it resolves to {host};')
    line = only_problem(managed(volumes=[volume]))
    assert line.endswith(
        '— add ":ro" to mount it read-only, or set "allow_host_access": true on this entry if '
        "you trust the image with the host, or mount another path"
    )


@pytest.mark.parametrize(
    "volume", ["/etc/ssl/certs:/etc/ssl/certs:ro", "/etc:/host-etc:ro", "/srv/etc:/etc"]
)
def test_read_only_etc_and_ordinary_paths_are_fine(volume: str) -> None:
    assert parse(managed(volumes=[volume])).entries[0].volumes == [volume]


@pytest.mark.parametrize(
    ("capability", "expected"),
    [
        ("SYS_ADMIN", "cap_add[0]: SYS_ADMIN is beyond Docker's default capabilities"),
        ("cap_net_admin", "cap_add[0]: NET_ADMIN is beyond Docker's default capabilities"),
        ("CHOWN", "cap_add[0]: CHOWN is already in Docker's default set"),
        ("ALL", "cap_add[0]: ALL gives the container every capability"),
    ],
)
def test_capabilities_beyond_those_dropped_need_allow_host_access(
    capability: str, expected: str
) -> None:
    line = only_problem(managed(cap_add=[capability]))
    assert line.startswith(f"entry 0 (comfyui): {expected}")
    assert "allow_host_access" in line
    allowed = parse(managed(cap_add=[capability], allow_host_access=True)).entries[0]
    assert allowed.cap_add == (capability.upper().removeprefix("CAP_"),)
