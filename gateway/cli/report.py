"""`exportgate report KIND --ledger DIR --public-key FILE`: a compliance report from a ledger alone, verified first.

The ledger's chains are read once, merged by time: every line goes through the verifier as it is read and
every record into the report's fold (gateway/core/reports), so memory follows the tenants and the live work,
not the ledger's length. Only when every chain verified is the report written, naming the key and the heads
it verified up to. The report's date is the ledger's last record's time (or --at), never the clock, so the
same ledger and arguments give the same bytes.
"""

import argparse
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from gateway.adapters.ledger.signing import KeyFileError, PublicKey, load_public_key
from gateway.adapters.ledger.verified import first_and_last_ts
from gateway.adapters.reports.verified import report_period, verified_report
from gateway.cli.ledger import UsageError, expected_heads
from gateway.config.bundled import BUNDLED_PACK, BUNDLED_POLICIES
from gateway.config.located import ConfigError
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.explain import parse_at
from gateway.core.policy import Pack
from gateway.core.reports.access import KycRecord
from gateway.core.reports.kinds import KINDS, Options, pack_thresholds
from gateway.core.reports.model import DAY_S

_DATE_ONLY = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")
FORMATS = ("html", "csv", "json")


class Unusable(Exception):
    """Something the command was given cannot be used (exit 1); the message says what and why."""


def _when(text: str) -> float:
    try:
        return parse_at(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _until(text: str) -> float:
    """--to as an exclusive end: a date alone includes its whole day."""
    end = _when(text)
    return end + DAY_S if _DATE_ONLY.match(text) else end


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _fraction(text: str) -> float:
    value = _positive(text)
    if value > 1:
        raise argparse.ArgumentTypeError("must be a fraction in (0, 1]")
    return value


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    report = sub.add_parser(
        "report",
        help="a compliance report (HTML, CSV or JSON) from a verified ledger",
        description="Verifies the ledger with --public-key while it reads it once; writes the report only if "
        "every chain verified. Kinds: " + ", ".join(KINDS) + " (docs/reports.md).",
    )
    report.add_argument("kind", choices=KINDS)
    report.add_argument("--ledger", type=Path, required=True, metavar="DIR", help="the ledger directory")
    report.add_argument("--public-key", type=Path, required=True, metavar="FILE",
                        help="PEM Ed25519 public key of the ledger, kept outside it")  # fmt: skip
    report.add_argument("--expect-head", action="append", default=[], metavar="INSTANCE=[SEQ:]HASH",
                        help="a record the chain must still hold (as ledger verify); repeatable")  # fmt: skip
    report.add_argument("--expect-heads-from", type=Path, metavar="ANCHOR_DIR",
                        help="expect every checkpoint copy in this directory (ledger.anchor_dir)")  # fmt: skip
    report.add_argument("--from", dest="start", type=_when, metavar="DATE", help="period start (default: the "
                        "ledger's first record, down to a whole bucket)")  # fmt: skip
    report.add_argument("--to", dest="end", type=_until, metavar="DATE",
                        help="period end, exclusive; a date alone includes its day (default: report date)")  # fmt: skip
    report.add_argument("--at", type=_when, metavar="DATE",
                        help="the report's date (default: the ledger's last record's time)")  # fmt: skip
    report.add_argument("--format", choices=FORMATS, help="default: --out's suffix (.html, .csv, .json), else html")
    report.add_argument("--out", type=Path, metavar="FILE", help="write here (atomically) instead of standard output")
    report.add_argument("--policy", type=Path, metavar="PACK",
                        help=f"the pack whose caps are reported on (default: the bundled {BUNDLED_PACK})")  # fmt: skip
    report.add_argument("--registry", type=Path, metavar="FILE",
                        help="refusals-access: list KYC expiries from this registry (the ledger has none)")  # fmt: skip
    report.add_argument("--threshold", type=_positive, action="append", default=[], metavar="OPS",
                        help="large-training: another threshold besides the pack's training.threshold_ops")  # fmt: skip
    report.add_argument("--near", type=_fraction, default=0.5, metavar="FRACTION",
                        help="large-training: list jobs from this fraction of a threshold (default 0.5)")  # fmt: skip
    report.add_argument("--trigger", type=_positive, default=253_000_000.0, metavar="TPP",
                        help="aia-trigger: the cumulative TPP that triggers it (default 253,000,000)")  # fmt: skip
    report.set_defaults(func=report_command)


def _format(args: argparse.Namespace) -> str:
    if args.format is not None:
        return str(args.format)
    suffix = args.out.suffix.lower().lstrip(".") if args.out is not None else ""
    return {"htm": "html"}.get(suffix, suffix) if suffix in (*FORMATS, "htm") else "html"


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.registry is not None and args.kind != "refusals-access":
        return "--registry is read by refusals-access only"
    if args.threshold and args.kind != "large-training":
        return "--threshold is read by large-training only"
    if args.start is not None and args.end is not None and args.end <= args.start:
        return "--to must come after --from"
    return None


def report_command(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem is None:
        try:
            expected = expected_heads(args)
        except UsageError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        key, pack, registry = _inputs(args)
        span = first_and_last_ts(args.ledger)
        if span is None and args.at is None:
            raise Unusable(f"{args.ledger}: the ledger holds no record to date the report by; give --at")
    except Unusable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        for found in exc.problems:
            print(found, file=sys.stderr)
        return 1
    period = report_period(span or (args.at, args.at), args.start, args.end, args.at)
    options = Options(
        caps=pack.caps, pack_hash=pack.content_hash, trigger_tpp=args.trigger,
        thresholds=pack_thresholds(pack), extra_thresholds=tuple(args.threshold), near=args.near,
        registry=registry, registry_name=str(args.registry) if args.registry else "",
    )  # fmt: skip
    policy = str(args.policy) if args.policy else None
    done = verified_report(args.kind, args.ledger, key, expected, period, options, pack, policy=policy)
    for warning in done.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if done.problems:
        for line in done.problems:
            print(line, file=sys.stderr)
        print(f"FAILED: {len(done.problems)} of {done.chains} chains; no report written", file=sys.stderr)
        return 1
    report = done.report
    from gateway.adapters.reports.render import render  # matplotlib loads only when a report is written

    data = render(report, _format(args))
    if args.out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        _write(args.out, data)
    except OSError as exc:
        print(f"error: {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({args.kind}, {_format(args)}): {report.meta['statement']}")
    return 0


def _inputs(args: argparse.Namespace) -> tuple[PublicKey, Pack, dict[str, KycRecord] | None]:
    """The key, the pack and (refusals-access) the registry's KYC; Unusable or ConfigError saying why not."""
    if not args.ledger.is_dir():
        raise Unusable(f"{args.ledger}: not a ledger directory")
    if args.public_key.resolve().is_relative_to(args.ledger.resolve()):
        raise Unusable(f"{args.public_key}: a key inside the ledger directory proves nothing; keep it outside")
    try:
        key = load_public_key(args.public_key)
    except KeyFileError as exc:
        raise Unusable(str(exc)) from None
    pack = load_pack(args.policy if args.policy is not None else BUNDLED_POLICIES / BUNDLED_PACK)
    registry = None
    if args.registry is not None:
        if not args.registry.is_file():
            raise Unusable(f"{args.registry}: no such file")
        tenants = load_registry(args.registry).tenants
        registry = {t.id: KycRecord(t.kyc.status.value, t.kyc.expires_at) for t in tenants.values()}
    return key, pack, registry


def _write(path: Path, data: bytes) -> None:
    """Replace `path` at once (a temp file beside it, renamed over it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
