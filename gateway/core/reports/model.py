"""What a report is made of (a summary, tables, charts' series), its period, and the calendar it reads."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

DAY_S = 86_400.0
Cell = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Table:
    """Rows under named columns; a renderer shows `title` and `note` and the rows as they are."""

    name: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class Line:
    """One series of a chart: a value at each of the chart's times (None: no value there)."""

    label: str
    values: tuple[float | None, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    """A time chart: series over `times` (epoch seconds, each a bucket's start) and horizontal limit lines."""

    name: str
    title: str
    y_label: str
    times: tuple[float, ...]
    lines: tuple[Line, ...]
    limits: tuple[tuple[str, float], ...] = ()
    table: str = ""  # the table that carries the same numbers
    log: bool = False  # a logarithmic value axis


@dataclass(frozen=True, slots=True)
class Report:
    """A computed report: `meta` is filled in by the shell (what was verified, from which ledger)."""

    kind: str
    title: str
    summary: tuple[tuple[str, Cell], ...]
    tables: tuple[Table, ...]
    charts: tuple[Chart, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


@dataclass(frozen=True, slots=True)
class Period:
    """The report's window [start, end) and its date `at` (from the ledger's last record, or --at)."""

    start: float
    end: float
    at: float

    def holds(self, ts: float) -> bool:
        return self.start <= ts < self.end


def iso_time(ts: float) -> str:
    """UTC to the second, as every report prints times."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def day_start(ts: float) -> float:
    return math.floor(ts / DAY_S) * DAY_S


def epoch_of(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def plus_days(ts: float, days: int) -> str:
    """The date `days` calendar days after the UTC date of `ts` (a due date)."""
    return (datetime.fromtimestamp(ts, UTC).date() + timedelta(days=days)).isoformat()


# -- half-years (the VEU semi-annual report) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Half:
    """1 Jan-30 Jun (due 15 Jul) or 1 Jul-31 Dec (due 15 Jan of the next year), UTC."""

    year: int
    half: int  # 1 or 2

    @classmethod
    def of(cls, ts: float) -> "Half":
        day = datetime.fromtimestamp(ts, UTC)
        return cls(day.year, 1 if day.month <= 6 else 2)

    @property
    def name(self) -> str:
        return f"{self.year}-H{self.half}"

    @property
    def start(self) -> float:
        return epoch_of(date(self.year, 1 if self.half == 1 else 7, 1))

    @property
    def end(self) -> float:
        return self.next().start

    @property
    def due(self) -> date:
        return date(self.year, 7, 15) if self.half == 1 else date(self.year + 1, 1, 15)

    def next(self) -> "Half":
        return Half(self.year, 2) if self.half == 1 else Half(self.year + 1, 1)


def halves(start: float, end: float) -> list[Half]:
    """Every half-year that overlaps [start, end)."""
    out, half = [], Half.of(start)
    while half.start < end:
        out.append(half)
        half = half.next()
    return out


# -- time buckets for the charts ------------------------------------------------------------------

STEPS = (1.0, 10.0, 60.0, 600.0, 3600.0, 6 * 3600.0, DAY_S, 7 * DAY_S, 30 * DAY_S, 91 * DAY_S)
MAX_POINTS = 400


def step_for(span_s: float, max_points: int = MAX_POINTS) -> float:
    """The smallest bucket (a second, 10 s, a minute, 10 min, an hour, 6 hours, a day, a week, 30 or 91 days)
    giving at most `max_points` buckets."""
    for step in STEPS:
        if span_s / step <= max_points:
            return step
    return STEPS[-1] * math.ceil(span_s / STEPS[-1] / max_points)


def buckets(period: Period, step: float) -> list[float]:
    """Bucket starts from the period's start, aligned to UTC midnight for steps of a day or more."""
    first = day_start(period.start) if step >= DAY_S else math.floor(period.start / step) * step
    count = max(1, math.ceil((period.end - first) / step))
    return [first + i * step for i in range(count)]


def step_name(step: float) -> str:
    for unit, size in (("d", DAY_S), ("h", 3600.0), ("min", 60.0)):
        if step >= size:
            return f"{step / size:g} {unit}"
    return f"{step:g} s"


def default_start(first: float, last: float) -> float:
    """Where a period starts when not told: the first record's time, down to a whole bucket (midnight from a day)."""
    step = step_for(max(last - first, 1.0))
    return day_start(first) if step >= DAY_S else math.floor(first / step) * step
