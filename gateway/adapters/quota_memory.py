"""MemoryQuotaStore: the quota store for one process, with the Redis store's semantics."""

import heapq
from dataclasses import dataclass, field

from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S, DEFAULT_OWNERSHIP_TTL_S, lease_ref
from gateway.core.leases import (
    CounterKind,
    CounterState,
    LeaseRef,
    Owner,
    Plan,
    ReserveResult,
    ReserveStatus,
    StoredResponse,
    split_amounts,
)
from gateway.core.rebuild import QuotaState

_Slot = tuple[str, str]  # (hash tag, key or id)


@dataclass(slots=True)
class _Lease:
    tenant_id: str
    end: float
    idempotency_key: str | None
    debits: dict[tuple[str, CounterKind], float]
    released: bool = False
    refunded: bool = False
    job: tuple[str, str] | None = None


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
    """Counters in dicts. No method awaits, so each runs atomically on the event loop.

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
        self._values: dict[_Slot, float] = {}
        self._held: dict[_Slot, dict[str, tuple[float, float]]] = {}
        self._leases: dict[_Slot, _Lease] = {}
        self._idem: dict[tuple[str, str, str], _Idem] = {}
        self._owners: dict[tuple[str, str], tuple[Owner, float]] = {}
        self._owned: dict[tuple[str, str], dict[str, float]] = {}
        self._expiries = _Expiries()

    async def reserve(self, plan: Plan, now: float) -> ReserveResult:
        self._collect(now)
        tag = plan.hash_tag
        if plan.idempotency_key is not None:
            record = self._idem.get((tag, plan.tenant_id, plan.idempotency_key))
            if record is not None and record.expires > now:
                if record.response is not None:
                    return ReserveResult(ReserveStatus.REPLAY, response=record.response)
                return ReserveResult(ReserveStatus.IN_PROGRESS)
        if (tag, plan.decision_id) in self._leases:
            return ReserveResult(ReserveStatus.IN_PROGRESS)
        for counter in plan.counters:
            if counter.kind is CounterKind.HELD:
                self._expire((tag, counter.key), now)
        befores = [self._values.get((tag, c.key), 0.0) for c in plan.counters]
        takes = split_amounts(plan.counters, befores)
        failing = None
        shadow: list[str] = []
        for counter, before, take in zip(plan.counters, befores, takes, strict=True):
            if counter.refuses(before, take):
                if not counter.enforced:
                    shadow.append(counter.key)
                elif failing is None:
                    failing = counter
        if failing is not None:
            states = tuple(CounterState(c.key, b, t, b) for c, b, t in zip(plan.counters, befores, takes, strict=True))
            earliest = None
            if failing.kind is CounterKind.HELD:
                ends = [end for end, _ in self._held.get((tag, failing.key), {}).values()]
                earliest = min(ends) if ends else None
            retry = None if earliest is None else max(0.0, earliest - now)
            return ReserveResult(ReserveStatus.DENIED, states, failing.key, tuple(shadow), earliest, retry)
        debits: dict[tuple[str, CounterKind], float] = {}
        for counter, before, take in zip(plan.counters, befores, takes, strict=True):
            if take <= 0:
                continue
            self._values[(tag, counter.key)] = before + take
            debits[(counter.key, counter.kind)] = take
            if counter.kind is CounterKind.HELD:
                self._held.setdefault((tag, counter.key), {})[plan.decision_id] = (plan.lease_end, take)
        self._leases[(tag, plan.decision_id)] = _Lease(plan.tenant_id, plan.lease_end, plan.idempotency_key, debits)
        self._expiries.add(plan.lease_end + self._window, "lease", (tag, plan.decision_id))
        if plan.idempotency_key is not None:
            self._idem[(tag, plan.tenant_id, plan.idempotency_key)] = _Idem(plan.decision_id, now + self._window)
            self._expiries.add(now + self._window, "idem", (tag, plan.tenant_id, plan.idempotency_key))
        states = tuple(CounterState(c.key, b, t, b + t) for c, b, t in zip(plan.counters, befores, takes, strict=True))
        return ReserveResult(ReserveStatus.ADMITTED, states, None, tuple(shadow))

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
        stored = self._leases.get((lease.hash_tag, lease.lease_id))
        if stored is not None and job_id is not None:
            stored.job = (upstream, job_id)

    async def refund(self, ref: Plan | LeaseRef, now: float) -> bool:
        lease = lease_ref(ref)
        stored = self._leases.get((lease.hash_tag, lease.lease_id))
        if stored is None or stored.refunded:
            return False
        for (key, kind), amount in stored.debits.items():
            if kind is CounterKind.HELD:
                self._give_back_held((lease.hash_tag, key), lease.lease_id)
            else:
                self._subtract((lease.hash_tag, key), amount)
        stored.refunded = stored.released = True
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
        stored = self._leases.get((lease.hash_tag, lease.lease_id))
        if stored is None or stored.released:
            return False
        gave = False
        for key, kind in stored.debits:
            if kind is CounterKind.HELD:
                gave = self._give_back_held((lease.hash_tag, key), lease.lease_id) or gave
        stored.released = True
        return gave

    async def owner_of(self, upstream: str, job_id: str) -> Owner | None:
        entry = self._owners.get((upstream, job_id))
        return None if entry is None else entry[0]

    async def owned_jobs(self, upstream: str, tenant_id: str) -> set[str]:
        return set(self._owned.get((upstream, tenant_id), {}))

    async def counter_value(self, hash_tag: str, key: str, now: float) -> float:
        self._expire((hash_tag, key), now)
        return self._values.get((hash_tag, key), 0.0)

    async def restore(self, state: QuotaState, now: float) -> None:
        for counter in state.counters:
            slot = (counter.hash_tag, counter.key)
            self._held.pop(slot, None)
            self._set(slot, counter.value)
            if counter.held:
                self._held[slot] = {s.lease_id: (s.end, s.amount) for s in counter.held}
        for lease in state.leases:
            debits = {(d.key, d.kind): d.amount for d in lease.debits}
            stored = _Lease(lease.tenant_id, lease.end, lease.idempotency_key, debits, lease.released, lease.refunded,
                            lease.job)  # fmt: skip
            self._leases[(lease.hash_tag, lease.lease_id)] = stored
            self._expiries.add(lease.end + self._window, "lease", (lease.hash_tag, lease.lease_id))
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

    async def close(self) -> None:
        return None

    def _expire(self, slot: _Slot, now: float) -> None:
        """End the leases on one held counter whose end has passed (as the Lua script does)."""
        leases = self._held.get(slot)
        if not leases:
            return
        # Same order as ZRANGEBYSCORE (score, then member), so float sums match Redis.
        ended = sorted((end, lease_id) for lease_id, (end, _) in leases.items() if end <= now)
        if not ended:
            return
        value = self._values.get(slot, 0.0)
        for _, lease_id in ended:
            value -= leases.pop(lease_id)[1]
        self._set(slot, value)
        if not leases:
            del self._held[slot]

    def _give_back_held(self, slot: _Slot, lease_id: str) -> bool:
        leases = self._held.get(slot, {})
        entry = leases.pop(lease_id, None)
        if entry is None:
            return False
        self._subtract(slot, entry[1])
        if not leases:
            self._held.pop(slot, None)
        return True

    def _subtract(self, slot: _Slot, amount: float) -> None:
        self._set(slot, self._values.get(slot, 0.0) - amount)

    def _set(self, slot: _Slot, value: float) -> None:
        if value <= 0:
            self._values.pop(slot, None)
        else:
            self._values[slot] = value

    def _collect(self, now: float) -> None:
        for kind, key in self._expiries.due(now):
            if kind == "lease":
                tag, lease_id = key
                lease = self._leases.get((tag, lease_id))
                if lease is not None and lease.end + self._window <= now:
                    for counter_key, counter_kind in lease.debits:
                        if counter_kind is CounterKind.HELD:
                            self._expire((tag, counter_key), now)
                    del self._leases[(tag, lease_id)]
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
