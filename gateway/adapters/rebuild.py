"""Rebuild a quota store from a ledger directory: read the records, compute the state, restore it.

With a `Trust` (where snapshots are and the keys they must be signed with), the rebuild continues
from the newest quota snapshot that checks out and reads only the records after it; otherwise, or
when none checks out, it reads every chain from its start.
"""

import asyncio
import logging
from pathlib import Path

from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S, DEFAULT_OWNERSHIP_TTL_S, QuotaStore
from gateway.adapters.quota_snapshot import Rebuilt, Trust, fold, fresh, newest, unprotected_prunes
from gateway.core.leases import QuotaState

log = logging.getLogger(__name__)


def rebuild(
    root: Path,
    now: float,
    trust: Trust | None = None,
    *,
    idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
    ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S,
) -> tuple[QuotaState, Rebuilt]:
    """The quota state every instance chain under `root` implies at `now`, and how it was read."""
    rejected: list[str] = []
    resumed = None
    if trust is not None:
        resumed = newest(root, trust, idempotency_window_s, ownership_ttl_s, rejected)
    if resumed is None:
        pruned = unprotected_prunes(root)
        if pruned:
            log.error(
                "quota: rebuilding from the whole ledger, but chains were pruned (%s) and no quota snapshot "
                "covers them: debits of the pruned records (budgets, training operations) are not counted",
                ", ".join(pruned),
            )
        resumed = fresh(root, idempotency_window_s, ownership_ttl_s)
    covered = resumed.records
    folded = fold(resumed)
    return folded.builder.state(now), Rebuilt(resumed.source, covered, folded.read, rejected)


def state_from_ledger(
    root: Path,
    now: float,
    *,
    idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
    ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S,
) -> QuotaState:
    """The quota state every instance chain under `root` implies at `now`, read from the start of each chain."""
    return rebuild(root, now, idempotency_window_s=idempotency_window_s, ownership_ttl_s=ownership_ttl_s)[0]


async def rebuild_store(
    store: QuotaStore, root: Path, now: float, trust: Trust | None = None
) -> tuple[QuotaState, Rebuilt]:
    """Read the ledger (from the newest trusted snapshot) off the event loop, then write the state into `store`."""
    state, how = await asyncio.to_thread(rebuild, root, now, trust)
    await store.restore(state, now)
    return state, how
