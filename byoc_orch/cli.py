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
from byoc_orch.exit_codes import EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE
from byoc_orch.settings import (
    DEFAULT_ENV_FILE,
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
    variable's name in the error)."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("settings (override BYOC_ORCH_* and the env file)")
    group.add_argument(
        "--env-file",
        type=Path,
        help=f"env file of BYOC_ORCH_* settings (default: $BYOC_ORCH_ENV_FILE, else "
        f"{DEFAULT_ENV_FILE} when it exists)",
    )
    for name, field in Settings.model_fields.items():
        option = "--" + name.replace("_", "-")
        aliases = ["--models"] if name == "models_path" else []
        text = f"{field.description or ''} [BYOC_ORCH_{name.upper()}]".strip()
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        if field.annotation is bool:
            group.add_argument(
                option, *aliases, dest=name, action=argparse.BooleanOptionalAction, help=text
            )
        else:
            group.add_argument(
                option,
                *aliases,
                dest=name,
                choices=choices,
                metavar=None if choices else name.upper(),
                help=text,
            )
    return flags


def build_parser() -> argparse.ArgumentParser:
    flags = _settings_flags()
    parser = argparse.ArgumentParser(
        prog="byoc-orch",
        description="Run Livepeer BYOC worker containers from aiModels.json; advertise warm ones.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", parents=[flags], help="run the daemon")
    validate = commands.add_parser(
        "validate", parents=[flags], help="check an aiModels.json and summarise its entries"
    )
    validate.add_argument("path", nargs="?", type=Path, help="file to check (default: --models)")
    status = commands.add_parser(
        "status",
        parents=[flags],
        help="the running daemon's entries and replicas (exit 3 if one that should be warm is not)",
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    logs = commands.add_parser(
        "logs",
        parents=[flags],
        help="a worker's container log and its last failed container's final lines",
    )
    logs.add_argument("name", help="worker id, entry id or model_id")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=100, help="lines of the log (default 100)")
    reload = commands.add_parser(
        "reload",
        parents=[flags],
        help="reload aiModels.json in the running daemon and print what changed (or every "
        "problem; exit 1 if rejected)",
    )
    reload.add_argument("--dry-run", action="store_true", help="only print what would change")
    for action, text in (
        ("restart", "start a worker (or all replicas of an entry / model_id) afresh"),
        ("drain", "stop sending new sessions and requests to a worker; running ones go on"),
        ("undrain", "let a drained worker take sessions again"),
    ):
        command = commands.add_parser(action, parents=[flags], help=text)
        command.add_argument("name", help="worker id, entry id or model_id")
    withdraw = commands.add_parser(
        "withdraw",
        parents=[flags],
        help="take this host out of service without cutting a session (kept across restarts)",
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
    config = commands.add_parser("config", parents=[flags], help="settings")
    config.add_argument(
        "what", choices=["show"], help="show: the effective settings, secrets masked"
    )
    export = commands.add_parser(
        "export",
        parents=[flags],
        help="print a file for go-livepeer: live-runners (-liveRunnerConfig) or aimodels",
        description="live-runners: go-livepeer's -liveRunnerConfig document for every entry of "
        "aiModels.json, each gated by byoc-orch's readiness URL (no daemon needed). aimodels: "
        "the running daemon's warm entries as an aiModels.json pointing at byoc-orch.",
    )
    export.add_argument("what", choices=["live-runners", "aimodels"], help="what to print")
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
    commands.add_parser("version", help="print versions")
    commands.add_parser("schema", help="print the aiModels.json JSON Schema")
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
    args = build_parser().parse_args(argv)
    if args.command == "version":
        return _version()
    if args.command == "schema":
        from byoc_orch.schema import render

        sys.stdout.write(render())
        return EXIT_OK
    try:
        settings = load_settings(args.env_file, **_overrides(args))
    except SettingsError as exc:
        print(f"byoc-orch: {exc}", file=sys.stderr)
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


def _version() -> int:
    import docker

    print(f"byoc-orch {__version__}")
    print(f"python {platform.python_version()}, docker-py {docker.__version__}")
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
