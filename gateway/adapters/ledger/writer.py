"""The ledger writer: one hash chain per instance, group-committed in fsynced batches with signed checkpoints.

It never drops a record: a record that cannot be written is refused to its caller, or (when nobody waits on it)
kept queued until it can be. The writer task is supervised (see supervision.py); its files are segments.py's.
"""

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files
from gateway.adapters.ledger.pending import Item, LedgerUnavailable, Mark, Pending
from gateway.adapters.ledger.sealing import Checkpoints, Sealed, seal_batch
from gateway.adapters.ledger.segments import Segments, instance_dir
from gateway.adapters.ledger.signing import Signer
from gateway.adapters.ledger.supervision import Supervisor
from gateway.core.ledger import CHECKPOINT, GENESIS, PRUNE, UNENCODABLE, Prepared, prepare

log = logging.getLogger(__name__)
ACCESS = "access"  # the kind of a read's record

__all__ = ["LedgerUnavailable", "LedgerWriter"]  # the writer's API, wherever the parts live


class LedgerWriter:
    """Appends records to `<dir>/<instance>/<segment>.jsonl` in fsynced batches, with signed checkpoints."""

    def __init__(
        self,
        root: Path,
        instance: str,
        *,
        batch_window_s: float = 0.0,
        access_window_s: float = 0.002,
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
        # Reads' access records (nobody waits for them) are gathered for up to this long into one write and
        # fsync, unless another record comes: fewer fsyncs under read load, none later for anything else.
        self.access_window_s = access_window_s
        self._urgent = asyncio.Event()
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.signer = signer
        self.checkpoint_every_records = checkpoint_every_records
        self.checkpoint_every_s = checkpoint_every_s
        self.clock = clock
        self.stall_after_s = stall_after_s
        self.close_timeout_s = close_timeout_s
        self._on_commit = on_commit
        self._on_error = on_error
        self._on_checkpoint = on_checkpoint
        self._files = Segments(
            self.dir,
            instance,
            clock=clock,
            max_bytes=segment_max_bytes,
            max_age_s=segment_max_age_s,
            anchor_dir=anchor_dir,
        )
        self._checkpoints = Checkpoints(instance, signer, checkpoint_every_records, checkpoint_every_s)
        self._pending = Pending()
        self._supervisor = Supervisor(
            self._supervised, self._pending, closing=lambda: self._closing, on_crash=self._crashed
        )
        self._wake = asyncio.Event()
        self._seq = 0
        self._head = GENESIS
        self._since_cp = 0
        self._cp_time = 0.0
        self._checkpoint: dict[str, Any] | None = None
        self._ok = False  # opened, and the last write (if any) succeeded
        self._closing = False
        self._failing: str | None = None  # the write error last logged, until a write succeeds again

    @property
    def _task(self) -> "asyncio.Task[None] | None":
        """The writer task of the moment (a restart replaces it); None before open and after close."""
        return self._supervisor.task

    @property
    def running(self) -> bool:
        """Whether the writer task is alive (False before open, after close, and once stopped for good)."""
        return self._task is not None and not self._task.done() and not self._supervisor.dead

    @property
    def healthy(self) -> bool:
        """Running, the last write succeeded, and no record has waited longer than `stall_after_s`."""
        return self._ok and self.running and self.oldest_pending_s() < self.stall_after_s

    def oldest_pending_s(self) -> float:
        """How long the oldest record not yet durable has been waiting (0 when none is)."""
        return self._pending.oldest_s()

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
                self._files.release()
        self._ok = True
        self._supervisor.start()
        if repair is not None:
            await self.append(repair, wait=True)
        if self.signer is not None and self._since_cp:
            self._pending.queued.append((Mark("open"), None, time.monotonic()))  # sign what the last run left unsigned
            self._wake.set()

    def _open_sync(self) -> dict[str, Any] | None:
        found = self._files.open()
        self._seq, self._head, self._checkpoint = found.seq, found.head, found.checkpoint
        if self._seq == 0 or found.head_kind in (CHECKPOINT, PRUNE):
            self._since_cp = 0
        else:
            self._since_cp = max(1, self._seq - (self._checkpoint or {}).get("seq", 0))
        self._cp_time = found.now
        self._files.write_manifest(self._manifest())
        return found.repair

    async def append(self, body: Mapping[str, Any] | Prepared, *, wait: bool) -> dict[str, Any] | None:
        """Queue a record; with `wait`, return it sealed once its batch is on disk."""
        if self._task is None or self._closing:
            raise LedgerUnavailable("ledger is not open")
        if not self.running:
            raise LedgerUnavailable("the ledger writer has stopped")
        if len(self._pending.queued) >= self.queue_limit:
            raise LedgerUnavailable("ledger queue is full")
        # Encoded once, here: a record the writer could not encode is refused before its caller acts (a
        # read is forwarded at once, without waiting), and sealing only joins the encoded parts.
        try:
            prepared = body if isinstance(body, Prepared) else prepare(body)
        except UNENCODABLE as exc:  # a Prepared is encoded already: only a mapping gets here
            raise self._unencodable(body.body if isinstance(body, Prepared) else body, exc) from None
        future: asyncio.Future[dict[str, Any]] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
        self._pending.queued.append((prepared, future, time.monotonic()))
        if future is not None or prepared.body.get("kind") != ACCESS:  # only reads' records are gathered
            self._urgent.set()
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

    # -- the supervised task -----------------------------------------------------------------

    async def _supervised(self, delay: float) -> None:
        if delay:  # a restart: the crash may have come between a write and its bookkeeping
            await asyncio.sleep(delay)
            await asyncio.to_thread(self._resync)
            self._ok = not self._files.broken
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
        self._files.measure()

    def _crashed(self) -> None:
        self._ok = False
        self._on_error()

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
            if self._pending.queued and not self._closing:
                if self.batch_window_s > 0:
                    await asyncio.sleep(self.batch_window_s)
                elif self.access_window_s > 0 and not self._urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), self.access_window_s)
            self._urgent.clear()
            due = self._idle_timeout()
            if not self._pending.queued and due is not None and due <= 0.001:
                self._pending.queued.append((Mark("interval"), None, time.monotonic()))
            while self._pending.queued:
                if not await self._commit_batch() and self._closing:
                    log.error("ledger: closing with %d records that could not be written", len(self._pending.queued))
                    return
            if self._closing:
                if self.signer is not None and self._since_cp:
                    self._pending.queued.append((Mark("close"), None, time.monotonic()))
                    await self._commit_batch()
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self._files.write_manifest, self._manifest())
                return

    def _seal(self, batch: list[Item], now: float, trailing: str | None = None) -> Sealed:
        start = Sealed(seq=self._seq, head=self._head, since=self._since_cp, cp_time=self._cp_time)
        return seal_batch(batch, now, start, self._checkpoints, self._unencodable, trailing)

    async def _commit_batch(self) -> bool:
        """Write and fsync one batch (rotating first if due); False if it failed (access records stay queued)."""
        queued = self._pending.queued
        batch = [queued.popleft() for _ in range(min(self.max_batch, len(queued)))]
        self._pending.inflight = batch  # if the task dies from here on, the supervisor answers these callers
        now = self.clock()
        started = time.perf_counter()
        sealed: Sealed | None = None
        try:
            if self._files.broken:
                raise OSError(errno.EIO, "a failed write could not be rolled back; restart to recover the chain")
            if self._files.rotation_due(now):
                await self._rotate(now)
            sealed = self._seal(batch, now)
            data = b"".join(sealed.lines)
            if data:
                await asyncio.to_thread(self._files.write, data)
        except OSError as exc:
            self._pending.inflight = []
            rejected = sealed.rejected if sealed is not None else set()
            await self._failed(exc, [item for i, item in enumerate(batch) if i not in rejected])
            return False
        self._pending.inflight = []
        self._apply(sealed, len(data))
        self._ok = True
        if self._failing is not None:
            log.warning("ledger: writes succeed again")
            self._failing = None
        for record, (_, fut, _) in zip(sealed.results, batch, strict=True):
            if fut is not None and not fut.done() and record is not None:
                fut.set_result(record)
        if sealed.count:
            self._on_commit(sealed.count, time.perf_counter() - started)
        if sealed.checkpoint is not None:
            await self._publish(sealed.checkpoint)
        return True

    async def _failed(self, exc: OSError, batch: list[Item]) -> None:
        if str(exc) != self._failing:  # retries of kept records fail the same way: log the cause once
            log.error("ledger: write failed: %s", exc)
            self._failing = str(exc)
        self._ok = False
        self._on_error()
        kept = [(body, None, queued) for body, fut, queued in batch if fut is None and not isinstance(body, Mark)]
        for _, fut, _ in batch:
            if fut is not None and not fut.done():
                fut.set_exception(LedgerUnavailable(f"ledger write failed: {exc.strerror}"))
        self._pending.queued.extendleft(reversed(kept))  # access records are kept, never dropped
        if kept and not self._closing:
            await asyncio.sleep(0.5)

    def _apply(self, sealed: Sealed, size: int) -> None:
        self._files.appended(sealed.first_seq, size)
        self._seq, self._head = sealed.seq, sealed.head
        self._since_cp, self._cp_time = sealed.since, sealed.cp_time
        if sealed.checkpoint is not None:
            self._checkpoint = {"seq": sealed.checkpoint["seq"], "hash": sealed.checkpoint["hash"]}

    # -- rotation and checkpoint copies ----------------------------------------------------------

    async def _rotate(self, now: float) -> None:
        """Close the segment with a checkpoint, then continue the chain in a new one."""
        sealed = self._seal([], now, trailing="rotation")
        if sealed.count:
            data = b"".join(sealed.lines)
            started = time.perf_counter()
            await asyncio.to_thread(self._files.write, data)
            self._apply(sealed, len(data))
            self._on_commit(sealed.count, time.perf_counter() - started)
            assert sealed.checkpoint is not None
            await self._publish(sealed.checkpoint)
        await asyncio.to_thread(self._switch, now)

    def _switch(self, now: float) -> None:
        self._files.switch(now, self._seq)
        self._files.write_manifest(self._manifest())

    def _manifest(self) -> dict[str, Any]:
        return self._files.manifest(self._seq, self._head, self._checkpoint)

    async def _publish(self, checkpoint: dict[str, Any]) -> None:
        """After a checkpoint is durable: refresh the manifest, copy it to the anchor directory, report it."""
        await self._files.publish(self._manifest(), checkpoint)
        self._on_checkpoint(checkpoint)

    async def close(self) -> None:
        """Commit what is queued, sign it with a last checkpoint, then close the segment (within `close_timeout_s`)."""
        self._closing = True
        self._wake.set()
        task, self._supervisor.task = self._supervisor.task, None
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=self.close_timeout_s)
            if not done:  # a write blocked in the kernel (a hung disk) must not hold the shutdown forever
                log.error(
                    "ledger: the writer did not finish within %.0f s; closing without it, %d records not written",
                    self.close_timeout_s, self._pending.unwritten(),
                )  # fmt: skip
                task.cancel()
                self._pending.fail_waiting(LedgerUnavailable("the ledger closed before this record was written"))
                return  # the segment stays open: the blocked write may still land; the process is ending
        self._files.release()
