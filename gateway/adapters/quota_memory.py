"""MemoryQuotaStore: the quota store for one process, with the Redis store's semantics."""

import heapq
from dataclasses import dataclass, field

from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S, DEFAULT_OWNERSHIP_TTL_S, lease_ref
from gateway.core.leases import (
    CounterKind,
    CounterValue,
    Debit,
    HeldShare,
    LeaseRef,
    LeaseState,
    Owner,
    OwnerState,
    Plan,
    QuotaState,
    ReserveResult,
    ReserveStatus,
    StoredResponse,
)
from gateway.core.quota_book import QuotaBook


@dataclass(slots=True)
class _Idem:
    lease_id: str
    expires: float
    response: StoredResponse | None = None


@dataclass(slots=True)
class _Expiries:
    """Lazy garbage collection: (due, kind, key) popped once the gateway clock passes `due`."""

    heap: list[tuple[float, str, tuple[str, ...]]] = field(default_factory=list)

    def add(self, due: float, kind: str, key: tuple[str, ...]) -> None:
        heapq.heappush(self.heap, (due, kind, key))

    def due(self, now: float) -> list[tuple[str, tuple[str, ...]]]:
        out = []
        while self.heap and self.heap[0][0] <= now:
            _, kind, key = heapq.heappop(self.heap)
            out.append((kind, key))
        return out


class MemoryQuotaStore:
    """A QuotaBook plus what a live store adds: idempotency records, job ownership and garbage collection.

    No method awaits, so each runs atomically on the event loop.

    Records kept for a window (leases, idempotency records, ownership) are dropped lazily
    once the caller's clock passes their end, so memory stays bounded by live work.
    """

    def __init__(
        self,
        *,
        idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
        ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S,
    ) -> None:
        self._window = idempotency_window_s
        self._ownership_ttl = ownership_ttl_s
        self._book = QuotaBook()
        self._idem: dict[tuple[str, str, str], _Idem] = {}
        self._owners: dict[tuple[str, str], tuple[Owner, float]] = {}
        self._owned: dict[tuple[str, str], dict[str, float]] = {}
        self._expiries = _Expiries()
        # (tag, lease id) -> (tenant, idempotency key): the book keeps debits only; usage reports name the tenant.
        self._lease_owners: dict[tuple[str, str], tuple[str, str | None]] = {}

    async def reserve(self, plan: Plan, now: float) -> ReserveResult:
        self._collect(now)
        tag = plan.hash_tag
        if plan.idempotency_key is not None:
            record = self._idem.get((tag, plan.tenant_id, plan.idempotency_key))
            if record is not None and record.expires > now:
                if record.response is not None:
                    return ReserveResult(ReserveStatus.REPLAY, response=record.response)
                return ReserveResult(ReserveStatus.IN_PROGRESS)
        result = self._book.reserve(plan, now)
        if result.status is not ReserveStatus.ADMITTED:
            return result
        self._expiries.add(plan.lease_end + self._window, "lease", (tag, plan.decision_id))
        self._lease_owners[(tag, plan.decision_id)] = (plan.tenant_id, plan.idempotency_key)
        if plan.idempotency_key is not None:
            self._idem[(tag, plan.tenant_id, plan.idempotency_key)] = _Idem(plan.decision_id, now + self._window)
            self._expiries.add(now + self._window, "idem", (tag, plan.tenant_id, plan.idempotency_key))
        return result

    async def complete(
        self,
        ref: Plan | LeaseRef,
        *,
        upstream: str,
        job_id: str | None,
        response: StoredResponse,
        now: float,
    ) -> None:
        lease = lease_ref(ref)
        if job_id is not None:
            owner = Owner(lease.tenant_id, lease)
            self._owners[(upstream, job_id)] = (owner, now + self._ownership_ttl)
            self._owned.setdefault((upstream, lease.tenant_id), {})[job_id] = now
            self._expiries.add(now + self._ownership_ttl, "owner", (upstream, job_id))
        if lease.idempotency_key is not None:
            key = (lease.hash_tag, lease.tenant_id, lease.idempotency_key)
            record = self._idem.get(key)
            if record is None or record.lease_id == lease.lease_id:
                self._idem[key] = _Idem(lease.lease_id, now + self._window, response)
                self._expiries.add(now + self._window, "idem", key)

    async def refund(self, ref: Plan | LeaseRef, now: float) -> bool:
        lease = lease_ref(ref)
        if not self._book.refund((lease.hash_tag, lease.lease_id)):
            return False
        if lease.idempotency_key is not None:
            idem = (lease.hash_tag, lease.tenant_id, lease.idempotency_key)
            record = self._idem.get(idem)
            if record is not None and record.lease_id == lease.lease_id and record.response is None:
                del self._idem[idem]
        return True

    async def release_job(self, upstream: str, job_id: str, now: float) -> bool:
        entry = self._owners.get((upstream, job_id))
        if entry is None:
            return False
        lease = entry[0].lease
        return self._book.release((lease.hash_tag, lease.lease_id))

    async def disown(self, upstream: str, job_id: str) -> None:
        entry = self._owners.pop((upstream, job_id), None)
        if entry is None:
            return
        owned = self._owned.get((upstream, entry[0].tenant_id), {})
        owned.pop(job_id, None)
        if not owned:
            self._owned.pop((upstream, entry[0].tenant_id), None)

    async def extend_job(self, upstream: str, job_id: str, end: float, now: float) -> float | None:
        self._collect(now)
        entry = self._owners.get((upstream, job_id))
        if entry is None:
            return None
        lease = entry[0].lease
        after = self._book.extend((lease.hash_tag, lease.lease_id), end, now)
        if after is not None:
            self._expiries.add(after + self._window, "lease", (lease.hash_tag, lease.lease_id))
        return after

    async def held_amounts(self, upstream: str, job_id: str) -> dict[str, float] | None:
        entry = self._owners.get((upstream, job_id))
        if entry is None:
            return None
        lease = entry[0].lease
        return self._book.held_amounts((lease.hash_tag, lease.lease_id))

    async def owner_of(self, upstream: str, job_id: str) -> Owner | None:
        entry = self._owners.get((upstream, job_id))
        return None if entry is None else entry[0]

    async def owned_jobs(self, upstream: str, tenant_id: str) -> set[str]:
        return set(self._owned.get((upstream, tenant_id), {}))

    async def counter_value(self, hash_tag: str, key: str, now: float) -> float:
        return self._book.value(hash_tag, key, now)

    async def restore(self, state: QuotaState, now: float) -> None:
        self._book.load(state.counters, state.leases)
        for lease in state.leases:
            self._expiries.add(lease.end + self._window, "lease", (lease.hash_tag, lease.lease_id))
            self._lease_owners[(lease.hash_tag, lease.lease_id)] = (lease.tenant_id, lease.idempotency_key)
        for idem in state.idempotency:
            key = (idem.hash_tag, idem.tenant_id, idem.key)
            self._idem[key] = _Idem(idem.lease_id, idem.expires, idem.response)
            self._expiries.add(idem.expires, "idem", key)
        for entry in state.owners:
            due = entry.since + self._ownership_ttl
            self._owners[(entry.upstream, entry.job_id)] = (entry.owner, due)
            self._expiries.add(due, "owner", (entry.upstream, entry.job_id))
        for owned in state.owned:
            if owned.jobs:
                self._owned[(owned.upstream, owned.tenant_id)] = dict(owned.jobs)
            else:
                self._owned.pop((owned.upstream, owned.tenant_id), None)

    async def holdings(self, now: float) -> QuotaState:
        """Everything held now, for usage reports: counters (expired leases ended first), leases, job owners."""
        self._collect(now)
        book = self._book
        for tag, key in list(book.held):
            book.value(tag, key, now)
        counters = tuple(
            CounterValue(
                tag, key, CounterKind.HELD if (tag, key) in book.held else CounterKind.CUMULATIVE, value,
                tuple(HeldShare(i, end, amount) for i, (end, amount) in book.held.get((tag, key), {}).items()),
            )
            for (tag, key), value in book.values.items()
        )  # fmt: skip
        owners = tuple(
            OwnerState(upstream, job_id, owner, due - self._ownership_ttl)
            for (upstream, job_id), (owner, due) in self._owners.items()
        )
        jobs = {(o.owner.lease.hash_tag, o.owner.lease.lease_id): (o.upstream, o.job_id) for o in owners}
        leases = []
        for (tag, lease_id), lease in book.leases.items():
            tenant, idem = self._lease_owners.get((tag, lease_id), ("", None))
            debits = tuple(Debit(key, kind, amount) for (key, kind), amount in lease.debits.items())
            leases.append(
                LeaseState(
                    tag,
                    lease_id,
                    tenant,
                    lease.end,
                    idem,
                    debits,
                    tuple((d.key, d.kind) for d in debits),
                    lease.released,
                    lease.refunded,
                    jobs.get((tag, lease_id)),
                )
            )
        return QuotaState(now, counters, tuple(leases), owners=owners)

    async def ping(self) -> None:
        """Memory is always there."""
        return None

    async def close(self) -> None:
        return None

    def _collect(self, now: float) -> None:
        for kind, key in self._expiries.due(now):
            if kind == "lease":
                tag, lease_id = key
                lease = self._book.leases.get((tag, lease_id))
                if lease is not None and lease.end + self._window <= now:
                    self._book.forget((tag, lease_id), now)
                    self._lease_owners.pop((tag, lease_id), None)
            elif kind == "idem":
                tag, tenant_id, idem_key = key
                record = self._idem.get((tag, tenant_id, idem_key))
                if record is not None and record.expires <= now:
                    del self._idem[(tag, tenant_id, idem_key)]
            else:
                self._collect_owner(key, now)

    def _collect_owner(self, key: tuple[str, ...], now: float) -> None:
        upstream, job_id = key
        entry = self._owners.get((upstream, job_id))
        if entry is None or entry[1] > now:
            return
        del self._owners[(upstream, job_id)]
        owned = self._owned.get((upstream, entry[0].tenant_id), {})
        owned.pop(job_id, None)
        if not owned:
            self._owned.pop((upstream, entry[0].tenant_id), None)
