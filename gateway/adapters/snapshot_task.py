"""The gateway's own quota snapshots: `exportgate quota snapshot` in a child process, periodically and at shutdown.

A child process, not a thread: loading the last snapshot, folding the records after it and
writing the next one is CPU work that would hold the GIL against the event loop; a child runs on
another core and gives its memory back when it exits. One child at a time; a run is skipped when
the last one that succeeded already had the gateway's own chain head to fold (its `until` came after
the head was first seen), so an idle gateway does not rewrite the same snapshot.
"""

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path

from gateway.adapters.background import cancel_and_wait
from gateway.adapters.ledger.writer import LedgerWriter
from gateway.adapters.quota_snapshot import SETTLE_S, Trust
from gateway.config.ledger import LedgerSettings

log = logging.getLogger(__name__)

# At shutdown, the last snapshot gets this long (it runs before the ledger's closing checkpoint, inside
# the parts' close budget); one not finished by then is stopped and the previous snapshots stay.
SNAPSHOT_AT_STOP_S = 5.0


class SnapshotTask:
    """Runs one snapshot child every `every_s` (0: never) and one more at `stop`, within a time budget."""

    def __init__(
        self,
        *,
        ledger_dir: Path,
        snapshot_dir: Path,
        signing_key_file: Path,
        keep: int,
        every_s: float,
        clock: Callable[[], float],
        head: Callable[[], Hashable],
        settle_s: float = SETTLE_S,
    ) -> None:
        self.ledger_dir = ledger_dir
        self.snapshot_dir = snapshot_dir
        self.signing_key_file = signing_key_file
        self.keep = keep
        self.every_s = every_s
        self.clock = clock
        self.head = head  # the own chain's head: unchanged since the last snapshot means nothing to add
        self.settle_s = settle_s
        self.runs = 0  # children that exited 0
        self._head: Hashable = None
        self._head_seen = 0.0  # the clock when the current head was first seen: its record's ts is older
        self._covered_until: float | None = None  # `until` of the last snapshot that succeeded
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def argv(self, now: float, until: float) -> list[str]:
        return [
            sys.executable, "-m", "gateway", "quota", "snapshot", "--ledger", str(self.ledger_dir),
            "--snapshot-dir", str(self.snapshot_dir), "--signing-key", str(self.signing_key_file),
            "--keep", str(self.keep), "--now", repr(now), "--until", repr(until),
        ]  # fmt: skip

    def start(self) -> None:
        if self.every_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._forever(), name="quota-snapshots")

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.run_once()

    async def run_once(self, timeout_s: float | None = None) -> bool:
        """Run one child unless the chain has not moved; False if it failed or was cut short."""
        async with self._lock:
            now, head = self.clock(), self.head()
            if head != self._head:
                self._head, self._head_seen = head, now
            if self._covered_until is not None and self._covered_until > self._head_seen:
                return True
            until = now - self.settle_s
            started = time.monotonic()
            try:
                child = await asyncio.create_subprocess_exec(
                    *self.argv(now, until), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
                )
            except OSError as exc:
                log.error("quota snapshot: cannot start %s: %s", sys.executable, exc)
                return False
            try:
                out, err = await asyncio.wait_for(child.communicate(), timeout_s)
            except BaseException as exc:  # the time is up, or the gateway is stopping: the child goes too
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await asyncio.shield(child.wait())
                if not isinstance(exc, TimeoutError):
                    raise
                log.warning("quota snapshot: stopped after %.1f s, not finished; the previous snapshots stay",
                            time.monotonic() - started)  # fmt: skip
                return False
            for line in err.decode(errors="replace").splitlines():
                log.warning("quota snapshot: %s", line)
            if child.returncode != 0:
                log.error("quota snapshot: exited %s", child.returncode)
                return False
            self.runs += 1
            self._covered_until = until
            for line in out.decode(errors="replace").splitlines():
                log.info("quota snapshot (%.1f s): %s", time.monotonic() - started, line)
            return True

    async def stop(self, budget_s: float) -> None:
        """Stop the periodic runs (a child running is let finish within the budget), then take a last snapshot."""
        deadline = time.monotonic() + budget_s
        if self._task is not None:
            if self._lock.locked():  # a periodic child is running: let it finish rather than waste its work
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(budget_s):
                        async with self._lock:
                            pass
            await cancel_and_wait(self._task)
            self._task = None
        left = deadline - time.monotonic()
        if left > 0.5:
            await self.run_once(left)


def gateway_snapshots(
    settings: LedgerSettings, writer: LedgerWriter, clock: Callable[[], float]
) -> tuple[Trust | None, SnapshotTask | None]:
    """What a memory-store gateway trusts at start-up, and its snapshot task: both need the signing key.

    Without a key nothing could tell a snapshot the gateway wrote from a forged one, so none is
    written or read, and start-up reads every chain from its start.
    """
    signer = writer.signer
    if signer is None or settings.signing_key_file is None:
        log.warning("quota: no ledger.signing_key_file, so no quota snapshots: start-up reads the whole ledger")
        return None, None
    task = SnapshotTask(
        ledger_dir=settings.dir, snapshot_dir=settings.snapshots, signing_key_file=settings.signing_key_file,
        keep=settings.snapshot_keep, every_s=settings.snapshot_every_s, clock=clock, head=lambda: writer.head,
    )  # fmt: skip
    return Trust(settings.snapshots, (signer.public(),)), task
