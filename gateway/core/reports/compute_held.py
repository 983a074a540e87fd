"""Compute held: TPP held over time per tenant, parent group and country, against the caps of the pack (the LPP
allowance, Tier 1 and VEU caps, each Tier 2 country's allocation); who came closest to each cap; the refusals
each cap caused.

Held TPP is the quota rebuild's: a lease holds its debits from its admission until its end (as `extend`
records moved it), a release or a refund. A counter's value after an admission is the record's own
`quota_after` (what the store answered); caps come from the pack (the ledger names the pack by its hash, and
keeps no cap): licences, cap overrides and budgets are the registry's, so their caps are not shown.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.core.caps import CapSettings
from gateway.core.reports.fold import TPP_PREFIXES, Events, Fold, number, text
from gateway.core.reports.model import Cell, Period, Report, Table, iso_time, step_name
from gateway.core.reports.series import Peaks, chart, series_table, top

CHARTED = 8
# The counters of TPP held against a cap: allowances (tenant, group, VEU), licensed allotments, country allocations.
HELD_PREFIXES = (*TPP_PREFIXES, "country:")
QUOTA_CODES = {
    "quota_tenant_tpp": "tenant_cap",
    "quota_country_tpp": "country_cap",
    "licence_required": "training_threshold",
    "quota_budget_exhausted": "budget",
}
_COUNTRY = re.compile(r"allocation of ([A-Z]{2})\b")
_LINEAGE = re.compile(r"for lineage '([^']*)'")


def cap_class(key: str, basis: str) -> str:
    """Which cap a counter is held against, given the basis of the decision that debited it."""
    if key.startswith("country:"):
        return "country_allocation"
    if key.startswith("licensed:"):
        return "licence"
    if key.startswith("veu:"):
        return "universal_veu" if basis == "veu_universal" else "national_veu"
    if key.startswith("ops:"):
        return "training_threshold"
    if key.startswith("budget:"):
        return "budget"
    if basis.startswith("tier1"):
        return "tier1"
    if basis == "override":
        return "override"
    return "lpp"


def cap_of(cls: str, key: str, caps: CapSettings | None, ts: float) -> float | None:
    """The pack's cap for a counter at `ts`; None when uncapped or when the cap is the registry's."""
    if caps is None:
        return None
    if cls == "lpp":
        return caps.lpp_tpp
    if cls == "tier1":
        return caps.tier1_cap_tpp
    if cls == "country_allocation":
        return caps.country_cap(key.removeprefix("country:"))
    if cls == "national_veu":
        return caps.national_veu_cap(datetime.fromtimestamp(ts, UTC).date())
    if cls == "universal_veu":
        return caps.universal_veu_cap_tpp
    if cls == "training_threshold":
        return caps.training_threshold_ops
    return None  # licence, override, budget: in the registry, not the ledger


CAP_SOURCES = {
    "lpp": "caps.yaml lpp.tpp (15 CFR 740.27, per consignee)",
    "tier1": "caps.yaml tier1.cap_tpp",
    "country_allocation": "caps.yaml country_allocation (Tier 2 country allocation)",
    "national_veu": "caps.yaml national_veu.schedule (step in force at the peak)",
    "universal_veu": "caps.yaml universal_veu.cap_tpp",
    "licence": "the licence's allotment (registry; not in the ledger)",
    "override": "the tenant's tpp_cap (registry; not in the ledger)",
    "training_threshold": "caps.yaml training.threshold_ops",
    "budget": "the tenant's budget (registry; not in the ledger)",
}


def failing_key(record: Mapping[str, Any], code: str, detail: str) -> str:
    """The counter a quota refusal names: from the lease's counters and the reason's words."""
    lease = record.get("lease")
    keys = [
        str(c.get("key"))
        for c in (lease.get("counters") or [] if isinstance(lease, Mapping) else [])
        if isinstance(c, Mapping) and isinstance(c.get("key"), str)
    ]
    tenant = text(record.get("tenant")) or "?"
    if code == "quota_tenant_tpp":
        licensed = [k for k in keys if k.startswith("licensed:")]
        held = licensed or [k for k in keys if k.startswith(TPP_PREFIXES)]
        return held[0] if held else f"tenant:{tenant}"
    if code == "quota_country_tpp":
        named = _COUNTRY.search(detail)
        countries = [k for k in keys if k.startswith("country:")]
        return f"country:{named.group(1)}" if named else (countries[0] if countries else "country:?")
    if code == "licence_required":
        lineage = _LINEAGE.search(detail)
        return f"ops:{tenant}:{lineage.group(1) if lineage else '*'}"
    budgets = [k for k in keys if k.startswith("budget:")]
    return budgets[0] if budgets else f"budget:{tenant}"


@dataclass(slots=True)
class _Peak:
    value: float
    ts: float
    tenant: str
    decision_id: str


@dataclass(slots=True)
class _Refusals:
    cls: str
    code: str
    refused: int = 0
    shadow: int = 0
    first: float = 0.0
    last: float = 0.0
    tenants: dict[str, int] = field(default_factory=dict)


def _used(value: float, cap: float | None) -> float | None:
    return value / cap if cap else None


class ComputeHeld:
    """The compute-held report's fold (see the module's docstring)."""

    kind = "compute-held"
    title = "Compute held against the caps"

    def __init__(self, period: Period, step: float, caps: CapSettings | None) -> None:
        self.period, self.step, self.caps = period, step, caps
        self.tenants, self.counters, self.locations = Peaks(), Peaks(), Peaks()
        self.peaks: dict[str, _Peak] = {}
        self.classes: dict[str, str] = {}
        self.refusals: dict[tuple[str, str], _Refusals] = {}
        self.admitted: dict[str, list[float]] = {}  # tenant -> [admissions, TPP-hours] in the period
        self.refused: dict[str, int] = {}
        self.started = False

    def sample(self, t: float, fold: Fold) -> None:
        held = {k: v for k, v in fold.held.items() if k.startswith(HELD_PREFIXES)}
        if not self.started:  # what the period starts with counts towards each counter's peak
            self.started = True
            for key, value in held.items():
                if value > 0:
                    self.peaks[key] = _Peak(value, t, "(held at the period's start)", "")
        self.tenants.open(t, fold.tenant_held)
        self.counters.open(t, held)
        self.locations.open(t, fold.location_held)

    def record(self, ts: float, record: Mapping[str, Any], events: Events, fold: Fold) -> None:
        if not self.period.holds(ts) or record.get("kind") != "decision":
            return
        tenant = text(record.get("tenant")) or "?"
        basis = str(record.get("basis") or "")
        self._refusals(ts, record, tenant)
        a = events.admitted
        if a is None:
            return
        counts = self.admitted.setdefault(tenant, [0.0, 0.0])
        cost = record.get("cost")
        counts[0] += 1
        counts[1] += (number(cost.get("tpp_hours")) or 0.0) if isinstance(cost, Mapping) else 0.0
        self.tenants.bump(tenant, fold.tenant_held.get(tenant, 0.0))
        facts = fold.tenants.get(tenant)
        location = (facts.location if facts else None) or "unknown"
        self.locations.bump(location, fold.location_held.get(location, 0.0))
        after = record.get("quota_after")
        after = after if isinstance(after, Mapping) else {}
        for d in a.debits:
            if not d.key.startswith(HELD_PREFIXES):
                continue
            self.classes[d.key] = cap_class(d.key, basis)
            value = number(after.get(d.key))
            value = fold.held.get(d.key, 0.0) if value is None else value
            self.counters.bump(d.key, fold.held.get(d.key, 0.0))
            best = self.peaks.get(d.key)
            if best is None or value > best.value:
                self.peaks[d.key] = _Peak(value, ts, tenant, a.lease_id)

    def _refusals(self, ts: float, record: Mapping[str, Any], tenant: str) -> None:
        outcome = record.get("decision")
        for reason in record.get("reasons") or []:
            if not isinstance(reason, Mapping) or reason.get("code") not in QUOTA_CODES:
                continue
            code, enforced = str(reason["code"]), reason.get("enforced") is True
            if enforced and outcome != "deny":
                continue
            key = failing_key(record, code, str(reason.get("detail") or ""))
            entry = self.refusals.get((key, code))
            if entry is None:
                cls = self.classes.get(key) or cap_class(key, str(record.get("basis") or ""))
                entry = self.refusals[(key, code)] = _Refusals(cls, code, first=ts)
            if enforced:
                entry.refused += 1
                self.refused[tenant] = self.refused.get(tenant, 0) + 1
            else:
                entry.shadow += 1
            entry.last = ts
            entry.tenants[tenant] = entry.tenants.get(tenant, 0) + 1

    # -- the report ----------------------------------------------------------------------------

    def _closest(self) -> Table:
        best: dict[str, tuple[float, str, _Peak, float | None]] = {}
        for key, peak in self.peaks.items():
            cls = self.classes.get(key, cap_class(key, ""))
            cap = cap_of(cls, key, self.caps, peak.ts)
            score = peak.value / cap if cap else -1.0 / (1.0 + peak.value)  # uncapped: the largest holding
            if cls not in best or (score, key) > (best[cls][0], best[cls][1]):
                best[cls] = (score, key, peak, cap)
        rows = [
            (cls, key, cap, peak.value, _used(peak.value, cap), iso_time(peak.ts), peak.tenant, peak.decision_id,
             CAP_SOURCES[cls])
            for cls, (_, key, peak, cap) in sorted(best.items())
        ]  # fmt: skip
        return Table(
            "closest", "Who came closest to each cap",
            ("cap", "counter", "cap_tpp", "peak_tpp", "used", "peak_at", "tenant", "decision_id", "cap_source"),
            tuple(rows),
            "the highest value each counter reached (the store's own value after an admission) against its cap; "
            "for a cap not in the ledger, the largest holding",
        )  # fmt: skip

    def _peaks(self, end_values: Mapping[str, float]) -> Table:
        rows = []
        for key in sorted(self.peaks):
            peak = self.peaks[key]
            cls = self.classes.get(key, cap_class(key, ""))
            cap = cap_of(cls, key, self.caps, peak.ts)
            rows.append((key, cls, cap, peak.value, _used(peak.value, cap), iso_time(peak.ts), peak.tenant,
                         end_values.get(key, 0.0)))  # fmt: skip
        return Table(
            "peaks", "Every counter's peak in the period",
            ("counter", "cap", "cap_tpp", "peak_tpp", "used", "peak_at", "tenant", "held_at_end"), tuple(rows),
        )  # fmt: skip

    def _refusal_table(self) -> Table:
        rows = []
        for (key, code), r in sorted(self.refusals.items()):
            tenants = ", ".join(f"{t} ({n})" for t, n in sorted(r.tenants.items(), key=lambda x: (-x[1], x[0]))[:10])
            more = len(r.tenants) - 10
            tenants += f" and {more} more" if more > 0 else ""
            rows.append((r.cls, key, code, QUOTA_CODES[code], r.refused, r.shadow, tenants, iso_time(r.first),
                         iso_time(r.last)))  # fmt: skip
        return Table(
            "refusals_by_cap", "Refusals each cap caused",
            ("cap", "counter", "code", "rule", "refused", "shadow", "tenants", "first", "last"), tuple(rows),
            "refused: denied under an enforced rule; shadow: the rule was not yet enforced, the job went through",
        )  # fmt: skip

    def _tenant_table(self, fold: Fold, at: float) -> Table:
        rows = []
        for tenant_id in sorted(fold.tenants):
            f = fold.tenants[tenant_id]
            counts = self.admitted.get(tenant_id, [0.0, 0.0])
            rows.append((tenant_id, f.tier, f.location, f.headquarters, f.parent, f.group,
                         self.tenants.peak(tenant_id), fold.tenant_held.get(tenant_id, 0.0), int(counts[0]), counts[1],
                         self.refused.get(tenant_id, 0)))  # fmt: skip
        return Table(
            "tenants", "Tenants: TPP held",
            ("tenant", "tier", "location", "headquarters", "parent", "group", "peak_held_tpp", "held_at_end_tpp",
             "admitted", "tpp_hours_admitted", "refused_by_caps"),
            tuple(rows), f"held at end: at {iso_time(at)}",
        )  # fmt: skip

    def finish(self, fold: Fold) -> Report:
        at = min(self.period.at, self.period.end)
        tenants, counters, locations = self.tenants.done(), self.counters.done(), self.locations.done()
        starts = self.tenants.starts
        end_values = fold.counters_at(at)
        lpp = self.caps.lpp_tpp if self.caps is not None else None
        consignees = top(counters, CHARTED, [k for k in counters if k.startswith(("tenant:", "group:", "veu:"))])
        countries = top(counters, CHARTED, [k for k in counters if k.startswith("country:")])
        country_limits = []
        if self.caps is not None:
            country_limits = sorted({(f"allocation {k.removeprefix('country:')}", self.caps.country_cap(
                k.removeprefix("country:"))) for k in countries})  # fmt: skip
        by_tenant = top(tenants, CHARTED)
        by_location = top(locations, CHARTED)
        limit = [("LPP allowance", lpp)] if lpp else []
        charts = (
            chart("held_tenants", f"TPP held per tenant (the {CHARTED} highest; peak per {step_name(self.step)})",
                  "TPP held", starts, tenants, by_tenant, limit, "series_tenants"),
            chart("held_consignees", "TPP held per allowance counter (tenant, parent group, VEU)", "TPP held",
                  starts, counters, consignees, limit, "series_consignees"),
            chart("held_countries", "Licensed TPP drawn on Tier 2 country allocations", "TPP held", starts, counters,
                  countries, country_limits, "series_allocations"),
            chart("held_locations", "TPP held by tenants located in each country", "TPP held", starts, locations,
                  by_location, (), "series_locations"),
        )  # fmt: skip
        tables = (
            self._closest(),
            self._refusal_table(),
            self._tenant_table(fold, at),
            self._peaks(end_values),
            Table("held_at_end", "Every counter at the report's date", ("counter", "value"),
                  tuple((k, v) for k, v in sorted(end_values.items())),
                  f"the quota state the ledger implies at {iso_time(at)}: held counters (TPP) and cumulative ones "
                  "(training operations, budgets), as `exportgate quota rebuild` computes it"),
            series_table("series_tenants", "Held per tenant over time", starts, tenants, by_tenant),
            series_table("series_consignees", "Held per allowance counter over time", starts, counters, consignees),
            series_table("series_allocations", "Drawn on country allocations over time", starts, counters, countries),
            series_table("series_locations", "Held by tenants' location over time", starts, locations, by_location),
        )  # fmt: skip
        refused = sum(r.refused for r in self.refusals.values())
        shadow = sum(r.shadow for r in self.refusals.values())
        summary: tuple[tuple[str, Cell], ...] = (
            ("tenants seen", len(fold.tenants)),
            ("admissions in the period", int(sum(c[0] for c in self.admitted.values()))),
            ("refusals by a cap (enforced)", refused),
            ("would-be refusals (shadow)", shadow),
            ("LPP allowance (TPP)", lpp),
            ("highest TPP held by one tenant", max((self.tenants.peak(t) for t in tenants), default=0.0)),
        )
        return Report(self.kind, self.title, summary, tables, charts)
