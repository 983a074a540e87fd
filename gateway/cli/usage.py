"""`exportgate usage`: who holds what, from Redis or a ledger; the admin API's usage routes, offline."""

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from gateway.adapters.decision_tail import recent_decisions
from gateway.cli.offline import Unusable, add_sources, opened, run_offline, usage_problem
from gateway.core.usage import (
    LEASE_STATES,
    QUERY_TEXT,
    Holdings,
    countries_report,
    leases_report,
    report_meta,
    tenant_report,
    tenants_report,
)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    usage = sub.add_parser(
        "usage",
        help="tenants' and countries' held TPP against their caps, and the leases behind them",
        description="Without --tenant, --countries or --leases: every tenant. Reads Redis or a ledger; writes nothing.",
    )
    view = usage.add_mutually_exclusive_group()
    view.add_argument("--tenant", type=_text, metavar="ID", help="one tenant: caps, leases, recent decisions")
    view.add_argument("--countries", action="store_true", help="each country allocation and who draws on it")
    view.add_argument("--leases", action="store_true", help="leases by end (filters: --of, --upstream, --state)")
    usage.add_argument("--of", type=_text, metavar="TENANT", help="with --leases: only this tenant's")
    usage.add_argument("--upstream", type=_text, help="with --leases: only leases with a job on this upstream")
    usage.add_argument("--state", choices=LEASE_STATES, help="with --leases: only leases in this state")
    usage.add_argument("--limit", type=int, default=1000, help="with --leases: at most this many (default 1000)")
    usage.add_argument("--format", choices=("text", "json"), default="text")
    add_sources(usage)
    usage.set_defaults(func=usage_command)


def _text(value: str) -> str:
    if not QUERY_TEXT.match(value):
        raise argparse.ArgumentTypeError("1 to 128 of A-Z a-z 0-9 . _ : @ / # + -")
    return value


def usage_command(args: argparse.Namespace) -> int:
    problem = usage_problem(args)
    if problem is None and not args.leases and (args.of or args.upstream or args.state):
        problem = "--of, --upstream and --state filter --leases"
    if problem is None and args.limit < 1:
        problem = "--limit: must be at least 1"
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    report = run_offline(_report(args))
    if report is None:
        return 1
    print(json.dumps(report, indent=2) if args.format == "json" else render(report))
    return 0


async def _report(args: argparse.Namespace) -> dict[str, Any]:
    async with opened(args) as parts:
        h = Holdings.of(await parts.store.holdings(datetime.now(UTC).timestamp()))
    pack, registry = parts.policy.pack, parts.policy.registry
    now = datetime.fromtimestamp(h.now, UTC)
    meta = report_meta(now, registry, pack, parts.source)
    if args.tenant is not None:
        one = tenant_report(args.tenant, registry, pack, now, h)
        if one is None:
            raise Unusable(f"no tenant {args.tenant!r} is registered or holds a lease")
        recent = recent_decisions(parts.ledger_dir, args.tenant) if parts.ledger_dir is not None else []
        return meta | one | {"recent_decisions": recent}
    if args.countries:
        return meta | {"countries": countries_report(registry, pack, now, h)}
    if args.leases:
        return meta | leases_report(h, tenant=args.of, upstream=args.upstream, state=args.state, limit=args.limit)
    return meta | {"tenants": tenants_report(registry, pack, now, h)}


# -- text ------------------------------------------------------------------------------------------


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) >= 1e15:
        return f"{value:.4g}"
    return f"{value:,.0f}" if isinstance(value, int | float) else str(value)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _caps(caps: list[dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for c in caps:
        shared = f" (shared with {', '.join(c['shared_with'])})" if c["shared_with"] else ""
        declared = f" (declared before: {_n(c['base'])})" if c["base"] else ""
        lines.append(
            f"{indent}{c['cap_name']:<20} {_n(c['held']):>22} of {_n(c['cap']):>22}  {_pct(c['used']):>7}  "
            f"room {_n(c['room'])}{declared}{shared}"
        )
    return lines


def _lease_line(lease: dict[str, Any]) -> str:
    jobs = ", ".join(f"{j['upstream']}/{j['job_id']}" for j in lease["jobs"]) or "no job yet"
    return f"  {lease['lease_id']}  {lease['state']:<8} until {lease['end_at']}  {_n(lease['held_tpp'])} TPP  {jobs}"


def render(report: dict[str, Any]) -> str:
    """The report for a person at a terminal."""
    lines = [f"read at {report['read_at']} from {report['source']}"]
    if "tenants" in report:
        for t in report["tenants"]:
            lines.append(
                f"{t['id']}: tier {_n(t['tier'])}, KYC {t['kyc'] or '-'}, {t['live_leases']} live leases, "
                f"{_n(t['held_tpp'])} TPP held" + ("" if t["registered"] else " (not in the registry)")
            )
            lines += _caps(t["caps"], "  ")
    elif "countries" in report:
        for c in report["countries"]:
            lines.append(f"{c['country']} (tier {c['tier']}): {_n(c['held'])} of {_n(c['cap'])} TPP "
                         f"({_pct(c['used'])}), room {_n(c['room'])}")  # fmt: skip
            lines += [f"  {d['tenant']}: {_n(d['held'])}" for d in c["tenants"]]
    elif "truncated" in report:
        lines += [_lease_line(lease) for lease in report["leases"]]
        if report["truncated"]:
            lines.append(f"  ... {report['total'] - len(report['leases'])} more (--limit)")
    else:
        lines.append(f"{report['id']}: tier {_n(report['tier'])}, KYC {report['kyc'] or '-'}")
        lines += _caps(report["caps"], "  ")
        lines.append("leases:")
        lines += [_lease_line(lease) for lease in report["leases"]] or ["  none"]
        lines.append("recent decisions:")
        for d in report["recent_decisions"]:
            when = datetime.fromtimestamp(d["ts"] or 0, UTC).isoformat(timespec="seconds")
            lines.append(f"  {when}  {d['decision']:<11} {d['code'] or '':<22} {d['method']} {d['path']}")
        if not report["recent_decisions"]:
            lines.append("  none in the ledger's tail")
    return "\n".join(lines)
