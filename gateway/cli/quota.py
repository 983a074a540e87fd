"""`exportgate quota rebuild|snapshot` and `exportgate replay`: quota state, its snapshots, and policy what-ifs."""

import argparse
import asyncio
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.adapters.ledger.reader import records_in_time_order
from gateway.adapters.ledger.signing import KeyFileError, load_public_key, load_signer
from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S, DEFAULT_OWNERSHIP_TTL_S, BackendUnavailable
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.adapters.quota_snapshot import SETTLE_S, CannotSnapshot, Rebuilt, Trust, take
from gateway.adapters.rebuild import rebuild
from gateway.config.located import ConfigError
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.leases import QuotaState
from gateway.core.replay import ReplayReport, replay
from gateway.core.tenants import Registry

REPLAY_KINDS = frozenset({"decision", "settle", "refund", "release", "extend"})
CSV_FIELDS = ("decision_id", "ts", "tenant", "countries", "old_tier", "new_tier", "old", "new", "unpriced")


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `quota rebuild` and `replay` to the `exportgate` command."""
    quota = sub.add_parser("quota", help="quota store maintenance")
    quota_sub = quota.add_subparsers(dest="quota_command", required=True)
    rebuild = quota_sub.add_parser(
        "rebuild",
        help="recompute leases, counters and ownership from the ledger and write them to a store",
        description="Without --redis, print the state the ledger implies and write nothing. Stop the "
        "gateways first: reservations made while a rebuild runs are overwritten.",
    )
    rebuild.add_argument("--ledger", type=Path, required=True, help="ledger root (one directory per instance)")
    rebuild.add_argument("--redis", metavar="URL", help="Redis to restore into (only keys under --prefix)")
    rebuild.add_argument("--cluster", action="store_true", help="the URL names a Redis Cluster node")
    rebuild.add_argument("--prefix", default="eg:", help="key prefix, as quota.prefix in gateway.yaml")
    rebuild.add_argument("--now", type=float, help="epoch seconds at which leases are judged (default: now)")
    rebuild.add_argument("--timeout", type=float, default=10.0, help="seconds per Redis call")
    rebuild.add_argument("--public-key", type=Path, action="append", default=[], metavar="FILE",
                         help="continue from the newest quota snapshot signed with this ledger key (repeatable); "
                         "without one, every chain is read from its start")  # fmt: skip
    rebuild.add_argument("--snapshot-dir", type=Path, metavar="DIR",
                         help="where quota snapshots are (ledger.snapshot_dir; default: --ledger)")  # fmt: skip
    rebuild.set_defaults(func=rebuild_command)
    snap = quota_sub.add_parser(
        "snapshot",
        help="write a signed quota snapshot, so that start-up and rebuilds read only the records after it",
        description="Continues the newest snapshot that checks out (or the ledger's start) with the records "
        "written since, signs it with the ledger key and writes it atomically; safe while gateways run.",
    )
    snap.add_argument("--ledger", type=Path, required=True, help="ledger root (one directory per instance)")
    snap.add_argument("--signing-key", type=Path, required=True, metavar="FILE", help="the ledger's private key")
    snap.add_argument("--snapshot-dir", type=Path, metavar="DIR", help="ledger.snapshot_dir (default: --ledger)")
    snap.add_argument("--keep", type=int, default=3, help="snapshot files kept (ledger.snapshot_keep; default 3)")
    snap.add_argument("--public-key", type=Path, action="append", default=[], metavar="FILE",
                      help="also continue from snapshots signed with this (an earlier) key; repeatable")  # fmt: skip
    snap.add_argument("--now", type=float, help="epoch seconds recorded as the snapshot's time (default: now)")
    snap.add_argument("--until", type=float, metavar="TS",
                      help=f"fold records with ts before TS (default: now - {SETTLE_S:g} s)")  # fmt: skip
    snap.set_defaults(func=snapshot_command)
    what_if = sub.add_parser("replay", help="re-decide recorded submissions under another pack and report changes")
    what_if.add_argument("--ledger", type=Path, required=True, help="ledger root (one directory per instance)")
    what_if.add_argument("--policy", type=Path, required=True, help="policy pack directory to replay under")
    what_if.add_argument("--registry", type=Path, help="tenant registry (default: tenant facts from each record)")
    what_if.add_argument("--format", choices=("text", "json", "csv"), default="text")
    what_if.set_defaults(func=replay_command)


# -- quota rebuild ----------------------------------------------------------------------


def rebuild_command(args: argparse.Namespace) -> int:
    """Compute the state, print it, and restore it into Redis when asked; exit 1 on failure."""
    if args.cluster and not args.redis:
        print("--cluster needs --redis", file=sys.stderr)
        return 2  # usage
    if not args.ledger.is_dir():
        print(f"{args.ledger}: not a ledger directory", file=sys.stderr)
        return 1
    now = time.time() if args.now is None else args.now
    try:
        keys = tuple(load_public_key(path) for path in args.public_key)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    trust = Trust(args.snapshot_dir or args.ledger, keys) if keys else None
    state, how = rebuild(args.ledger, now, trust)
    print(_describe(state, args.ledger))
    print(_how(how, trust is not None))
    if not args.redis:
        print("no --redis given: nothing written")
        return 0
    try:
        asyncio.run(_restore(state, args.redis, args.cluster, args.prefix, args.timeout, now))
    except (BackendUnavailable, ValueError) as exc:
        print(f"restore failed: {exc}", file=sys.stderr)
        return 1
    print(f"restored into {_redacted(args.redis)} under prefix {args.prefix!r}")
    return 0


def _how(how: Rebuilt, trusted: bool) -> str:
    if how.snapshot is not None:
        return f"read from quota snapshot {how.snapshot} ({how.from_snapshot} records) and {how.read} later records"
    note = "" if trusted else " (no --public-key: quota snapshots are not used)"
    return f"read {how.read} records from the start of every chain{note}"


def snapshot_command(args: argparse.Namespace) -> int:
    """Write the next quota snapshot (or say the newest still covers the ledger); exit 1 on failure."""
    if not args.ledger.is_dir():
        print(f"{args.ledger}: not a ledger directory", file=sys.stderr)
        return 1
    if args.keep < 1:
        print("--keep: must be at least 1", file=sys.stderr)
        return 2  # usage
    try:
        signer = load_signer(args.signing_key)
        extra = tuple(load_public_key(path) for path in args.public_key)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    now = time.time() if args.now is None else args.now
    until = now - SETTLE_S if args.until is None else args.until
    started = time.perf_counter()
    try:
        taken = take(
            args.ledger, args.snapshot_dir or args.ledger, signer, now=now, until=until, keep=args.keep,
            window_s=DEFAULT_IDEMPOTENCY_WINDOW_S, ownership_ttl_s=DEFAULT_OWNERSHIP_TTL_S, extra_keys=extra,
        )  # fmt: skip
    except (CannotSnapshot, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    chains = ", ".join(f"{name}@{pos.seq}" for name, pos in sorted(taken.chains.items()))
    took = time.perf_counter() - started
    if taken.path is None:
        print(f"no record before {until:.3f} to cover; nothing written")
    elif taken.written:
        print(f"wrote {taken.path}: {taken.records} records ({chains}), {taken.added} new, in {took:.2f} s")
    else:
        print(f"{taken.path} still covers the ledger: {taken.records} records ({chains}); nothing written")
    return 0


async def _restore(state: QuotaState, url: str, cluster: bool, prefix: str, timeout_s: float, now: float) -> None:
    store = RedisQuotaStore.from_url(url, cluster=cluster, prefix=prefix, timeout_s=timeout_s)
    try:
        await store.restore(state, now)
    finally:
        await store.close()


def _redacted(url: str) -> str:
    """The URL without a password (it may carry one)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


def _describe(state: QuotaState, ledger: Path) -> str:
    live = [lease for lease in state.leases if not lease.released and lease.end > state.now]
    lines = [
        f"ledger {ledger} at {state.now:.3f}: {len(state.counters)} counters, {len(live)} live leases "
        f"({len(state.leases)} kept), {len(state.idempotency)} idempotency records, {len(state.owners)} owned jobs"
    ]
    if state.skipped:
        lines.append(f"warning: {state.skipped} admitted decisions had a malformed lease and were skipped")
    for counter in state.counters:
        if counter.value > 0:
            lines.append(f"  {{{counter.hash_tag}}} {counter.key} = {counter.value:.17g} ({counter.kind.value})")
    return "\n".join(lines)


# -- replay -----------------------------------------------------------------------------


def replay_command(args: argparse.Namespace) -> int:
    """Load the pack (and registry), replay the ledger, print the report; exit 1 on bad input."""
    if not args.ledger.is_dir():
        print(f"{args.ledger}: not a ledger directory", file=sys.stderr)
        return 1
    try:
        pack = load_pack(args.policy)
        registry: Registry | None = load_registry(args.registry) if args.registry else None
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    records = [r for r in records_in_time_order(args.ledger) if r.get("kind") in REPLAY_KINDS]
    report = replay(records, pack, registry)
    sys.stdout.write({"text": as_text, "json": as_json, "csv": as_csv}[args.format](report))
    return 0


def _change_row(report: ReplayReport) -> list[dict[str, Any]]:
    return [
        {
            "decision_id": c.decision_id,
            "ts": c.ts,
            "tenant": c.tenant,
            "countries": list(c.countries),
            "old_tier": c.old_tier,
            "new_tier": c.new_tier,
            "old": c.old,
            "new": c.new,
            "unpriced": c.unpriced,
        }
        for c in report.changes
    ]


def as_json(report: ReplayReport) -> str:
    """The report as one JSON object."""
    doc = {
        "pack": report.pack,
        "tenant_facts": report.facts,
        "decided": report.decided,
        "changed": len(report.changes),
        "skipped": report.skipped,
        "incomplete_facts": list(report.incomplete_facts),
        "transitions": report.transitions(),
        "by_tier": report.by_tier(),
        "by_country": report.by_country(),
        "changes": _change_row(report),
    }
    return json.dumps(doc, indent=2) + "\n"


def as_csv(report: ReplayReport) -> str:
    """One row per changed decision."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in _change_row(report):
        writer.writerow({**row, "countries": " ".join(row["countries"])})
    return out.getvalue()


def as_text(report: ReplayReport) -> str:
    """A summary for people: counts, then the changed decisions."""
    lines = [
        f"replayed under {report.pack} (tenant facts: {report.facts})",
        f"re-decided {report.decided} submissions and updates: {len(report.changes)} would change"
        + (f", {report.skipped} skipped (malformed)" if report.skipped else ""),
    ]
    for title, table in (
        ("old -> new", report.transitions()),
        ("by tier", report.by_tier()),
        ("by country", report.by_country()),
    ):
        if table:
            lines.append(f"{title}:")
            lines.extend(f"  {key:<48} {count}" for key, count in table.items())
    if report.changes:
        lines.append("changed decisions:")
        lines.extend(
            f"  {c.decision_id}  {c.tenant or '-'}  {c.old} -> {c.new}" + ("  (unpriced)" if c.unpriced else "")
            for c in report.changes
        )
    if report.incomplete_facts:
        lines.append(
            "warning: the ledger lacks licences, cap overrides and budgets; pass --registry for exact quota "
            "decisions of: " + ", ".join(report.incomplete_facts)
        )
    return "\n".join(lines) + "\n"
