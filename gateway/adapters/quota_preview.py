"""What a reservation would answer now, without taking it: for dry runs, which must hold nothing.

The plan's counters are read from the store (each read lazily ends expired leases, as a
reservation would) and the reservation is made on a scratch QuotaBook holding only those values:
the same arithmetic as the store's script, and nothing written. Concurrent reservations may move
the counters between the reads and the answer; a dry run is advice, not a promise.
"""

from gateway.adapters.quota import QuotaStore
from gateway.core.leases import Plan, ReserveResult
from gateway.core.quota_book import QuotaBook


async def preview(store: QuotaStore, plan: Plan, now: float) -> ReserveResult:
    """The ReserveResult `store.reserve(plan, now)` would return, reserving nothing (may raise BackendUnavailable).

    A plan replacing a lease is previewed without its credit (a dry run is checked as a new job).
    """
    book = QuotaBook()
    for counter in plan.counters:
        book.values[(plan.hash_tag, counter.key)] = await store.counter_value(plan.hash_tag, counter.key, now)
    return book.reserve(plan, now)
