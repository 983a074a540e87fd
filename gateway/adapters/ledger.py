"""The ledger writer: one hash chain per instance, group-committed with fsync, never dropping."""

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.core.ledger import GENESIS, line_of, seal

log = logging.getLogger(__name__)
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class LedgerUnavailable(Exception):
    """The record could not be made durable; the request it belongs to must not proceed."""


def instance_dir(root: Path, instance: str) -> Path:
    """Each instance writes its own directory, so writers never contend for a file."""
    return root / _SAFE.sub("_", instance)


def _last_line(path: Path) -> tuple[bytes, int]:
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


class LedgerWriter:
    """Appends records to `<dir>/<instance>/<segment>.jsonl` in fsynced batches."""

    def __init__(
        self,
        root: Path,
        instance: str,
        *,
        batch_window_s: float = 0.002,
        max_batch: int = 512,
        queue_limit: int = 10_000,
        on_commit: Callable[[int, float], None] = lambda n, s: None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self.root = root
        self.instance = instance
        self.dir = instance_dir(root, instance)
        self.batch_window_s = batch_window_s
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self._on_commit = on_commit
        self._on_error = on_error
        self._pending: deque[tuple[Mapping[str, Any], asyncio.Future[dict[str, Any]] | None]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fd = -1
        self._seq = 0
        self._head = GENESIS
        self.segment: Path | None = None
        self.healthy = False
        self._closing = False

    @property
    def head(self) -> tuple[int, str]:
        """The (seq, hash) of the last durable record."""
        return self._seq, self._head

    async def open(self) -> None:
        """Recover the chain head from disk (repairing a torn tail) and start committing."""
        repair = await asyncio.to_thread(self._open_sync)
        self.healthy = True
        self._task = asyncio.create_task(self._run(), name="ledger-writer")
        if repair is not None:
            await self.append(repair, wait=True)

    def _open_sync(self) -> dict[str, Any] | None:
        self.dir.mkdir(parents=True, exist_ok=True)
        segments = sorted(self.dir.glob("*.jsonl"))
        self.segment = segments[-1] if segments else self.dir / "000001.jsonl"
        repair: dict[str, Any] | None = None
        if self.segment.exists():
            repair = self._recover(self.segment)
        self._fd = os.open(self.segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return repair

    def _recover(self, segment: Path) -> dict[str, Any] | None:
        line, offset = _last_line(segment)
        if not line:
            return None
        try:
            record = json.loads(line)
            self._seq, self._head = int(record["seq"]), str(record["hash"])
            with segment.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() == offset + len(line):  # complete record but no newline: torn write
                    raise ValueError("missing newline")
            return None
        except (ValueError, KeyError, TypeError):
            aside = segment.with_suffix(f".torn-{int(time.time())}")
            aside.write_bytes(line)
            os.truncate(segment, offset)
            log.error("ledger: torn last line of %s moved to %s", segment, aside)
            if offset:
                prev, _ = _last_line(segment)
                record = json.loads(prev)
                self._seq, self._head = int(record["seq"]), str(record["hash"])
            return {
                "kind": "repair",
                "ts": time.time(),
                "segment": segment.name,
                "offset": offset,
                "moved_to": aside.name,
                "bytes": len(line),
            }

    async def append(self, body: Mapping[str, Any], *, wait: bool) -> dict[str, Any] | None:
        """Queue a record; with `wait`, return it sealed once its batch is on disk."""
        if self._task is None or self._closing:
            raise LedgerUnavailable("ledger is not open")
        if len(self._pending) >= self.queue_limit:
            raise LedgerUnavailable("ledger queue is full")
        future: asyncio.Future[dict[str, Any]] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
        self._pending.append((body, future))
        self._wake.set()
        return None if future is None else await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.batch_window_s > 0 and not self._closing:
                await asyncio.sleep(self.batch_window_s)
            while self._pending:
                if not await self._commit_batch() and self._closing:
                    log.error("ledger: closing with %d records that could not be written", len(self._pending))
                    return
            if self._closing:
                return

    async def _commit_batch(self) -> bool:
        """Write and fsync one batch; False if it failed (access records stay queued)."""
        batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
        seq, head = self._seq, self._head
        sealed = []
        for body, _ in batch:
            seq += 1
            record = seal(body, instance=self.instance, seq=seq, prev_hash=head)
            head = record["hash"]
            sealed.append(record)
        data = b"".join(line_of(r) for r in sealed)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self._write, data)
        except OSError as exc:
            log.error("ledger: write failed: %s", exc)
            self.healthy = False
            self._on_error()
            kept = [(body, None) for body, fut in batch if fut is None]
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(LedgerUnavailable(f"ledger write failed: {exc.strerror}"))
            self._pending.extendleft(reversed(kept))  # access records are kept, never dropped
            if kept and not self._closing:
                await asyncio.sleep(0.5)
            return False
        self._seq, self._head = seq, head
        self.healthy = True
        self._on_commit(len(sealed), time.perf_counter() - started)
        for record, (_, fut) in zip(sealed, batch, strict=True):
            if fut is not None and not fut.done():
                fut.set_result(record)
        return True

    def _write(self, data: bytes) -> None:
        before = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise

    async def close(self) -> None:
        """Commit what is queued, then close the segment."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
