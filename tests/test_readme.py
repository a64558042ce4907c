"""README.md stays true where it can be checked against the code: the module map names every
module once, the metrics table every metric, every setting is documented and is the flag the
README says, the hang-detection figure follows the settings, and the performance table reports
against DESIGN §5's targets (tests/bench/targets.py), never looser ones."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from byoc_orch.cli import build_parser
from byoc_orch.gpu import GpuCollector, GpuReader
from byoc_orch.metrics import Metrics
from byoc_orch.settings import SECRET_SETTINGS, Settings
from tests.bench import targets
from tests.test_gpu import two_gpus

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|--") and not line.startswith("|-"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def module_map() -> list[str]:
    """Every module path the Development section's map names, siblings spelled out."""
    listed = []
    for row in table_rows(section("Development")):
        base = None
        for name in re.findall(r"`([^`]+)`", row[0]):
            if "/" in name:
                base = name.rsplit("/", 1)[0]
                listed.append(name)
            elif base is not None:
                listed.append(f"{base}/{name}")
    return [name for name in listed if name.startswith("byoc_orch/")]


def test_the_module_map_names_every_module_exactly_once() -> None:
    listed = Counter(module_map())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "byoc_orch").rglob("*.py")}
    assert [name for name, count in listed.items() if count > 1] == []
    assert sorted(modules - set(listed)) == [], "modules the README's map leaves out"
    assert sorted(set(listed) - modules) == [], "the map names modules that do not exist"


def metric_families() -> set[str]:
    """Every byoc_orch_* family as the README names it: counters with `_total`, the info with
    `_info`, GPU gauges included."""
    metrics = Metrics()
    metrics.add_worker("live-video-to-video", "comfyui", 1)
    metrics.register(GpuCollector(GpuReader(two_gpus())))
    suffix = {"counter": "_total", "info": "_info"}
    return {
        family.name + suffix.get(family.type, "")
        for family in metrics.registry.collect()
        if family.name.startswith("byoc_orch_")
    }


def test_the_metrics_table_lists_every_metric() -> None:
    rows = table_rows(section("Metrics"))
    documented = {m for row in rows for m in re.findall(r"`(byoc_orch_[a-z_]+)`", row[0])}
    families = metric_families()
    assert {"byoc_orch_docker_engine_up", "byoc_orch_requests_refused_total"} <= families
    assert sorted(families - documented) == [], "metrics the README's table leaves out"
    assert sorted(documented - families) == [], "the table names metrics that do not exist"


def run_flags() -> dict[str, list[str]]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    run = commands.choices["run"]
    return {action.dest: list(action.option_strings) for action in run._actions}


def test_every_setting_is_documented_and_is_the_flag_the_readme_describes() -> None:
    rows = table_rows(README)
    documented = {v for row in rows for v in re.findall(r"`(BYOC_ORCH_[A-Z_]+)`", row[0])}
    flags = run_flags()
    for name, field in Settings.model_fields.items():
        assert f"BYOC_ORCH_{name.upper()}" in documented, name
        if name in SECRET_SETTINGS:
            continue  # the README tells to keep these off the command line
        option = "--" + name.replace("_", "-")
        assert option in flags.get(name, []), f"{name}: `byoc-orch run` has no {option}"
        if field.annotation is bool:
            assert "--no-" + name.replace("_", "-") in flags[name], name
    assert "--models" in flags["models_path"]


def test_the_hang_figure_follows_the_probe_settings() -> None:
    fields = Settings.model_fields
    seconds = (fields["probe_interval"].default + fields["probe_timeout"].default) * fields[
        "failure_threshold"
    ].default
    text = " ".join(section("How workers are supervised").split())
    assert f"a hang within ~{seconds:g} s" in text
    assert "(`PROBE_INTERVAL` + `PROBE_TIMEOUT`) × `FAILURE_THRESHOLD`" in text


def test_the_performance_table_reports_against_design_targets() -> None:
    texts = {t.text for t in vars(targets).values() if isinstance(t, targets.Target)}
    rows = [row for row in table_rows(section("Performance")) if len(row) == 6]
    assert rows[0] == ["measure", "trials", "p50", "p99", "target", "met?"]
    judged = 0
    for row in rows[1:]:
        if row == rows[0]:
            continue  # the header of the next table (one per run)
        target = re.sub(r" \(mean [^)]*\)$", "", row[4])
        if target == "(reference)":
            continue
        assert target in texts, f"{row[0]}: {row[4]!r} is not one of DESIGN §5's targets"
        assert row[5] in ("yes", "**NO**"), row
        judged += 1
    assert judged >= 10
