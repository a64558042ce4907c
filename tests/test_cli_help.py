"""The command's surface, without a daemon: help that fits each command, secrets refused as
flags (their value never echoed), `--version`, `version` from an installed wheel without git,
and the completion scripts run in bash, zsh and fish themselves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from byoc_orch import __version__, build_info
from byoc_orch.cli import EXIT_INVALID, EXIT_OK, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-V4lue-9x"


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_each_command_has_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    logs = help_of(["logs"], capsys)
    assert len(logs.splitlines()) < 25
    assert "--tail" in logs and "--follow" in logs
    assert "--proxy-timeout" not in logs and "--probe-interval" not in logs
    run = help_of(["run"], capsys)
    assert "--proxy-timeout" in run and "BYOC_ORCH_PROXY_TIMEOUT" in run
    assert "--proxy-timeout" in help_of(["config"], capsys)
    for command in ("status", "reload", "restart", "drain", "validate", "export", "version"):
        text = help_of([command], capsys)
        assert "--proxy-timeout" not in text, command
    status = help_of(["status"], capsys)
    assert "--watch" in status and "starting or drained" in status
    assert "--wait" in help_of(["restart"], capsys)
    drain = help_of(["drain"], capsys)
    assert "--wait" in drain and "--timeout" in drain and "(exit 3)" in drain


def test_no_help_offers_a_flag_for_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    texts = [help_of([], capsys)]
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            texts += [help_of([name], capsys) for name in action.choices]
    for text in texts:
        assert "--api-token" not in text and "--orch-secret" not in text


@pytest.mark.parametrize(
    ("argv", "variable"),
    [
        (["run", "--api-token", SECRET], "BYOC_ORCH_API_TOKEN"),
        (["run", f"--orch-secret={SECRET}"], "BYOC_ORCH_ORCH_SECRET"),
        (["status", "--api-token", SECRET], "BYOC_ORCH_API_TOKEN"),
        (["reload", "--dry-run", f"--api-token={SECRET}"], "BYOC_ORCH_API_TOKEN"),
        (["--orch-secret", SECRET, "status"], "BYOC_ORCH_ORCH_SECRET"),
    ],
)
def test_a_secret_flag_is_refused_with_the_variable_and_never_echoed(
    argv: list[str], variable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == EXIT_INVALID
    captured = capsys.readouterr()
    assert variable in captured.err and "env file" in captured.err
    assert SECRET not in captured.out + captured.err


def test_top_level_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == EXIT_OK
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"byoc-orch {__version__} (commit ")
    head = build_info.git_head(ROOT)
    assert head is not None and head[:12] in out


def test_git_head_is_read_from_files(tmp_path: Path) -> None:
    sha = "ab" * 20
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs\n{sha} refs/heads/main\n")
    assert build_info.git_head(tmp_path) == sha
    (git / "refs" / "heads" / "main").write_text("cd" * 20 + "\n")
    assert build_info.git_head(tmp_path) == "cd" * 20
    (git / "HEAD").write_text("ef" * 20)
    assert build_info.git_head(tmp_path) == "ef" * 20
    assert build_info.git_head(tmp_path / "nowhere") is None


def test_an_installed_wheel_names_its_commit_without_git(tmp_path: Path) -> None:
    """The wheel setup.py builds carries the commit; installed and run where no git is on
    PATH and no checkout is near, `version` still says it."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("byoc_orch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        baked = archive.read("byoc_orch/_commit.txt").decode().strip()
        archive.extractall(tmp_path / "site")
    head = build_info.git_head(ROOT)
    assert head is not None and baked.startswith(head)
    bare = tmp_path / "bin"
    bare.mkdir()
    assert shutil.which("git", path=str(bare)) is None
    result = subprocess.run(
        [sys.executable, "-c", "from byoc_orch.cli import main; raise SystemExit(main())",
         "--version"],
        cwd=tmp_path,
        env={"PATH": str(bare), "PYTHONPATH": f"{tmp_path / 'site'}:{_site_packages()}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"byoc-orch {__version__} (commit {head[:12]}" + (
        "-dirty)" if baked.endswith("-dirty") else ")"
    )


def _site_packages() -> str:
    import docker

    return str(Path(docker.__file__).resolve().parent.parent)


def _completion(shell: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "byoc_orch", "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def _bash_complete(script: Path, words: list[str]) -> list[str]:
    program = (
        f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
        'COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _byoc_orch; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout.split()


def test_bash_completion_from_the_parser(tmp_path: Path) -> None:
    script = tmp_path / "byoc-orch.bash"
    script.write_text(_completion("bash"))
    assert _bash_complete(script, ["byoc-orch", "lo"]) == ["logs"]
    assert set(_bash_complete(script, ["byoc-orch", ""])) >= {"run", "status", "completion"}
    assert _bash_complete(script, ["byoc-orch", "logs", "--t"]) == ["--tail"]
    assert _bash_complete(script, ["byoc-orch", "run", "--log-format", ""]) == [
        "auto",
        "json",
        "console",
    ]
    status = _bash_complete(script, ["byoc-orch", "status", "--"])
    assert "--watch" in status and "--proxy-timeout" not in status
    assert "--api-token" not in _bash_complete(script, ["byoc-orch", "run", "--"])
    assert _bash_complete(script, ["byoc-orch", "completion", "z"]) == ["zsh"]


def test_zsh_completion_loads_and_registers(tmp_path: Path) -> None:
    script = tmp_path / "_byoc-orch"
    script.write_text(_completion("zsh"))
    subprocess.run(["zsh", "-n", str(script)], check=True, timeout=30)
    program = (
        f"autoload -U compinit; compinit -u -d {tmp_path}/zcompdump; source {script}; "
        "print -r -- $_comps[byoc-orch]; whence -w _byoc_orch"
    )
    result = subprocess.run(
        ["zsh", "-f", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.stdout.split() == ["_byoc_orch", "_byoc_orch:", "function"]
    assert "'--tail[lines of the log (default 100)]'" in script.read_text()


def test_fish_completion_completes(tmp_path: Path) -> None:
    script = tmp_path / "byoc-orch.fish"
    script.write_text(_completion("fish"))

    def complete(line: str) -> list[str]:
        result = subprocess.run(
            ["fish", "--no-config", "-c", f"source {script}; complete -C {line!r}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={**os.environ, "HOME": str(tmp_path)},
        )
        return [row.split("\t")[0] for row in result.stdout.splitlines()]

    assert complete("byoc-orch lo") == ["logs"]
    assert complete("byoc-orch logs --t") == ["--tail"]
    assert complete("byoc-orch export ") == ["aimodels", "live-runners"]
    assert "--proxy-timeout" not in complete("byoc-orch status --")
