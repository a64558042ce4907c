"""The daemon on the fake engine: what it composes, without dockerd."""

from __future__ import annotations

import json
from typing import Any

import pytest

from byoc_orch import daemon as daemon_module
from byoc_orch.aimodels import parse_models
from byoc_orch.container_spec import build_container_spec
from byoc_orch.daemon import Daemon
from byoc_orch.settings import Settings
from byoc_orch.worker_state import State
from tests.conftest import eventually, free_port
from tests.fake_engine import FakeEngine

IMAGE = "127.0.0.1:5000/worker:1"


def entry(model_id: str, replicas: int, **fields: Any) -> dict[str, Any]:
    return {
        "pipeline": "live-video-to-video",
        "model_id": model_id,
        "container": IMAGE,
        "url": f"http://127.0.0.1:{free_port(replicas)}",
        "gpus": "none",
        "warm": True,
        "replicas": replicas,
        **fields,
    }


async def test_a_reload_builds_each_container_spec_once(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(instance="me", images=[IMAGE])
    settings = Settings(
        instance="me", port=free_port(), gpu_metrics=False, startup_probe_interval=0.01
    )
    first = [entry("a", 2), entry("b", 3)]
    daemon = Daemon(settings, parse_models(json.dumps(first), source="t"), engine=engine)
    await daemon.start()
    built: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        spec = build_container_spec(*args, **kwargs)
        built.append(spec.worker_id)
        return spec

    monkeypatch.setattr(daemon_module, "build_container_spec", counting)
    try:
        await eventually(
            lambda: all(w.status.state is State.WARM for w in daemon.workers.values()), within=5
        )
        changed = [first[0], {**first[1], "capacity": 2}]
        plan = await daemon.reload(parse_models(json.dumps(changed), source="t"))
        assert plan.update and not plan.replace
        assert sorted(built) == sorted(daemon.workers), "a spec was built more than once"
        built.clear()
        await daemon.reload(parse_models(json.dumps(changed), source="t"), dry_run=True)
        assert sorted(built) == sorted(daemon.workers)
    finally:
        await daemon.stop()
        engine.shutdown()


@pytest.mark.parametrize(
    ("state", "sessions_known", "settled"),
    [
        (State.COLD, True, False),  # adopted, its task has not taken the container in hand yet
        (State.STARTING, True, False),  # not probed since adoption
        (State.WARM, False, False),  # warm, but its running streams not asked yet
        (State.WARM, True, True),
        (State.UNHEALTHY, False, True),
        (State.BACKOFF, False, True),
    ],
)
def test_a_socket_activated_start_waits_for_what_an_adopted_replica_runs(
    state: State, sessions_known: bool, settled: bool
) -> None:
    """Found by the restart-under-load benchmark: settled() ran before the replicas' tasks had
    taken their adoption, saw them COLD, and the new process served calls 503 not_warm."""
    from types import SimpleNamespace

    worker = SimpleNamespace(status=SimpleNamespace(state=state), sessions_known=sessions_known)
    assert daemon_module._settled(worker) is settled  # type: ignore[arg-type]
