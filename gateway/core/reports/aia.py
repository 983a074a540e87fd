"""AIA certification trigger: consignees whose cumulative TPP reached 253,000,000, and when.

A consignee is a tenant's parent group when its records name one (the `group:` counter its leases debit),
else the tenant. Its cumulative TPP is the TPP of every lease admitted to it since the ledger began (the
job's held TPP: GPUs x TPP per controlled chip), less leases given back whole (a refund, or the old lease
of an accepted update); releases and ends do not give cumulative TPP back.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.reports.fold import Events, Fold, lease_tpp
from gateway.core.reports.model import Cell, Period, Report, Table, iso_time, step_name
from gateway.core.reports.series import Peaks, chart, series_table, top

AIA_TRIGGER_TPP = 253_000_000.0
CHARTED = 8


@dataclass(slots=True)
class _Consignee:
    total: float = 0.0
    admissions: int = 0
    refunds: int = 0
    first: float = 0.0
    last: float = 0.0
    members: set[str] = field(default_factory=set)
    reached_at: float | None = None
    reached_by: str = ""
    reached_decision: str = ""
    below_again_at: float | None = None


class AiaTrigger:
    """The AIA trigger report's fold (see the module's docstring)."""

    kind = "aia-trigger"
    title = "AIA certification trigger: cumulative TPP per consignee"

    def __init__(self, period: Period, step: float, trigger: float = AIA_TRIGGER_TPP) -> None:
        self.period, self.step, self.trigger = period, step, trigger
        self.consignees: dict[str, _Consignee] = {}
        self.series = Peaks()

    def sample(self, t: float, fold: Fold) -> None:
        self.series.open(t, {name: c.total for name, c in self.consignees.items()})

    def _consignee(self, fold: Fold, tenant: str) -> tuple[str, _Consignee]:
        facts = fold.tenants.get(tenant)
        name = facts.consignee if facts is not None else f"tenant:{tenant}"
        entry = self.consignees.get(name)
        if entry is None:
            entry = self.consignees[name] = _Consignee()
        entry.members.add(tenant)
        return name, entry

    def record(self, ts: float, record: Mapping[str, Any], events: Events, fold: Fold) -> None:
        a = events.admitted
        if a is not None and a.tpp > 0:
            name, c = self._consignee(fold, a.tenant)
            c.total += a.tpp
            c.admissions += 1
            c.first = c.first or ts
            c.last = ts
            if c.reached_at is None and c.total >= self.trigger:
                c.reached_at, c.reached_by, c.reached_decision = ts, a.tenant, a.lease_id
            self.series.bump(name, c.total)
        for _, lease in events.refunded:
            tpp = lease_tpp(lease.debits)
            if tpp <= 0:
                continue
            name, c = self._consignee(fold, lease.tenant)
            c.total -= tpp
            c.refunds += 1
            if c.reached_at is not None and c.below_again_at is None and c.total < self.trigger:
                c.below_again_at = ts

    def finish(self, fold: Fold) -> Report:
        series = self.series.done()
        starts = self.series.starts
        reached = []
        rows = []
        for name in sorted(self.consignees, key=lambda n: (-self.consignees[n].total, n)):
            c = self.consignees[name]
            members = ", ".join(sorted(c.members))
            tiers = sorted({f.tier for m in c.members if (f := fold.tenants.get(m)) is not None and f.tier is not None})
            tier: Cell = ",".join(str(t) for t in tiers) or None
            rows.append((name, members, tier, c.total, c.total / self.trigger, c.admissions, c.refunds,
                         iso_time(c.first) if c.first else None, iso_time(c.last) if c.last else None))  # fmt: skip
            if c.reached_at is not None:
                reached.append((name, members, tier, iso_time(c.reached_at), c.reached_by, c.reached_decision,
                                self.period.holds(c.reached_at), c.total,
                                iso_time(c.below_again_at) if c.below_again_at is not None else None))  # fmt: skip
        reached.sort(key=lambda row: (str(row[3]), str(row[0])))
        charted = top(series, CHARTED)
        trigger_text = f"{self.trigger:,.0f}"
        tables = (
            Table(
                "reached", f"Consignees whose cumulative TPP reached {trigger_text}",
                ("consignee", "tenants", "tier", "reached_at", "reached_by", "decision_id", "in_period",
                 "cumulative_tpp", "below_again_at"),
                tuple(reached),
                "reached_at: the admission that took the consignee's cumulative TPP to the trigger; below_again_at: "
                "a refund took it back under",
            ),
            Table(
                "consignees", "Cumulative TPP per consignee",
                ("consignee", "tenants", "tier", "cumulative_tpp", "of_trigger", "admissions", "refunds",
                 "first_admission", "last_admission"),
                tuple(rows),
            ),
            series_table("series_cumulative", "Cumulative TPP over time", starts, series, charted),
        )  # fmt: skip
        charts = (
            chart("cumulative", f"Cumulative TPP per consignee (the {CHARTED} highest; per {step_name(self.step)})",
                  "cumulative TPP", starts, series, charted, [("AIA trigger", self.trigger)], "series_cumulative"),
        )  # fmt: skip
        summary: tuple[tuple[str, Cell], ...] = (
            ("trigger (cumulative TPP)", self.trigger),
            ("consignees", len(self.consignees)),
            ("consignees that reached it", len(reached)),
            ("of them in the period", sum(1 for r in reached if r[6])),
        )
        return Report(self.kind, self.title, summary, tables, charts)
