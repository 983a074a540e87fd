"""A computed report as JSON, CSV or one self-contained HTML file. The same tables in each: JSON and CSV write
every number in full (Python's shortest round-tripping form), HTML formats them for reading and draws the charts
(inline SVG) from the series the tables carry. Nothing here reads a clock or the network: the same report gives
the same bytes."""

import csv
import html
import io
import json
import math
from collections.abc import Mapping
from typing import Any

from gateway.adapters.reports.charts import svg
from gateway.core.reports.model import Cell, Report, Table

FORMATS = ("html", "csv", "json")
RATIO_COLUMNS = ("used", "of_trigger")


def render(report: Report, fmt: str) -> bytes:
    if fmt == "json":
        return to_json(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "html":
        return to_html(report)
    raise ValueError(f"unknown format {fmt!r}")


def _plain(value: Any) -> Any:
    """A JSON-ready value: tuples as lists, mappings with their keys as text, non-finite floats as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def as_dict(report: Report) -> dict[str, Any]:
    """The report as one JSON object: header, summary, tables (rows as objects) and which table each chart draws."""
    return {
        "report": report.kind,
        "title": report.title,
        "meta": _plain(report.meta),
        "summary": {label: _plain(value) for label, value in report.summary},
        "notes": list(report.notes),
        "tables": {
            t.name: {
                "title": t.title,
                "note": t.note,
                "columns": list(t.columns),
                "rows": [dict(zip(t.columns, _plain(row), strict=True)) for row in t.rows],
            }
            for t in report.tables
        },
        "charts": [{"name": c.name, "title": c.title, "table": c.table} for c in report.charts],
    }


def to_json(report: Report) -> bytes:
    return (json.dumps(as_dict(report), indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _csv_cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def to_csv(report: Report) -> bytes:
    """One CSV file of sections: `[report]` (header and summary as field,value rows), then each table as
    `[name]`, its header row and its rows, a blank row between sections."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["[report]"])
    writer.writerow(["field", "value"])
    writer.writerow(["report", report.kind])
    writer.writerow(["title", report.title])
    for key, value in _flat(report.meta):
        writer.writerow([key, value])
    for label, cell in report.summary:
        writer.writerow([f"summary.{label}", _csv_cell(cell)])
    for note in report.notes:
        writer.writerow(["note", note])
    for table in report.tables:
        writer.writerow([])
        writer.writerow([f"[{table.name}]"])
        writer.writerow(list(table.columns))
        writer.writerows([_csv_cell(c) for c in row] for row in table.rows)
    return out.getvalue().encode()


def _flat(value: Any, prefix: str = "meta") -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        return [pair for k, v in value.items() for pair in _flat(v, f"{prefix}.{k}")]
    if isinstance(value, list | tuple):
        return [pair for i, v in enumerate(value) for pair in _flat(v, f"{prefix}.{i}")]
    return [(prefix, _csv_cell(value))]


# -- HTML ------------------------------------------------------------------------------------------

_CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; font-size: 10pt; color: #111; margin: 1.5em; }
h1 { font-size: 16pt; margin: 0 0 .3em; } h2 { font-size: 12pt; margin: 1.4em 0 .4em; }
.meta { border: 1px solid #999; padding: .5em .8em; margin: .5em 0 1em; background: #f4f4f4; }
.meta p { margin: .2em 0; } .statement { font-weight: bold; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: .15em 1.2em; margin: .5em 0; }
dl.summary dt { color: #333; } dl.summary dd { margin: 0; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; break-inside: avoid; page-break-inside: avoid; }
figure svg { max-width: 100%; height: auto; } figcaption { font-size: 9pt; color: #333; }
table { border-collapse: collapse; margin: .4em 0 1em; font-size: 8.5pt; }
caption { text-align: left; font-weight: bold; padding: .3em 0; caption-side: top; }
th, td { border: 1px solid #bbb; padding: .15em .4em; vertical-align: top; }
th { background: #e8e8e8; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr { break-inside: avoid; page-break-inside: avoid; } thead { display: table-header-group; }
p.note { font-size: 8.5pt; color: #333; margin: 0 0 .3em; } p.empty { font-style: italic; }
@page { size: A4 landscape; margin: 12mm; }
@media print { body { margin: 0; } a { color: inherit; text-decoration: none; } }
"""


def _number(column: str, value: float | int) -> str:
    if column in RATIO_COLUMNS or column.endswith("_share"):
        return f"{100 * value:.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1e15 or (value and abs(value) < 1e-2):
        return f"{value:.4g}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def _cell(column: str, value: Cell) -> str:
    if value is None:
        return "<td>-</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "<td>-</td>"
        return f'<td class="n">{_number(column, value)}</td>'
    return f"<td>{html.escape(value)}</td>"


def _table(table: Table) -> str:
    head = "".join(f'<th scope="col">{html.escape(c.replace("_", " "))}</th>' for c in table.columns)
    parts = [f'<section id="table-{html.escape(table.name)}">']
    parts.append(f"<table><caption>{html.escape(table.title)}</caption><thead><tr>{head}</tr></thead><tbody>")
    for row in table.rows:
        parts.append("<tr>" + "".join(_cell(c, v) for c, v in zip(table.columns, row, strict=True)) + "</tr>")
    parts.append("</tbody></table>")
    if not table.rows:
        parts.append('<p class="note empty">none</p>')
    if table.note:
        parts.append(f'<p class="note">{html.escape(table.note)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _meta(report: Report) -> str:
    meta = report.meta
    lines = [f'<p class="statement">{html.escape(str(meta.get("statement", "")))}</p>']
    shown = (("Period", "period_text"), ("Report date", "at"), ("Ledger", "ledger"), ("Caps from pack", "pack_text"),
             ("Records", "records_text"), ("Made by", "made_by"))  # fmt: skip
    for label, key in shown:
        if meta.get(key):
            lines.append(f"<p><b>{label}:</b> {html.escape(str(meta[key]))}</p>")
    for warning in meta.get("warnings") or []:
        lines.append(f"<p><b>Warning:</b> {html.escape(str(warning))}</p>")
    return '<div class="meta">' + "\n".join(lines) + "</div>"


def _summary_value(label: str, value: Cell) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _number("", value)
    return html.escape(value)


def to_html(report: Report) -> bytes:
    """One HTML file with everything inline (styles, charts as SVG): no script, no link, nothing fetched."""
    title = html.escape(report.title)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{title}</h1>",
        _meta(report),
        "<h2>Summary</h2>",
        '<dl class="summary">'
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{_summary_value(k, v)}</dd>" for k, v in report.summary)
        + "</dl>",
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in report.notes]
    charted = {c.table for c in report.charts}
    if report.charts:
        parts.append("<h2>Charts</h2>")
    for c in report.charts:
        caption = html.escape(c.title) + (f' (numbers: table &#8220;{html.escape(c.table)}&#8221;)' if c.table else "")
        parts.append(f"<figure>{svg(c)}<figcaption>{caption}</figcaption></figure>")
    parts.append("<h2>Tables</h2>")
    parts += [_table(t) for t in report.tables if t.name not in charted]
    behind = [t for t in report.tables if t.name in charted]
    if behind:
        parts.append("<h2>The numbers behind the charts</h2>")
        parts += [_table(t) for t in behind]
    parts.append("</main></body></html>\n")
    return "\n".join(parts).encode()
