"""What the supervisor asks of a container engine: the few calls Worker and the daemon make.

Worker, Deployment and the daemon are typed against `ContainerEngine`, not against Docker:
`engine.Engine` is the one implementation, tests/fake_engine.py an in-memory one that keeps the
same contract. The commands that talk to Docker on their own (`logs -f`, `status`) use
`Engine` itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from byoc_orch.container_spec import ContainerSpec
from byoc_orch.engine import ContainerInfo, EngineEvent, EngineInfo, PullPolicy, PullResult
from byoc_orch.image_ref import ImageRef


class EventSource(Protocol):
    """Container events of this instance from the moment it was opened, with STREAM_LOST and
    STREAM_RESTORED notes when the stream itself went away and came back."""

    def __aiter__(self) -> AsyncIterator[EngineEvent]: ...

    async def aclose(self) -> None: ...


class ContainerEngine(Protocol):
    """One engine endpoint scoped to one byoc-orch instance: only containers with this
    instance's labels are listed or touched; failures are `EngineError`s written for an
    operator (`EngineUnavailable` when the engine does not answer)."""

    async def connect(self) -> EngineInfo:
        """Reach the engine and say what it is."""
        ...

    def events(self) -> EventSource:
        """Follow container events from now on (open it before listing containers)."""
        ...

    async def list_containers(self) -> list[ContainerInfo]:
        """Every container of this instance, running or not."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo:
        """One of this instance's containers as Docker inspects it (exit code, OOMKilled)."""
        ...

    async def ensure_image(self, ref: ImageRef, policy: PullPolicy | str) -> PullResult:
        """Make `ref` available locally as the pull policy says."""
        ...

    async def run(self, spec: ContainerSpec) -> ContainerInfo:
        """Create and start the container `spec` describes."""
        ...

    async def stop(self, container_id: str, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; a stopped container is fine."""
        ...

    async def remove(self, container_id: str) -> None:
        """Force-remove one of this instance's containers; one already gone is fine."""
        ...

    async def logs(self, container_id: str, tail: int = 40) -> list[str]:
        """The last `tail` lines a container wrote."""
        ...

    async def close(self) -> None: ...
