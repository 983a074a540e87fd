"""Continue reading a chain after a given record, once that record is shown to be in the chain."""

import itertools
from collections.abc import Iterator
from pathlib import Path

from gateway.adapters.ledger import files
from gateway.adapters.ledger.reader import Located, live_segments, prune_anchor, read_segments
from gateway.core.ledger import GENESIS, record_hash


class NotInChain(Exception):
    """The chain does not hold the record a position names (rewritten, truncated or pruned past it)."""


def _first_seq(segment: Path) -> int | None:
    record = files.parse(files.first_line(segment)) if segment.is_file() else None
    seq = (record or {}).get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def after(instance_dir: Path, seq: int, hash_: str) -> Iterator[Located]:
    """The chain's lines after record `seq`, which must be there with hash `hash_` (NotInChain if not).

    The record is found by its segment's first seq and its line number (a chain's records follow
    each other one per line), then parsed and its hash recomputed; a pruned chain's anchor stands
    for the last record it archived. Checked now, read lazily.
    """
    found = live_segments(instance_dir)
    anchor = prune_anchor(instance_dir)
    pruned_through = anchor.get("seq") if anchor is not None else None
    if isinstance(pruned_through, int) and seq <= pruned_through:
        if seq == pruned_through and anchor is not None and anchor.get("hash") == hash_:
            return read_segments(found)
        raise NotInChain(f"pruned through seq {pruned_through}, past seq {seq}")
    if seq == 0:
        if hash_ != GENESIS:
            raise NotInChain("seq 0 is the genesis hash")
        return read_segments(found)
    firsts = [_first_seq(s) for s in found]
    index = next((i for i in range(len(found) - 1, -1, -1) if (firsts[i] or seq + 1) <= seq), None)
    if index is None:
        raise NotInChain(f"no segment holds seq {seq}")
    line = seq - (firsts[index] or 0)  # 0-based
    with found[index].open("rb") as fh:
        raw = next(itertools.islice(fh, line, None), b"")
    record = files.parse(raw.rstrip(b"\n"))
    if record is None or not raw.endswith(b"\n") or record.get("seq") != seq:
        raise NotInChain(f"{found[index].name}:{line + 1} is not seq {seq}")
    if record.get("hash") != hash_ or record_hash(record) != hash_:
        raise NotInChain(f"seq {seq} ({found[index].name}:{line + 1}) has another hash")
    return read_segments(found[index:], skip=line + 1)
