"""The operator's console against a real `byoc-orch run` on the real engine: `status` (text,
JSON, exit codes), crash forensics in /workers and `logs`, journald priorities, `reload`
(--dry-run, rejected), `drain`/`undrain`, `config show`, a taken port, and the instance lock
across spellings of one engine's socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from byoc_orch.cli import main
from byoc_orch.exit_codes import EXIT_DEGRADED, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE
from tests.conftest import Harness, eventually, free_port
from tests.test_daemon import worker_entry
from tests.test_passthrough import byoc_orch
from tests.test_proxy import start_body

pytestmark = pytest.mark.engine


def entries_for(harness: Harness) -> list[dict[str, Any]]:
    return [
        worker_entry(harness, "con-warm", gpus="none"),
        worker_entry(harness, "con-cold", gpus="none", warm=False),
        worker_entry(
            harness,
            "con-crash",
            gpus="none",
            env={"DEMO_LOAD_SECONDS": "0.2", "DEMO_EXIT_AFTER": "0.6", "DEMO_EXIT_CODE": "3"},
        ),
        {
            **worker_entry(harness, "con-failed", gpus="none"),
            "container": harness.worker_image.rsplit("/", 1)[0] + "/no-such-image:1",
        },
    ]


def cli_env(
    monkeypatch: pytest.MonkeyPatch, daemon_base: str, instance: str, harness: Harness
) -> None:
    """Point the in-process commands at this daemon, as its env file would."""
    monkeypatch.setenv("BYOC_ORCH_PORT", daemon_base.rsplit(":", 1)[1])
    monkeypatch.setenv("BYOC_ORCH_INSTANCE", instance)
    monkeypatch.setenv("BYOC_ORCH_DOCKER_HOST", harness.docker_host)


async def cli(argv: list[str]) -> int:
    """The command as an operator runs it (its own event loop, so in a thread here)."""
    return await asyncio.to_thread(main, argv)


async def settled(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            workers = {w["model_id"]: w for w in (await client.get(f"{base}/workers")).json()}
    except httpx.HTTPError:
        return False

    def state(model_id: str) -> str | None:
        return workers.get(model_id, {}).get("state")

    return (
        state("con-warm") == "warm"
        and state("con-crash") == "backoff"
        and workers["con-crash"]["last_failure_log"] is not None
        and state("con-failed") == "failed"
    )


async def test_status_logs_and_severities_tell_the_truth(
    harness: Harness,
    instance: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with byoc_orch(
        harness,
        instance,
        tmp_path,
        entries_for(harness),
        BYOC_ORCH_BACKOFF_INITIAL="60",
        JOURNAL_STREAM="8:12345",
    ) as daemon:
        await eventually(lambda: settled(daemon.base), within=60, what="all four settled")
        cli_env(monkeypatch, daemon.base, instance, harness)
        flags: list[str] = []
        capsys.readouterr()

        assert await cli(["status", *flags]) == EXIT_DEGRADED
        text = capsys.readouterr().out
        assert "2/4 entries warm" not in text  # only con-warm is warm
        assert "1/4 entries warm" in text
        lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
        assert "warm" in lines["live-video-to-video/con-warm"]
        assert "cold" in lines["live-video-to-video/con-cold"]
        assert "DOWN" in lines["live-video-to-video/con-crash"]
        assert "DOWN" in lines["live-video-to-video/con-failed"]
        assert "next in" in text  # the back-off's next retry
        assert "no-such-image" in text  # the failed pull's reason
        assert "last log lines" in text and "DEMO_EXIT_AFTER" in text

        assert await cli(["status", "--json", *flags]) == EXIT_DEGRADED
        document = json.loads(capsys.readouterr().out)
        assert document["ok"] is False
        health = {e["model_id"]: e["health"] for e in document["entries"]}
        assert health == {
            "con-warm": "warm",
            "con-cold": "cold",
            "con-crash": "down",
            "con-failed": "down",
        }
        crash = next(e for e in document["entries"] if e["model_id"] == "con-crash")
        (replica,) = crash["replica_status"]
        failure = replica["last_failure_log"]
        assert "code 3" in failure["reason"]
        assert any("DEMO_EXIT_AFTER" in line for line in failure["lines"])

        # Retrying a pull that fails restarts no container: only the crashing one counts.
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{daemon.base}/metrics")).text
        restarts = {
            line.split('model_id="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("byoc_orch_container_restarts_total{")
        }
        assert restarts["con-failed"] == 0
        assert restarts["con-crash"] >= 1

        assert await cli(["logs", "con-crash", *flags]) == EXIT_OK
        shown = capsys.readouterr().out
        assert "last failed container" in shown and "DEMO_EXIT_AFTER" in shown

        # Failures reach the journal at warning (4) or error (3) priority; recoveries at info.
        logged = daemon.log.read_text().splitlines()
        crashed = [line for line in logged if '"state": "backoff"' in line]
        assert crashed and all(line.startswith("<4>{") for line in crashed)
        failed = [line for line in logged if '"state": "failed"' in line]
        assert failed and all(line.startswith("<3>{") for line in failed)
        assert any(line.startswith("<6>{") and '"state": "warm"' in line for line in logged)


async def test_status_without_a_daemon_falls_back_to_docker(
    harness: Harness,
    instance: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cli_env(monkeypatch, f"http://127.0.0.1:{free_port()}", instance, harness)
    assert await cli(["status"]) == EXIT_UNAVAILABLE
    captured = capsys.readouterr()
    assert "not reachable" in captured.err
    assert f"instance '{instance}'" in captured.out


async def test_reload_drain_and_config_from_the_command_line(
    harness: Harness,
    instance: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    warm = worker_entry(harness, "con-drain", gpus="none", capacity=2)
    async with byoc_orch(
        harness, instance, tmp_path, [warm], BYOC_ORCH_API_TOKEN="console-token"
    ) as daemon:
        url = (await daemon.entry("con-drain"))["url"]
        cli_env(monkeypatch, daemon.base, instance, harness)
        monkeypatch.setenv("BYOC_ORCH_API_TOKEN", "console-token")  # never a flag
        flags: list[str] = []
        models = tmp_path / "aiModels.json"
        headers = {"Authorization": "Bearer console-token"}
        capsys.readouterr()

        # A dry run says what would change and changes nothing.
        models.write_text(json.dumps([{**warm, "capacity": 3}]))
        assert await cli(["reload", "--dry-run", *flags]) == EXIT_OK
        planned = capsys.readouterr().out
        assert "would change" in planned and "updated in place" in planned
        assert "capacity: 2 → 3" in planned
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{daemon.base}/capabilities")).json()[0]["capacity"] == 2
        # A broken file is refused with its problems, exit 1; nothing changes.
        models.write_text('[{"pipeline": "p", "model_id": "m", "capacity": "two"}]')
        assert await cli(["reload", *flags]) == EXIT_INVALID
        refused = capsys.readouterr().err
        assert "rejected" in refused and "capacity" in refused
        models.write_text(json.dumps([{**warm, "capacity": 3}]))
        assert await cli(["reload", *flags]) == EXIT_OK
        assert "applied" in capsys.readouterr().out

        # Drain: the running session goes on, no new one starts, and it leaves the listing.
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            first = await client.post(f"{url}/stream/start", json=start_body("before-drain"))
            assert first.status_code == 200, first.text
            assert await cli(["drain", "con-drain", *flags]) == EXIT_OK
            assert "drained" in capsys.readouterr().out
            refused_start = await client.post(f"{url}/stream/start", json=start_body("after"))
            assert refused_start.status_code == 503
            assert (await client.get(f"{daemon.base}/capabilities")).json() == []
            sessions = (await client.get(f"{daemon.base}/sessions")).json()
            assert [s["state"] for s in sessions if s["id"] == "before-drain"] == ["active"]
            assert await cli(["undrain", "con-drain", *flags]) == EXIT_OK
            stopped = await client.post(
                f"{url}/stream/stop", headers={"X-Stream-Id": "before-drain"}
            )
            assert stopped.status_code == 200
            again = await client.post(f"{url}/stream/start", json=start_body("after"))
            assert again.status_code == 200, again.text

        assert await cli(["config", "show", *flags]) == EXIT_OK
        shown = capsys.readouterr().out
        assert "BYOC_ORCH_API_TOKEN=********" in shown
        assert "console-token" not in shown
        assert f"BYOC_ORCH_INSTANCE={instance}" in shown


def test_a_taken_port_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    models = tmp_path / "aiModels.json"
    models.write_text("[]")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "byoc_orch",
                "run",
                "--models",
                str(models),
                "--port",
                str(port),
            ],
            env={**os.environ, "BYOC_ORCH_LOG_FORMAT": "json", "BYOC_ORCH_GPU_METRICS": "false"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == EXIT_UNAVAILABLE
    errors = [line for line in result.stderr.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0]
    assert "BYOC_ORCH_PORT" in errors[0]
    assert "Traceback" not in result.stderr


async def test_the_lock_sees_one_engine_behind_two_socket_spellings(
    harness: Harness, instance: str, tmp_path: Path
) -> None:
    spelled = tmp_path / "docker-alias.sock"
    spelled.symlink_to(harness.docker_host.removeprefix("unix://"))
    async with byoc_orch(harness, instance, tmp_path, []) as first:
        await eventually(lambda: _ready(first.base), what="the first daemon up")
        models = tmp_path / "second.json"
        models.write_text("[]")
        second = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "byoc_orch", "run", "--models", str(models)],
            env={
                **os.environ,
                "BYOC_ORCH_INSTANCE": instance,
                "BYOC_ORCH_PORT": str(free_port()),
                "BYOC_ORCH_DOCKER_HOST": f"unix://{spelled}",
                "BYOC_ORCH_LOG_FORMAT": "json",
                "BYOC_ORCH_GPU_METRICS": "false",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == EXIT_INVALID, second.stderr
        assert "another byoc-orch already runs instance" in second.stderr


async def _ready(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{base}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False
