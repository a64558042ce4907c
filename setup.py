"""Bakes the git commit into the built package (byoc_orch/_commit.txt), so that `byoc-orch
version` names it from an installed copy, where there is no git. Everything else about the
package is in pyproject.toml."""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def source_commit() -> str | None:
    """HEAD, with "-dirty" when tracked files differ from it; None outside a git checkout."""
    try:
        head = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


class BuildWithCommit(build_py):  # type: ignore[misc]
    def run(self) -> None:
        super().run()
        found = source_commit()
        if found and not self.dry_run:
            target = Path(self.build_lib, "byoc_orch", "_commit.txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(found + "\n", encoding="utf-8")


setup(cmdclass={"build_py": BuildWithCommit})
