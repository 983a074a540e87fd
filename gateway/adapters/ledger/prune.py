"""Retention: move a chain's oldest whole segments to an archive and leave a signed prune anchor in their place."""

import filecmp
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files
from gateway.adapters.ledger.reader import live_segments, prune_anchor
from gateway.adapters.ledger.signing import Signer
from gateway.core.ledger import line_of, prune_payload
from gateway.core.ledger import prune_anchor as anchor_record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one prune of one chain moved, and where its remainder now starts."""

    instance_dir: str
    segments: tuple[str, ...]
    first_seq: int | None
    last_seq: int
    last_hash: str
    archive: Path


class PruneError(Exception):
    """A prune that would lose or overwrite something; the message names the file."""


def _segment_ts(segment: Path, last: dict[str, Any]) -> float:
    ts = last.get("ts")
    return float(ts) if isinstance(ts, int | float) else segment.stat().st_mtime


def _copy_durably(source: Path, target: Path) -> None:
    if target.exists():
        if filecmp.cmp(source, target, shallow=False):
            return
        raise PruneError(f"{target}: the archive already holds a different file of that name")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def _finish_interrupted(instance_dir: Path) -> None:
    """Delete segments an interrupted prune already archived and anchored (identical copies only)."""
    anchor = prune_anchor(instance_dir)
    if anchor is None:
        return
    live = set(live_segments(instance_dir))
    archive = Path(str(anchor.get("archive", "")))
    for segment in files.segments(instance_dir):
        if segment in live:
            continue
        copy = archive / segment.name
        if copy.exists() and filecmp.cmp(segment, copy, shallow=False):
            segment.unlink()
            log.info("ledger prune: removed %s (archived as %s by an earlier, interrupted prune)", segment, copy)
        else:
            log.warning("ledger prune: %s precedes the prune anchor but has no identical archived copy", segment)
    files.fsync_dir(instance_dir)


def prune_instance(
    instance_dir: Path,
    archive_root: Path,
    signer: Signer,
    *,
    cutoff: float,
    now: float,
    dry_run: bool = False,
    covered_through: int | None = None,
    held_back: list[str] | None = None,
) -> Pruned | None:
    """Archive the leading closed segments whose newest record is older than `cutoff`; None if there are none.

    With `covered_through` (the last seq of this chain a quota snapshot folded in), a segment holding a
    later record stays, and so do the ones after it; their names go to `held_back`.
    """
    ledger_root = instance_dir.resolve().parent
    target = archive_root.resolve()
    if target == ledger_root or target.is_relative_to(ledger_root) or ledger_root.is_relative_to(target):
        # An archive inside the ledger (or around it) would copy segments onto themselves, then delete them.
        raise PruneError(f"{archive_root}: the archive must lie outside the ledger directory {ledger_root}")
    with files.manifest_lock(instance_dir):
        if not dry_run:
            _finish_interrupted(instance_dir)
        chosen: list[tuple[Path, dict[str, Any]]] = []
        found = live_segments(instance_dir)
        for segment in found[:-1]:  # never the newest: the writer appends to it
            last = files.last_record(segment)
            if last is None or _segment_ts(segment, last) >= cutoff:
                break
            if covered_through is not None and not (
                isinstance(last.get("seq"), int) and last["seq"] <= covered_through
            ):
                if held_back is not None:
                    held_back.append(segment.name)
                break
            chosen.append((segment, last))
        if not chosen:
            return None
        first = files.parse(files.first_line(chosen[0][0])) or {}
        last = chosen[-1][1]
        archive = (archive_root / instance_dir.name).resolve()
        names = tuple(s.name for s, _ in chosen)
        pruned = Pruned(instance_dir.name, names, first.get("seq"), int(last["seq"]), str(last["hash"]), archive)
        if dry_run:
            return pruned
        archive.mkdir(parents=True, exist_ok=True)
        previous = prune_anchor(instance_dir)
        if previous is not None and not (archive / files.ANCHOR).exists() and not files.segments(archive):
            files.write_atomic(archive / files.ANCHOR, line_of(previous))  # a fresh archive verifies on its own too
        for segment, _ in chosen:
            _copy_durably(segment, archive / segment.name)
        files.fsync_dir(archive)
        fields: dict[str, Any] = {
            "instance": str(last["instance"]),
            "seq": pruned.last_seq,
            "hash": pruned.last_hash,
            "ts": now,
            "key_id": signer.key_id,
            "segments": list(names),
            "archive": str(archive),
        }
        anchor = anchor_record(**fields, sig=signer.sign(prune_payload(**fields)))
        files.write_atomic(instance_dir / files.ANCHOR, line_of(anchor))  # before the segments go
        for segment, _ in chosen:
            segment.unlink()
        files.fsync_dir(instance_dir)
        manifest = files.read_json(instance_dir / files.MANIFEST)
        if manifest is not None:
            kept = [s for s in manifest.get("segments") or [] if (instance_dir / str(s.get("name"))).exists()]
            manifest["segments"] = kept
            manifest["pruned_through"] = {"seq": pruned.last_seq, "hash": pruned.last_hash}
            files.write_json(instance_dir / files.MANIFEST, manifest)
        return pruned
