"""Rebuild a quota store from a ledger directory: read the records, compute the state, restore it."""

import asyncio
from pathlib import Path

from gateway.adapters.ledger.reader import records_in_time_order
from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S, DEFAULT_OWNERSHIP_TTL_S, QuotaStore
from gateway.core.leases import QuotaState
from gateway.core.rebuild import rebuild_state


def state_from_ledger(
    root: Path,
    now: float,
    *,
    idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
    ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S,
) -> QuotaState:
    """The quota state every instance chain under `root` implies at `now` (reads in constant memory)."""
    return rebuild_state(
        records_in_time_order(root), now, idempotency_window_s=idempotency_window_s, ownership_ttl_s=ownership_ttl_s
    )


async def rebuild_store(
    store: QuotaStore,
    root: Path,
    now: float,
    *,
    idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
    ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S,
) -> QuotaState:
    """Read the ledger off the event loop, then write the state it implies into `store`."""
    state = await asyncio.to_thread(
        state_from_ledger, root, now, idempotency_window_s=idempotency_window_s, ownership_ttl_s=ownership_ttl_s
    )
    await store.restore(state, now)
    return state
