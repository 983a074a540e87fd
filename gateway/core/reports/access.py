"""Refusals and access: refusals by code, tier and country over time; each tenant's KYC status as recorded and
the expiries coming up; per-tenant access history (dates, client IPs) with the date until which the records
must be kept.

Every request the gateway answered is a `decision` record (submissions, updates, cancels and refusals) or an
`access` record (reads and listings), with the tenant, the client IP and the time: the access history the
proposed KYC rule asks providers to keep, at least two years after an account was last used (`RETENTION_DAYS`
after the tenant's last recorded access). The ledger keeps each tenant's KYC status, never its expiry date:
expiries come from a registry when one is given, and are marked as such.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.core.reports.fold import Events, Fold, text
from gateway.core.reports.model import Cell, Chart, Line, Period, Report, Table, iso_time, step_name
from gateway.core.reports.series import Counts, series_table, top

RETENTION_DAYS = 730
EXPIRY_HORIZON_DAYS = 90
CHARTED = 8
KYC_CODES = ("kyc_not_verified", "kyc_expired")


@dataclass(frozen=True, slots=True)
class KycRecord:
    """A tenant's KYC as the registry now says it (not in the ledger): status and expiry."""

    status: str
    expires_at: date | None


@dataclass(slots=True)
class _Tally:
    refused: int = 0
    shadow: int = 0
    first: float = 0.0
    last: float = 0.0
    tenants: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Access:
    first: float
    last: float
    requests: int = 0
    refused: int = 0


class RefusalsAccess:
    """The refusals-and-access report's fold (see the module's docstring)."""

    kind = "refusals-access"
    title = "Refusals and access"

    def __init__(self, period: Period, step: float, registry: Mapping[str, KycRecord] | None = None,
                 registry_name: str = "") -> None:  # fmt: skip
        self.period, self.step = period, step
        self.registry, self.registry_name = registry, registry_name
        self.by_code: dict[str, _Tally] = {}
        self.by_tier: dict[str, _Tally] = {}
        self.by_country: dict[str, _Tally] = {}
        self.codes = Counts()
        self.access: dict[tuple[str, str], _Access] = {}  # (tenant, client ip)
        self.months: dict[tuple[str, str], list[Any]] = {}  # (tenant, month) -> [requests, refused, {ips}]
        self.last_access: dict[str, float] = {}
        self.kyc_changes: list[tuple[Cell, ...]] = []
        self.kyc_seen: dict[str, str] = {}
        self.kyc_refusals: dict[str, tuple[int, str, float]] = {}  # tenant -> (count, last code, last at)

    def sample(self, t: float, fold: Fold) -> None:
        self.codes.open(t)

    def _tally(self, table: dict[str, _Tally], name: str, ts: float, tenant: str, shadow: bool) -> None:
        entry = table.get(name)
        if entry is None:
            entry = table[name] = _Tally(first=ts)
        if shadow:
            entry.shadow += 1
        else:
            entry.refused += 1
        entry.last = ts
        entry.tenants.add(tenant)

    def record(self, ts: float, record: Mapping[str, Any], events: Events, fold: Fold) -> None:
        kind = record.get("kind")
        if kind not in ("decision", "access"):
            return
        tenant = text(record.get("tenant"))
        if tenant is not None:
            kyc = text(record.get("kyc"))
            if kyc is not None and self.kyc_seen.get(tenant) != kyc:
                if tenant in self.kyc_seen and self.period.holds(ts):
                    self.kyc_changes.append((iso_time(ts), tenant, self.kyc_seen[tenant], kyc))
                self.kyc_seen[tenant] = kyc
            self.last_access[tenant] = ts
        if not self.period.holds(ts):
            return
        outcome = record.get("decision")
        refused = outcome in ("deny", "shadow_deny")
        who = tenant or "(no tenant)"
        if refused:
            code = str(record.get("code") or "deny")
            shadow = outcome == "shadow_deny"
            self._tally(self.by_code, code, ts, who, shadow)
            tier = record.get("tier")
            self._tally(self.by_tier, "none" if tier is None else str(tier), ts, who, shadow)
            countries = record.get("countries")
            places = {str(c) for c in countries.values() if isinstance(c, str)} if isinstance(countries, Mapping) \
                else set()  # fmt: skip
            for country in sorted(places) or ["unknown"]:
                self._tally(self.by_country, country, ts, who, shadow)
            if not shadow:
                self.codes.add(code)
            if tenant is not None and code in KYC_CODES and not shadow:
                count = self.kyc_refusals.get(tenant, (0, "", 0.0))[0]
                self.kyc_refusals[tenant] = (count + 1, code, ts)
        if tenant is None:
            return
        ip = text(record.get("client_ip")) or "unknown"
        seen = self.access.get((tenant, ip))
        if seen is None:
            seen = self.access[(tenant, ip)] = _Access(ts, ts)
        seen.last = ts
        seen.requests += 1
        seen.refused += outcome == "deny"
        month = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")
        counts = self.months.setdefault((tenant, month), [0, 0, set()])
        counts[0] += 1
        counts[1] += outcome == "deny"
        counts[2].add(ip)

    def _tally_table(self, name: str, title: str, column: str, table: dict[str, _Tally]) -> Table:
        rows = [(key, t.refused, t.shadow, len(t.tenants), iso_time(t.first), iso_time(t.last))
                for key, t in sorted(table.items(), key=lambda x: (-x[1].refused - x[1].shadow, x[0]))]  # fmt: skip
        return Table(name, title, (column, "refused", "shadow", "tenants", "first", "last"), tuple(rows))

    def _kyc(self, fold: Fold, at: float) -> tuple[Table, Table]:
        today = datetime.fromtimestamp(at, UTC).date()
        rows = []
        for tenant_id in sorted(fold.tenants):
            f = fold.tenants[tenant_id]
            count, code, when = self.kyc_refusals.get(tenant_id, (0, "", 0.0))
            known = self.registry.get(tenant_id) if self.registry is not None else None
            rows.append((tenant_id, f.kyc, iso_time(f.kyc_since) if f.kyc else None, f.tier, iso_time(f.last_ts),
                         count, code or None, iso_time(when) if when else None,
                         known.status if known else None,
                         known.expires_at.isoformat() if known and known.expires_at else None))  # fmt: skip
        kyc = Table(
            "kyc", "KYC status per tenant, as last recorded",
            ("tenant", "kyc_recorded", "recorded_since", "tier", "last_seen", "kyc_refusals", "last_kyc_refusal",
             "last_kyc_refusal_at", "registry_status", "registry_expires_at"),
            tuple(rows),
            "kyc_recorded: the status the tenant's latest record carries; registry_*: "
            + (f"from {self.registry_name} as it is now" if self.registry is not None else "no --registry given"),
        )  # fmt: skip
        horizon = today + timedelta(days=EXPIRY_HORIZON_DAYS)
        upcoming = []
        for tenant_id, known in sorted((self.registry or {}).items()):
            if known.expires_at is not None and known.expires_at <= horizon:
                state = "expired" if known.expires_at <= today else f"in {(known.expires_at - today).days} days"
                upcoming.append((tenant_id, known.status, known.expires_at.isoformat(), state))
        note = (f"KYC expiries up to {horizon.isoformat()} ({EXPIRY_HORIZON_DAYS} days after the report's date), from "
                f"{self.registry_name}" if self.registry is not None else
                "the ledger keeps KYC statuses, not expiry dates: give --registry to list expiries; kyc_expired "
                "refusals above show expiries that have passed")  # fmt: skip
        expiries = Table("kyc_expiries", "KYC expiries coming up", ("tenant", "status", "expires_at", "when"),
                         tuple(upcoming), note)  # fmt: skip
        return kyc, expiries

    def finish(self, fold: Fold) -> Report:
        at = min(self.period.at, self.period.end)
        series = self.codes.done()
        starts = self.codes.starts
        charted = top(series, CHARTED)
        tenant_rows = []
        for tenant_id in sorted(self.last_access):
            last = self.last_access[tenant_id]
            ips = sorted(ip for (t, ip) in self.access if t == tenant_id)
            requests = sum(self.access[(tenant_id, ip)].requests for ip in ips)
            first = min((self.access[(tenant_id, ip)].first for ip in ips), default=None)
            retain = (datetime.fromtimestamp(last, UTC).date() + timedelta(days=RETENTION_DAYS)).isoformat()
            tenant_rows.append((tenant_id, iso_time(first) if first else None, iso_time(last), requests, len(ips),
                                retain))  # fmt: skip
        ip_rows = [(t, ip, iso_time(a.first), iso_time(a.last), a.requests, a.refused)
                   for (t, ip), a in sorted(self.access.items())]  # fmt: skip
        month_rows = [(t, m, c[0], c[1], len(c[2])) for (t, m), c in sorted(self.months.items())]
        kyc, expiries = self._kyc(fold, at)
        charts = (
            Chart("refusals_by_code", f"Refusals per {step_name(self.step)}, by code (the {CHARTED} most frequent)",
                  "refusals", tuple(starts), tuple(Line(n, tuple(series[n])) for n in charted), (),
                  "series_refusals"),
        )  # fmt: skip
        tables = (
            self._tally_table("by_code", "Refusals by code", "code", self.by_code),
            self._tally_table("by_tier", "Refusals by tier", "tier", self.by_tier),
            self._tally_table("by_country", "Refusals by country (each distinct country of the tenant)", "country",
                              self.by_country),
            kyc,
            expiries,
            Table("kyc_changes", "KYC status changes recorded in the period", ("at", "tenant", "from", "to"),
                  tuple(self.kyc_changes)),
            Table("tenants", "Access per tenant, with the retention date of its records",
                  ("tenant", "first_access", "last_access", "requests", "client_ips", "keep_records_until"),
                  tuple(tenant_rows),
                  f"requests in the period; keep_records_until: {RETENTION_DAYS} days after the last recorded "
                  "access (the proposed KYC rule keeps records at least two years after an account was last used)"),
            Table("access_by_ip", "Access history per tenant and client IP",
                  ("tenant", "client_ip", "first", "last", "requests", "refused"), tuple(ip_rows)),
            Table("access_by_month", "Access per tenant and month",
                  ("tenant", "month", "requests", "refused", "client_ips"), tuple(month_rows)),
            series_table("series_refusals", "Refusals over time by code", starts, series, charted,
                         "refusals (enforced) within the bucket that starts at the row's time"),
        )  # fmt: skip
        summary: tuple[tuple[str, Cell], ...] = (
            ("refusals (enforced)", sum(t.refused for t in self.by_code.values())),
            ("would-be refusals (shadow)", sum(t.shadow for t in self.by_code.values())),
            ("tenants with access in the period", len(tenant_rows)),
            ("distinct (tenant, client IP) pairs", len(ip_rows)),
            ("KYC expiries coming up", len(expiries.rows) if self.registry is not None else None),
            ("records kept until at least", max((str(r[5]) for r in tenant_rows), default=None)),
        )
        return Report(self.kind, self.title, summary, tables, charts)
