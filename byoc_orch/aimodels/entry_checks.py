"""One aiModels.json entry as the file holds it, checked whole: keys written twice, characters
nothing can carry, unknown keys and case variants of known ones, then field errors and the
cross-field rules together (pydantic stops at the first invalid field), and the warnings of a
valid entry. Loading never stops at the first mistake: an operator fixing a file one error per
restart is the failure this exists to prevent."""

from __future__ import annotations

import difflib
import json
from functools import partial
from typing import Any

from pydantic import ValidationError

from byoc_orch.aimodels.entry import ModelEntry
from byoc_orch.aimodels.fields import bad_characters
from byoc_orch.aimodels.json_text import repeated_keys
from byoc_orch.aimodels.limits import CONTAINER_ONLY_FIELDS, GO_LIVEPEER_FIELDS
from byoc_orch.aimodels.problems import Issue, Loc, Problem
from byoc_orch.aimodels.wording import describe, issues_from_error, render_loc


def check_entry(
    index: int, raw: object, context: dict[str, Any] | None = None
) -> tuple[ModelEntry | None, list[Problem], list[Problem]]:
    """Entry ``index`` of the file: the entry when it is valid, its problems and its warnings."""
    if not isinstance(raw, dict):
        problem = Problem(
            index,
            None,
            None,
            f"expected an object, got {describe(raw)}",
            'each entry is an object: {"pipeline": "...", "model_id": "...", ...}',
        )
        return None, [problem], []
    model_id = raw.get("model_id")
    shown_id = (
        model_id
        if isinstance(model_id, str) and model_id.strip() and model_id.isprintable()
        else None
    )
    at = partial(Problem, index, shown_id)
    problems = [at(render_loc(loc), *_repeated_key_text(loc)) for loc in repeated_keys(raw)]
    unusable = list(bad_characters(raw))
    problems += [at(render_loc(issue.loc), issue.message, issue.fix) for issue in unusable]
    tainted = {str(issue.loc[0]) for issue in unusable if issue.loc}
    key_problems, warnings = _unknown_keys({k: v for k, v in raw.items() if k not in tainted}, at)
    problems += key_problems
    if tainted:
        _, issues = _validate(_without(raw, tainted), context)
        issues = [issue for issue in issues if not issue.loc or issue.loc[0] not in tainted]
        entry = None
    else:
        entry, issues = _validate(raw, context)
    problems += [at(render_loc(issue.loc), issue.message, issue.fix) for issue in issues]
    if entry is not None and not entry.managed:
        warnings += [
            at(
                name,
                "ignored: this entry has no container, so byoc-orch runs nothing for it",
                'remove it, or add "container" for byoc-orch to run the worker',
            )
            for name in ModelEntry.model_fields
            if name in CONTAINER_ONLY_FIELDS and name in entry.model_fields_set
        ]
    if entry is not None and entry.managed:
        warnings += [at(render_loc(i.loc), i.message, i.fix) for i in _replica_warnings(entry)]
    return entry, problems, warnings


def _replica_warnings(entry: ModelEntry) -> list[Issue]:
    """Replica fields where they change nothing: the operator expected sharing or scaling
    that won't be."""
    return _range_warnings(entry) + _per_gpu_warnings(entry)


def _range_warnings(entry: ModelEntry) -> list[Issue]:
    replica_range = entry.replica_range
    if replica_range is None:
        return [
            Issue(
                (name,),
                "has no effect: replicas is not a range, so nothing scales",
                'set "replicas": {"min": 1, "max": 4} for replicas that follow demand, or '
                f"remove {name}",
            )
            for name in ("headroom", "scale_down_after", "vram_mb")
            if name in entry.model_fields_set
        ]
    most = replica_range.max * entry.capacity
    if entry.headroom > most:
        return [
            Issue(
                ("headroom",),
                f"{entry.headroom} free slots can never be kept: max {replica_range.max} "
                f"replicas × capacity {entry.capacity} is {most}, so the entry always grows to max",
                f"lower headroom to at most {most}, or raise max or capacity",
            )
        ]
    return []


def _per_gpu_warnings(entry: ModelEntry) -> list[Issue]:
    if entry.replicas_per_gpu == 1 or entry.ranged:
        return []
    if not entry.replicated:
        return [
            Issue(
                ("replicas_per_gpu",),
                "has no effect: replicas is 1, so there is one container",
                'set "replicas" (a count or "per-gpu"), or remove replicas_per_gpu',
            )
        ]
    if not isinstance(entry.gpus, int):
        return [
            Issue(
                ("replicas_per_gpu",),
                f'has no effect with gpus "{entry.gpus}": no GPU is placed, so none is shared',
                "give each replica a GPU count, or remove replicas_per_gpu",
            )
        ]
    return []


def _repeated_key_text(loc: Loc) -> tuple[str, str]:
    return (
        f"key {json.dumps(loc[-1])} appears more than once; go-livepeer silently keeps the last",
        "keep only one of them",
    )


def _unknown_keys(raw: dict[str, Any], at: partial[Problem]) -> tuple[list[Problem], list[Problem]]:
    """Unknown keys only warn (go-livepeer may add fields), but case variants are errors:
    Go matches keys ignoring case, so "Warm" would be warm to go-livepeer and nothing to us."""
    known = list(ModelEntry.model_fields)
    by_lower = {name.lower(): name for name in known}
    problems: list[Problem] = []
    warnings: list[Problem] = []
    unknown = 0
    for key in raw:
        if key in ModelEntry.model_fields:
            continue
        exact = by_lower.get(key.lower())
        if exact is not None:
            reader = "go-livepeer reads it as" if exact in GO_LIVEPEER_FIELDS else "it looks like"
            problems.append(
                at(
                    render_loc((key,)),
                    f"field names are case-sensitive here ({reader} {json.dumps(exact)})",
                    f"rename it to {json.dumps(exact)}",
                )
            )
            continue
        unknown += 1
        if unknown > _MAX_UNKNOWN_KEY_WARNINGS:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75) if len(key) <= 64 else []
        fix = f"did you mean {json.dumps(close[0])}?" if close else "remove it if it is a typo"
        warnings.append(at(render_loc((key,)), "unknown field, ignored", fix))
    if unknown > _MAX_UNKNOWN_KEY_WARNINGS:
        warnings.append(
            at(
                None,
                f"{unknown - _MAX_UNKNOWN_KEY_WARNINGS} more unknown fields, ignored",
                "remove the fields byoc-orch and go-livepeer do not read",
            )
        )
    return problems, warnings


_MAX_UNKNOWN_KEY_WARNINGS = 20


_STAND_INS = {
    "pipeline": "-",
    "model_id": "-",
    "container": "stand-in",
    "url": "http://127.0.0.1:1",
}


def _without(raw: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """``raw`` less ``fields``, with a stand-in for each a rule needs present (a bad image still
    makes the entry managed)."""
    rest = {key: value for key, value in raw.items() if key not in fields}
    return rest | {key: _STAND_INS[key] for key in fields & _STAND_INS.keys()}


def _validate(
    raw: dict[str, Any], context: dict[str, Any] | None = None
) -> tuple[ModelEntry | None, list[Issue]]:
    """Validate one entry, reporting field errors and cross-field rules together.

    Pydantic skips the cross-field rules when a field is invalid, so the rules are run again
    without the invalid fields, or with a stand-in where the rules need one to be present (a
    bad image still makes the entry managed); findings about those fields are left out.
    """
    try:
        return ModelEntry.model_validate(raw, context=context), []
    except ValidationError as exc:
        errors = exc.errors()
    issues = [issue for error in errors for issue in issues_from_error(error)]
    if any(error["type"] == "entry_rules" for error in errors):
        return None, issues
    bad_fields = {str(issue.loc[0]) for issue in issues if issue.loc}
    try:
        ModelEntry.model_validate(_without(raw, bad_fields), context=context)
    except ValidationError as exc:
        issues += [
            issue
            for error in exc.errors()
            if error["type"] == "entry_rules"
            for issue in issues_from_error(error)
            if issue.loc[0] not in bad_fields
        ]
    return None, issues
