"""The quota store port: atomic reservations, leases, idempotent responses and job ownership."""

from typing import Protocol

from gateway.core.leases import (
    CounterState,
    LeaseRef,
    Owner,
    Plan,
    QuotaState,
    ReserveResult,
    ReserveStatus,
    StoredResponse,
)

__all__ = [
    "DEFAULT_IDEMPOTENCY_WINDOW_S", "DEFAULT_OWNERSHIP_TTL_S", "BackendUnavailable", "CounterState",
    "LeaseRef", "Owner", "QuotaState", "QuotaStore", "ReserveResult", "ReserveStatus", "StoredResponse", "lease_ref",
]  # fmt: skip

DEFAULT_IDEMPOTENCY_WINDOW_S = 24 * 3600.0
DEFAULT_OWNERSHIP_TTL_S = 30 * 24 * 3600.0


class BackendUnavailable(Exception):
    """The store could not answer in time or at all; the caller fails closed.

    After a reservation attempt this does not mean nothing happened: the script may have
    run. Callers treat the lease as held (unsettled) rather than retrying blindly.
    """


def lease_ref(ref: Plan | LeaseRef) -> LeaseRef:
    """The lease a plan took, or the reference itself."""
    return ref.ref if isinstance(ref, Plan) else ref


class QuotaStore(Protocol):
    """Counters, leases, idempotency records and ownership; every method may raise BackendUnavailable.

    `now` is the gateway clock in epoch seconds; stores never read their own clock for
    decisions, so leases end and idempotency records lapse on the caller's time.
    """

    async def reserve(self, plan: Plan, now: float) -> ReserveResult:
        """Atomically check every counter of `plan` and debit all of them, or none.

        A retry of a completed idempotency key returns REPLAY with the stored response; a
        retry while the first is still in flight (or a second call with the same decision
        id) returns IN_PROGRESS; neither debits anything.
        """
        ...

    async def complete(
        self,
        ref: Plan | LeaseRef,
        *,
        upstream: str,
        job_id: str | None,
        response: StoredResponse,
        now: float,
    ) -> None:
        """Store the response for idempotent replay and, given a job id, record its owner."""
        ...

    async def refund(self, ref: Plan | LeaseRef, now: float) -> bool:
        """Give back every debit of a lease (held and cumulative) once; clear its in-progress key."""
        ...

    async def release_job(self, upstream: str, job_id: str, now: float) -> bool:
        """Give back the held TPP of a cancelled job; True if this call returned capacity."""
        ...

    async def disown(self, upstream: str, job_id: str) -> None:
        """Forget who owns `job_id` (its lease is left as it is): ownership that moved to another job id."""
        ...

    async def extend_job(self, upstream: str, job_id: str, end: float, now: float) -> float | None:
        """Hold the lease of a job the scheduler says lives until at least `end`; its end after, or None.

        None: no live lease (never owned, released, refunded). A held share that already lapsed
        is held again without a cap check, since the job is running whether or not it fits.
        """
        ...

    async def held_amounts(self, upstream: str, job_id: str) -> dict[str, float] | None:
        """What the live lease of `job_id` holds on each held counter now; None when it has no live lease."""
        ...

    async def owner_of(self, upstream: str, job_id: str) -> Owner | None:
        """Who submitted `job_id` through the gateway, if anyone."""
        ...

    async def owned_jobs(self, upstream: str, tenant_id: str) -> set[str]:
        """The job ids a tenant owns on `upstream` (for filtering listings)."""
        ...

    async def counter_value(self, hash_tag: str, key: str, now: float) -> float:
        """A counter's stored value after lazily ending its expired leases (without base)."""
        ...

    async def holdings(self, now: float) -> QuotaState:
        """What the store holds now, for usage reports (read only, but for ending expired leases as reads do):
        every counter with its live held shares, every lease it still keeps (released and refunded ones
        until they are collected), and job owners. Idempotency records are not listed."""
        ...

    async def restore(self, state: QuotaState, now: float) -> None:
        """Replace what the store holds under every key `state` names (a rebuild from the ledger).

        Counters, leases and idempotency records of the state's slots, and ownership of its
        jobs and tenants, are overwritten; keys the state does not name are left alone.
        """
        ...

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the store answers now (readiness probes ask this)."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...
