"""What is wrong with an aiModels.json, addressed the way an operator looks for it: the entry
index (as ``jq '.[N]'`` counts), its model_id, the field, the message and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pydantic_core import PydanticCustomError


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious) in aiModels.json, addressed the way an operator looks."""

    entry_index: int | None
    model_id: str | None
    field: str | None
    message: str
    fix: str
    source: str | None = None

    def __str__(self) -> str:
        if self.entry_index is None:
            head = self.source or "aiModels.json"
        elif self.model_id:
            head = f"entry {self.entry_index} ({self.model_id})"
        else:
            head = f"entry {self.entry_index}"
        text = ": ".join(part for part in (head, self.field, self.message) if part)
        return f"{text} — {self.fix}" if self.fix else text


class ModelsFileError(ValueError):
    """aiModels.json cannot be used; ``problems`` lists every reason, ``warnings`` the rest."""

    def __init__(self, problems: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.problems = problems
        self.warnings = warnings or []
        super().__init__("\n".join(str(problem) for problem in problems))


class UnreadableModelsFileError(ModelsFileError):
    """The file could not be read at all (missing, a directory, no permission)."""


Loc = tuple[str | int, ...]


class Issue(NamedTuple):
    """A problem inside one entry, before the entry's index and model_id are attached."""

    loc: Loc
    message: str
    fix: str


def invalid(message: str, fix: str, at: Loc = ()) -> PydanticCustomError:
    """A validation error that carries its fix, so the loader can report both; ``at`` is where
    inside the field's value the problem is (a list position, a key)."""
    return PydanticCustomError("byoc_orch", "{message}", {"message": message, "fix": fix, "at": at})


def problem_order(problem: Problem) -> int:
    """File order: problems of the whole file first, then by entry (a stable sort keeps the
    order within an entry)."""
    return -1 if problem.entry_index is None else problem.entry_index
