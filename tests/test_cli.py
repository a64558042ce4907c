"""The byoc-orch command, run in-process (and once as `python -m byoc_orch`)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from byoc_orch import __version__
from byoc_orch.cli import EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE, main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "aiModels.example.json"
NO_ENGINE = "unix:///nonexistent.sock"


@pytest.fixture(autouse=True)
def hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No settings from the developer's shell; logging restored after `run`/`status` set it."""
    for name in list(os.environ):
        if name.startswith("BYOC_ORCH_") or name in ("DOCKER_HOST", "DOCKER_CONTEXT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BYOC_ORCH_LOG_FORMAT", "console")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_version(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    port = free_port()
    monkeypatch.setenv("BYOC_ORCH_PORT", str(port))
    assert main(["version"]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"client: byoc-orch {__version__} (commit ")
    assert "docker-py" in out
    assert out.splitlines()[-1].startswith(f"daemon: not reachable at http://127.0.0.1:{port}")


def test_version_through_python_dash_m(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOC_ORCH_")}
    result = subprocess.run(
        [sys.executable, "-m", "byoc_orch", "version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(f"client: byoc-orch {__version__} (commit ")


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "usage: byoc-orch" in capsys.readouterr().err


def test_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == EXIT_OK
    schema = json.loads(capsys.readouterr().out)
    assert schema["type"] == "array"
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "ModelEntry" in schema["$defs"]


def test_validate_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE)]) == EXIT_OK
    captured = capsys.readouterr()
    entries = json.loads(EXAMPLE.read_text())
    lines = [line for line in captured.out.splitlines() if line.startswith("entry ")]
    assert len(lines) == len(entries)
    for index, (line, raw) in enumerate(zip(lines, entries, strict=True)):
        assert line.startswith(f"entry {index} {raw['pipeline']}/{raw['model_id']}: ")
        assert ("managed" if "container" in raw else "external") in line
    assert "replace-with-a-long-random-secret" not in captured.out + captured.err
    assert captured.err == ""


def test_validate_uses_the_models_setting_when_no_path_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYOC_ORCH_MODELS_PATH", str(EXAMPLE))
    assert main(["validate"]) == EXIT_OK
    assert "entry 0 live-video-to-video/comfyui" in capsys.readouterr().out


def test_validate_trailing_comma(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(
        tmp_path / "aiModels.json",
        '[\n  {"pipeline": "p", "model_id": "m", "url": "http://10.0.0.1:9000"},\n]\n',
    )
    assert main(["validate", str(bad)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "line 2 column 68: trailing comma before ']'" in err
    assert "Traceback" not in err


def test_validate_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.json"
    assert main(["validate", str(missing)]) == EXIT_INVALID
    captured = capsys.readouterr()
    assert str(missing) in captured.err
    assert "cannot read the file" in captured.err
    assert "Traceback" not in captured.out + captured.err


def test_validate_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(
        tmp_path / "aiModels.json",
        json.dumps(
            [
                {"pipeline": "p", "model_id": "a", "container": "img", "url": "http://10.0.0.1:1"},
                {"pipeline": "p", "model_id": "b", "url": "http://10.0.0.1:2", "capacity": 0},
            ]
        ),
    )
    assert main(["validate", str(bad)]) == EXIT_INVALID
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0].startswith("error: entry 0 (a): url:")
    assert errors[1].startswith("error: entry 1 (b): capacity:")


def test_port_setting_reserves_the_api_port(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYOC_ORCH_PORT", "8001")
    assert main(["validate", str(EXAMPLE)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "entry 0 (comfyui): url: port 8001 is taken by byoc-orch's own HTTP API" in err
    assert "BYOC_ORCH_PORT" in err


def test_port_flag_beats_port_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYOC_ORCH_PORT", "8002")
    assert main(["validate", str(EXAMPLE)]) == EXIT_INVALID
    assert "port 8002 is taken" in capsys.readouterr().err
    assert main(["config", "show", "--port", "9100"]) == EXIT_OK
    assert "BYOC_ORCH_PORT=9100" in capsys.readouterr().out


def test_bad_setting_flag_exits_invalid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--instance", "Not Valid"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("byoc-orch: BYOC_ORCH_INSTANCE:")
    assert "--instance" in err


def test_missing_env_file_flag_exits_invalid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.env"
    assert main(["status", "--env-file", str(missing)]) == EXIT_INVALID
    assert f"env file {missing}: not found" in capsys.readouterr().err


def test_run_with_invalid_models_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(
        tmp_path / "aiModels.json",
        json.dumps([{"pipeline": "p", "model_id": "m", "container": "img", "gpus": "0,1"}]),
    )
    code = main(["run", "--models", str(bad), "--docker-host", NO_ENGINE])
    assert code == EXIT_INVALID
    err = capsys.readouterr().err
    assert "entry 0 (m): url: a managed entry (one with container) needs url" in err
    assert "entry 0 (m): gpus: unknown gpus value" in err
    assert f"{bad} is invalid; nothing was started" in err
    assert NO_ENGINE not in err  # the file is checked before the engine is tried


def test_run_with_missing_models_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "absent.json"
    assert main(["run", "--models", str(missing), "--docker-host", NO_ENGINE]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "Traceback" not in err


def test_run_with_unreachable_engine(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--models", str(EXAMPLE), "--docker-host", NO_ENGINE])
    assert code == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert f"cannot reach the Docker engine at {NO_ENGINE}" in err
    assert "Traceback" not in err


def test_run_takes_the_engine_from_docker_host(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    assert main(["run", "--models", str(EXAMPLE)]) == EXIT_UNAVAILABLE
    assert NO_ENGINE in capsys.readouterr().err


def test_status_with_unreachable_engine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYOC_ORCH_DOCKER_HOST", NO_ENGINE)
    assert main(["status"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert NO_ENGINE in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- export


def test_export_live_runners(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fake_livepeer import check_static_runner_config

    monkeypatch.setenv("BYOC_ORCH_PUBLIC_URL", "http://10.1.2.3:9935")
    assert main(["export", "live-runners", "--models", str(EXAMPLE)]) == EXIT_OK
    captured = capsys.readouterr()
    entries = check_static_runner_config(captured.out.encode(), onchain=False)
    assert len(entries) == len(json.loads(EXAMPLE.read_text()))
    assert all(e["health_url"].startswith("http://10.1.2.3:9935/live-runner/") for e in entries)
    # The example's prices are in wei: an on-chain orchestrator would refuse these runners.
    (warning,) = captured.err.splitlines()
    assert warning.startswith("warning: no USD price for ") and 'currency "USD"' in warning


def test_export_live_runners_for_livepeer_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import tomllib

    monkeypatch.setenv("BYOC_ORCH_PUBLIC_URL", "http://10.1.2.3:9935")
    argv = ["export", "live-runners", "--format", "livepeer-node", "--models", str(EXAMPLE)]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    runners = tomllib.loads(out)["Runners"]
    assert len(runners) == len(json.loads(EXAMPLE.read_text()))
    for runner in runners:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", runner["ID"])
        assert runner["RunnerURL"] == f"http://10.1.2.3:9935/proxy/{runner['ID']}"
        assert runner["HealthURL"] == f"http://10.1.2.3:9935/live-runner/{runner['ID']}/health"
        assert runner["Status"] == "ready" and runner["HealthCode"] == 200
        assert set(runner) <= {
            "ID", "Label", "RunnerURL", "App", "Mode", "Capacity", "HealthURL", "HealthCode",
            "Status", "GPU", "PriceInfo",
        }  # fmt: skip
    assert 'RunnerGrants = ["10.1.2.3:9935"]' in out and 'HealthGrants = ["10.1.2.3:9935"]' in out


def test_export_live_runners_warns_about_the_fallback_url_and_the_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYOC_ORCH_API_TOKEN", "tok-Vb7")
    monkeypatch.setenv("BYOC_ORCH_PORT", "9999")
    assert main(["export", "live-runners", "--models", str(EXAMPLE)]) == EXIT_OK
    captured = capsys.readouterr()
    assert '"runner_url": "http://127.0.0.1:9999/proxy/' in captured.out
    assert "warning: BYOC_ORCH_PUBLIC_URL is not set" in captured.err
    assert "BYOC_ORCH_API_TOKEN is set" in captured.err
    assert "tok-Vb7" not in captured.out + captured.err


def test_export_live_runners_of_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "aiModels.json", '[{"pipeline": "p"}]')
    assert main(["export", "live-runners", "--models", str(bad)]) == EXIT_INVALID
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nothing exported" in captured.err


def test_export_aimodels_from_the_running_daemon(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from byoc_orch.aimodels import parse_models
    from tests.test_exports import fake_daemon, warm_listing

    monkeypatch.setenv("BYOC_ORCH_API_TOKEN", "tok-Vb7")
    with fake_daemon(warm_listing()) as port:
        monkeypatch.setenv("BYOC_ORCH_PORT", str(port))
        assert main(["export", "aimodels"]) == EXIT_OK
        plain = capsys.readouterr()
        assert main(["export", "aimodels", "--include-token"]) == EXIT_OK
        with_token = capsys.readouterr()
    models = parse_models(plain.out, source="stdout")
    assert [m.model_id for m in models.entries] == ["comfyui", "streamdiffusion"]
    assert not any(m.managed for m in models.entries)
    assert "free_capacity" not in plain.out
    assert "tok-Vb7" not in plain.out + plain.err
    assert [e["token"] for e in json.loads(with_token.out)] == ["tok-Vb7", "tok-Vb7"]


def test_export_aimodels_without_a_daemon(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import free_port

    port = free_port()
    monkeypatch.setenv("BYOC_ORCH_PORT", str(port))
    assert main(["export", "aimodels"]) == EXIT_UNAVAILABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"cannot reach the byoc-orch daemon at http://127.0.0.1:{port}/capabilities" in (
        captured.err
    )
    assert "Traceback" not in captured.err


# --------------------------------------------------------------------------- the GPU pool


def replicated_file(tmp_path: Path, **fields: object) -> Path:
    entry = {
        "pipeline": "live-video-to-video",
        "model_id": "x",
        "container": "livepeer/comfystream:latest",
        "url": "http://127.0.0.1:8001",
        "replicas": 2,
        **fields,
    }
    return write(tmp_path / "aiModels.json", json.dumps([entry]))


@pytest.fixture
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """A host without an NVIDIA driver, whatever this machine has; records each NVML read."""
    from byoc_orch import gpu

    asked: list[bool] = []

    def unavailable() -> list[gpu.GpuInfo]:
        asked.append(True)
        raise gpu.GpuUnavailableError("NVML unavailable: NVML Shared Library Not Found")

    monkeypatch.setattr(gpu, "read_inventory", unavailable)
    return asked


def test_validate_places_replicas_on_byoc_orch_gpus(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_nvml: list[bool],
) -> None:
    monkeypatch.setenv("BYOC_ORCH_GPUS", "2,3")
    assert main(["validate", str(replicated_file(tmp_path))]) == EXIT_OK
    out = capsys.readouterr().out
    assert "2 replicas: #0 127.0.0.1:8001 gpus=[2], #1 127.0.0.1:8002 gpus=[3]" in out
    assert no_nvml == [True]


def test_run_refuses_replicas_with_no_gpu_pool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_nvml: list[bool]
) -> None:
    models = replicated_file(tmp_path)
    assert main(["run", "--models", str(models), "--docker-host", NO_ENGINE]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "entry 0 (x): replicas: no GPU pool to place replicas on" in err
    assert f"{models} is invalid; nothing was started" in err
    assert NO_ENGINE not in err


def test_gpu_metrics_off_keeps_nvml_out_of_placement(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_nvml: list[bool],
) -> None:
    monkeypatch.setenv("BYOC_ORCH_GPU_METRICS", "false")
    monkeypatch.setenv("BYOC_ORCH_GPUS", "0,1")
    models = replicated_file(tmp_path)
    assert main(["validate", str(models)]) == EXIT_OK
    assert main(["export", "live-runners", "--models", str(models)]) == EXIT_OK
    capsys.readouterr()
    assert no_nvml == []


def test_export_refuses_a_pool_setting_of_unknown_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from byoc_orch import gpu

    monkeypatch.setattr(
        gpu, "read_inventory", lambda: [gpu.GpuInfo(0, "GPU-0", "NVIDIA L4", 24 << 30)]
    )
    monkeypatch.setenv("BYOC_ORCH_GPUS", "0,5")
    models = replicated_file(tmp_path)
    assert main(["export", "live-runners", "--models", str(models)]) == EXIT_INVALID
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "error: BYOC_ORCH_GPUS: GPU 5 is not on this host (NVML lists 0)" in captured.err
    assert "BYOC_ORCH_GPUS does not match this host; nothing exported" in captured.err
