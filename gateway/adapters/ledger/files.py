"""The ledger's files on disk: segment names, first and last lines, the manifest, the prune anchor, locks."""

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.core.ledger import GENESIS

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
ANCHOR = "prune-anchor.json"
_SEGMENT = re.compile(r"^(\d{6,})\.jsonl$")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(instance: str) -> str:
    """An instance id as a file or directory name."""
    return _SAFE.sub("_", instance)


def segment_name(number: int) -> str:
    return f"{number:06d}.jsonl"


def segment_number(path: Path) -> int:
    match = _SEGMENT.match(path.name)
    return int(match.group(1)) if match else 0


def segments(instance_dir: Path) -> list[Path]:
    """An instance's segment files in chain order (by number, so 1000000 follows 999999)."""
    found = [p for p in instance_dir.glob("*.jsonl") if _SEGMENT.match(p.name)]
    return sorted(found, key=segment_number)


def last_line(path: Path) -> tuple[bytes, int]:
    """The file's last line (without newline) and the offset where it starts."""
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        pos = size
        chunk = b""
        while pos > 0:
            step = min(4096, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step) + chunk
            body = chunk[:-1] if chunk.endswith(b"\n") else chunk
            cut = body.rfind(b"\n")
            if cut >= 0:
                return body[cut + 1 :], pos + cut + 1
        body = chunk[:-1] if chunk.endswith(b"\n") else chunk
        return body, 0


def first_line(path: Path) -> bytes:
    with path.open("rb") as fh:
        if not os.fstat(fh.fileno()).st_size:  # also keeps a device file (a test's /dev/full) from being read
            return b""
        return fh.readline().rstrip(b"\n")


def parse(line: bytes) -> dict[str, Any] | None:
    """A ledger line as a record, or None when it is not a JSON object."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def last_record(path: Path) -> dict[str, Any] | None:
    line, _ = last_line(path)
    return parse(line) if line else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file (manifest, anchor) or None when it is missing or unreadable."""
    try:
        return parse(path.read_bytes())
    except OSError:
        return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace `path` all at once: write a temp file, fsync it, rename it over, fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, value: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(value, sort_keys=True, indent=1).encode() + b"\n")


@contextlib.contextmanager
def manifest_lock(instance_dir: Path) -> Iterator[None]:
    """Serialises manifest and prune-anchor changes between the writer and `ledger prune`."""
    fd = os.open(instance_dir / ".manifest.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def lock_writer(instance_dir: Path) -> int:
    """Take the instance's writer lock for the process's lifetime; BlockingIOError if another holds it."""
    fd = os.open(instance_dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_manifest(instance_dir: Path, manifest: dict[str, Any]) -> None:
    """Rewrite the manifest under its lock; segments a concurrent `ledger prune` archived are left out."""
    with manifest_lock(instance_dir):
        manifest["segments"] = [s for s in manifest["segments"] if (instance_dir / s["name"]).exists()]
        anchor = read_json(instance_dir / ANCHOR)
        if anchor is not None:
            manifest["pruned_through"] = {"seq": anchor.get("seq"), "hash": anchor.get("hash")}
        write_json(instance_dir / MANIFEST, manifest)


def write_anchor(path: Path, line: bytes) -> None:
    """Publish a checkpoint copy to the anchor directory (world-readable: it holds no secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, line, 0o644)


def segment_entry(path: Path) -> dict[str, Any]:
    """A closed segment as the manifest lists it: first and last seq, last hash, time span."""
    first = parse(first_line(path)) or {}
    last = last_record(path) or {}
    return {
        "name": path.name,
        "first_seq": first.get("seq"),
        "last_seq": last.get("seq"),
        "last_hash": last.get("hash"),
        "opened": first.get("ts"),
        "closed": last.get("ts"),
    }


class ChainHeadUnknown(Exception):
    """The newest record on disk is not a record: the chain's head cannot be known without guessing."""


def _head_of(record: dict[str, Any] | None, where: Path) -> tuple[int, str, str]:
    seq, hash_ = (record or {}).get("seq"), (record or {}).get("hash")
    if not isinstance(seq, int) or not isinstance(hash_, str):
        raise ChainHeadUnknown(f"{where}: the last line is not a ledger record; refusing to guess the chain head")
    return seq, hash_, str((record or {}).get("kind"))


def head_from_disk(instance_dir: Path, found: list[Path]) -> tuple[int, str, str]:
    """The newest record's seq, hash and kind: in the last non-empty segment, else the prune anchor, else genesis."""
    for segment in reversed(found):
        line, _ = last_line(segment)
        if line:
            return _head_of(parse(line), segment)
    anchor = instance_dir / ANCHOR
    if anchor.exists():
        return _head_of(read_json(anchor), anchor)
    return 0, GENESIS, "genesis"


def repair_torn_tail(segment: Path, now: float) -> dict[str, Any] | None:
    """Move a torn last line (a crash mid-write: no newline) aside and describe the repair; committed lines stay."""
    line, offset = last_line(segment)
    if not line:
        return None
    with segment.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        torn = fh.tell() == offset + len(line)  # a committed line always ends with its newline
    if not torn:
        return None
    aside = segment.with_suffix(f".torn-{int(time.time())}")
    aside.write_bytes(line)
    os.truncate(segment, offset)
    log.error("ledger: torn last line of %s moved to %s", segment, aside)
    return {"kind": "repair", "ts": now, "segment": segment.name, "offset": offset, "moved_to": aside.name,
            "bytes": len(line)}  # fmt: skip
