"""Supervision of the ledger writer task: a crash answers its waiting callers and restarts it, within a budget.

If the task stops for any reason other than close(), every request waiting on it is answered LedgerUnavailable
at once, the failure is counted and logged, and the task is restarted (its `run` resyncs from the chain head on
disk), at most MAX_RESTARTS times within RESTART_WINDOW_S; past that it stays stopped for good.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.adapters.ledger.pending import LedgerUnavailable, Pending

log = logging.getLogger("gateway.adapters.ledger.writer")  # one logger for the whole writer's story

# A writer task that dies keeps failing fast if its cause recurs at once; after this many restarts within the
# window it stays stopped rather than loop (restart the process once the cause is fixed).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
# The first restart waits this long, doubling up to RESTART_MAX_DELAY_S.
RESTART_DELAY_S = 0.05
RESTART_MAX_DELAY_S = 2.0


class Supervisor:
    """Runs `run(delay)` as the writer task and restarts it after a crash (delay > 0 marks a restart)."""

    def __init__(
        self,
        run: Callable[[float], Coroutine[Any, Any, None]],
        pending: Pending,
        *,
        closing: Callable[[], bool],
        on_crash: Callable[[], None],
    ) -> None:
        self._run = run
        self._pending = pending
        self._closing = closing
        self._on_crash = on_crash
        self.task: asyncio.Task[None] | None = None
        self.dead = False  # stopped for good after too many restarts
        self._crashes: list[float] = []  # time.monotonic() of recent task deaths
        self._last_crash: str | None = None

    def start(self, delay: float = 0.0) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(delay), name="ledger-writer")
        self.task.add_done_callback(self._stopped)

    def _stopped(self, task: "asyncio.Task[None]") -> None:
        """Done callback of the writer task: unless close() ended it, a crash to answer, count and restart."""
        cause = None if task.cancelled() else task.exception()
        if self._closing() and cause is None:
            self._pending.fail_waiting(LedgerUnavailable("the ledger closed before this record was written"))
            return
        self._on_crash()
        what = "cancelled" if task.cancelled() else repr(cause) if cause is not None else "returned"
        waiting = self._pending.waiting()
        if what != self._last_crash:  # the same cause again gets one line, not another traceback
            log.error("ledger: the writer task stopped unexpectedly (%s); refusing %d waiting requests",
                      what, waiting, exc_info=cause)  # fmt: skip
            self._last_crash = what
        else:
            log.error("ledger: the writer task stopped again (%s); refusing %d waiting requests", what, waiting)
        self._pending.fail_waiting(LedgerUnavailable("the ledger writer stopped"))
        if self._closing():
            return
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < RESTART_WINDOW_S] + [now]
        if len(self._crashes) > MAX_RESTARTS:
            self.dead = True
            log.critical(
                "ledger: the writer stopped %d times within %.0f s and stays stopped: every record is refused "
                "and the gateway is not ready until it restarts; %d records nobody waited for are not written",
                len(self._crashes), RESTART_WINDOW_S, len(self._pending.queued),
            )  # fmt: skip
            return
        self.start(min(RESTART_DELAY_S * 2 ** (len(self._crashes) - 1), RESTART_MAX_DELAY_S))
