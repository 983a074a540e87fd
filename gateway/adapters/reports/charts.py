"""Charts as inline SVG, drawn by matplotlib (Agg, no display) the same way every time: text as paths (no font
files referenced), ids salted with the chart's name, no date in the metadata, no external reference."""

import io
import re
from datetime import UTC, datetime
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import matplotlib.ticker as mticker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gateway.core.reports.model import Chart

matplotlib.use("Agg")  # no display, ever (pyplot is never imported: each chart is a Figure of its own)

_RC: dict[Any, Any] = {
    "svg.fonttype": "path",
    "svg.image_inline": True,
    "font.family": "DejaVu Sans",
    "font.size": 8.0,
    "path.simplify": True,
    "timezone": "UTC",
}
COLOURS = ("#1f4e79", "#c55a11", "#548235", "#7030a0", "#bf9000", "#2e75b6", "#a5002b", "#595959", "#00806e")
_PROLOGUE = re.compile(rb"\A.*?(?=<svg)", re.S)
_METADATA = re.compile(rb"<metadata>.*?</metadata>\s*", re.S)
_NAMESPACES = re.compile(rb'\s+xmlns(?::xlink)?="[^"]*"')
_IDS = re.compile(rb'(\bid="|href="#|url\(#)([^")]+)')


def svg(chart: Chart) -> str:
    """The chart as an `<svg>` element to put straight into HTML (no XML prologue, metadata or namespace URLs)."""
    rc: dict[Any, Any] = {**_RC, "svg.hashsalt": f"exportgate-{chart.name}"}
    with matplotlib.rc_context(rc):
        figure = Figure(figsize=(9.0, 3.6), dpi=72)
        axes = figure.add_subplot()
        _draw(axes, chart)
        out = io.BytesIO()
        figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    data = _PROLOGUE.sub(b"", out.getvalue(), count=1)
    data = _METADATA.sub(b"", data, count=1)
    data = _NAMESPACES.sub(b"", data)
    # Several charts share one page: each one's ids (glyphs, clip paths, groups) get the chart's name in front,
    # so no id repeats in the document and every reference finds its own chart's element.
    prefix = f"{chart.name}-".encode()
    data = _IDS.sub(lambda m: m.group(1) + prefix + m.group(2), data)
    title = chart.title.replace("&", "&amp;").replace("<", "&lt;")
    data = data.replace(b"<svg ", f'<svg role="img" aria-label="{title}" '.encode(), 1)
    return data.decode()


def _draw(axes: Axes, chart: Chart) -> None:
    starts = list(chart.times)
    if starts:  # the last bucket is as long as the one before it (an hour when there is one only)
        starts.append(starts[-1] + (starts[-1] - starts[-2] if len(starts) > 1 else 3600.0))
    times = [float(mdates.date2num(datetime.fromtimestamp(t, UTC))) for t in starts]  # type: ignore[no-untyped-call]
    drawn = False
    for i, line in enumerate(chart.lines):
        values = [*line.values, line.values[-1]] if line.values else []
        points = [(t, v) for t, v in zip(times, values, strict=True) if v is not None]
        if chart.log:
            points = [(t, v) for t, v in points if v > 0]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        axes.step(xs, ys, where="post", label=line.label, linewidth=1.3, color=COLOURS[i % len(COLOURS)])
        drawn = True
    for i, (label, value) in enumerate(chart.limits):
        if value is None or (chart.log and value <= 0):
            continue
        axes.axhline(value, color="#7f7f7f", linewidth=1.0, linestyle=("--", ":", "-.")[i % 3], label=label)
        drawn = True
    if chart.log and drawn:
        axes.set_yscale("log")
    if not drawn:
        axes.text(0.5, 0.5, "nothing to show in this period", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylabel(chart.y_label)
    axes.grid(True, linewidth=0.4, color="#d9d9d9")
    if times:
        axes.set_xlim(times[0], times[-1])
        locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    if not chart.log:
        axes.ticklabel_format(axis="y", style="plain", useOffset=False)
        axes.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        axes.set_ylim(bottom=0)
    if drawn:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=7)
