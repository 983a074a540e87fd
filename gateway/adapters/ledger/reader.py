"""Read a ledger directory back: every instance's segments, record by record, in constant memory."""

import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files


@dataclass(frozen=True, slots=True)
class Located:
    """One ledger line with where it came from (for error messages)."""

    instance_dir: str
    segment: str
    line: int
    record: dict[str, Any] | None
    raw: bytes
    complete: bool = True  # False: the file's last line has no newline (torn by a crash, not committed)


def instance_dirs(root: Path) -> list[Path]:
    """The per-instance chain directories under a ledger root."""
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def segments(instance_dir: Path) -> list[Path]:
    """An instance's segment files in chain order."""
    return files.segments(instance_dir)


def prune_anchor(instance_dir: Path) -> dict[str, Any] | None:
    """The signed prune anchor a pruned chain continues from, if the instance was pruned."""
    return files.read_json(instance_dir / files.ANCHOR)


def live_segments(instance_dir: Path) -> list[Path]:
    """Segments in chain order, without leftovers of an interrupted prune (wholly at or before its anchor)."""
    found = segments(instance_dir)
    anchor = prune_anchor(instance_dir)
    if anchor is None or not isinstance(anchor.get("seq"), int):
        return found
    while found:
        last = files.last_record(found[0])
        if last is None or not isinstance(last.get("seq"), int) or last["seq"] > anchor["seq"]:
            break
        found.pop(0)
    return found


def read_instance(instance_dir: Path, *, with_anchor: bool = False) -> Iterator[Located]:
    """Every line of one instance's chain, in order; unparseable lines have `record` None.

    With `with_anchor`, a pruned chain's signed prune anchor comes first (as `prune-anchor.json` line 1).
    """
    anchor = prune_anchor(instance_dir) if with_anchor else None
    if anchor is not None:
        yield Located(instance_dir.name, files.ANCHOR, 1, anchor, json.dumps(anchor).encode())
    for segment in live_segments(instance_dir):
        if not segment.is_file():  # a device or dangling link (a test's /dev/full) holds no records
            continue
        with segment.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                line = raw.rstrip(b"\n")
                yield Located(instance_dir.name, segment.name, number, files.parse(line), line, raw.endswith(b"\n"))


def records_in_time_order(root: Path) -> Iterator[dict[str, Any]]:
    """All instances' parseable records merged by `ts` (each chain is already in time order)."""
    streams = [
        ((loc.record.get("ts", 0.0), i, n, loc.record) for n, loc in enumerate(read_instance(d)) if loc.record)
        for i, d in enumerate(instance_dirs(root))
    ]
    for _, _, _, record in heapq.merge(*streams):
        yield record
