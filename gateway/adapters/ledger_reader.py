"""Read a ledger directory back: every instance's segments, record by record, in constant memory."""

import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Located:
    """One ledger line with where it came from (for error messages)."""

    instance_dir: str
    segment: str
    line: int
    record: dict[str, Any] | None
    raw: bytes


def instance_dirs(root: Path) -> list[Path]:
    """The per-instance chain directories under a ledger root."""
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def segments(instance_dir: Path) -> list[Path]:
    """An instance's segment files in chain order."""
    return sorted(instance_dir.glob("*.jsonl"))


def read_instance(instance_dir: Path) -> Iterator[Located]:
    """Every line of one instance's chain, in order; unparseable lines have `record` None."""
    for segment in segments(instance_dir):
        with segment.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                line = raw.rstrip(b"\n")
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        record = None
                except ValueError:
                    record = None
                yield Located(instance_dir.name, segment.name, number, record, line)


def records_in_time_order(root: Path) -> Iterator[dict[str, Any]]:
    """All instances' parseable records merged by `ts` (each chain is already in time order)."""
    streams = [
        ((loc.record.get("ts", 0.0), i, n, loc.record) for n, loc in enumerate(read_instance(d)) if loc.record)
        for i, d in enumerate(instance_dirs(root))
    ]
    for _, _, _, record in heapq.merge(*streams):
        yield record
