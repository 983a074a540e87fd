"""QuotaBook: the counter and lease arithmetic of the quota Lua scripts, pure and synchronous."""

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.core.leases import (
    CounterKind,
    CounterState,
    CounterValue,
    LeaseState,
    Plan,
    ReserveResult,
    ReserveStatus,
    split_amounts,
)

Slot = tuple[str, str]  # (hash tag, counter key)
LeaseKey = tuple[str, str]  # (hash tag, lease id), as Redis keys a lease hash


@dataclass(slots=True)
class BookLease:
    """What one reservation took; refunded and released leases stay until their owner forgets them."""

    end: float
    debits: dict[tuple[str, CounterKind], float]
    released: bool = False
    refunded: bool = False


@dataclass(slots=True)
class QuotaBook:
    """Counters and leases as a store holds them; a held counter's leases end when a caller's `now` passes them.

    No idempotency records, ownership or garbage collection: MemoryQuotaStore adds those for a
    live gateway, and a replay knows which job each lease belongs to from the ledger.
    """

    values: dict[Slot, float] = field(default_factory=dict)
    held: dict[Slot, dict[str, tuple[float, float]]] = field(default_factory=dict)  # lease id -> (end, amount)
    leases: dict[LeaseKey, BookLease] = field(default_factory=dict)
    # Per held counter, a heap of (end, lease id) as Redis keeps a sorted set: ending leases costs
    # O(log n) each, not a scan of every live lease. Entries of shares since given back or moved
    # are stale and dropped when they reach the top (an entry is live while `held` agrees with it).
    ends: dict[Slot, list[tuple[float, str]]] = field(default_factory=dict)

    def reserve(self, plan: Plan, now: float) -> ReserveResult:
        """Check every counter of `plan` and debit all of them, or none (as quota_reserve.lua)."""
        tag = plan.hash_tag
        if (tag, plan.decision_id) in self.leases:
            return ReserveResult(ReserveStatus.IN_PROGRESS)
        for counter in plan.counters:
            if counter.kind is CounterKind.HELD:
                self._expire((tag, counter.key), now)
        befores = [self.values.get((tag, c.key), 0.0) for c in plan.counters]
        credits = self._credits(plan)
        checked = [before - credit for before, credit in zip(befores, credits, strict=True)]
        takes = split_amounts(plan.counters, checked)
        failing = None
        shadow: list[str] = []
        for counter, before, take in zip(plan.counters, checked, takes, strict=True):
            if counter.refuses(before, take):
                if not counter.enforced:
                    shadow.append(counter.key)
                elif failing is None:
                    failing = counter
        if failing is not None:
            states = tuple(CounterState(c.key, b, t, b) for c, b, t in zip(plan.counters, befores, takes, strict=True))
            earliest = None
            if failing.kind is CounterKind.HELD:
                earliest = self._earliest((tag, failing.key))
            retry = None if earliest is None else max(0.0, earliest - now)
            return ReserveResult(ReserveStatus.DENIED, states, failing.key, tuple(shadow), earliest, retry)
        debits: dict[tuple[str, CounterKind], float] = {}
        for counter, before, take in zip(plan.counters, befores, takes, strict=True):
            if take <= 0:
                continue
            self.values[(tag, counter.key)] = before + take
            debits[(counter.key, counter.kind)] = take
            if counter.kind is CounterKind.HELD:
                self._hold((tag, counter.key), plan.decision_id, plan.lease_end, take)
        self.leases[(tag, plan.decision_id)] = BookLease(plan.lease_end, debits)
        states = tuple(CounterState(c.key, b, t, b + t) for c, b, t in zip(plan.counters, befores, takes, strict=True))
        return ReserveResult(ReserveStatus.ADMITTED, states, None, tuple(shadow))

    def _credits(self, plan: Plan) -> list[float]:
        """Per counter, what the live lease `plan` replaces holds on it now (0 if none, or another slot)."""
        replaced = plan.replaces
        old = None
        if replaced is not None and replaced.hash_tag == plan.hash_tag:
            old = self.leases.get((plan.hash_tag, replaced.lease_id))
        if replaced is None or old is None or old.released or old.refunded:
            return [0.0] * len(plan.counters)
        out = []
        for counter in plan.counters:
            if counter.kind is CounterKind.HELD:  # only a share not yet ended (expired ones are gone)
                share = self.held.get((plan.hash_tag, counter.key), {}).get(replaced.lease_id)
                out.append(0.0 if share is None else share[1])
            else:
                out.append(old.debits.get((counter.key, counter.kind), 0.0))
        return out

    def refund(self, lease: LeaseKey) -> bool:
        """Give back every debit of a lease once (the upstream rejected its job), as quota_refund.lua."""
        stored = self.leases.get(lease)
        if stored is None or stored.refunded:
            return False
        tag, lease_id = lease
        for (key, kind), amount in stored.debits.items():
            if kind is CounterKind.HELD:
                self._give_back_held((tag, key), lease_id)
            else:
                self._subtract((tag, key), amount)
        stored.refunded = stored.released = True
        return True

    def release(self, lease: LeaseKey) -> bool:
        """Give back a cancelled or replaced job's held TPP once; cumulative debits stay (quota_release.lua)."""
        stored = self.leases.get(lease)
        if stored is None or stored.released:
            return False
        tag, lease_id = lease
        gave = False
        for key, kind in stored.debits:
            if kind is CounterKind.HELD:
                gave = self._give_back_held((tag, key), lease_id) or gave
        stored.released = True
        return gave

    def extend(self, lease: LeaseKey, end: float, now: float) -> float | None:
        """Hold a live job's lease until at least `end` (as quota_extend.lua); its end after, or None.

        A held share that already lapsed (nobody extended it in time) is held again: the job
        still runs, so its GPUs count again, cap or not. Released and refunded leases stay ended.
        """
        stored = self.leases.get(lease)
        if stored is None or stored.released:
            return None
        tag, lease_id = lease
        new_end = max(stored.end, end)
        if new_end <= now:
            return stored.end
        for (key, kind), amount in stored.debits.items():
            if kind is not CounterKind.HELD:
                continue
            slot = (tag, key)
            self._expire(slot, now)
            share = self.held.get(slot, {}).get(lease_id)
            if share is not None:
                self._hold(slot, lease_id, max(share[0], new_end), share[1])
            else:
                self._hold(slot, lease_id, new_end, amount)
                self._set(slot, self.values.get(slot, 0.0) + amount)
        stored.end = new_end
        return new_end

    def impose(self, lease: LeaseKey, end: float, debits: Iterable[tuple[str, CounterKind, float]]) -> None:
        """Debit a recorded lease as it was taken, without checking caps (a replayed true-up: the job held it)."""
        if lease in self.leases:
            return
        tag, lease_id = lease
        taken: dict[tuple[str, CounterKind], float] = {}
        for key, kind, amount in debits:
            if amount <= 0:
                continue
            self._set((tag, key), self.values.get((tag, key), 0.0) + amount)
            taken[(key, kind)] = amount
            if kind is CounterKind.HELD:
                self._hold((tag, key), lease_id, end, amount)
        self.leases[lease] = BookLease(end, taken)

    def held_amounts(self, lease: LeaseKey) -> dict[str, float] | None:
        """What a live lease debited each held counter; None once it is released, refunded or forgotten."""
        stored = self.leases.get(lease)
        if stored is None or stored.released:
            return None
        return {key: amount for (key, kind), amount in stored.debits.items() if kind is CounterKind.HELD}

    def value(self, hash_tag: str, key: str, now: float) -> float:
        """A counter's value after ending its expired leases (as quota_value.lua)."""
        self._expire((hash_tag, key), now)
        return self.values.get((hash_tag, key), 0.0)

    def forget(self, lease: LeaseKey, now: float) -> None:
        """Drop a lease's record, first ending the leases that have passed on its held counters."""
        stored = self.leases.pop(lease, None)
        if stored is None:
            return
        for key, kind in stored.debits:
            if kind is CounterKind.HELD:
                self._expire((lease[0], key), now)

    def load(self, counters: Iterable[CounterValue], leases: Iterable[LeaseState]) -> None:
        """Overwrite the named counters (value and held leases) and leases, as quota_restore.lua."""
        for counter in counters:
            slot = (counter.hash_tag, counter.key)
            self.held.pop(slot, None)
            self.ends.pop(slot, None)
            self._set(slot, counter.value)
            if counter.held:
                self.held[slot] = {s.lease_id: (s.end, s.amount) for s in counter.held}
                self.ends[slot] = [(s.end, s.lease_id) for s in counter.held]
                heapq.heapify(self.ends[slot])
        for lease in leases:
            debits = {(d.key, d.kind): d.amount for d in lease.debits}
            self.leases[(lease.hash_tag, lease.lease_id)] = BookLease(lease.end, debits, lease.released, lease.refunded)

    def _expire(self, slot: Slot, now: float) -> None:
        """End the leases on one held counter whose end has passed (as the Lua scripts do)."""
        leases, heap = self.held.get(slot), self.ends.get(slot)
        if not leases or not heap:
            return
        # Popped in (end, lease id) order, as ZRANGEBYSCORE returns them, so float sums match Redis.
        value, ended = self.values.get(slot, 0.0), False
        while heap and heap[0][0] <= now:
            end, lease_id = heapq.heappop(heap)
            share = leases.get(lease_id)
            if share is not None and share[0] == end:
                value -= leases.pop(lease_id)[1]
                ended = True
        if ended:
            self._set(slot, value)
        if not leases:
            del self.held[slot]
            self.ends.pop(slot, None)

    def _earliest(self, slot: Slot) -> float | None:
        """The earliest end among a held counter's live shares (stale heap entries are dropped on the way)."""
        leases, heap = self.held.get(slot, {}), self.ends.get(slot, [])
        while heap and leases.get(heap[0][1], (None,))[0] != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _hold(self, slot: Slot, lease_id: str, end: float, amount: float) -> None:
        """Set a lease's share of a held counter, indexed by its end."""
        self.held.setdefault(slot, {})[lease_id] = (end, amount)
        heap = self.ends.setdefault(slot, [])
        heapq.heappush(heap, (end, lease_id))
        if len(heap) > 64 and len(heap) > 2 * len(self.held[slot]):  # mostly stale: rebuild it from the live shares
            self.ends[slot] = [(e, i) for i, (e, _) in self.held[slot].items()]
            heapq.heapify(self.ends[slot])

    def _give_back_held(self, slot: Slot, lease_id: str) -> bool:
        leases = self.held.get(slot, {})
        entry = leases.pop(lease_id, None)
        if entry is None:
            return False
        self._subtract(slot, entry[1])
        if not leases:
            self.held.pop(slot, None)
            self.ends.pop(slot, None)
        return True

    def _subtract(self, slot: Slot, amount: float) -> None:
        self._set(slot, self.values.get(slot, 0.0) - amount)

    def _set(self, slot: Slot, value: float) -> None:
        if value <= 0:
            self.values.pop(slot, None)
        else:
            self.values[slot] = value
