"""Fixtures for the real-engine tests.

scripts/test-env.sh brings up a private dockerd (with the stub NVIDIA hook), a GPU-less one,
two loopback registries and the test images, and writes their endpoints to harness.env. Tests
marked `engine` use them; when they cannot be had the tests fail under CI=true and skip
elsewhere, saying how to bring them up.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from byoc_orch.container_spec import LABEL_INSTANCE

# Daemons under test (and the `byoc-orch` processes they start) keep their state files in a
# directory of the test run's own, never in /var/lib/byoc-orch.
os.environ.setdefault(
    "BYOC_ORCH_STATE_DIRECTORY", tempfile.mkdtemp(prefix="byoc-orch-test-state-")
)
from byoc_orch.engine import Engine
from byoc_orch.offer import OFFER_FIELDS, Offer

ROOT = Path(__file__).resolve().parent.parent
HARNESS_ENV = Path(os.environ.get("BYOC_TEST_STATE", "/var/tmp/byoc-orch-test")) / "harness.env"
SETUP_HINT = "bring the engine up with: bash scripts/test-env.sh (or run bash scripts/test.sh)"


@dataclass(frozen=True)
class Harness:
    docker_host: str
    nogpu_docker_host: str
    registry: str
    auth_registry: str
    auth_user: str
    auth_password: str
    worker_image: str
    busybox_image: str
    state: Path


def _read_harness_env() -> dict[str, str]:
    values = {}
    if HARNESS_ENV.is_file():
        for line in HARNESS_ENV.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    values.update({k: v for k, v in os.environ.items() if k.startswith("BYOC_TEST_")})
    return values


def _unavailable(reason: str) -> None:
    message = f"real Docker engine unavailable: {reason} — {SETUP_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def harness() -> Harness:
    env = _read_harness_env()
    if "BYOC_TEST_DOCKER_HOST" not in env:
        _unavailable(f"{HARNESS_ENV} not found")
    found = Harness(
        docker_host=env["BYOC_TEST_DOCKER_HOST"],
        nogpu_docker_host=env["BYOC_TEST_NOGPU_DOCKER_HOST"],
        registry=env["BYOC_TEST_REGISTRY"],
        auth_registry=env["BYOC_TEST_AUTH_REGISTRY"],
        auth_user=env["BYOC_TEST_AUTH_USER"],
        auth_password=env["BYOC_TEST_AUTH_PASSWORD"],
        worker_image=env["BYOC_TEST_WORKER_IMAGE"],
        busybox_image=env["BYOC_TEST_BUSYBOX_IMAGE"],
        state=Path(env["BYOC_TEST_STATE"]),
    )
    try:
        client = docker.DockerClient(base_url=found.docker_host, timeout=10)
        client.ping()
        client.close()
    except Exception as exc:
        _unavailable(f"{found.docker_host} does not answer ({exc})")
    return found


@pytest.fixture(scope="session")
def docker_client(harness: Harness) -> Iterator[docker.DockerClient]:
    """A plain docker-py client for the tests' own setup and assertions."""
    client = docker.DockerClient(base_url=harness.docker_host, timeout=60)
    yield client
    client.close()


@pytest.fixture
def instance(harness: Harness) -> Iterator[str]:
    """A fresh instance id per test, so tests never see each other's containers.

    Whatever containers the test left under it are removed afterwards, pass or fail.
    """
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    client = docker.DockerClient(base_url=harness.docker_host, timeout=30)
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE}={name}"}
        ):
            container.remove(force=True)
    finally:
        client.close()


@pytest.fixture
async def engine(harness: Harness, instance: str) -> AsyncIterator[Engine]:
    eng = Engine(docker_host=harness.docker_host, instance=instance, timeout=60)
    yield eng
    await eng.close()


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    within: float = 20.0,
    what: str | Callable[[], str] = "",
) -> Any:
    """Poll `check` (sync or async) until it returns something truthy, or fail after `within`
    (`what` may be a function, to say what the state was at that moment)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {within} s: {said or check}")
        await asyncio.sleep(0.02)


_PORTS = random.Random()
PORT_RANGE = (20000, 32000)
"""Below Linux's ephemeral range (32768–60999): a port handed out here is never taken meanwhile
by the local end of some outgoing connection, as an ephemeral one can be before a container
publishes it."""


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive loopback ports that are free now (replica i of an entry
    listens on url port + i)."""
    for _ in range(200):
        base = _PORTS.randrange(PORT_RANGE[0], PORT_RANGE[1] - count)
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {PORT_RANGE}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def with_offer(fields: dict[str, Any]) -> dict[str, Any]:
    """Capability keyword arguments with aiModels.json's price fields gathered into an Offer."""
    priced = {k: fields[k] for k in OFFER_FIELDS if k in fields}
    rest = {k: v for k, v in fields.items() if k not in OFFER_FIELDS}
    return {**rest, "offer": Offer(**priced)} if priced else rest
