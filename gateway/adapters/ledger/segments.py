"""The ledger writer's files: the open segment (fsynced appends, rolled back on failure), rotation, manifest, anchor."""

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files
from gateway.adapters.ledger.pending import LedgerUnavailable
from gateway.core.ledger import line_of

log = logging.getLogger("gateway.adapters.ledger.writer")  # one logger for the whole writer's story


def instance_dir(root: Path, instance: str) -> Path:
    """Each instance writes its own directory, so writers never contend for a file."""
    return root / files.safe_name(instance)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What opening found on disk: the chain head, the last checkpoint the manifest names, a torn-tail repair."""

    seq: int
    head: str
    head_kind: str
    checkpoint: dict[str, Any] | None
    repair: dict[str, Any] | None
    now: float  # the clock when the segment was opened


class Segments:
    """One instance's directory: its writer lock, the segment being appended to, and the closed ones."""

    def __init__(
        self,
        directory: Path,
        instance: str,
        *,
        clock: Callable[[], float],
        max_bytes: int,
        max_age_s: float,
        anchor_dir: Path | None,
    ) -> None:
        self.dir = directory
        self.instance = instance
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.anchor_dir = anchor_dir
        self.fd = -1
        self.lock_fd = -1
        self.path: Path | None = None
        self.closed: list[dict[str, Any]] = []
        self.first: int | None = None  # seq of the open segment's first record
        self.opened = 0.0
        self.size = 0
        self.broken = False  # a failed write could not be rolled back

    def open(self) -> Recovered:
        """Lock the directory, repair a torn tail, and open the newest segment for appending."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock_fd = files.lock_writer(self.dir)
        manifest = files.read_json(self.dir / files.MANIFEST) or {}
        found = files.segments(self.dir)
        self.path = found[-1] if found else self.dir / files.segment_name(1)
        repair = files.repair_torn_tail(self.path, self.clock()) if self.path.exists() else None
        seq, head, head_kind = files.head_from_disk(self.dir, found)
        claimed = manifest.get("head") or {}
        if isinstance(claimed.get("seq"), int) and (
            claimed["seq"] > seq or (claimed["seq"] == seq and claimed.get("hash") != head)
        ):
            raise LedgerUnavailable(
                f"{self.dir / files.MANIFEST}: says the chain reaches seq {claimed['seq']}, but the segments end at "
                f"seq {seq}: committed records are missing; refusing to continue this chain"
            )
        self.closed = [files.segment_entry(p) for p in found[:-1]]
        entries = {e.get("name"): e for e in manifest.get("segments") or [] if isinstance(e, dict)}
        first = files.parse(files.first_line(self.path)) if self.path.exists() else None
        self.first = first.get("seq") if first else None
        now = self.clock()
        opened = (entries.get(self.path.name) or {}).get("opened") or (first or {}).get("ts")
        self.opened = float(opened) if isinstance(opened, int | float) else now
        done = manifest.get("checkpoint")
        checkpoint = done if isinstance(done, dict) and isinstance(done.get("seq"), int) else None
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.size = os.fstat(self.fd).st_size
        files.fsync_dir(self.dir)
        return Recovered(seq, head, head_kind, checkpoint, repair, now)

    def measure(self) -> None:
        """Take the open segment's size from disk (after a crash between a write and its bookkeeping)."""
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        """Append and fsync `data`, or truncate it away again and raise."""
        before = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            os.fsync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, before)
            except OSError:  # unacknowledged lines may remain: only a restart's recovery may continue after them
                self.broken = True
            raise

    def appended(self, first_seq: int | None, size: int) -> None:
        """Account for a durable write whose first record (if any) is `first_seq`."""
        if first_seq is not None and self.first is None:
            self.first = first_seq
        self.size += size

    def rotation_due(self, now: float) -> bool:
        if self.first is None:  # never rotate away from an empty segment
            return False
        return self.size >= self.max_bytes or now - self.opened >= self.max_age_s

    def switch(self, now: float, seq: int) -> None:
        """Continue in the next segment; the closed one (ending at `seq`) joins the manifest's list."""
        assert self.path is not None
        closed = self.path
        new = self.dir / files.segment_name(files.segment_number(closed) + 1)
        fd = os.open(new, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            if os.fstat(fd).st_size:  # left empty by an interrupted rotation is fine; anything else is not
                raise FileExistsError(17, "a segment with records already has the next number", str(new))
            files.fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            raise
        os.close(self.fd)
        self.fd, self.path = fd, new
        self.closed.append(files.segment_entry(closed) | {"opened": self.opened, "closed": now})
        self.first, self.opened, self.size = None, now, 0
        log.info("ledger: %s closed at seq %d, continuing in %s", closed.name, seq, new.name)

    def manifest(self, seq: int, head: str, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
        """The manifest for a chain whose last durable record is (`seq`, `head`)."""
        assert self.path is not None
        current = {
            "name": self.path.name,
            "first_seq": self.first,
            "last_seq": seq if self.first is not None else None,
            "last_hash": head if self.first is not None else None,
            "opened": self.opened,
            "closed": None,
        }
        return {
            "v": 1,
            "instance": self.instance,
            "updated": self.clock(),
            "head": {"seq": seq, "hash": head},
            "checkpoint": checkpoint,
            "segments": [*self.closed, current],
        }

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        files.write_manifest(self.dir, manifest)
        self.closed = [s for s in self.closed if (self.dir / s["name"]).exists()]

    async def publish(self, manifest: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        """After a checkpoint is durable: write the manifest and copy the checkpoint to the anchor directory."""
        try:
            await asyncio.to_thread(self.write_manifest, manifest)
            if self.anchor_dir is not None:
                anchor = self.anchor_dir / f"{files.safe_name(self.instance)}.json"
                await asyncio.to_thread(files.write_anchor, anchor, line_of(checkpoint))
        except OSError as exc:  # the records are durable; only the copies are stale
            log.error("ledger: checkpoint seq %d: manifest or anchor copy not written: %s", checkpoint["seq"], exc)

    def release(self) -> None:
        """Close the segment and give up the writer lock."""
        for attr in ("fd", "lock_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
