"""Checks across the entries of aiModels.json, before placement: each pipeline+model_id once, and
each url port on loopback once (`ports`)."""

from __future__ import annotations

from collections.abc import Mapping

from byoc_orch.aimodels.entry import ModelEntry, loopback_port
from byoc_orch.aimodels.ports import Listener, url_port_conflicts
from byoc_orch.aimodels.problems import Problem


def duplicate_capabilities(valid: list[tuple[int, ModelEntry]]) -> list[Problem]:
    first: dict[str, int] = {}
    problems: list[Problem] = []
    for index, entry in valid:
        earlier = first.setdefault(entry.capability, index)
        if earlier != index:
            problems.append(
                Problem(
                    index,
                    entry.model_id,
                    "model_id",
                    f"{entry.capability} is already defined by entry {earlier}; each "
                    "pipeline+model_id may appear once",
                    f"rename model_id in entry {earlier} or {index}, or delete one of them",
                )
            )
    return problems


def port_conflicts(
    valid: list[tuple[int, ModelEntry]], reserved: Mapping[int, str]
) -> tuple[list[Problem], list[Problem]]:
    """Host ports on loopback must be unique wherever a managed container would bind one."""
    listeners = [
        Listener(index, entry.model_id, entry.managed, port)
        for index, entry in valid
        if (port := loopback_port(entry)) is not None
    ]
    return url_port_conflicts(listeners, reserved)
