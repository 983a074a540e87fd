"""The ledger writer: one hash chain per instance in rotating segments, group-committed with fsync, never dropping.

The writer task is supervised: if it stops for any reason other than close(), every request waiting on it is
answered LedgerUnavailable at once, the failure is counted and logged, and the task is restarted from the
chain head on disk, at most MAX_RESTARTS times within RESTART_WINDOW_S; past that it stays stopped, appends
are refused and the writer reports itself unhealthy (the gateway turns not ready) until the process restarts.
"""

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files
from gateway.adapters.ledger.signing import Signer
from gateway.core.ledger import (
    CHECKPOINT,
    GENESIS,
    PRUNE,
    canonical,
    checkpoint_body,
    checkpoint_payload,
    line_of,
    seal,
)

log = logging.getLogger(__name__)

# A writer task that dies keeps failing fast if its cause recurs at once; after this many restarts within the
# window it stays stopped rather than loop (restart the process once the cause is fixed).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# The first restart waits this long, doubling up to RESTART_MAX_DELAY_S.
RESTART_DELAY_S = 0.05
RESTART_MAX_DELAY_S = 2.0
# json.dumps raises these for a body it cannot write (an object, NaN, a cycle, absurd nesting).
UNENCODABLE = (TypeError, ValueError, RecursionError)


class LedgerUnavailable(Exception):
    """The record could not be made durable; the request it belongs to must not proceed."""


def instance_dir(root: Path, instance: str) -> Path:
    """Each instance writes its own directory, so writers never contend for a file."""
    return root / files.safe_name(instance)


@dataclass(frozen=True, slots=True)
class _Mark:
    """A queue entry asking for a checkpoint (at open, on the interval, at close)."""

    reason: str


# (body, the waiting caller's future or None, time.monotonic() when it was queued)
_Item = tuple[Mapping[str, Any] | _Mark, "asyncio.Future[dict[str, Any]] | None", float]


@dataclass(slots=True)
class _Sealed:
    """One batch sealed in memory; the writer's state moves to it only once it is on disk."""

    records: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any] | None] = field(default_factory=list)
    rejected: set[int] = field(default_factory=set)  # batch positions whose body could not be encoded
    seq: int = 0
    head: str = GENESIS
    since: int = 0
    cp_time: float = 0.0
    checkpoint: dict[str, Any] | None = None


class LedgerWriter:
    """Appends records to `<dir>/<instance>/<segment>.jsonl` in fsynced batches, with signed checkpoints."""

    def __init__(
        self,
        root: Path,
        instance: str,
        *,
        batch_window_s: float = 0.0,
        max_batch: int = 512,
        queue_limit: int = 10_000,
        on_commit: Callable[[int, float], None] = lambda n, s: None,
        on_error: Callable[[], None] = lambda: None,
        segment_max_bytes: int = 64 << 20,
        segment_max_age_s: float = 86_400.0,
        signer: Signer | None = None,
        checkpoint_every_records: int = 1000,
        checkpoint_every_s: float = 60.0,
        anchor_dir: Path | None = None,
        on_checkpoint: Callable[[dict[str, Any]], None] = lambda record: None,
        clock: Callable[[], float] = time.time,
        stall_after_s: float = 5.0,
        close_timeout_s: float = 10.0,
    ) -> None:
        self.root = root
        self.instance = instance
        self.dir = instance_dir(root, instance)
        self.batch_window_s = batch_window_s
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_s = segment_max_age_s
        self.signer = signer
        self.checkpoint_every_records = checkpoint_every_records
        self.checkpoint_every_s = checkpoint_every_s
        self.anchor_dir = anchor_dir
        self.clock = clock
        self.stall_after_s = stall_after_s
        self.close_timeout_s = close_timeout_s
        self._on_commit = on_commit
        self._on_error = on_error
        self._on_checkpoint = on_checkpoint
        self._pending: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fd = -1
        self._lock_fd = -1
        self._seq = 0
        self._head = GENESIS
        self._since_cp = 0
        self._cp_time = 0.0
        self._checkpoint: dict[str, Any] | None = None
        self._closed_segments: list[dict[str, Any]] = []
        self._segment_first: int | None = None
        self._segment_opened = 0.0
        self._segment_bytes = 0
        self.segment: Path | None = None
        self._ok = False  # opened, and the last write (if any) succeeded
        self._closing = False
        self._broken = False
        self._dead = False  # stopped for good after too many restarts
        self._inflight: list[_Item] = []  # the batch being committed
        self._crashes: list[float] = []  # time.monotonic() of recent task deaths
        self._last_crash: str | None = None
        self._failing: str | None = None  # the write error last logged, until a write succeeds again

    @property
    def running(self) -> bool:
        """Whether the writer task is alive (False before open, after close, and once stopped for good)."""
        return self._task is not None and not self._task.done() and not self._dead

    @property
    def healthy(self) -> bool:
        """Running, the last write succeeded, and no record has waited longer than `stall_after_s`."""
        return self._ok and self.running and self.oldest_pending_s() < self.stall_after_s

    def oldest_pending_s(self) -> float:
        """How long the oldest record not yet durable has been waiting (0 when none is)."""
        queued = [items[0][2] for items in (self._inflight, self._pending) if items]
        return max(0.0, time.monotonic() - min(queued)) if queued else 0.0

    @property
    def head(self) -> tuple[int, str]:
        """The (seq, hash) of the last durable record."""
        return self._seq, self._head

    async def open(self) -> None:
        """Recover the chain head from disk (repairing a torn tail) and start committing."""
        if self.signer is None:
            log.warning(
                "ledger: no signing_key_file configured, so no signed checkpoints are written; "
                "the hash chain alone cannot show a rewritten or truncated tail"
            )
        opened = False
        try:
            repair = await asyncio.to_thread(self._open_sync)
            opened = True
        except BlockingIOError:
            raise LedgerUnavailable(f"{self.dir}: another process is writing this instance's chain") from None
        except files.ChainHeadUnknown as exc:
            raise LedgerUnavailable(str(exc)) from None
        finally:
            if not opened:
                self._release()
        self._ok = True
        self._start()
        if repair is not None:
            await self.append(repair, wait=True)
        if self.signer is not None and self._since_cp:
            self._pending.append((_Mark("open"), None, time.monotonic()))  # sign what the last run left unsigned
            self._wake.set()

    def _open_sync(self) -> dict[str, Any] | None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = files.lock_writer(self.dir)
        manifest = files.read_json(self.dir / files.MANIFEST) or {}
        found = files.segments(self.dir)
        self.segment = found[-1] if found else self.dir / files.segment_name(1)
        repair = files.repair_torn_tail(self.segment, self.clock()) if self.segment.exists() else None
        self._seq, self._head, head_kind = files.head_from_disk(self.dir, found)
        claimed = manifest.get("head") or {}
        if isinstance(claimed.get("seq"), int) and (
            claimed["seq"] > self._seq or (claimed["seq"] == self._seq and claimed.get("hash") != self._head)
        ):
            raise LedgerUnavailable(
                f"{self.dir / files.MANIFEST}: says the chain reaches seq {claimed['seq']}, but the segments end at "
                f"seq {self._seq}: committed records are missing; refusing to continue this chain"
            )
        self._closed_segments = [files.segment_entry(p) for p in found[:-1]]
        entries = {e.get("name"): e for e in manifest.get("segments") or [] if isinstance(e, dict)}
        first = files.parse(files.first_line(self.segment)) if self.segment.exists() else None
        self._segment_first = first.get("seq") if first else None
        now = self.clock()
        opened = (entries.get(self.segment.name) or {}).get("opened") or (first or {}).get("ts")
        self._segment_opened = float(opened) if isinstance(opened, int | float) else now
        done = manifest.get("checkpoint")
        self._checkpoint = done if isinstance(done, dict) and isinstance(done.get("seq"), int) else None
        if self._seq == 0 or head_kind in (CHECKPOINT, PRUNE):
            self._since_cp = 0
        else:
            self._since_cp = max(1, self._seq - (self._checkpoint or {}).get("seq", 0))
        self._cp_time = now
        self._fd = os.open(self.segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._segment_bytes = os.fstat(self._fd).st_size
        files.fsync_dir(self.dir)
        self._write_manifest(self._manifest())
        return repair

    async def append(self, body: Mapping[str, Any], *, wait: bool) -> dict[str, Any] | None:
        """Queue a record; with `wait`, return it sealed once its batch is on disk."""
        if self._task is None or self._closing:
            raise LedgerUnavailable("ledger is not open")
        if not self.running:
            raise LedgerUnavailable("the ledger writer has stopped")
        if len(self._pending) >= self.queue_limit:
            raise LedgerUnavailable("ledger queue is full")
        future: asyncio.Future[dict[str, Any]] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
        else:
            # Its caller acts before the batch commits (a read is forwarded at once): a record the writer
            # could not encode would be dropped after the fact, so it is refused now instead.
            try:
                canonical(body)
            except UNENCODABLE as exc:
                raise self._unencodable(body, exc) from None
        self._pending.append((body, future, time.monotonic()))
        self._wake.set()
        return None if future is None else await future

    def _unencodable(self, body: Mapping[str, Any], exc: BaseException) -> LedgerUnavailable:
        """Count and log (once per record) a body that cannot be written; the error its caller gets."""
        self._on_error()
        log.error(
            "ledger: a %.32r record of decision %.40r cannot be encoded and is refused: %s: %.200s",
            body.get("kind"), body.get("decision_id"), type(exc).__name__, exc,
        )  # fmt: skip
        return LedgerUnavailable(f"the record cannot be encoded ({type(exc).__name__})")

    # -- supervision ----------------------------------------------------------------------

    def _start(self, delay: float = 0.0) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervised(delay), name="ledger-writer")
        self._task.add_done_callback(self._stopped)

    async def _supervised(self, delay: float) -> None:
        if delay:  # a restart: the crash may have come between a write and its bookkeeping
            await asyncio.sleep(delay)
            await asyncio.to_thread(self._resync)
            self._ok = not self._broken
            log.warning("ledger: writer restarted at seq %d", self._seq)
        await self._run()

    def _resync(self) -> None:
        """Take the chain head from disk, the truth, so that a restarted writer never reuses a seq."""
        seq, head, kind = files.head_from_disk(self.dir, files.segments(self.dir))
        if (seq, head) != (self._seq, self._head):
            log.error("ledger: the chain on disk ends at seq %d, the writer was at seq %d; continuing from disk",
                      seq, self._seq)  # fmt: skip
            self._seq, self._head = seq, head
            self._since_cp = 0 if kind in (CHECKPOINT, PRUNE) else max(1, self._since_cp)
        self._segment_bytes = os.fstat(self._fd).st_size

    def _stopped(self, task: "asyncio.Task[None]") -> None:
        """Done callback of the writer task: unless close() ended it, a crash to answer, count and restart."""
        cause = None if task.cancelled() else task.exception()
        if self._closing and cause is None:
            self._fail_waiting(LedgerUnavailable("the ledger closed before this record was written"))
            return
        self._ok = False
        self._on_error()
        what = "cancelled" if task.cancelled() else repr(cause) if cause is not None else "returned"
        waiting = sum(1 for _, fut, _ in (*self._inflight, *self._pending) if fut is not None)
        if what != self._last_crash:  # the same cause again gets one line, not another traceback
            log.error("ledger: the writer task stopped unexpectedly (%s); refusing %d waiting requests",
                      what, waiting, exc_info=cause)  # fmt: skip
            self._last_crash = what
        else:
            log.error("ledger: the writer task stopped again (%s); refusing %d waiting requests", what, waiting)
        self._fail_waiting(LedgerUnavailable("the ledger writer stopped"))
        if self._closing:
            return
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < RESTART_WINDOW_S] + [now]
        if len(self._crashes) > MAX_RESTARTS:
            self._dead = True
            log.critical(
                "ledger: the writer stopped %d times within %.0f s and stays stopped: every record is refused "
                "and the gateway is not ready until it restarts; %d records nobody waited for are not written",
                len(self._crashes), RESTART_WINDOW_S, len(self._pending),
            )  # fmt: skip
            return
        self._start(min(RESTART_DELAY_S * 2 ** (len(self._crashes) - 1), RESTART_MAX_DELAY_S))

    def _fail_waiting(self, error: LedgerUnavailable) -> None:
        """Answer every waiting caller with `error`; records nobody waits for stay queued, in order."""
        kept = [item for item in (*self._inflight, *self._pending) if item[1] is None]
        for _, fut, _ in (*self._inflight, *self._pending):
            if fut is not None and not fut.done():
                fut.set_exception(error)
        self._inflight = []
        self._pending = deque(kept)

    def _idle_timeout(self) -> float | None:
        """Seconds until an interval checkpoint is due for records already written, or None."""
        if self.signer is None or not self._since_cp:
            return None
        return max(0.0, self._cp_time + self.checkpoint_every_s - self.clock())

    async def _run(self) -> None:
        while True:
            timeout = self._idle_timeout()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self._pending and self.batch_window_s > 0 and not self._closing:
                await asyncio.sleep(self.batch_window_s)
            due = self._idle_timeout()
            if not self._pending and due is not None and due <= 0.001:
                self._pending.append((_Mark("interval"), None, time.monotonic()))
            while self._pending:
                if not await self._commit_batch() and self._closing:
                    log.error("ledger: closing with %d records that could not be written", len(self._pending))
                    return
            if self._closing:
                if self.signer is not None and self._since_cp:
                    self._pending.append((_Mark("close"), None, time.monotonic()))
                    await self._commit_batch()
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self._write_manifest, self._manifest())
                return

    def _make_checkpoint(self, seq: int, head: str, now: float, reason: str) -> dict[str, Any]:
        assert self.signer is not None
        key_id = self.signer.key_id
        sig = self.signer.sign(
            checkpoint_payload(instance=self.instance, head_seq=seq, head_hash=head, ts=now, key_id=key_id)
        )
        body = checkpoint_body(head_seq=seq, head_hash=head, ts=now, reason=reason, key_id=key_id, sig=sig)
        return seal(body, instance=self.instance, seq=seq + 1, prev_hash=head)

    def _seal(self, batch: list[_Item], now: float, trailing: str | None = None) -> _Sealed:
        """Chain the batch, inserting a checkpoint after every N records and when the interval is up."""
        out = _Sealed(seq=self._seq, head=self._head, since=self._since_cp, cp_time=self._cp_time)

        def add(record: dict[str, Any]) -> None:
            out.records.append(record)
            out.seq, out.head = record["seq"], record["hash"]

        def checkpoint(reason: str) -> None:
            if self.signer is not None and out.since > 0:
                out.checkpoint = self._make_checkpoint(out.seq, out.head, now, reason)
                add(out.checkpoint)
                out.since, out.cp_time = 0, now

        for position, (body, future, _) in enumerate(batch):
            if isinstance(body, _Mark):
                checkpoint(body.reason)
                out.results.append(None)
                continue
            try:
                record = seal(body, instance=self.instance, seq=out.seq + 1, prev_hash=out.head)
            except UNENCODABLE as exc:  # this body's fault, not the writer's: refuse it alone
                out.rejected.add(position)
                out.results.append(None)
                error = self._unencodable(body, exc)
                if future is not None and not future.done():
                    future.set_exception(error)
                continue
            add(record)
            out.results.append(record)
            out.since += 1
            if out.since >= self.checkpoint_every_records:
                checkpoint("records")
        if trailing is not None or now - out.cp_time >= self.checkpoint_every_s:
            checkpoint(trailing or "interval")
        return out

    async def _commit_batch(self) -> bool:
        """Write and fsync one batch (rotating first if due); False if it failed (access records stay queued)."""
        batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
        self._inflight = batch  # if the task dies from here on, the supervisor answers these callers
        now = self.clock()
        started = time.perf_counter()
        sealed: _Sealed | None = None
        try:
            if self._broken:
                raise OSError(errno.EIO, "a failed write could not be rolled back; restart to recover the chain")
            if self._rotation_due(now):
                await self._rotate(now)
            sealed = self._seal(batch, now)
            data = b"".join(line_of(r) for r in sealed.records)
            if data:
                await asyncio.to_thread(self._write, data)
        except OSError as exc:
            self._inflight = []
            rejected = sealed.rejected if sealed is not None else set()
            await self._failed(exc, [item for i, item in enumerate(batch) if i not in rejected])
            return False
        self._inflight = []
        self._apply(sealed, len(data))
        self._ok = True
        if self._failing is not None:
            log.warning("ledger: writes succeed again")
            self._failing = None
        for record, (_, fut, _) in zip(sealed.results, batch, strict=True):
            if fut is not None and not fut.done() and record is not None:
                fut.set_result(record)
        if sealed.records:
            self._on_commit(len(sealed.records), time.perf_counter() - started)
        if sealed.checkpoint is not None:
            await self._publish(sealed.checkpoint)
        return True

    async def _failed(self, exc: OSError, batch: list[_Item]) -> None:
        if str(exc) != self._failing:  # retries of kept records fail the same way: log the cause once
            log.error("ledger: write failed: %s", exc)
            self._failing = str(exc)
        self._ok = False
        self._on_error()
        kept = [(body, None, queued) for body, fut, queued in batch if fut is None and not isinstance(body, _Mark)]
        for _, fut, _ in batch:
            if fut is not None and not fut.done():
                fut.set_exception(LedgerUnavailable(f"ledger write failed: {exc.strerror}"))
        self._pending.extendleft(reversed(kept))  # access records are kept, never dropped
        if kept and not self._closing:
            await asyncio.sleep(0.5)

    def _apply(self, sealed: _Sealed, size: int) -> None:
        if sealed.records and self._segment_first is None:
            self._segment_first = sealed.records[0]["seq"]
        self._seq, self._head = sealed.seq, sealed.head
        self._since_cp, self._cp_time = sealed.since, sealed.cp_time
        self._segment_bytes += size
        if sealed.checkpoint is not None:
            self._checkpoint = {"seq": sealed.checkpoint["seq"], "hash": sealed.checkpoint["hash"]}

    def _write(self, data: bytes) -> None:
        before = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            try:
                os.ftruncate(self._fd, before)
            except OSError:  # unacknowledged lines may remain: only a restart's recovery may continue after them
                self._broken = True
            raise

    # -- segments, manifest, anchors --------------------------------------------------------

    def _rotation_due(self, now: float) -> bool:
        if self._segment_first is None:  # never rotate away from an empty segment
            return False
        return self._segment_bytes >= self.segment_max_bytes or now - self._segment_opened >= self.segment_max_age_s

    async def _rotate(self, now: float) -> None:
        """Close the segment with a checkpoint, then continue the chain in a new one."""
        sealed = self._seal([], now, trailing="rotation")
        if sealed.records:
            data = b"".join(line_of(r) for r in sealed.records)
            started = time.perf_counter()
            await asyncio.to_thread(self._write, data)
            self._apply(sealed, len(data))
            self._on_commit(len(sealed.records), time.perf_counter() - started)
            assert sealed.checkpoint is not None
            await self._publish(sealed.checkpoint)
        await asyncio.to_thread(self._switch, now)

    def _switch(self, now: float) -> None:
        assert self.segment is not None
        closed = self.segment
        new = self.dir / files.segment_name(files.segment_number(closed) + 1)
        fd = os.open(new, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            if os.fstat(fd).st_size:  # left empty by an interrupted rotation is fine; anything else is not
                raise FileExistsError(17, "a segment with records already has the next number", str(new))
            files.fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self.segment = fd, new
        self._closed_segments.append(files.segment_entry(closed) | {"opened": self._segment_opened, "closed": now})
        self._segment_first, self._segment_opened, self._segment_bytes = None, now, 0
        log.info("ledger: %s closed at seq %d, continuing in %s", closed.name, self._seq, new.name)
        self._write_manifest(self._manifest())

    def _manifest(self) -> dict[str, Any]:
        assert self.segment is not None
        current = {
            "name": self.segment.name,
            "first_seq": self._segment_first,
            "last_seq": self._seq if self._segment_first is not None else None,
            "last_hash": self._head if self._segment_first is not None else None,
            "opened": self._segment_opened,
            "closed": None,
        }
        return {
            "v": 1,
            "instance": self.instance,
            "updated": self.clock(),
            "head": {"seq": self._seq, "hash": self._head},
            "checkpoint": self._checkpoint,
            "segments": [*self._closed_segments, current],
        }

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        files.write_manifest(self.dir, manifest)
        self._closed_segments = [s for s in self._closed_segments if (self.dir / s["name"]).exists()]

    async def _publish(self, checkpoint: dict[str, Any]) -> None:
        """After a checkpoint is durable: refresh the manifest, copy it to the anchor directory, report it."""
        manifest = self._manifest()
        try:
            await asyncio.to_thread(self._write_manifest, manifest)
            if self.anchor_dir is not None:
                anchor = self.anchor_dir / f"{files.safe_name(self.instance)}.json"
                await asyncio.to_thread(files.write_anchor, anchor, line_of(checkpoint))
        except OSError as exc:  # the records are durable; only the copies are stale
            log.error("ledger: checkpoint seq %d: manifest or anchor copy not written: %s", checkpoint["seq"], exc)
        self._on_checkpoint(checkpoint)

    async def close(self) -> None:
        """Commit what is queued, sign it with a last checkpoint, then close the segment (within `close_timeout_s`)."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.close_timeout_s)
            if not done:  # a write blocked in the kernel (a hung disk) must not hold the shutdown forever
                log.error(
                    "ledger: the writer did not finish within %.0f s; closing without it, %d records not written",
                    self.close_timeout_s, len(self._inflight) + len(self._pending),
                )  # fmt: skip
                task.cancel()
                self._fail_waiting(LedgerUnavailable("the ledger closed before this record was written"))
                return  # the segment stays open: the blocked write may still land; the process is ending
        self._release()

    def _release(self) -> None:
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
