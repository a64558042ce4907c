"""The deploy/ kit: the dashboard asks for metrics that exist, the unit is what systemd accepts,
and every setting named anywhere in the kit is one byoc-orch reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from byoc_orch.gpu import GpuCollector, GpuReader
from byoc_orch.metrics import Metrics
from byoc_orch.settings import Settings
from tests.test_gpu import two_gpus

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\bbyoc_orch_[a-z_]+\b")
SETTING = re.compile(r"\bBYOC_ORCH_[A-Z_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def exportable_names() -> set[str]:
    """Every sample name /metrics can carry, labelled series or not yet, GPU gauges included."""
    metrics = Metrics()
    metrics.add_worker("live-video-to-video", "comfyui", 1)
    metrics.register(GpuCollector(GpuReader(two_gpus())))
    names = set()
    for family in metrics.registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel["targets"]]
    exprs += [variable["definition"] for variable in dashboard["templating"]["list"]]
    return exprs


def test_dashboard_is_an_importable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "byoc-orch"
    (source,) = dashboard["__inputs"]
    assert (source["name"], source["pluginId"]) == ("DS_PROMETHEUS", "prometheus")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_dashboard_query_names_a_metric_that_exists(dashboard: dict[str, Any]) -> None:
    known = exportable_names()
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no byoc_orch metric at all"
    assert used - known == set()


def test_every_panel_queries_byoc_orch(dashboard: dict[str, Any]) -> None:
    for panel in panels(dashboard):
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), f"{panel['title']}: {target['expr']}"


def test_dashboard_covers_what_operators_watch(dashboard: dict[str, Any]) -> None:
    used = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert {
        "byoc_orch_worker_state",
        "byoc_orch_capabilities_warm",
        "byoc_orch_container_restarts_total",
        "byoc_orch_health_probe_duration_seconds_bucket",
        "byoc_orch_health_probe_failures_total",
        "byoc_orch_sessions_active",
        "byoc_orch_sessions_started_total",
        "byoc_orch_sessions_ended_total",
        "byoc_orch_proxy_request_duration_seconds_bucket",
        "byoc_orch_image_pulls_total",
        "byoc_orch_config_reloads_total",
        "byoc_orch_gpu_utilization_ratio",
        "byoc_orch_gpu_memory_used_bytes",
    } <= used


def test_the_name_check_would_catch_a_typo() -> None:
    known = exportable_names()
    assert "byoc_orch_gpu_utilization_ratio" in known
    assert "byoc_orch_advertiser_calls_total" in known, "unlabelled counters count too"
    assert "byoc_orch_gpu_utilisation_ratio" not in known
    assert "byoc_orch_worker_states" not in known


def unit_settings(text: str) -> dict[str, list[str]]:
    """[Service]-and-friends as systemd reads them: a key may repeat, later lines add."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


UNIT = DEPLOY / "byoc-orch.service"


def test_unit_is_a_notify_service_with_reload_and_watchdog() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == ["/usr/local/bin/byoc-orch run"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["EnvironmentFile"] == ["-/etc/byoc-orch/byoc-orch.env"]
    assert int(unit["WatchdogSec"][0]) >= 10
    assert int(unit["TimeoutStartSec"][0]) >= 60
    for key in ("Wants", "After"):
        assert set(unit[key][0].split()) >= {"docker.service", "network-online.target"}
    assert unit["User"] == ["byoc-orch"]
    assert unit["SupplementaryGroups"] == ["docker"]


def test_unit_is_hardened_without_hiding_the_gpus() -> None:
    unit = unit_settings(UNIT.read_text())
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "ReadOnlyPaths": "/etc/byoc-orch",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }.items():
        assert unit.get(key) == [value], key
    assert unit.get("PrivateDevices", ["no"]) == ["no"], "PrivateDevices=yes hides /dev/nvidia*"
    assert "char-nvidia* rw" in unit["DeviceAllow"]
    assert "ProcSubset" not in unit, "ProcSubset=pid hides /proc/driver/nvidia from NVML"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """Verified as shipped, except ExecStart pointing at a binary that exists here."""
    stub = tmp_path / "byoc-orch"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "byoc-orch.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/byoc-orch", str(stub)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "Unknown" not in report, report
    assert "ignoring" not in report, report


COMPOSE = DEPLOY / "docker-compose.yml"


def test_compose_runs_byoc_orch_on_the_host_network_beside_go_livepeer() -> None:
    text = COMPOSE.read_text()
    assert "\t" not in text, "YAML forbids tabs"
    assert re.search(r"^services:\n  byoc-orch:\n", text, re.M)
    assert re.search(r"^  go-livepeer:\n", text, re.M)
    assert text.count("network_mode: host") == 2
    assert "- /var/run/docker.sock:/var/run/docker.sock\n" in text
    assert "- ./config:/etc/byoc-orch:ro\n" in text
    for setting in ("BYOC_ORCH_ORCH_URL", "BYOC_ORCH_ORCH_SECRET", "BYOC_ORCH_PUBLIC_URL"):
        assert setting in text
    assert "- -orchSecret=/run/secrets/orch_secret\n" in text
    assert "dockerfile: deploy/Dockerfile\n" in text


def test_dockerfile_context_lets_through_what_it_copies() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    copied = [
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    ]
    assert copied == ["pyproject.toml", "README.md", "byoc_orch"]
    for source in copied:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source
    assert 'ENTRYPOINT ["byoc-orch"]' in dockerfile


def test_prometheus_snippet_scrapes_the_default_port() -> None:
    text = (DEPLOY / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text
    assert f'targets: ["127.0.0.1:{Settings.model_fields["port"].default}"]' in text


KIT = [
    ROOT / "config" / "byoc-orch.env.example",
    UNIT,
    COMPOSE,
    DEPLOY / "Dockerfile",
    DEPLOY / "prometheus.yml",
    DEPLOY / "README.md",
]


@pytest.mark.parametrize("path", KIT, ids=lambda path: path.name)
def test_every_setting_named_in_the_kit_exists(path: Path) -> None:
    known = {f"BYOC_ORCH_{name.upper()}" for name in Settings.model_fields} | {"BYOC_ORCH_ENV_FILE"}
    named = set(SETTING.findall(path.read_text())) if path.exists() else set()
    assert named - known == set()


def test_env_example_documents_every_setting() -> None:
    text = (ROOT / "config" / "byoc-orch.env.example").read_text()
    missing = [name for name in Settings.model_fields if f"BYOC_ORCH_{name.upper()}=" not in text]
    assert missing == []
