"""Time series for the charts: the highest value of each named quantity within each bucket, and the tables and
charts that show the top few of them."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping

from gateway.core.reports.model import Cell, Chart, Line, Table, iso_time


class Peaks:
    """Per name, the highest value within each bucket: `open` at every bucket start with the values then,
    `bump` whenever a value rises inside the bucket. Memory: names x buckets, 8 bytes each."""

    def __init__(self) -> None:
        self.series: dict[str, array[float]] = {}
        self.current: dict[str, float] = {}
        self.starts: list[float] = []

    def _close(self) -> None:
        for name in self.current:
            if name not in self.series:
                self.series[name] = array("d", [0.0] * (len(self.starts) - 1))
        for name, values in self.series.items():
            values.append(self.current.get(name, 0.0))

    def open(self, start: float, values: Mapping[str, float]) -> None:
        if self.starts:
            self._close()
        self.starts.append(start)
        self.current = {name: v for name, v in values.items() if v > 0}

    def bump(self, name: str, value: float) -> None:
        if value > self.current.get(name, 0.0):
            self.current[name] = value

    def done(self) -> dict[str, array[float]]:
        """Every series, one value per bucket (the last bucket closed here)."""
        if self.starts:
            self._close()
            self.current = {}
        return self.series

    def peak(self, name: str) -> float:
        values = self.series.get(name)
        return max(values) if values else 0.0


class Counts:
    """Per name, how many times it occurred within each bucket: `open` at every bucket start, `add` as it occurs."""

    def __init__(self) -> None:
        self.series: dict[str, array[float]] = {}
        self.starts: list[float] = []

    def open(self, start: float) -> None:
        self.starts.append(start)
        for values in self.series.values():
            values.append(0.0)

    def add(self, name: str, count: float = 1.0) -> None:
        if not self.starts:
            return
        values = self.series.get(name)
        if values is None:
            values = self.series[name] = array("d", [0.0] * len(self.starts))
        values[-1] += count

    def done(self) -> dict[str, array[float]]:
        return self.series


def top(series: Mapping[str, array[float]], count: int, names: Iterable[str] | None = None) -> list[str]:
    """The `count` names with the highest peak (ties by name), among `names` if given."""
    pool = [n for n in (series if names is None else names) if n in series and max(series[n], default=0.0) > 0]
    return sorted(pool, key=lambda n: (-max(series[n]), n))[:count]


def series_table(name: str, title: str, starts: list[float], series: Mapping[str, array[float]],
                 names: list[str], note: str = "") -> Table:  # fmt: skip
    """One row per bucket: its start and each charted name's value in it."""
    rows: list[tuple[Cell, ...]] = [(iso_time(t), *(series[n][i] for n in names)) for i, t in enumerate(starts)]
    note = note or "each value is the highest within the bucket that starts at the row's time"
    return Table(name, title, ("bucket_start", *names), tuple(rows), note)


def chart(name: str, title: str, y_label: str, starts: list[float], series: Mapping[str, array[float]],
          names: list[str], limits: Iterable[tuple[str, float]] = (), table: str = "") -> Chart:  # fmt: skip
    lines = tuple(Line(n, tuple(series[n])) for n in names)
    return Chart(name, title, y_label, tuple(starts), lines, tuple(limits), table)
