"""Which commit this byoc-orch was built from, for `byoc-orch version` and /readyz.

An installed package has no git: setup.py bakes the commit into `_commit.txt` when the wheel is
built. A source checkout (or an editable install) has no baked file, so its `.git` is read as
files (HEAD, the ref it names, packed-refs; a worktree's `commondir`) — no git program is run.
Last, pip's PEP 610 record of a VCS install. None when nothing says.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
BAKED = "_commit.txt"


@functools.cache
def commit() -> str | None:
    return baked(PACKAGE) or git_head(PACKAGE.parent) or _installed_from_vcs()


def baked(package: Path) -> str | None:
    try:
        text = (package / BAKED).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def git_head(root: Path) -> str | None:
    """HEAD's commit of the checkout at `root`, read from its files."""
    dot_git = root / ".git"
    try:
        if dot_git.is_file():
            pointer = dot_git.read_text(encoding="utf-8").strip()
            if not pointer.startswith("gitdir:"):
                return None
            git_dir = (root / pointer.removeprefix("gitdir:").strip()).resolve()
        elif dot_git.is_dir():
            git_dir = dot_git
        else:
            return None
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return _sha(head)
        ref = head.removeprefix("ref:").strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text(encoding="utf-8").strip())
        for base in (git_dir, common):
            if (base / ref).is_file():
                return _sha((base / ref).read_text(encoding="utf-8").strip())
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                sha, _, name = line.partition(" ")
                if name.strip() == ref:
                    return _sha(sha)
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _sha(text: str) -> str | None:
    text = text.strip().lower()
    return text if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text) else None


def _installed_from_vcs() -> str | None:
    from importlib import metadata

    try:
        record = metadata.distribution("byoc-orch").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not record:
        return None
    try:
        vcs = json.loads(record).get("vcs_info") or {}
    except (ValueError, AttributeError):
        return None
    found = vcs.get("commit_id") if isinstance(vcs, dict) else None
    return str(found) if found else None


def described() -> str:
    """E.g. "byoc-orch 0.1.0 (commit 4311bfe0a1b2)"."""
    from byoc_orch import __version__

    found = commit()
    shown = found[:12] + ("-dirty" if found.endswith("-dirty") else "") if found else "unknown"
    return f"byoc-orch {__version__} (commit {shown})"
