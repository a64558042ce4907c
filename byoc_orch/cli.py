"""The `byoc-orch` command: run, validate, status, logs, reload, restart, drain, undrain,
config, export, version, schema.

Thin on purpose: it parses flags into Settings and hands over to the module that does the work.
Every setting is a flag, made from the Settings model itself (`--proxy-timeout` for
BYOC_ORCH_PROXY_TIMEOUT…); flags override BYOC_ORCH_* variables, which override the env file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from byoc_orch import __version__
from byoc_orch.completion import SHELLS
from byoc_orch.exit_codes import EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE
from byoc_orch.settings import (
    DEFAULT_ENV_FILE,
    SECRET_SETTINGS,
    Settings,
    SettingsError,
    load_settings,
    reserved_ports,
)

if TYPE_CHECKING:
    from byoc_orch.aimodels import ModelsFile
    from byoc_orch.aimodels.host import ModelsLoader
    from byoc_orch.gpu import GpuInfo

__all__ = ["EXIT_INVALID", "EXIT_OK", "EXIT_UNAVAILABLE", "build_parser", "main"]


def _settings_flags() -> argparse.ArgumentParser:
    """One flag per setting, from the Settings model (values are checked by it, with the
    variable's name in the error); only `run` and `config show` take them. Secrets have none."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("settings (override BYOC_ORCH_* and the env file)")
    for name, field in Settings.model_fields.items():
        if name in SECRET_SETTINGS:
            continue
        option = "--" + name.replace("_", "-")
        aliases = ["--models"] if name == "models_path" else []
        text = f"{field.description or ''} [BYOC_ORCH_{name.upper()}]".strip()
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        if field.annotation is bool:
            group.add_argument(
                option, *aliases, dest=name, action=argparse.BooleanOptionalAction, help=text
            )
        else:
            typed: dict[str, Any] = {"type": Path} if name == "models_path" else {}
            group.add_argument(
                option,
                *aliases,
                dest=name,
                choices=choices,
                metavar=None if choices else name.upper(),
                help=text.replace("%", "%%"),
                **typed,
            )
    return flags


def _env_file_flag() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--env-file",
        type=Path,
        help=f"env file of BYOC_ORCH_* settings (default: $BYOC_ORCH_ENV_FILE, else "
        f"{DEFAULT_ENV_FILE} when it exists); the daemon is found at its HOST and PORT",
    )
    return flags


class _RefusedSecret(argparse.Action):
    """A flag for a secret: refused, its value never shown, the variable named instead (a
    secret on the command line is readable in `ps` and kept in the shell's history)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        variable = "BYOC_ORCH_" + self.dest.upper()
        print(
            f"byoc-orch: {option_string} is not taken on the command line, where `ps` and the "
            f"shell history would show it; set {variable} in the environment or in the env "
            f"file (--env-file, default {DEFAULT_ENV_FILE}), e.g. {variable}=… in that file "
            "with mode 0600",
            file=sys.stderr,
        )
        parser.exit(EXIT_INVALID)


def _refuse_secret_flags(parser: argparse.ArgumentParser) -> None:
    for name in sorted(SECRET_SETTINGS):
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            nargs="?",
            action=_RefusedSecret,
            help=argparse.SUPPRESS,
        )


class _Version(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        from byoc_orch.build_info import described

        print(described())
        parser.exit(EXIT_OK)


def build_parser() -> argparse.ArgumentParser:
    settings_flags, env_file = _settings_flags(), _env_file_flag()
    parser = argparse.ArgumentParser(
        prog="byoc-orch",
        description="Run Livepeer BYOC worker containers from aiModels.json; advertise warm ones.",
        epilog="Settings come from BYOC_ORCH_* variables and the env file; `byoc-orch run "
        "--help` lists them. Secrets (BYOC_ORCH_API_TOKEN, BYOC_ORCH_ORCH_SECRET, registry "
        "credentials in the Docker config.json) are never flags.",
    )
    parser.add_argument("--version", action=_Version)
    _refuse_secret_flags(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, text: str, *, settings: bool = False, reads_env: bool = True, **more: Any
    ) -> argparse.ArgumentParser:
        parents = [settings_flags] if settings else []
        if reads_env:
            parents.insert(0, env_file)
        sub = commands.add_parser(name, parents=parents, help=text, description=more.pop(
            "description", text[:1].upper() + text[1:] + "."), **more)
        _refuse_secret_flags(sub)
        return sub

    command("run", "run the daemon", settings=True)
    validate = command("validate", "check an aiModels.json and summarise its entries")
    validate.add_argument(
        "path", nargs="?", type=Path, help="file to check (default: BYOC_ORCH_MODELS_PATH)"
    )
    status = command(
        "status",
        "the running daemon's entries and replicas",
        description="The running daemon's entries and replicas. Exit 0 when every entry is "
        "warm, cold, starting or drained; 3 when one is DOWN or DEGRADED (a failure) or the "
        "daemon is not ready; 2 when the daemon cannot be reached.",
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument(
        "--watch",
        action="store_true",
        help="keep watching: redraw on a terminal, or print a new block only when something "
        "changed (to a pipe or file)",
    )
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between looks with --watch"
    )
    logs = command("logs", "a worker's container log and its last failed container's final lines")
    logs.add_argument("name", help="worker id, entry id or model_id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=100, help="lines of the log (default 100)")
    reload = command(
        "reload",
        "reload aiModels.json in the running daemon and print what changed",
        description="Reload aiModels.json in the running daemon and print what changed, field "
        "by field (or every problem, exit 1, nothing changed).",
    )
    reload.add_argument("--dry-run", action="store_true", help="only print what would change")
    restart = command("restart", "start a worker (or all replicas of an entry / model_id) afresh")
    restart.add_argument("name", help="worker id, entry id or model_id")
    restart.add_argument(
        "--wait", action="store_true", help="return once every replica is warm again"
    )
    restart.add_argument(
        "--timeout",
        type=float,
        help="seconds --wait waits (default: BYOC_ORCH_STARTUP_TIMEOUT); then exit 3",
    )
    drain = command(
        "drain",
        "stop sending new sessions and requests to a worker; running ones go on",
        description="Stop sending new sessions and requests to a worker (or every replica of "
        "an entry / model_id) and stop advertising it; running ones go on. `status` shows it "
        "`drained` and does not count it as a failure.",
    )
    drain.add_argument("name", help="worker id, entry id or model_id")
    drain.add_argument(
        "--wait",
        action="store_true",
        help="return once its sessions and requests have ended (exit 0) or --timeout passed "
        "(exit 3)",
    )
    drain.add_argument(
        "--timeout",
        type=float,
        help="seconds --wait waits (default: BYOC_ORCH_DRAIN_TIMEOUT)",
    )
    undrain = command("undrain", "let a drained worker take sessions again")
    undrain.add_argument("name", help="worker id, entry id or model_id")
    withdraw = command(
        "withdraw",
        "take this host out of service without cutting a session (kept across restarts)",
        description="Every replica drains: nothing new is sent or advertised, running sessions "
        "go on (their Live Runner runners stay registered until they end).",
    )
    withdraw.add_argument("--wait", action="store_true", help="return once every session ended")
    withdraw.add_argument(
        "--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)"
    )
    withdraw.add_argument(
        "--stop", action="store_true", help="then stop the daemon (after --wait, if given)"
    )
    withdraw.add_argument("--cancel", action="store_true", help="put the host back in service")
    config = command("config", "the effective settings, secrets masked", settings=True)
    config.add_argument(
        "what", choices=["show"], help="show: the effective settings, secrets masked"
    )
    export = command(
        "export",
        "print a file for go-livepeer: live-runners (-liveRunnerConfig) or aimodels",
        description="live-runners: go-livepeer's -liveRunnerConfig document for every entry of "
        "aiModels.json, each gated by byoc-orch's readiness URL (no daemon needed). aimodels: "
        "the running daemon's warm entries as an aiModels.json pointing at byoc-orch.",
    )
    export.add_argument("what", choices=["live-runners", "aimodels"], help="what to print")
    export.add_argument(
        "--models",
        dest="models_path",
        type=Path,
        help="live-runners: the aiModels.json to read (default: BYOC_ORCH_MODELS_PATH)",
    )
    export.add_argument(
        "--format",
        choices=["go-livepeer", "livepeer-node"],
        default="go-livepeer",
        help="live-runners: go-livepeer's runners.json (default), or livepeer/node's static "
        "runner TOML (RunnerConfig), with the grants its orchestrator config needs",
    )
    export.add_argument(
        "--include-token",
        action="store_true",
        help="aimodels: put BYOC_ORCH_API_TOKEN in each entry's token (go-livepeer must send it "
        "to byoc-orch's proxy); keep the output file private",
    )
    command(
        "version",
        "print the client's version and commit, and the running daemon's beside it",
    )
    command("schema", "print the aiModels.json JSON Schema", reads_env=False)
    completion = command(
        "completion",
        "print a shell completion script",
        reads_env=False,
        description="Print a completion script generated from this command's own options: "
        "bash (`byoc-orch completion bash > /etc/bash_completion.d/byoc-orch`), zsh (save as "
        "`_byoc-orch` on $fpath) or fish (~/.config/fish/completions/byoc-orch.fish).",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`byoc-orch status | head`): stop quietly, as other tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "schema":
        from byoc_orch.schema import render

        sys.stdout.write(render())
        return EXIT_OK
    if args.command == "completion":
        from byoc_orch import completion

        sys.stdout.write(completion.render(args.shell, parser))
        return EXIT_OK
    try:
        settings = load_settings(args.env_file, **_overrides(args))
    except SettingsError as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        if args.command == "version":
            from byoc_orch.build_info import described

            print(f"client: {described()}")
        return EXIT_INVALID
    if args.command == "validate":
        from byoc_orch.validate_cmd import run_validate

        return run_validate(
            args.path or settings.models_path,
            reserved_ports=reserved_ports(settings),
            gpu_inventory=_inventory_reader(settings),
            gpu_pool_setting=settings.gpu_pool_setting,
            engine_socket=settings.docker_host,
        )
    if args.command == "version":
        return _version(settings)
    if args.command == "export":
        return _export(settings, args.what, include_token=args.include_token, form=args.format)
    if args.command in CONSOLE:
        return _console(args, settings)
    from byoc_orch.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    with asyncio.Runner(loop_factory=_fast_loop()) as runner:
        return runner.run(_run(settings))


CONSOLE = ("status", "logs", "reload", "restart", "drain", "undrain", "config", "withdraw")


def _console(args: argparse.Namespace, settings: Settings) -> int:
    from byoc_orch import console

    if args.command == "status":
        if args.watch:
            from byoc_orch.status_watch import watch

            return watch(settings, as_json=args.json, interval=args.interval)
        return console.status(settings, as_json=args.json)
    if args.command == "logs":
        return console.logs(settings, args.name, follow=args.follow, tail=args.tail)
    if args.command == "reload":
        return console.reload(settings, dry_run=args.dry_run)
    if args.command == "config":
        return console.config_show(settings)
    if args.command == "withdraw":
        from byoc_orch.withdraw_cmd import withdraw

        return withdraw(
            settings, wait=args.wait, timeout=args.timeout, stop=args.stop, cancel=args.cancel
        )
    if getattr(args, "wait", False):
        from byoc_orch import wait_cmd

        wait = wait_cmd.restart_and_wait if args.command == "restart" else wait_cmd.drain_and_wait
        return wait(settings, args.name, timeout=args.timeout)
    return console.act(settings, args.command, args.name)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in Settings.model_fields}


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (uvicorn's own fast stack; it roughly halves
    the time byoc-orch adds to a proxied call), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _version(settings: Settings) -> int:
    """The client's version and commit; the daemon's beside it when one answers (a daemon left
    running across an upgrade still runs the old code)."""
    import docker

    from byoc_orch.build_info import described
    from byoc_orch.console import DaemonClient, DaemonUnreachable

    print(f"client: {described()}")
    print(f"        python {platform.python_version()}, docker-py {docker.__version__}")
    client = DaemonClient(settings, timeout=3.0)
    try:
        ready = client.call("GET", "/readyz").json()
    except (DaemonUnreachable, ValueError):
        print(f"daemon: not reachable at {client.base}")
        return EXIT_OK
    version = ready.get("version")
    if not version:
        print(f"daemon: at {client.base}, a byoc-orch too old to say its version")
        return EXIT_OK
    commit = ready.get("commit") or "unknown"
    from byoc_orch.build_info import commit as client_commit

    mine = client_commit()
    differs = version != __version__ or (commit != "unknown" and mine and commit != mine)
    note = "  (differs from the client: restart the service?)" if differs else ""
    print(f"daemon: byoc-orch {version} (commit {commit[:12]}) at {client.base}{note}")
    return EXIT_OK


def _inventory_reader(settings: Settings) -> Callable[[], list[GpuInfo]] | None:
    """NVML's inventory reader, or None when BYOC_ORCH_GPU_METRICS=false keeps NVML out (the
    daemon then knows no inventory either, so replicas need BYOC_ORCH_GPUS)."""
    from byoc_orch.gpu import read_inventory

    return read_inventory if settings.gpu_metrics else None


def _loader(settings: Settings) -> ModelsLoader:
    """aiModels.json's loader for this host: its replicas go on BYOC_ORCH_GPUS, else what NVML
    lists, read here once (none without a driver)."""
    from byoc_orch.aimodels.host import HostGpus, ModelsLoader

    return ModelsLoader.from_settings(settings, HostGpus.read(_inventory_reader(settings)))


def _load_or_report(loader: ModelsLoader, not_done: str) -> ModelsFile | None:
    """The placed file, or None once every problem is on stderr with what was ``not_done``."""
    from byoc_orch.aimodels import ModelsFileError
    from byoc_orch.aimodels.placement import GpuPoolError
    from byoc_orch.validate_cmd import print_problems

    try:
        return loader.load()
    except GpuPoolError as exc:
        print_problems(exc, f"BYOC_ORCH_GPUS does not match this host; {not_done}")
    except ModelsFileError as exc:
        print_problems(exc, f"{loader.path} is invalid; {not_done}")
    return None


async def _run(settings: Settings) -> int:
    """Load and check aiModels.json, then run the daemon until SIGTERM/SIGINT."""
    from byoc_orch.server import serve

    loader = _loader(settings)
    models = _load_or_report(loader, "nothing was started")
    if models is None:
        return EXIT_INVALID
    for warning in models.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return await serve(settings, models, loader)


def _export(settings: Settings, what: str, *, include_token: bool, form: str) -> int:
    """Print a go-livepeer file on stdout; problems and warnings go to stderr."""
    from byoc_orch import exports
    from byoc_orch.aimodels import ModelsFileError
    from byoc_orch.validate_cmd import print_problems

    if what == "live-runners":
        models = _load_or_report(_loader(settings), "nothing exported")
        if models is None:
            return EXIT_INVALID
        document = exports.live_runners(models, settings)
        for warning in exports.live_runner_warnings(settings) + exports.unpriced(document):
            print(f"warning: {warning}", file=sys.stderr)
        if form == "livepeer-node":
            sys.stdout.write(exports.node_runners_toml(document, settings.public_base_url))
        else:
            sys.stdout.write(exports.render(document))
        return EXIT_OK
    try:
        entries = exports.fetch_warm_aimodels(settings, include_token=include_token)
        exports.check_aimodels(entries)
    except exports.DaemonUnreachableError as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ModelsFileError as exc:
        print_problems(exc, "the export would not load; nothing printed")
        return EXIT_INVALID
    if not entries:
        print("warning: no worker is warm right now; the list is empty", file=sys.stderr)
    sys.stdout.write(exports.render(entries))
    return EXIT_OK
