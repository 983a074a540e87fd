"""A tenant's recent decisions, read from the tail of the ledger: newest segments first, backwards, bounded.

The ledger already holds every decision, for every worker and across restarts; reading its tail
keeps no second copy in memory. Each chain is read from its end in blocks until `limit` of the
tenant's decision records are found or `budget_bytes` of that chain have been read, so a tenant
with no recent decisions costs a bounded read, however long the ledger.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.adapters.ledger.reader import instance_dirs, segments

BLOCK = 64 * 1024
DEFAULT_LIMIT = 20
DEFAULT_BUDGET = 4 * 1024 * 1024  # bytes read per chain at most
# What a recent decision shows: the record's own fields, without client addresses or issuers.
SHOWN = ("decision_id", "ts", "entry", "route", "route_kind", "method", "path", "upstream", "decision", "code", "tier")


def _lines_backwards(path: Path, budget: int) -> Iterator[bytes]:
    """The file's complete lines, last first, reading at most `budget` bytes (a torn last line is skipped)."""
    with path.open("rb") as fh:
        pos = os.fstat(fh.fileno()).st_size
        rest = b""
        skip = True  # the first piece from the end: "" after the final newline, or a line not yet committed
        while pos > 0 and budget > 0:
            step = min(BLOCK, pos, budget)
            pos -= step
            budget -= step
            fh.seek(pos)
            lines = (fh.read(step) + rest).split(b"\n")
            rest = lines.pop(0)  # may continue in the block before
            for line in reversed(lines):
                if skip:
                    skip = False
                    continue
                yield line
        if pos == 0 and not skip:
            yield rest


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    out = {key: record.get(key) for key in SHOWN}
    cost = record.get("cost")
    out["tpp"] = cost.get("tpp") if isinstance(cost, dict) else None
    reasons = record.get("reasons")
    first = reasons[0] if isinstance(reasons, list) and reasons and isinstance(reasons[0], dict) else None
    out["detail"] = first.get("detail") if first else None
    return out


def _chain_tail(instance: Path, tenant_id: str, limit: int, budget: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    needle = b'"tenant":' + json.dumps(tenant_id, ensure_ascii=False).encode()  # records are compact JSON
    for segment in reversed(segments(instance)):
        if budget <= 0 or len(found) >= limit or not segment.is_file():
            break
        size = segment.stat().st_size
        for line in _lines_backwards(segment, budget):
            if needle not in line or b'"kind":"decision"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("kind") == "decision" and record.get("tenant") == tenant_id:
                found.append(_summary(record))
                if len(found) >= limit:
                    break
        budget -= size
    return found


def recent_decisions(
    root: Path, tenant_id: str, *, limit: int = DEFAULT_LIMIT, budget_bytes: int = DEFAULT_BUDGET
) -> list[dict[str, Any]]:
    """The tenant's last `limit` decision records over every chain under `root`, newest first."""
    found: list[dict[str, Any]] = []
    for instance in instance_dirs(root):
        found.extend(_chain_tail(instance, tenant_id, limit, budget_bytes))
    found.sort(key=lambda r: r.get("ts") or 0.0, reverse=True)
    return found[:limit]
