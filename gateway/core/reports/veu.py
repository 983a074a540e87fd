"""VEU semi-annual report: for National and Universal VEU tenants, per half-year (1 Jan-30 Jun, due 15 Jul;
1 Jul-31 Dec, due 15 Jan), the capacity held by country and the customer list, against the NVEU schedule.

A VEU tenant is one whose admitted decisions were authorised on `veu_national` or `veu_universal`; what it
holds is its `veu:<tenant>` counter (TPP held at once). Its country is its recorded location. The NVEU
schedule and the UVEU cap are the pack's (caps.yaml); half-years are in UTC.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.core.caps import CapSettings
from gateway.core.reports.fold import Events, Fold, number
from gateway.core.reports.model import (
    Cell,
    Chart,
    Half,
    Line,
    Period,
    Report,
    Table,
    buckets,
    epoch_of,
    halves,
    iso_day,
    iso_time,
)
from gateway.core.reports.series import Peaks, series_table, top

KINDS = ("national", "universal")
CHARTED = 8


@dataclass(slots=True)
class _Seen:
    """One VEU tenant (or one country of a kind) within one half-year."""

    peak: float = 0.0
    peak_at: float = 0.0
    admissions: int = 0
    tpp_hours: float = 0.0
    first: float = 0.0
    last: float = 0.0
    end: float = 0.0  # held at the half's end (or the report's date)


class VeuReport:
    """The VEU report's fold (see the module's docstring)."""

    kind = "veu"
    title = "VEU semi-annual report"

    def __init__(self, period: Period, step: float, caps: CapSettings | None) -> None:
        self.period, self.step, self.caps = period, step, caps
        self.halves = halves(period.start, period.end)
        bounds = {h.start for h in self.halves if period.start < h.start < period.end}
        self.starts = sorted(set(buckets(period, step)) | bounds)
        self.half: Half | None = None
        self.tenants: dict[tuple[str, str], _Seen] = {}  # (half, tenant)
        self.countries: dict[tuple[str, str, str], _Seen] = {}  # (half, kind, country)
        self.series = Peaks()
        self.known: dict[str, tuple[str, str]] = {}  # VEU tenants: id -> (kind, location)

    def _veu(self, fold: Fold) -> dict[str, tuple[str, str]]:
        """VEU tenants: id -> (kind, location), as their latest admission recorded them."""
        return self.known

    def _country_sums(self, fold: Fold) -> dict[tuple[str, str], float]:
        sums: dict[tuple[str, str], float] = {}
        for tenant, where in self._veu(fold).items():
            sums[where] = sums.get(where, 0.0) + fold.held.get(f"veu:{tenant}", 0.0)
        return sums

    def _touch(self, fold: Fold, ts: float, tenant: str | None = None) -> None:
        """Raise the half's peaks to what is held now (all VEU tenants, or the one that just moved)."""
        if self.half is None:
            return
        veu = self._veu(fold)
        for t in [tenant] if tenant is not None else list(veu):
            if t not in veu:
                continue
            seen = self.tenants.setdefault((self.half.name, t), _Seen())
            held = fold.held.get(f"veu:{t}", 0.0)
            if held > seen.peak:
                seen.peak, seen.peak_at = held, ts
        for (kind, country), held in self._country_sums(fold).items():
            seen = self.countries.setdefault((self.half.name, kind, country), _Seen())
            if held > seen.peak:
                seen.peak, seen.peak_at = held, ts

    def _close(self, fold: Fold) -> None:
        if self.half is None:
            return
        name = self.half.name
        for tenant in self._veu(fold):
            self.tenants.setdefault((name, tenant), _Seen()).end = fold.held.get(f"veu:{tenant}", 0.0)
        for (kind, country), held in self._country_sums(fold).items():
            self.countries.setdefault((name, kind, country), _Seen()).end = held

    def sample(self, t: float, fold: Fold) -> None:
        half = Half.of(t)
        if half != self.half:
            self._close(fold)
            self.half = half
        self._touch(fold, t)
        self.series.open(t, {tenant: fold.held.get(f"veu:{tenant}", 0.0) for tenant in self._veu(fold)})

    def record(self, ts: float, record: Mapping[str, Any], events: Events, fold: Fold) -> None:
        a = events.admitted
        facts = fold.tenants.get(a.tenant) if a is not None else None
        if a is None or facts is None or facts.veu not in KINDS:
            return
        self.known[a.tenant] = (str(facts.veu), facts.location or "unknown")
        if self.half is None or not self.period.holds(ts):
            return
        cost = record.get("cost")
        hours = (number(cost.get("tpp_hours")) or 0.0) if isinstance(cost, Mapping) else 0.0
        seen = self.tenants.setdefault((self.half.name, a.tenant), _Seen())
        country = self.countries.setdefault((self.half.name, facts.veu, facts.location or "unknown"), _Seen())
        for entry in (seen, country):
            entry.admissions += 1
            entry.tpp_hours += hours
            entry.first = entry.first or ts
            entry.last = ts
        self._touch(fold, ts, a.tenant)
        self.series.bump(a.tenant, fold.held.get(f"veu:{a.tenant}", 0.0))

    def _cap(self, kind: str, ts: float) -> float | None:
        if self.caps is None:
            return None
        if kind == "national":
            return self.caps.national_veu_cap(datetime.fromtimestamp(ts, UTC).date())
        return self.caps.universal_veu_cap_tpp

    def finish(self, fold: Fold) -> Report:
        at = min(self.period.at, self.period.end)
        self._close(fold)
        series = self.series.done()
        veu = self._veu(fold)
        half_rows, country_rows, customer_rows = [], [], []
        for half in self.halves:
            complete = half.end <= at
            until = min(half.end, at)
            customers = sorted(t for (h, t) in self.tenants if h == half.name)
            counts = {k: sum(1 for t in customers if veu.get(t, ("", ""))[0] == k) for k in KINDS}
            half_rows.append((half.name, iso_day(half.start), iso_day(half.end - 1), half.due.isoformat(),
                              "complete" if complete else f"in progress at {iso_time(at)}",
                              counts["national"], counts["universal"], self._cap("national", until - 1)))  # fmt: skip
            for (h, kind, country), seen in sorted(self.countries.items()):
                if h != half.name:
                    continue
                members = sorted(t for t in customers if veu.get(t) == (kind, country))
                country_rows.append((half.name, kind, country, seen.peak, iso_time(seen.peak_at) if seen.peak_at
                                     else None, seen.end, seen.admissions, ", ".join(members)))  # fmt: skip
            for tenant in customers:
                seen = self.tenants[(half.name, tenant)]
                f = fold.tenants[tenant]
                kind = veu.get(tenant, ("", ""))[0]
                cap_peak = self._cap(kind, seen.peak_at or half.start)
                cap_end = self._cap(kind, until - 1)
                customer_rows.append((half.name, kind, tenant, f.location, f.headquarters, f.parent,
                                      iso_time(seen.first) if seen.first else None,
                                      iso_time(seen.last) if seen.last else None, seen.admissions, seen.tpp_hours,
                                      seen.peak, iso_time(seen.peak_at) if seen.peak_at else None, cap_peak,
                                      seen.end, cap_end))  # fmt: skip
        steps = sorted(self.caps.national_veu_schedule, key=lambda s: s.since) if self.caps is not None else []
        schedule = []
        for i, step in enumerate(steps):
            until = epoch_of(steps[i + 1].since) if i + 1 < len(steps) else float("inf")
            in_force = epoch_of(step.since) < self.period.end and until > self.period.start
            schedule.append((step.since.isoformat(), step.tpp, in_force))
        charted = top(series, CHARTED)
        starts = self.series.starts
        # The NVEU schedule (billions of TPP) is in its table and beside each peak: drawn, it would flatten the rest.
        lines = tuple(Line(t, tuple(series[t])) for t in charted)
        charts = (
            Chart("veu_held", f"TPP held per VEU tenant (the {CHARTED} highest)", "TPP held", tuple(starts), lines, (),
                  "series_veu"),
        )  # fmt: skip
        tables = (
            Table("halves", "Half-years and their due dates",
                  ("half", "from", "to", "due", "status", "national_veu_tenants", "universal_veu_tenants",
                   "nveu_cap_at_end"), tuple(half_rows)),
            Table("capacity_by_country", "Capacity held by VEU tenants, by country",
                  ("half", "veu", "country", "peak_held_tpp", "peak_at", "held_at_end_tpp", "admissions", "tenants"),
                  tuple(country_rows),
                  "country: the tenants' recorded location; held at end: at the half's end, or the report's date"),
            Table("customers", "VEU customers (NVEU customer list and UVEU tenants)",
                  ("half", "veu", "tenant", "location", "headquarters", "parent", "first_admission", "last_admission",
                   "admissions", "tpp_hours", "peak_held_tpp", "peak_at", "cap_at_peak_tpp", "held_at_end_tpp",
                   "cap_at_end_tpp"), tuple(customer_rows),
                  "cap: the NVEU schedule step in force (national) or the UVEU cap (universal; none: uncapped)"),
            Table("schedule", "The pack's NVEU schedule", ("from", "tpp", "in_force_in_period"), tuple(schedule)),
            series_table("series_veu", "Held per VEU tenant over time", starts, series, charted),
        )  # fmt: skip
        summary: tuple[tuple[str, Cell], ...] = (
            ("half-years", ", ".join(h.name for h in self.halves)),
            ("national VEU tenants", sum(1 for k, _ in veu.values() if k == "national")),
            ("universal VEU tenants", sum(1 for k, _ in veu.values() if k == "universal")),
            ("due dates", ", ".join(f"{h.name}: {h.due.isoformat()}" for h in self.halves)),
        )
        return Report(self.kind, self.title, summary, tables, charts)
