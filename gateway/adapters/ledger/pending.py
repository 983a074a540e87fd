"""What waits on the ledger writer: queued records, the batch being committed, and the callers awaiting them."""

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.ledger import Prepared


class LedgerUnavailable(Exception):
    """The record could not be made durable; the request it belongs to must not proceed."""


@dataclass(frozen=True, slots=True)
class Mark:
    """A queue entry asking for a checkpoint (at open, on the interval, at close)."""

    reason: str


# (body, the waiting caller's future or None, time.monotonic() when it was queued); a body is queued
# already encoded (Prepared), so that one that cannot be written is refused before its caller acts.
Item = tuple[Prepared | Mapping[str, Any] | Mark, "asyncio.Future[dict[str, Any]] | None", float]


class Pending:
    """Records not yet durable, in order: those queued and the batch being committed."""

    def __init__(self) -> None:
        self.queued: deque[Item] = deque()
        self.inflight: list[Item] = []  # the batch being committed

    def unwritten(self) -> int:
        return len(self.inflight) + len(self.queued)

    def waiting(self) -> int:
        """How many callers await a record not yet durable."""
        return sum(1 for _, fut, _ in (*self.inflight, *self.queued) if fut is not None)

    def oldest_s(self) -> float:
        """How long the oldest record not yet durable has been waiting (0 when none is)."""
        queued = [items[0][2] for items in (self.inflight, self.queued) if items]
        return max(0.0, time.monotonic() - min(queued)) if queued else 0.0

    def fail_waiting(self, error: LedgerUnavailable) -> None:
        """Answer every waiting caller with `error`; records nobody waits for stay queued, in order."""
        kept = [item for item in (*self.inflight, *self.queued) if item[1] is None]
        for _, fut, _ in (*self.inflight, *self.queued):
            if fut is not None and not fut.done():
                fut.set_exception(error)
        self.inflight = []
        self.queued = deque(kept)
