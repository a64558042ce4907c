"""The benchmarks judge against DESIGN §5's numbers, read from tests/bench/targets.py alone: no
bench module sets a limit of its own, each target's printed text and limit agree, a miss renders
NO, and (where DESIGN.md is at hand) each target quotes §5's words."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.bench import targets
from tests.bench.common import Figure, render_table
from tests.bench.targets import Target

BENCH = Path(__file__).resolve().parent / "bench"
JUDGING = {"limit", "judge", "strict", "at_least", "minimum", "target"}
DESIGN_PLACES = (
    Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md",
    Path("/work/shared/DESIGN.md"),
)


def all_targets() -> dict[str, Target]:
    return {name: value for name, value in vars(targets).items() if isinstance(value, Target)}


@pytest.mark.parametrize(
    "path", sorted(p for p in BENCH.glob("*.py") if p.name != "targets.py"), ids=lambda p: p.name
)
def test_no_bench_sets_a_target_of_its_own(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Figure":
            own = {k.arg for k in node.keywords if k.arg in JUDGING}
            assert own <= {"judge"}, f"{path.name}:{node.lineno}: {own} belongs in targets.py"


@pytest.mark.parametrize("name", sorted(all_targets()))
def test_the_printed_target_says_its_limit(name: str) -> None:
    target = all_targets()[name]
    numbers = [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", target.text)]
    shown = target.minimum if target.minimum is not None and target.judge == "min" else None
    assert target.limit in numbers or shown in numbers, (target.text, target.limit)
    assert target.judge in ("p50", "p99", "max", "min", "mean")
    if target.judge in ("p50", "p99", "mean"):
        assert target.judge in target.text


def test_a_miss_prints_no_and_is_false_in_the_json() -> None:
    missed = Figure("x", "crash", "ms", [120.0] * 10, **targets.CRASH_WITHDRAWN.figure())
    met = Figure("y", "crash", "ms", [60.0] * 10, **targets.CRASH_WITHDRAWN.figure())
    assert missed.met is False and met.met is True
    table = render_table([missed, met])
    assert "**NO**" in table.splitlines()[2] and "yes" in table.splitlines()[3]
    assert missed.as_json()["met"] is False
    assert missed.as_json()["design_target"] == targets.CRASH_WITHDRAWN.design
    assert missed.as_json()["limit"] == 100.0


def test_design_section_5_numbers_are_the_targets() -> None:
    """§5's numbers, as the issue that moved them here read them (the looser ones were 200 ms,
    250 ms, 1 s and 15 %)."""
    assert targets.CRASH_WITHDRAWN.limit == 100.0
    assert targets.HEALTHY_TO_LISTED.limit == 100.0
    assert targets.RESTART_ALL_WARM.limit == 0.5
    assert targets.CPU_256.limit == 5.0 and targets.CPU_256.strict
    assert targets.RSS_256.limit == 80.0
    assert (targets.CPU_1024.limit, targets.RSS_1024.limit) == (15.0, 128.0)


def test_each_target_quotes_design_section_5() -> None:
    found = next((p for p in DESIGN_PLACES if p.exists()), None)
    if found is None:
        pytest.skip("DESIGN.md (shared/) is not beside this checkout")
    text = found.read_text()
    section = text[text.index("## 5.") :]
    flat = " ".join(section.split())
    for name, target in all_targets().items():
        if target.design.startswith("(not in §5)"):
            continue
        quoted = re.sub(r"\([^)]*this suite[^)]*\)", "", target.design)
        quoted = re.sub(r"\([^)]*1 ms each\)", "", quoted)
        for part in (p.strip(" :,") for p in quoted.split("…")):
            if part:
                assert part in flat, f"{name}: {part!r} is not in DESIGN §5"
