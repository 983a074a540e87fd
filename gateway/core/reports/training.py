"""Large training runs: foreign persons' jobs that result, or could result, in training a model at or near the
thresholds, with lineage totals and the due date of each (15 days, as the proposed KYC rule sets for such reports).

The thresholds are the pack's: caps.yaml's `training.threshold_ops` (1e26 operations in ai-diffusion-2025), and
where the pack has a weights.yaml its `bio_training_ops` (1e23) for the operations of jobs whose declared purpose
is one of its biological-sequence data domains; and any other given (`--threshold`).

A tenant is a foreign person unless its recorded headquarters is US and so is its parent's (when one is
recorded); a headquarters not recorded counts as foreign. A job's operations are its record's
`cost.training_ops`; they count towards its lineage (`job.lineage`, `default` when none was declared) and the
tenant's total across lineages from its admission, and come off again if the lease is given back whole (a
refund, or the old lease of an accepted update). Jobs the pack exempted (`exemptions`: a declared exempt purpose
such as inference, an exempt lineage) are not counted, as the gateway does not count them; they are tallied
apart. A job is listed when the job alone, its lineage's total or the tenant's total reaches `near` (a fraction)
of a threshold: `reached` at or over it, `near` below.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.reports.fold import Events, Fold, TenantFacts, number, text
from gateway.core.reports.model import Cell, Chart, Line, Period, Report, Table, iso_time, plus_days, step_name
from gateway.core.reports.series import Peaks, series_table, top

DUE_DAYS = 15
MAX_ROWS = 10_000
CHARTED = 8


@dataclass(frozen=True, slots=True)
class Threshold:
    """Operations that make a model's training reportable; with `domains`, counting only jobs declaring one."""

    name: str
    ops: float
    domains: frozenset[str] = frozenset()

    def counts(self, purpose: str | None) -> bool:
        return not self.domains or purpose in self.domains


def foreign(facts: TenantFacts | None) -> bool:
    """Not a US person: headquarters or parent headquarters outside the US, or not recorded."""
    return facts is None or facts.headquarters != "US" or (facts.parent or facts.headquarters) != "US"


@dataclass(slots=True)
class _Lineage:
    totals: list[float]  # per threshold: the operations it counts
    jobs: int = 0
    largest: float = 0.0
    first: float = 0.0
    last: float = 0.0
    near_at: float | None = None
    reached_at: float | None = None


@dataclass(slots=True)
class _Counted:
    tenant: str
    lineage: str
    amounts: list[float] = field(default_factory=list)


class LargeTraining:
    """The large-training report's fold (see the module's docstring)."""

    kind = "large-training"
    title = "Large training runs by foreign persons"

    def __init__(self, period: Period, step: float, thresholds: Sequence[Threshold], near: float) -> None:
        self.period, self.step = period, step
        self.thresholds = tuple(sorted(set(thresholds), key=lambda t: (t.ops, t.name)))
        self.near = near
        self.lineages: dict[tuple[str, str], _Lineage] = {}
        self.tenant_totals: dict[str, list[float]] = {}
        self.counted: dict[str, _Counted] = {}  # live leases counted, to take back on a refund
        self.jobs: list[tuple[Cell, ...]] = []
        self.listed = 0
        self.exempt: dict[tuple[str, str], list[float]] = {}  # (tenant, exemption) -> [jobs, ops]
        self.refused = 0
        self.series = Peaks()

    def _zero(self) -> list[float]:
        return [0.0] * len(self.thresholds)

    def sample(self, t: float, fold: Fold) -> None:
        # Only a lease the rebuild still holds can be given back: forget the rest.
        self.counted = {i: v for i, v in self.counted.items() if i in fold.builder.leases}
        self.series.open(t, {f"{tn}/{ln}": max(v.totals, default=0.0) for (tn, ln), v in self.lineages.items()})

    def level(self, values: Sequence[float]) -> tuple[Threshold, str, float] | None:
        """The threshold `values` (one per threshold) come closest to, relatively, if at or near one."""
        best: tuple[float, Threshold] | None = None
        for threshold, value in zip(self.thresholds, values, strict=True):
            ratio = value / threshold.ops
            if ratio >= self.near and (best is None or ratio > best[0]):
                best = (ratio, threshold)
        if best is None:
            return None
        return best[1], "reached" if best[0] >= 1.0 else "near", best[0]

    def record(self, ts: float, record: Mapping[str, Any], events: Events, fold: Fold) -> None:
        for lease_id, _ in events.refunded:
            given = self.counted.pop(lease_id, None)
            if given is not None:
                entry, total = self.lineages[(given.tenant, given.lineage)], self.tenant_totals[given.tenant]
                for i, amount in enumerate(given.amounts):
                    entry.totals[i] -= amount
                    total[i] -= amount
        if record.get("kind") == "decision" and record.get("decision") == "deny" and self.period.holds(ts):
            codes = {r.get("code") for r in record.get("reasons") or [] if isinstance(r, Mapping)}
            self.refused += "licence_required" in codes
        a = events.admitted
        cost = a.record.get("cost") if a is not None else None
        ops = number(cost.get("training_ops")) if isinstance(cost, Mapping) else None
        if a is None or not ops or not foreign(facts := fold.tenants.get(a.tenant)):
            return
        job = record.get("job")
        job = job if isinstance(job, Mapping) else {}
        lineage, purpose = text(job.get("lineage")) or "default", text(job.get("purpose"))
        exemptions = [str(e) for e in record.get("exemptions") or [] if isinstance(e, str)]
        if exemptions:
            tally = self.exempt.setdefault((a.tenant, exemptions[0]), [0.0, 0.0])
            tally[0] += 1
            tally[1] += ops
            return
        amounts = [ops if t.counts(purpose) else 0.0 for t in self.thresholds]
        entry = self.lineages.setdefault((a.tenant, lineage), _Lineage(self._zero(), first=ts))
        total = self.tenant_totals.setdefault(a.tenant, self._zero())
        for i, amount in enumerate(amounts):
            entry.totals[i] += amount
            total[i] += amount
        entry.jobs += 1
        entry.largest = max(entry.largest, ops)
        entry.last = ts
        self.counted[a.lease_id] = _Counted(a.tenant, lineage, amounts)
        self.series.bump(f"{a.tenant}/{lineage}", max(entry.totals, default=0.0))
        found = [(lvl, what) for what, values in (("job", amounts), ("lineage", entry.totals), ("tenant total", total))
                 if (lvl := self.level(values)) is not None]  # fmt: skip
        if not found:
            return
        (threshold, level, _), basis = max(found, key=lambda x: x[0][2])
        if level == "reached" and entry.reached_at is None:
            entry.reached_at = ts
        if entry.near_at is None:
            entry.near_at = ts
        if not self.period.holds(ts):
            return
        self.listed += 1
        if len(self.jobs) < MAX_ROWS:
            assert facts is not None  # a tenant with no record of its countries never gets here
            countries = "/".join(c or "-" for c in (facts.location, facts.headquarters, facts.parent))
            index = self.thresholds.index(threshold)
            self.jobs.append((iso_time(ts), plus_days(ts, DUE_DAYS), a.tenant, countries, facts.tier, a.lease_id,
                              lineage, purpose, ops, entry.totals[index], total[index], threshold.name, threshold.ops,
                              level, basis, str(record.get("decision"))))  # fmt: skip

    def finish(self, fold: Fold) -> Report:
        series = self.series.done()
        starts = self.series.starts
        lineage_rows = []
        for (tenant, lineage), e in sorted(self.lineages.items()):
            found = self.level(e.totals)
            ops = e.totals[self.thresholds.index(found[0])] if found else max(e.totals, default=0.0)
            lineage_rows.append((tenant, lineage, ops, e.jobs, e.largest, found[0].name if found else None,
                                 found[1] if found else None, iso_time(e.near_at) if e.near_at else None,
                                 iso_time(e.reached_at) if e.reached_at else None, iso_time(e.first),
                                 iso_time(e.last)))  # fmt: skip
        tenant_rows = []
        for tenant, totals in sorted(self.tenant_totals.items()):
            found = self.level(totals)
            tenant_rows.append((tenant, *totals, found[0].name if found else None, found[1] if found else None))
        exempt_rows = [(t, what, int(n), ops) for (t, what), (n, ops) in sorted(self.exempt.items())]
        charted = top(series, CHARTED)
        lines = [Line(n, tuple(series[n])) for n in charted]
        limits = tuple((f"{t.name} {t.ops:.3g}", t.ops) for t in self.thresholds) + tuple(
            (f"near ({self.near:g} x {t.ops:.3g})", self.near * t.ops) for t in self.thresholds)  # fmt: skip
        charts = (
            Chart("lineages", f"Training operations per lineage of foreign tenants (the {CHARTED} largest; per "
                  f"{step_name(self.step)}; log scale)", "operations", tuple(starts), tuple(lines), limits,
                  "series_lineages", log=True),
        )  # fmt: skip
        more = self.listed - len(self.jobs)
        names = tuple(f"{t.name}_ops" for t in self.thresholds)
        tables = (
            Table("jobs", "Jobs at or near a threshold, each with its report's due date",
                  ("admitted_at", "due", "tenant", "countries", "tier", "decision_id", "lineage", "purpose", "job_ops",
                   "lineage_total_ops", "tenant_total_ops", "threshold", "threshold_ops", "level", "by", "decision"),
                  tuple(self.jobs),
                  f"due: {DUE_DAYS} days after the admission (UTC date); near: at least {self.near:g} of a threshold; "
                  "totals count the operations the threshold counts" + (f"; {more} more jobs not listed (narrow "
                                                                         "--from/--to)" if more > 0 else "")),
            Table("lineages", "Lineage totals of foreign tenants",
                  ("tenant", "lineage", "lineage_total_ops", "jobs", "largest_job_ops", "threshold", "level",
                   "near_since", "reached_at", "first_job", "last_job"), tuple(lineage_rows),
                  "totals since the ledger began, up to the period's end; lineage_total_ops counts what the closest "
                  "threshold counts (all operations, unless it counts a data domain's only)"),
            Table("tenants", "Totals across lineages per foreign tenant", ("tenant", *names, "threshold", "level"),
                  tuple(tenant_rows)),
            Table("exempt", "Jobs not counted: the pack's exemptions", ("tenant", "exemption", "jobs", "ops"),
                  tuple(exempt_rows), "purpose: the tenant's own declaration; lineage: the pack's exempt list"),
            Table("thresholds", "Thresholds", ("threshold", "threshold_ops", "near_ops", "counts"),
                  tuple((t.name, t.ops, self.near * t.ops, ", ".join(sorted(t.domains)) or "every job")
                        for t in self.thresholds)),
            series_table("series_lineages", "Lineage totals over time", starts, series, charted),
        )  # fmt: skip
        summary: tuple[tuple[str, Cell], ...] = (
            ("thresholds (operations)", ", ".join(f"{t.name} {t.ops:.3g}" for t in self.thresholds)),
            ("near: fraction of a threshold", self.near),
            ("jobs listed in the period", self.listed),
            ("lineages at or near a threshold", sum(1 for r in lineage_rows if r[6] is not None)),
            ("refused licence_required in the period", self.refused),
            ("earliest due date", min((str(r[1]) for r in self.jobs), default=None)),
        )
        return Report(self.kind, self.title, summary, tables, charts)
