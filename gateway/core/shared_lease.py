"""One lease per tenant and cluster: the jobs of a tenant on a scheduler whose jobs are priced at the whole
cluster (Ray with `pricing: cluster`) share the lease that holds the cluster's capacity.

A new job on such a cluster joins the tenant's live lease there: its plan is checked as if that
lease's held shares were given back (the same cluster costs nothing more, a grown one the
difference), and once the scheduler accepts the job the old lease's held shares are released and
every live job of it is owned by the new lease. Cumulative counts (training operations, budgets)
of the earlier jobs stay where they were debited, so the new job's cumulative counters are judged
against the stored values, without the credit the store gives a replaced lease. A job's end
releases the lease only when no other job of the tenant, not known to be over, is owned under it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from gateway.core.leases import CounterKind, CounterState, LeaseRef, Plan, ReserveResult, ReserveStatus

REASON = "shared_lease"  # the `reason` of the ledger records this writes


@dataclass(frozen=True, slots=True)
class SharedLease:
    """A tenant's live lease on a shared-lease upstream and the jobs owned under it (sorted)."""

    lease: LeaseRef
    jobs: tuple[str, ...]


def choose(candidates: Iterable[tuple[str, LeaseRef, Mapping[str, float]]]) -> SharedLease | None:
    """The lease a new job joins, from (job id, its owner's lease, that lease's held amounts) of live jobs.

    Normally there is one; after two concurrent submissions there may be more, and the one
    holding the most is joined (the largest credit: the least held twice). None without any.
    """
    leases: dict[str, LeaseRef] = {}
    jobs: dict[str, list[str]] = {}
    held: dict[str, float] = {}
    for job_id, lease, amounts in candidates:
        leases.setdefault(lease.lease_id, lease)
        jobs.setdefault(lease.lease_id, []).append(job_id)
        held[lease.lease_id] = max(amounts.values(), default=0.0)
    if not leases:
        return None
    best = max(leases, key=lambda lease_id: (held[lease_id], lease_id))
    return SharedLease(leases[best], tuple(sorted(jobs[best])))


def uncredited(plan: Plan, result: ReserveResult) -> ReserveResult:
    """An admission checked net of a joined lease, judged again on its cumulative counters without that credit.

    The store checks each counter of a plan that replaces a lease as if that lease's debit on it
    were given back: right for held capacity (the joined lease's held shares are released when
    the job is accepted), wrong for cumulative counts, which the earlier jobs keep. An enforced
    cumulative counter that refuses on its stored value turns the admission into a denial (the
    caller gives the store's debit back); an unenforced one is named as shadow.
    """
    if result.status is not ReserveStatus.ADMITTED:
        return result
    states = {s.key: s for s in result.counters}
    shadow = list(result.shadow)
    failing = None
    for counter in plan.counters:
        state = states.get(counter.key)
        if counter.kind is not CounterKind.CUMULATIVE or state is None:
            continue
        if not counter.refuses(state.before, state.amount):
            continue
        if not counter.enforced:
            shadow += [] if counter.key in shadow else [counter.key]
        elif failing is None:
            failing = counter.key
    if failing is None:
        return replace(result, shadow=tuple(shadow))
    refused = tuple(CounterState(s.key, s.before, s.amount, s.before) for s in result.counters)
    return ReserveResult(ReserveStatus.DENIED, refused, failing, tuple(shadow))
