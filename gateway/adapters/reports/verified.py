"""A report computed from a ledger while it is verified, with the header that says what was verified: shared by
`exportgate report` (gateway/cli/report.py) and the console's reports page (gateway/http/console.py)."""

import math
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway.adapters.ledger.signing import PublicKey
from gateway.adapters.ledger.verified import VerifiedLedger
from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S, DEFAULT_OWNERSHIP_TTL_S
from gateway.config.bundled import BUNDLED_PACK
from gateway.core.policy import Pack
from gateway.core.reports.kinds import Options, compute
from gateway.core.reports.model import Period, Report, default_start, iso_time
from gateway.core.verify import Expected, TrustedKey


def report_period(span: tuple[float, float], start: float | None, end: float | None, at: float | None) -> Period:
    """The period from the ledger's first and last record times and the optional --from, --to (exclusive), --at."""
    first, last = span
    at = at if at is not None else last
    until = math.nextafter(at, math.inf)  # the record at the report's date is in
    if end is not None:
        until = min(until, end)
    start = start if start is not None else default_start(min(first, at), at)
    return Period(start, max(until, math.nextafter(start, math.inf)), at)


def version() -> str:
    try:
        return metadata.version("exportgate")
    except metadata.PackageNotFoundError:
        return "unknown"


def report_header(
    ledger: VerifiedLedger, pack: Pack, period: Period, *, ledger_name: str, policy: str | None, kind: str
) -> dict[str, Any]:
    """The report's meta: what was verified (key, heads, each chain), the period, the date and the caps' pack."""
    chains = [c.head() for c in ledger.chains]
    records = sum(c["records"] for c in chains)
    unsigned = sum(c["hash_chain_only"] for c in chains)
    to_text = iso_time(period.end) if period.end <= period.at else f"{iso_time(period.at)} (inclusive)"
    return {
        "statement": ledger.statement(),
        "key_id": ledger.key.key_id,
        "chains": chains,
        "ledger": ledger_name,
        "at": iso_time(period.at),
        "period": {"from": iso_time(period.start), "to": to_text},
        "period_text": f"{iso_time(period.start)} to {to_text}",
        "pack": {
            "name": pack.name,
            "version": pack.version,
            "hash": pack.content_hash,
            "source": policy if policy else f"bundled {BUNDLED_PACK}",
        },
        "pack_text": f"{pack.name} {pack.version} ({pack.content_hash[:12]}, " + (policy or "bundled") + ")",
        "records_text": f"{records:,} records in {len(chains)} chains"
        + (f"; {unsigned:,} after the last signed checkpoint, covered by the hash chain only" if unsigned else ""),
        "made_by": f"exportgate {version()} report {kind}",
        "warnings": ledger.warnings(),
    }


@dataclass(frozen=True, slots=True)
class Verified:
    """A computed report (its header filled in) and what verifying the ledger found: no problem, or the report
    must not be shown."""

    report: Report
    problems: list[str]
    warnings: list[str]
    chains: int  # the chains read, and those expected but missing


def verified_report(
    kind: str, root: Path, key: PublicKey, expected: dict[str, list[Expected]], period: Period, options: Options,
    pack: Pack, *, policy: str | None,
) -> Verified:  # fmt: skip
    """Read every chain of `root` once, verified with `key` as it is read, into the report of `kind`."""
    ledger = VerifiedLedger(root, TrustedKey(key.key_id, key.verify), expected)
    report = compute(kind, ledger.records(), period, options, window_s=DEFAULT_IDEMPOTENCY_WINDOW_S,
                     ownership_ttl_s=DEFAULT_OWNERSHIP_TTL_S)  # fmt: skip
    meta = report_header(ledger, pack, period, ledger_name=str(root), policy=policy, kind=kind)
    chains = len(ledger.chains) + len(ledger.missing)
    return Verified(replace(report, meta=meta), ledger.problems(), ledger.warnings(), chains)
