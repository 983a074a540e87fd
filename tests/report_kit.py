"""Helpers for the report tests: small signed ledgers written record by record, the report command run in-process,
and its CSV read back into tables."""

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bench.report_ledger import ChainWriter
from tests.ledger_kit import Keys, run_cli

POLICY = {"name": "ai-diffusion-2025", "version": "test", "hash": "0" * 64}


def ts(text: str) -> float:
    """An ISO time (UTC) as epoch seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC).timestamp()


def write_ledger(root: Path, keys: Keys, bodies: Iterable[Mapping[str, Any]], instance: str = "gw-1") -> None:
    """One signed chain of these record bodies (in the order given: give them in time order)."""
    writer = ChainWriter(root, instance, keys.signer, every=3)
    for body in bodies:
        writer.append(body)
    writer.close()


def decision(
    when: str,
    tenant: str,
    decision_id: str,
    *,
    counters: Iterable[tuple[str, str, float]] = (),
    basis: str = "lpp",
    countries: str = "AE/AE/AE",
    tier: int = 2,
    outcome: str = "allow",
    code: str | None = None,
    lease_s: float = 3600.0,
    tpp: float = 0.0,
    ops: float = 0.0,
    lineage: str | None = None,
    client_ip: str = "192.0.2.1",
    kind: str = "decision",
    reasons: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A decision record as the gateway writes it (the fields the reports read)."""
    location, headquarters, parent = countries.split("/")
    at = ts(when)
    listed = [{"key": k, "kind": kind_, "amount": amount} for k, kind_, amount in counters]
    return {
        "kind": kind, "entry": "proxy", "decision_id": decision_id, "ts": at, "tenant": tenant,
        "issuer": "https://idp.example.com", "client_ip": client_ip,
        "countries": {"location": location, "headquarters": headquarters, "parent": parent}, "tier": tier,
        "kyc": "verified", "route": "slurm.job.submit", "route_kind": "submit", "method": "POST",
        "path": "/slurm/v0.0.38/job/submit", "upstream": "slurm", "basis": basis, "licences": [], "exemptions": [],
        "job": {"parts": [{"gpus": 1, "model": "h100", "concurrency": 1}], "walltime_s": lease_s, "purpose": None,
                "lineage": lineage},
        "cost": {"tpp": tpp, "tpp_hours": tpp * lease_s / 3600, "training_ops": ops, "walltime_s": lease_s,
                 "gpus": 1, "chip_tpp_max": tpp, "chip_tpp_min": tpp},
        "decision": outcome, "code": code, "reasons": reasons or [], "policy": POLICY, "registry": "test",
        "quota_before": {k: 0.0 for k, _, _ in counters}, "quota_after": {k: a for k, _, a in counters},
        "lease": {"hash_tag": "quota", "lease_end": at + lease_s, "idempotency_key": None, "replaces_job": None,
                  "counters": listed} if listed else None,
    }  # fmt: skip


def followup(kind: str, when: str, decision_id: str, tenant: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "decision_id": decision_id, "ts": ts(when), "tenant": tenant, "upstream": "slurm", **fields}


def report(capsys: pytest.CaptureFixture[str], kind: str, root: Path, keys: Keys, *args: str | Path,
           fmt: str = "json") -> Any:  # fmt: skip
    """`exportgate report KIND` on `root`, its standard output parsed (JSON) or as text (other formats)."""
    code, out, err = run_cli(capsys, "report", kind, "--ledger", root, "--public-key", keys.public, "--format", fmt,
                             *args)  # fmt: skip
    assert code == 0, err
    return json.loads(out) if fmt == "json" else out


def rows(document: Mapping[str, Any], table: str) -> list[dict[str, Any]]:
    return list(document["tables"][table]["rows"])


def csv_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The sections of a report's CSV: `[name]`, a header row, rows; `[report]` is the header's field,value rows."""
    tables: dict[str, list[dict[str, str]]] = {}
    name, header = "", None
    for line in csv.reader(io.StringIO(text)):
        if not line:
            name, header = "", None
        elif len(line) == 1 and line[0].startswith("[") and line[0].endswith("]"):
            name, header = line[0][1:-1], None
            tables[name] = []
        elif header is None:
            header = line
        else:
            tables[name].append(dict(zip(header, line, strict=True)))
    return tables


def as_csv_text(value: Any) -> str:
    """How the CSV writes a JSON value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


class Page(HTMLParser):
    """What the report tests look for in an HTML report: elements, attributes, inline SVG, text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.svgs = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.svgs += tag == "svg"
        self.attributes += [(tag, k, v or "") for k, v in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(data: str) -> Page:
    page = Page()
    page.feed(data)
    page.close()
    return page


def external_references(page: Page, raw: str) -> list[str]:
    """Anything that would make a browser fetch: a URL in an attribute, a script, stylesheet, image or frame, a
    CSS url() naming anything but a fragment of the page itself (`url(#clip1)`), an @import, any http(s) URL."""
    found = [f"<{t} {k}={v}>" for t, k, v in page.attributes if "://" in v or v.startswith("//")]
    found += [f"<{t} {k}={v}>" for t, k, v in page.attributes if k in ("href", "xlink:href", "src") and v[:1] != "#"]
    found += [f"<{t}>" for t in page.tags if t in ("script", "link", "img", "iframe", "object", "embed", "image")]
    found += re.findall(r"url\((?!#)[^)]*\)", raw) + [m for m in ("@import", "http://", "https://") if m in raw]
    return found


def id_problems(raw: str) -> list[str]:
    """Ids that repeat on the page (several inline SVGs), and references (`href="#x"`, `url(#x)`) to no id."""
    ids = re.findall(r'\bid="([^"]+)"', raw)
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    dangling = sorted(set(re.findall(r'(?:href="#|url\(#)([^")]+)', raw)) - set(ids))
    return [f"repeated id {i}" for i in repeated] + [f"reference to no id: {r}" for r in dangling]
