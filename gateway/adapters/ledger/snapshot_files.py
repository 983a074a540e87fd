"""Quota snapshot files: `quota-snapshot-NNNNNN.snap`, written whole (temp file, fsync, rename), the newest N kept.

A snapshot file is its entry lines and then its signed header as the last line, so that it is
written in one streaming pass (the header holds the entries' SHA-256) and its header is read
without reading the entries. The files are plain files, never directories: in the ledger
directory (the default) no chain reader takes them for an instance's chain.
"""

import contextlib
import fcntl
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from gateway.adapters.ledger import files

_NAME = re.compile(r"^quota-snapshot-(\d{6,})\.snap$")
LOCK = ".quota-snapshot.lock"


def name(number: int) -> str:
    return f"quota-snapshot-{number:06d}.snap"


def number(path: Path) -> int:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else 0


def listing(directory: Path) -> list[Path]:
    """The snapshot files in `directory`, newest first."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=number, reverse=True)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One snapshot writer at a time per directory (the gateway, `quota snapshot`, `ledger prune`)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write(directory: Path, entries: Iterable[bytes], header: Callable[[str, int], bytes], keep: int) -> Path:
    """Write the entry lines, then `header(sha256 of the entries, entry count)` as the last line; keep `keep` files.

    Call under `locked(directory)`. The file appears whole or not at all.
    """
    for stale in directory.glob(".quota-snapshot-*.snap.tmp"):  # a writer killed mid-write
        stale.unlink(missing_ok=True)
    existing = listing(directory)
    path = directory / name((number(existing[0]) if existing else 0) + 1)
    tmp = directory / f".{path.name}.tmp"
    digest, count = hashlib.sha256(), 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20, closefd=False) as fh:
            for line in entries:
                digest.update(line)
                fh.write(line)
                count += 1
            fh.write(header(digest.hexdigest(), count))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    files.fsync_dir(directory)
    for old in listing(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def read_header(path: Path) -> tuple[dict[str, Any] | None, int]:
    """The header (the last line) parsed, or None, and the offset where it starts (the entries' length)."""
    line, offset = files.last_line(path)
    return files.parse(line), offset


def entry_lines(fh: BinaryIO, length: int) -> Iterator[bytes]:
    """The entry lines of an open snapshot file: its first `length` bytes, line by line, from its start."""
    fh.seek(0)
    read = 0
    for line in fh:
        read += len(line)
        if read > length:
            return
        yield line
