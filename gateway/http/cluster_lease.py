"""The quota store reads behind shared cluster leases (see gateway.core.shared_lease): which lease a tenant's
new job joins, and which other jobs still hold a lease when one of its jobs ends."""

from collections.abc import Collection
from dataclasses import replace

from gateway.adapters.quota import QuotaStore
from gateway.core.leases import StoredResponse
from gateway.core.shared_lease import SharedLease, choose

# The lease id a job known to be over is owned by while its tenant's shared lease is held for others: no
# lease has it, so the job holds nothing and no longer keeps the shared lease (its tenant still owns it).
DETACHED = "over"


async def live_lease(store: QuotaStore, upstream: str, tenant_id: str) -> SharedLease | None:
    """The live lease the tenant's jobs on `upstream` are owned under (the one holding most), or None."""
    candidates = []
    for job_id in sorted(await store.owned_jobs(upstream, tenant_id)):
        owner = await store.owner_of(upstream, job_id)
        if owner is None or owner.tenant_id != tenant_id:
            continue
        amounts = await store.held_amounts(upstream, job_id)
        if amounts is not None:
            candidates.append((job_id, owner.lease, amounts))
    return choose(candidates)


async def siblings(
    store: QuotaStore, upstream: str, tenant_id: str, job_id: str, over: Collection[str] = ()
) -> tuple[str, ...]:
    """The tenant's other jobs on `upstream` owned under the live lease `job_id` is owned under, but those
    in `over` (known to be over); () when that lease is not live, so there is nothing to hold."""
    owner = await store.owner_of(upstream, job_id)
    if owner is None or await store.held_amounts(upstream, job_id) is None:
        return ()
    out = []
    for other in sorted(await store.owned_jobs(upstream, tenant_id)):
        if other == job_id or other in over:
            continue
        found = await store.owner_of(upstream, other)
        if found is not None and found.tenant_id == tenant_id and found.lease.lease_id == owner.lease.lease_id:
            out.append(other)
    return tuple(out)


async def detach(store: QuotaStore, upstream: str, job_id: str, now: float) -> None:
    """Own a job known to be over (cancelled, or seen over) by no lease, so it no longer keeps its shared lease."""
    owner = await store.owner_of(upstream, job_id)
    if owner is not None:
        ref = replace(owner.lease, lease_id=DETACHED, idempotency_key=None, counters=())
        await store.complete(ref, upstream=upstream, job_id=job_id, response=StoredResponse(200, (), b""), now=now)
