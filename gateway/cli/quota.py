"""`exportgate quota rebuild` and `exportgate replay`: quota state and policy what-ifs from the ledger."""

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
from gateway.adapters.quota import BackendUnavailable
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.adapters.rebuild import state_from_ledger
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
    rebuild.set_defaults(func=rebuild_command)
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
        return 1
    if not args.ledger.is_dir():
        print(f"{args.ledger}: not a ledger directory", file=sys.stderr)
        return 1
    now = time.time() if args.now is None else args.now
    state = state_from_ledger(args.ledger, now)
    print(_describe(state, args.ledger))
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
