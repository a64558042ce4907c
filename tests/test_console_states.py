"""Entry states an operator monitors, against a real `byoc-orch run` on the real engine with the
demo worker: `starting` and `drained` exit 0 (a planned drain never pages), a crash-looping
entry is DOWN with its crash (an OOM kill, SIGKILL) kept in REASON through the restart, exit 3;
`restart --wait`, `drain --wait` (both exit codes), `reload --dry-run` field by field, and
`status --watch` printing one block per change to a pipe, without terminal codes."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from byoc_orch.cli import main
from byoc_orch.exit_codes import EXIT_DEGRADED, EXIT_OK
from byoc_orch.settings import load_settings
from byoc_orch.status_watch import watch
from tests.conftest import Harness, eventually
from tests.test_console import cli
from tests.test_daemon import worker_entry
from tests.test_passthrough import byoc_orch
from tests.test_proxy import start_body

pytestmark = pytest.mark.engine

SLOW = "st-slow"
WARM = "st-warm"
CRASH = "st-killed"


def killed_entry(harness: Harness) -> dict[str, Any]:
    """Loads for ten minutes: long enough to be SIGKILLed (as the OOM killer would) while it
    comes back, again and again."""
    return worker_entry(harness, CRASH, gpus="none", env={"DEMO_LOAD_SECONDS": "600"})


def sample(title: str, text: str) -> None:
    """Keep a status output for the record when BYOC_STATUS_SAMPLES names a file."""
    path = os.environ.get("BYOC_STATUS_SAMPLES")
    if path:
        with open(path, "a", encoding="utf-8") as kept:
            kept.write(f"$ byoc-orch status   # {title}\n{text}\n")


def lines_by_entry(text: str) -> dict[str, str]:
    return {line.split()[0]: line for line in text.splitlines() if line.strip()}


class Watch:
    """`byoc-orch status --watch` with its stdout a pipe, read on a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "byoc_orch", "status", "--watch", "--interval", "0.2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.text = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.text += line

    def blocks(self) -> list[str]:
        return [b for b in self.text.split("--- ")[1:] if b.strip()]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._reader.join(5)


async def test_starting_drained_and_crash_looping_entries_and_their_exit_codes(
    harness: Harness,
    instance: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    warm = worker_entry(harness, WARM, gpus="none")
    slow = worker_entry(harness, SLOW, gpus="none", env={"DEMO_LOAD_SECONDS": "600"})
    async with byoc_orch(
        harness, instance, tmp_path, [warm, slow], BYOC_ORCH_BACKOFF_INITIAL="1"
    ) as daemon:
        port = daemon.base.rsplit(":", 1)[1]
        env = {
            "BYOC_ORCH_PORT": port,
            "BYOC_ORCH_INSTANCE": instance,
            "BYOC_ORCH_DOCKER_HOST": harness.docker_host,
            "BYOC_ORCH_MODELS_PATH": str(tmp_path / "aiModels.json"),
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        url = (await daemon.entry(WARM))["url"]

        async def slow_loading() -> bool:
            workers = {w["model_id"]: w for w in await daemon.workers()}
            return workers.get(SLOW, {}).get("state") == "starting"

        await eventually(slow_loading, within=60, what="the slow entry loading")
        capsys.readouterr()

        # Replicas coming up are `starting`, not DOWN, and page nobody.
        assert await cli(["status"]) == EXIT_OK
        starting = capsys.readouterr().out
        sample("a starting entry: exit 0", starting)
        line = lines_by_entry(starting)[f"live-video-to-video/{SLOW}"]
        assert line.split()[1] == "starting" and "0/1 replica warm" in line
        assert await cli(["status", "--json"]) == EXIT_OK
        document = json.loads(capsys.readouterr().out)
        assert {e["model_id"]: e["health"] for e in document["entries"]} == {
            WARM: "warm",
            SLOW: "starting",
        }
        assert document["ok"] is True

        watch = Watch({**os.environ, **env})
        try:
            await eventually(lambda: len(watch.blocks()) == 1, within=20, what="first block")

            # A planned drain: `drained`, exit 0. drain --wait: a session still running at
            # the timeout is exit 3 (and goes on), none left is exit 0.
            headers = {"Content-Type": "application/json"}
            async with httpx.AsyncClient(timeout=10, headers=headers) as client:
                started = await client.post(f"{url}/stream/start", json=start_body("st-1"))
                assert started.status_code == 200, started.text
                assert await cli(["drain", WARM, "--wait", "--timeout", "1"]) == EXIT_DEGRADED
                waited = capsys.readouterr()
                assert "drain timeout" in waited.err and "st-1" in waited.err

                assert await cli(["status"]) == EXIT_OK
                drained = capsys.readouterr().out
                sample("a drained entry: exit 0", drained)
                line = lines_by_entry(drained)[f"live-video-to-video/{WARM}"]
                assert line.split()[1] == "drained" and "undrain" in line
                await eventually(
                    lambda: any("drained" in b for b in watch.blocks()), within=20, what="block"
                )

                stopped = await client.post(f"{url}/stream/stop", headers={"X-Stream-Id": "st-1"})
                assert stopped.status_code == 200
                assert await cli(["drain", WARM, "--wait", "--timeout", "30"]) == EXIT_OK
                assert "no session or request left" in capsys.readouterr().out
            assert await cli(["undrain", WARM]) == EXIT_OK

            # restart --wait returns once the new container is warm.
            before = next(w for w in await daemon.workers() if w["model_id"] == WARM)
            assert await cli(["restart", WARM, "--wait", "--timeout", "60"]) == EXIT_OK
            assert "warm again after" in capsys.readouterr().out
            after = next(w for w in await daemon.workers() if w["model_id"] == WARM)
            assert after["state"] == "warm"
            assert after["container_id"] != before["container_id"]

            # reload --dry-run: each changed field, old → new; secrets only said to change.
            models = tmp_path / "aiModels.json"
            changed = {**warm, "capacity": 2, "token": "tok-hidden-77"}
            models.write_text(json.dumps([changed, slow, killed_entry(harness)]))
            assert await cli(["reload", "--dry-run"]) == EXIT_OK
            planned = capsys.readouterr().out
            assert "would change" in planned and "added" in planned
            assert "updated in place" in planned and "capacity: 1 → 2" in planned
            assert "token: (unset) → (set, hidden)" in planned
            assert "tok-hidden-77" not in planned

            # A crash loop: DOWN, exit 3, and REASON keeps the OOM kill while it restarts.
            models.write_text(json.dumps([warm, slow, killed_entry(harness)]))
            assert await cli(["reload"]) == EXIT_OK
            capsys.readouterr()

            engine = docker.DockerClient(base_url=harness.docker_host)
            try:
                for kills in (1, 2):

                    async def loading(restarts: int = kills - 1) -> str | None:
                        mine = next(w for w in await daemon.workers() if w["model_id"] == CRASH)
                        running = mine["state"] == "starting" and mine["restarts"] == restarts
                        return mine["container_id"] if running else None

                    container = await eventually(loading, within=60, what=f"loading ({kills})")
                    await asyncio.to_thread(engine.api.kill, container)
            finally:
                engine.close()

            async def restarting_after_the_kill() -> bool:
                mine = next(w for w in await daemon.workers() if w["model_id"] == CRASH)
                return bool(
                    mine["restarts"] == 2 and mine["state"] == "starting" and mine["restart_cause"]
                )

            await eventually(restarting_after_the_kill, within=60, what="restarting, twice")
            assert await cli(["status"]) == EXIT_DEGRADED
            looping = capsys.readouterr().out
            sample("a crash-looping entry: exit 3", looping)
            entry_line = lines_by_entry(looping)[f"live-video-to-video/{CRASH}"]
            assert entry_line.split()[1] == "DOWN"
            rows = looping.splitlines()
            replica = next(row for row in rows if row.strip().startswith("#0 ") and CRASH in row)
            assert replica.split()[2] == "starting"
            assert "code 137: killed by SIGKILL — likely out of memory" in replica
            assert "LOADING" not in replica.split("code 137")[0]
            await eventually(
                lambda: any("DOWN" in b for b in watch.blocks()), within=20, what="DOWN block"
            )
        finally:
            watch.stop()
        blocks = watch.blocks()
        assert "\x1b" not in watch.text
        assert len(blocks) >= 3
        assert all(
            a.split("\n", 1)[1] != b.split("\n", 1)[1] for a, b in itertools.pairwise(blocks)
        ), "a block was printed without a change:\n" + watch.text


async def test_status_watch_on_a_pipe_prints_nothing_new_while_nothing_changes(
    harness: Harness, instance: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = worker_entry(harness, "st-still", gpus="none")
    async with byoc_orch(harness, instance, tmp_path, [warm]) as daemon:
        await daemon.entry("st-still")
        monkeypatch.setenv("BYOC_ORCH_PORT", daemon.base.rsplit(":", 1)[1])
        out = io.StringIO()
        # 25 looks while the worker is probed all along: one block, as nothing changed.
        code = await asyncio.to_thread(
            watch, load_settings(), as_json=False, interval=0.1, out=out, looks=25
        )
        assert code == EXIT_OK
        text = out.getvalue()
        assert text.count("--- ") == 1 and "(exit 0)" in text and "\x1b" not in text

        # On a terminal: redrawn in place, each line cleared to its end, no blank frame.
        class Terminal(io.StringIO):
            def isatty(self) -> bool:
                return True

        screen = Terminal()
        await asyncio.to_thread(
            watch, load_settings(), as_json=False, interval=0.1, out=screen, looks=3
        )
        frames = screen.getvalue().split("\x1b[H")[1:]
        assert frames and all(f.endswith("\x1b[J") and "\x1b[K\n" in f for f in frames)
        assert "\x1b[2J" not in screen.getvalue()

        # `version` names the daemon's version and commit beside the client's.
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert await asyncio.to_thread(main, ["version"]) == EXIT_OK
        lines = out.getvalue().splitlines()
        assert lines[0].startswith("client: byoc-orch ")
        assert lines[-1].startswith("daemon: byoc-orch ") and daemon.base in lines[-1]
        assert "differs" not in lines[-1]
