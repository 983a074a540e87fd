"""A tenant's recent decisions, read from the tail of the ledger: newest segments first, backwards, bounded.

The ledger already holds every decision, for every worker and across restarts; reading its tail
keeps no second copy in memory. Each chain is read from its end in blocks until `limit` of the
tenant's decision records are found or `budget_bytes` of that chain have been read, so a tenant
with no recent decisions costs a bounded read, however long the ledger.
"""

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.adapters.ledger.reader import instance_dirs, segments

BLOCK = 64 * 1024
DEFAULT_LIMIT = 20
DEFAULT_BUDGET = 4 * 1024 * 1024  # bytes read per chain at most
# What a recent decision shows: the record's own fields and reasons, without client addresses or issuers.
SHOWN = ("decision_id", "ts", "entry", "route", "route_kind", "method", "path", "upstream", "decision", "code", "tier",
         "reasons")  # fmt: skip
# What an access log entry shows (the KYC record-keeping duty: when, from where, what was asked).
ACCESS = ("ts", "entry", "client_ip", "method", "path", "upstream", "decision", "code")


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


def _access(record: dict[str, Any]) -> dict[str, Any]:
    return {key: record.get(key) for key in ACCESS}


def _records_backwards(
    instance: Path, budget: int, wanted: Callable[[bytes], bool] | None = None
) -> Iterator[dict[str, Any]]:
    """The chain's committed records, newest first, from at most `budget` bytes of its segments' ends; lines
    `wanted` turns down (a cheap test on the raw bytes) are not parsed."""
    for segment in reversed(segments(instance)):
        if budget <= 0 or not segment.is_file():
            return
        size = segment.stat().st_size
        for line in _lines_backwards(segment, budget):
            if wanted is not None and not wanted(line):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record
        budget -= size


def _chain_size(instance: Path) -> int:
    return sum(segment.stat().st_size for segment in segments(instance) if segment.is_file())


Shown = Callable[[dict[str, Any]], dict[str, Any]]


def _chain_tail(
    instance: Path, tenant_id: str, limit: int, budget: int, shown: Shown, kinds: tuple[str, ...]
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    needle = b'"tenant":' + json.dumps(tenant_id, ensure_ascii=False).encode()  # records are compact JSON
    kind_marks = tuple(b'"kind":' + json.dumps(kind).encode() for kind in kinds)

    def wanted(line: bytes) -> bool:
        return needle in line and any(mark in line for mark in kind_marks)

    for record in _records_backwards(instance, budget, wanted):
        if record.get("kind") in kinds and record.get("tenant") == tenant_id:
            found.append(shown(record))
            if len(found) >= limit:
                break
    return found


def _newest(
    root: Path, tenant_id: str, limit: int, budget_bytes: int, shown: Shown, kinds: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The tenant's last `limit` records of `kinds` as `shown` keeps them, over every chain under `root`, newest
    first."""
    found: list[dict[str, Any]] = []
    for instance in instance_dirs(root):
        found.extend(_chain_tail(instance, tenant_id, limit, budget_bytes, shown, kinds))
    found.sort(key=lambda r: r.get("ts") or 0.0, reverse=True)
    return found[:limit]


def recent_decisions(
    root: Path, tenant_id: str, *, limit: int = DEFAULT_LIMIT, budget_bytes: int = DEFAULT_BUDGET
) -> list[dict[str, Any]]:
    """The tenant's last `limit` decision records over every chain under `root`, newest first."""
    return _newest(root, tenant_id, limit, budget_bytes, _summary, ("decision",))


def access_log(
    root: Path, tenant_id: str, *, limit: int = DEFAULT_LIMIT, budget_bytes: int = DEFAULT_BUDGET
) -> list[dict[str, Any]]:
    """The tenant's last `limit` requests (time, entry, client IP, method, path, outcome), newest first: its
    decisions and its reads (`access` records), as the proxy and every decision entry recorded them."""
    return _newest(root, tenant_id, limit, budget_bytes, _access, ("decision", "access"))


def refusals_since(root: Path, since: float, *, budget_bytes: int = DEFAULT_BUDGET) -> tuple[dict[str, int], bool]:
    """Refused decisions (`deny`) at or after `since`, counted by code over every chain, and whether each chain's
    read reached back to `since` (False: a chain's budget ran out first, so the counts are a lower bound)."""
    counts: dict[str, int] = {}
    complete = True
    for instance in instance_dirs(root):
        reached = False
        for record in _records_backwards(instance, budget_bytes):
            ts = record.get("ts")
            if not isinstance(ts, int | float):
                continue
            if ts < since:
                reached = True
                break
            if record.get("kind") == "decision" and record.get("decision") == "deny":
                code = str(record.get("code"))
                counts[code] = counts.get(code, 0) + 1
        complete = complete and (reached or _chain_size(instance) < budget_bytes)
    return dict(sorted(counts.items())), complete


def chain_head(instance: Path, *, budget_bytes: int = DEFAULT_BUDGET) -> dict[str, Any]:
    """The chain's last committed record (`seq`, `hash`, `ts`) and its last checkpoint (`checkpoint_seq`,
    `checkpoint_hash`, `checkpoint_ts`), read from the end of its segments within `budget_bytes` (a key is
    missing when it was not found)."""
    found: dict[str, Any] = {}
    for record in _records_backwards(instance, budget_bytes):
        if "seq" not in found:
            found |= {key: record.get(key) for key in ("seq", "hash", "ts")}
        if record.get("kind") == "checkpoint":
            found |= {f"checkpoint_{key}": record.get(key) for key in ("seq", "hash", "ts")}
            return found
    return found
