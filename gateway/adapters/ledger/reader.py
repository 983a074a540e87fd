"""Read a ledger directory back: every instance's segments, record by record, in constant memory."""

import heapq
import itertools
import json
import math
from collections.abc import Iterator, Mapping
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
    yield from read_segments(live_segments(instance_dir))


def read_segments(found: list[Path], skip: int = 0) -> Iterator[Located]:
    """Every line of these segments in order, the first `skip` lines of the first one left out."""
    for segment in found:
        if not segment.is_file():  # a device or dangling link (a test's /dev/full) holds no records
            continue
        with segment.open("rb") as fh:
            lines: Iterator[tuple[int, bytes]] = enumerate(fh, start=1)
            if skip:
                lines = itertools.islice(lines, skip, None)
                skip = 0
            for number, raw in lines:
                line = raw.rstrip(b"\n")
                yield Located(segment.parent.name, segment.name, number, files.parse(line), line, raw.endswith(b"\n"))


def merge_key(record: dict[str, Any]) -> float:
    """Where a record sorts in the merge of all chains (ties go by chain directory name, then chain order).

    A record without a numeric `ts` (not one the gateway writes) sorts as 0 rather than stopping the merge.
    """
    ts = record.get("ts", 0.0)
    return ts if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts) else 0.0


def _stream(index: int, name: str, lines: Iterator[Located]) -> Iterator[tuple[float, int, int, str, dict[str, Any]]]:
    for n, loc in enumerate(lines):
        if loc.record and loc.complete:
            yield merge_key(loc.record), index, n, name, loc.record


def merged(starts: Mapping[str, Iterator[Located]]) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """Chains' committed records merged by `ts` (each chain is already in time order), as (ts, chain, record).

    `starts` maps each chain's directory name to its lines (from its start, or where it continues
    after a snapshot). A last line without its newline was never committed and is left out.
    """
    streams = [_stream(i, name, lines) for i, (name, lines) in enumerate(sorted(starts.items()))]
    for ts, _, _, name, record in heapq.merge(*streams):
        yield ts, name, record


def every_chain(root: Path) -> dict[str, Iterator[Located]]:
    """Every chain under `root`, each from its start (prune anchor excluded)."""
    return {d.name: read_instance(d) for d in instance_dirs(root)}


def records_in_time_order(root: Path) -> Iterator[dict[str, Any]]:
    """All instances' committed records merged by `ts` (each chain is already in time order)."""
    for _, _, record in merged(every_chain(root)):
        yield record
