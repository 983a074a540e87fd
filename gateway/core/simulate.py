"""A pure, synchronous quota store for replays: MemoryQuotaStore's counter arithmetic, nothing live."""

from dataclasses import dataclass, field

from gateway.core.leases import CounterKind, CounterState, Plan, ReserveResult, ReserveStatus, split_amounts

_Slot = tuple[str, str]  # (hash tag, counter key)


@dataclass(slots=True)
class _Lease:
    tag: str
    debits: dict[tuple[str, CounterKind], float]
    released: bool = False
    refunded: bool = False


@dataclass(slots=True)
class QuotaSimulation:
    """Counters and leases as a store would hold them; leases end when a reservation's `now` passes them.

    No idempotency records or ownership: a replay knows which job each lease belongs to from
    the ledger's settle records.
    """

    values: dict[_Slot, float] = field(default_factory=dict)
    held: dict[_Slot, dict[str, tuple[float, float]]] = field(default_factory=dict)
    leases: dict[str, _Lease] = field(default_factory=dict)

    def reserve(self, plan: Plan, now: float) -> ReserveResult:
        """Check every counter of `plan` and debit all of them, or none (as quota_reserve.lua)."""
        tag = plan.hash_tag
        if plan.decision_id in self.leases:
            return ReserveResult(ReserveStatus.IN_PROGRESS)
        for counter in plan.counters:
            if counter.kind is CounterKind.HELD:
                self._expire((tag, counter.key), now)
        befores = [self.values.get((tag, c.key), 0.0) for c in plan.counters]
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
            ends = [end for end, _ in self.held.get((tag, failing.key), {}).values()]
            earliest = min(ends) if ends and failing.kind is CounterKind.HELD else None
            retry = None if earliest is None else max(0.0, earliest - now)
            return ReserveResult(ReserveStatus.DENIED, states, failing.key, tuple(shadow), earliest, retry)
        debits: dict[tuple[str, CounterKind], float] = {}
        for counter, before, take in zip(plan.counters, befores, takes, strict=True):
            if take <= 0:
                continue
            self.values[(tag, counter.key)] = before + take
            debits[(counter.key, counter.kind)] = take
            if counter.kind is CounterKind.HELD:
                self.held.setdefault((tag, counter.key), {})[plan.decision_id] = (plan.lease_end, take)
        self.leases[plan.decision_id] = _Lease(tag, debits)
        states = tuple(CounterState(c.key, b, t, b + t) for c, b, t in zip(plan.counters, befores, takes, strict=True))
        return ReserveResult(ReserveStatus.ADMITTED, states, None, tuple(shadow))

    def refund(self, lease_id: str) -> bool:
        """Give back every debit of a lease once (the upstream rejected its job)."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.refunded:
            return False
        for (key, kind), amount in lease.debits.items():
            if kind is CounterKind.HELD:
                self._give_back_held((lease.tag, key), lease_id)
            else:
                self._add((lease.tag, key), -amount)
        lease.refunded = lease.released = True
        return True

    def release(self, lease_id: str) -> bool:
        """Give back a cancelled or replaced job's held TPP; cumulative debits stay."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.released:
            return False
        gave = False
        for key, kind in lease.debits:
            if kind is CounterKind.HELD:
                gave = self._give_back_held((lease.tag, key), lease_id) or gave
        lease.released = True
        return gave

    def value(self, hash_tag: str, key: str, now: float) -> float:
        """A counter's value after ending its expired leases."""
        self._expire((hash_tag, key), now)
        return self.values.get((hash_tag, key), 0.0)

    def _expire(self, slot: _Slot, now: float) -> None:
        leases = self.held.get(slot)
        if not leases:
            return
        for _, lease_id in sorted((end, i) for i, (end, _) in leases.items() if end <= now):
            self._add(slot, -leases.pop(lease_id)[1])
        if not leases:
            del self.held[slot]

    def _give_back_held(self, slot: _Slot, lease_id: str) -> bool:
        entry = self.held.get(slot, {}).pop(lease_id, None)
        if entry is None:
            return False
        self._add(slot, -entry[1])
        if not self.held.get(slot):
            self.held.pop(slot, None)
        return True

    def _add(self, slot: _Slot, amount: float) -> None:
        value = self.values.get(slot, 0.0) + amount
        if value <= 0:
            self.values.pop(slot, None)
        else:
            self.values[slot] = value
