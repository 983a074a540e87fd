"""The `exportgate` command; each group of subcommands lives in its own module."""

import argparse
import logging
import os
import sys
from importlib import metadata
from pathlib import Path

from gateway.adapters import logs
from gateway.cli import explain as explain_commands
from gateway.cli import ledger as ledger_commands
from gateway.cli import nginx_config
from gateway.cli import quota as quota_commands
from gateway.cli import report as report_commands
from gateway.cli import usage as usage_commands
from gateway.cli.preflight import preflight
from gateway.config.located import ConfigError, Problem
from gateway.config.logs import log_settings_from_env
from gateway.config.settings import describe, load_settings


def _serve(args: argparse.Namespace) -> int:
    """Start only what `check` passes: the same problems, printed the same way, exit 1."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _refuse(exc.problems)
    from gateway.cli.workers import serve, with_workers, worker_settings

    settings, refusal = with_workers(settings, args.workers)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 1
    problems = preflight(settings, os.environ).problems
    if problems:
        return _refuse(problems)
    if not logs.others_own_logging():  # each worker's lines name the worker
        instance = (
            settings.instance_id
            if args.worker_index is None
            else worker_settings(settings, args.worker_index).instance_id
        )
        logs.install(settings.log, instance)
    if args.worker_index is None:
        logging.getLogger(__name__).info("starting: %s", describe(settings))
    try:
        return serve(settings, args.config, args.worker_index)
    except ConfigError as exc:  # a file changed between the preflight and its use
        return _refuse(exc.problems)


def _refuse(problems: list[Problem]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1


def _check(args: argparse.Namespace) -> int:
    """Everything `serve` would read at start; exit 1 on any problem `serve` would refuse to start with.

    Problems, warnings and notes go to standard error; standard output has only the final `ok` line."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return _refuse(exc.problems)
    report = preflight(settings, os.environ)
    for problem in report.problems:
        print(problem, file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if report.problems:
        return 1
    print(f"ok: {settings.source}, pack {settings.pack_dir}, registry {settings.registry_file}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo.tour import main as demo_main

    return demo_main(args.keep)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="exportgate", description="Export-control gateway for GPU job schedulers.")
    root.add_argument("--version", action="version", version=f"exportgate {_version()}")
    sub = root.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="gateway.yaml (default: embedded defaults)")
    serve.add_argument("--workers", type=int, help="worker processes (default: gateway.yaml's workers, else 1)")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check", help="validate offline everything serve reads at start")
    check.add_argument("--config", type=Path)
    check.set_defaults(func=_check)
    demo = sub.add_parser("demo", help="run a gateway and a stand-in scheduler and print decisions")
    demo.add_argument("--keep", type=Path, metavar="DIR",
                      help="keep its config, registry, keys and ledger in DIR; print commands to try")  # fmt: skip
    demo.set_defaults(func=_demo)
    ledger_commands.register(sub)
    quota_commands.register(sub)
    nginx_config.register(sub)
    explain_commands.register(sub)
    usage_commands.register(sub)
    report_commands.register(sub)
    return root


def _version() -> str:
    """The installed package's version (pyproject.toml's, through its metadata)."""
    try:
        return metadata.version("exportgate")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    if not logs.others_own_logging():  # `serve` installs the configured logging once it has read gateway.yaml
        logs.install(log_settings_from_env(os.environ))
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code
