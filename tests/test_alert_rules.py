"""deploy/prometheus-rules.yml: promtool accepts the rules and their unit tests pass, every alert
is tested firing and silent, and every metric and label value a rule selects is one byoc-orch
exports, so a renamed metric or state breaks this test rather than an operator's pager.

promtool comes from Debian's prometheus package (scripts/test-env.sh installs it); without it
these fail under CI=true and skip otherwise."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from byoc_orch.advertisers.base import Result
from byoc_orch.advertisers.byoc_register import ByocRegisterAdvertiser
from byoc_orch.advertisers.heartbeat import LiveRunnerHeartbeatAdvertiser
from byoc_orch.gpu import GpuCollector, GpuReader
from byoc_orch.metrics import Metrics
from byoc_orch.settings import Settings
from tests.test_deploy import DEPLOY, METRIC, SETTING, exportable_names, requires_tool
from tests.test_gpu import two_gpus

RULES = DEPLOY / "prometheus-rules.yml"
RULE_TESTS = DEPLOY / "prometheus-rules.test.yml"
SELECTOR = re.compile(r"\b(byoc_orch_[a-z_]+|up)\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
SCRAPE_LABELS = {"job", "instance"}


def promtool() -> str:
    path = shutil.which("promtool")
    requires_tool(path is not None, "promtool (Debian's prometheus package)")
    assert path is not None
    return path


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def exported_label_values() -> dict[str, dict[str, set[str]]]:
    """family → label → every value /metrics can carry, with an entry, a replica, both
    advertisers' calls and two GPUs in place (the series byoc-orch creates up front)."""
    metrics = Metrics()
    metrics.add_worker("live-video-to-video", "comfyui", 1)
    for advertiser in (ByocRegisterAdvertiser, LiveRunnerHeartbeatAdvertiser):
        for call in advertiser.calls:
            for result in Result:
                metrics.advertiser_calls.labels(advertiser.name, call, str(result))
    metrics.register(GpuCollector(GpuReader(two_gpus())))
    values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for family in metrics.registry.collect():
        for sample in family.samples:
            for label, value in sample.labels.items():
                values[sample.name][label].add(value)
    return values


def unquoted(expr: str) -> str:
    """The expression without its string literals (label values such as byoc_orch_only)."""
    return re.sub(r'"[^"]*"', '""', expr)


def selectors(expr: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    return [(name, MATCHER.findall(body)) for name, body in SELECTOR.findall(expr)]


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DEPLOY,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_would_catch_a_changed_threshold(tmp_path: Path) -> None:
    """The tests pin behaviour: a GPU alert moved from 85 to 79 °C fails them."""
    text = RULES.read_text()
    assert text.count("byoc_orch_gpu_temperature_celsius > 85") == 1
    (tmp_path / RULES.name).write_text(text.replace("celsius > 85", "celsius > 79"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "ByocOrchGpuHot" in done.stdout + done.stderr


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert "for" in rule, f"{rule['alert']}: say how long, even 0m"
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(annotations), rule["alert"]
        assert len(annotations["runbook"]) > 40, rule["alert"]


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case["exp_alerts"] else silent).add(case["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - firing == set(), "alerts no test sees firing"
    assert names - silent == set(), "alerts no test sees staying silent"


def test_every_metric_the_rules_use_is_exported() -> None:
    known = exportable_names()
    used = {name for rule in rules() for name in METRIC.findall(unquoted(rule["expr"]))}
    assert {
        "byoc_orch_worker_state",
        "byoc_orch_container_restarts_total",
        "byoc_orch_config_reloads_total",
        "byoc_orch_docker_engine_up",
        "byoc_orch_advertiser_calls_total",
        "byoc_orch_session_starts_refused_total",
        "byoc_orch_live_runner_sessions",
        "byoc_orch_gpu_temperature_celsius",
    } <= used
    assert used - known == set()


def test_every_label_value_the_rules_select_is_exported() -> None:
    exported = exported_label_values()
    checked = 0
    for rule in rules():
        for name, matchers in selectors(rule["expr"]):
            if name == "up":
                continue
            for label, op, value in matchers:
                if label in SCRAPE_LABELS:
                    continue
                assert label in exported[name], f"{rule['alert']}: {name} has no label {label}"
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                missing = set(wanted) - exported[name][label]
                assert missing == set(), f"{rule['alert']}: {name}{{{label}}} has no {missing}"
                checked += 1
    assert checked >= 12


def test_the_label_check_would_catch_a_renamed_state() -> None:
    exported = exported_label_values()
    assert "backoff" in exported["byoc_orch_worker_state"]["state"]
    assert "crashloop" not in exported["byoc_orch_worker_state"]["state"]
    assert selectors('x{a="b"} + byoc_orch_worker_state{state=~"warm|cold", job="j"}') == [
        ("byoc_orch_worker_state", [("state", "=~", "warm|cold"), ("job", "=", "j")])
    ]


def test_up_rules_name_the_shipped_scrape_job() -> None:
    (job,) = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    jobs = {
        value
        for rule in rules()
        for name, matchers in selectors(rule["expr"])
        if name == "up"
        for label, _op, value in matchers
        if label == "job"
    }
    assert jobs == {job["job_name"]}


def test_every_setting_a_runbook_names_exists() -> None:
    known = {f"BYOC_ORCH_{name.upper()}" for name in Settings.model_fields}
    named = set(SETTING.findall(RULES.read_text()))
    assert named, "the runbooks name no setting at all"
    assert named - known == set()
