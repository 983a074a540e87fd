"""The `exportgate` command; each group of subcommands lives in its own module."""

import argparse
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType

from gateway.config.located import ConfigError
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.config.settings import describe, load_settings
from gateway.core.iso import ISO_3166_ALPHA2


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    from gateway.workers import serve, with_workers

    settings, refusal = with_workers(settings, args.workers)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 1
    if args.worker_index is None:
        logging.getLogger(__name__).info("starting: %s", describe(settings))
    return serve(settings, args.config, args.worker_index)


def _check(args: argparse.Namespace) -> int:
    problems = []
    warnings = []
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 1
    try:
        load_pack(settings.pack_dir)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        registry = load_registry(settings.registry_file)
        for tenant in registry.tenants.values():
            for role, country in tenant.countries().items():
                if country not in ISO_3166_ALPHA2:
                    warnings.append(
                        f"{settings.registry_file}: tenant {tenant.id}: {role} {country!r} is not an "
                        "ISO 3166-1 code; its requests will be refused tenant_country_unknown"
                    )
    except ConfigError as exc:
        problems.extend(exc.problems)
    for problem in problems:
        print(problem)
    for warning in warnings:
        print(f"warning: {warning}")
    if problems:
        return 1
    print(f"ok: {settings.source}, pack {settings.pack_dir}, registry {settings.registry_file}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import main as demo_main

    return demo_main()


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="exportgate", description="Export-control gateway for GPU job schedulers.")
    sub = root.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="gateway.yaml (default: embedded defaults)")
    serve.add_argument("--workers", type=int, help="worker processes (default: gateway.yaml's workers, else 1)")
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers
    serve.set_defaults(func=_serve)
    check = sub.add_parser("check", help="validate config, pack and registry offline")
    check.add_argument("--config", type=Path)
    check.set_defaults(func=_check)
    demo = sub.add_parser("demo", help="run a gateway and a stand-in scheduler and print decisions")
    demo.set_defaults(func=_demo)
    for module in _command_modules():
        module.register(sub)
    return root


def _command_modules() -> list[ModuleType]:
    """Subcommand groups that register themselves (`register(subparsers)`), if present."""
    found: list[ModuleType] = []
    for name in ("gateway.cli_ledger", "gateway.cli_quota", "gateway.cli_workers"):
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code
