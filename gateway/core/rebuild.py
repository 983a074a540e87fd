"""Recompute quota state (leases, counters, idempotency, ownership) from ledger records.

Records are folded in time order into a `Builder`. Like the live stores, it forgets what has
lapsed, judged by each record's `ts`: a lease once its end plus the idempotency window has
passed (its cumulative debits, unless refunded, stay in its counters' totals, kept exactly), an
idempotency record once it expires, an owner once the ownership TTL has passed. A later record
naming what was forgotten finds nothing, as it would in a live store. So the builder, and a
snapshot of it, holds live work (and owners for the TTL), not the whole history.
"""

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.leases import (
    QUOTA_SLOT,
    CounterKind,
    CounterValue,
    Debit,
    HeldShare,
    IdempotencyState,
    LeaseRef,
    LeaseState,
    OwnedJobs,
    Owner,
    OwnerState,
    QuotaState,
    StoredResponse,
)  # fmt: skip

_KINDS = {kind.value: kind for kind in CounterKind}
RESERVING_ROUTES = ("submit", "update", "true_up")  # true_up: reconciliation read back a larger or smaller allocation


@dataclass(slots=True)
class LeaseEntry:
    """A reservation as the rebuild holds it while records are folded in."""

    tag: str
    tenant: str
    end: float
    idem: str | None
    debits: list[Debit]
    counters: tuple[tuple[str, CounterKind], ...]
    replaces: str | None
    released: bool = False
    refunded: bool = False
    job: tuple[str, str] | None = None

    def frozen(self, lease_id: str) -> LeaseState:
        return LeaseState(self.tag, lease_id, self.tenant, self.end, self.idem, tuple(self.debits), self.counters,
                          self.released, self.refunded, self.job)  # fmt: skip

    def ref(self, lease_id: str) -> LeaseRef:
        """What an owner keeps of its lease (`frozen(lease_id).ref`, without the rest)."""
        return LeaseRef(self.tag, self.tenant, lease_id, self.idem, self.counters)


@dataclass(slots=True)
class IdemEntry:
    """An idempotency record as the rebuild holds it."""

    lease_id: str
    expires: float
    response: StoredResponse | None = None


@dataclass(slots=True)
class OwnerEntry:
    """Who owns an upstream job: the lease it was settled under (kept while the owner is, even once
    the lease itself is forgotten: only its tenant and `ref` are read then), and since when."""

    lease_id: str
    since: float
    lease: LeaseEntry


Slot = tuple[str, str]  # (hash tag, counter key)


@dataclass(slots=True)
class Builder:
    """The rebuild's state between records: fold records in time order with `apply`, read it with `state`.

    Every dict keeps insertion order, which the state read from it depends on (leases and owners
    are listed in that order): a snapshot keeps it too. `kinds` is each counter's kind as the first
    lease that debited it recorded; `retired` the exact sum (non-overlapping partials) of the
    cumulative debits of forgotten leases, per counter.
    """

    window: float
    ownership_ttl: float
    leases: dict[str, LeaseEntry] = field(default_factory=dict)
    idem: dict[tuple[str, str, str], IdemEntry] = field(default_factory=dict)
    owners: dict[tuple[str, str], OwnerEntry] = field(default_factory=dict)
    owned_pairs: set[tuple[str, str]] = field(default_factory=set)
    kinds: dict[Slot, CounterKind] = field(default_factory=dict)
    retired: dict[Slot, list[float]] = field(default_factory=dict)
    skipped: int = 0
    # When each entry lapses, as (due, key) heaps; an entry's current due is always among them (stale
    # ones are skipped when popped), so they are rebuilt from the entries after a snapshot.
    lease_dues: list[tuple[float, str]] = field(default_factory=list)
    idem_dues: list[tuple[float, tuple[str, str, str]]] = field(default_factory=list)
    owner_dues: list[tuple[float, tuple[str, str]]] = field(default_factory=list)

    def apply(self, record: Mapping[str, Any]) -> None:
        """Fold one record in (records come in time order)."""
        _apply(self, record)

    def state(self, now: float) -> QuotaState:
        """The quota state the records folded so far imply at `now` (not before the last record's ts)."""
        return _state(self, now)

    def schedule(self) -> None:
        """Rebuild the due heaps from the entries (after a snapshot is read back)."""
        self.lease_dues = [(lease.end + self.window, i) for i, lease in self.leases.items()]
        self.idem_dues = [(rec.expires, key) for key, rec in self.idem.items()]
        self.owner_dues = [(entry.since + self.ownership_ttl, key) for key, entry in self.owners.items()]
        heapq.heapify(self.lease_dues)
        heapq.heapify(self.idem_dues)
        heapq.heapify(self.owner_dues)


def add_exact(partials: list[float], x: float) -> None:
    """Add `x` to the exact sum held as non-overlapping partials (Shewchuk; math.fsum's own method)."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def _collect(b: Builder, ts: float) -> None:
    """Forget what lapsed by `ts`, as the live stores do."""
    while b.lease_dues and b.lease_dues[0][0] <= ts:
        _, lease_id = heapq.heappop(b.lease_dues)
        lease = b.leases.get(lease_id)
        if lease is not None and lease.end + b.window <= ts:
            del b.leases[lease_id]
            if not lease.refunded:
                for debit in lease.debits:
                    if debit.kind is CounterKind.CUMULATIVE:
                        add_exact(b.retired.setdefault((lease.tag, debit.key), []), debit.amount)
    while b.idem_dues and b.idem_dues[0][0] <= ts:
        _, key = heapq.heappop(b.idem_dues)
        rec = b.idem.get(key)
        if rec is not None and rec.expires <= ts:
            del b.idem[key]
    while b.owner_dues and b.owner_dues[0][0] <= ts:
        _, job = heapq.heappop(b.owner_dues)
        entry = b.owners.get(job)
        if entry is not None and entry.since + b.ownership_ttl <= ts:
            del b.owners[job]


def _set_idem(b: Builder, key: tuple[str, str, str], rec: IdemEntry) -> None:
    b.idem[key] = rec
    heapq.heappush(b.idem_dues, (rec.expires, key))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_lease(record: Mapping[str, Any]) -> tuple[str, LeaseEntry] | None:
    """The reservation a decision record took, or None if it took none (or is malformed).

    Every lease is rebuilt in today's slot (`QUOTA_SLOT`), whatever `hash_tag` it was recorded
    under: records from before all quota keys shared one slot carry their tenant's country
    (`AE`), and re-homing them keeps their live leases, cumulative debits and idempotency
    records counting against the caps new reservations check. Counter keys stay as recorded.
    """
    if record.get("kind") != "decision" or record.get("route_kind") not in RESERVING_ROUTES:
        return None
    if record.get("decision") not in ("allow", "shadow_deny"):
        return None
    lease, decision_id, tenant = record.get("lease"), _text(record.get("decision_id")), _text(record.get("tenant"))
    if not isinstance(lease, Mapping) or decision_id is None or tenant is None:
        return None
    tag, end, raw = QUOTA_SLOT, _number(lease.get("lease_end")), lease.get("counters")
    if _text(lease.get("hash_tag")) is None or end is None or not isinstance(raw, list):
        return None
    debits: list[Debit] = []
    refs: list[tuple[str, CounterKind]] = []
    for item in raw:
        if not isinstance(item, Mapping):
            return None
        key, amount = _text(item.get("key")), _number(item.get("amount"))
        raw_kind = item.get("kind")
        kind = _KINDS.get(raw_kind) if isinstance(raw_kind, str) else None  # a dict, not CounterKind(): 10x faster
        if kind is None or key is None or amount is None:
            return None
        refs.append((key, kind))
        if amount > 0:
            debits.append(Debit(key, kind, amount))
    built = LeaseEntry(tag, tenant, end, _text(lease.get("idempotency_key")), debits, tuple(refs),
                   _text(lease.get("replaces_job")))  # fmt: skip
    return decision_id, built


def _apply(b: Builder, record: Mapping[str, Any]) -> None:
    kind = record.get("kind")
    ts = _number(record.get("ts")) or 0.0
    _collect(b, ts)
    decision_id = _text(record.get("decision_id"))
    if kind == "decision":
        parsed = parse_lease(record)
        if parsed is None:
            if isinstance(record.get("lease"), Mapping) and record.get("decision") != "deny":
                b.skipped += 1
            return
        lease_id, lease = parsed
        if lease_id in b.leases:
            return
        b.leases[lease_id] = lease
        heapq.heappush(b.lease_dues, (lease.end + b.window, lease_id))
        for debit in lease.debits:
            b.kinds.setdefault((lease.tag, debit.key), debit.kind)
        if lease.idem is not None:
            _set_idem(b, (lease.tag, lease.tenant, lease.idem), IdemEntry(lease_id, ts + b.window))
        return
    if decision_id is None:
        return
    if kind == "refund":
        _refund(b, decision_id)
    elif kind == "settle":
        _settle(b, decision_id, record, ts)
    elif kind == "release" and record.get("whole_job", True) is not False and not record.get("held_for"):
        # A part's cancel holds the job; a job's end holds a shared cluster lease other jobs still use (`held_for`).
        upstream, job_id = _text(record.get("upstream")), _text(record.get("job_id"))
        if upstream is not None and job_id is not None:
            _release(b, upstream, job_id, ts)
            if record.get("disowned") is True:  # a placeholder released and forgotten (never adopted)
                b.owners.pop((upstream, job_id), None)
    elif kind == "extend":
        upstream, job_id, end = _text(record.get("upstream")), _text(record.get("job_id")), _number(record.get("end"))
        if upstream is not None and job_id is not None and end is not None:
            _extend(b, upstream, job_id, end, ts)


def _refund(b: Builder, lease_id: str) -> None:
    lease = b.leases.get(lease_id)
    if lease is None or lease.refunded:
        return
    lease.refunded = lease.released = True
    if lease.idem is not None:
        key = (lease.tag, lease.tenant, lease.idem)
        found = b.idem.get(key)
        if found is not None and found.lease_id == lease_id and found.response is None:
            del b.idem[key]


def _release(b: Builder, upstream: str, job_id: str, ts: float) -> None:
    entry = b.owners.get((upstream, job_id))
    if entry is None or entry.since + b.ownership_ttl <= ts:
        return
    lease = b.leases.get(entry.lease_id)
    if lease is not None:
        lease.released = True


def _extend(b: Builder, upstream: str, job_id: str, end: float, ts: float) -> None:
    """Reconciliation saw the job alive: its lease is held until `end` (a lapsed one is held again)."""
    entry = b.owners.get((upstream, job_id))
    if entry is None or entry.since + b.ownership_ttl <= ts:
        return
    lease = b.leases.get(entry.lease_id)
    if lease is not None and not lease.released and end > lease.end:
        lease.end = end
        heapq.heappush(b.lease_dues, (end + b.window, entry.lease_id))


def _give_back_replaced(b: Builder, lease: LeaseEntry, upstream: str, replaced: str | None, ts: float) -> None:
    """An accepted update gives the job's old lease back whole (held and cumulative), as the gateway does.

    The settle record names that lease (`replaced_lease`); older records do not, so the job's owner is used.
    """
    if replaced is None:
        assert lease.replaces is not None
        entry = b.owners.get((upstream, lease.replaces))
        if entry is None or entry.since + b.ownership_ttl <= ts:
            return
        replaced = entry.lease_id
    old = b.leases.get(replaced)
    if old is not None and old.tenant == lease.tenant:
        _refund(b, replaced)


def _settle(b: Builder, lease_id: str, record: Mapping[str, Any], ts: float) -> None:
    lease = b.leases.get(lease_id)
    if lease is None or lease.refunded:
        return
    upstream, job_id = _text(record.get("upstream")), _text(record.get("job_id"))
    if upstream is not None and job_id is not None:
        if lease.replaces is not None:
            _give_back_replaced(b, lease, upstream, _text(record.get("replaced_lease")), ts)
        b.owners[(upstream, job_id)] = OwnerEntry(lease_id, ts, lease)
        heapq.heappush(b.owner_dues, (ts + b.ownership_ttl, (upstream, job_id)))
        b.owned_pairs.add((upstream, lease.tenant))
        lease.job = (upstream, job_id)
        # Ownership moved here from a placeholder (a submission decided for a front proxy, adopted later).
        moved_from = _text(record.get("adopted_from_upstream")), _text(record.get("adopted_from_job_id"))
        if moved_from[0] is not None and moved_from[1] is not None:
            placeholder = b.owners.get((moved_from[0], moved_from[1]))
            if placeholder is not None and placeholder.lease_id == lease_id:
                del b.owners[(moved_from[0], moved_from[1])]
    status = record.get("status")
    if lease.idem is not None and isinstance(status, int) and not isinstance(status, bool):
        key = (lease.tag, lease.tenant, lease.idem)
        found = b.idem.get(key)
        if found is None or found.lease_id == lease_id:
            # Response bodies are not in the ledger: a replay after a rebuild keeps the first
            # attempt's status and decision id, with an empty body.
            response = StoredResponse(status, (("X-Exportgate-Decision-Id", lease_id),), b"")
            _set_idem(b, key, IdemEntry(lease_id, ts + b.window, response))


def _counters(b: Builder, now: float) -> tuple[CounterValue, ...]:
    amounts: dict[Slot, list[float]] = {slot: list(b.retired.get(slot, ())) for slot in b.kinds}
    held: dict[Slot, list[HeldShare]] = {}
    for lease_id, lease in b.leases.items():
        if lease.refunded:
            continue
        for debit in lease.debits:
            slot = (lease.tag, debit.key)
            if debit.kind is CounterKind.CUMULATIVE:
                amounts[slot].append(debit.amount)
            elif not lease.released and lease.end > now:
                amounts[slot].append(debit.amount)
                held.setdefault(slot, []).append(HeldShare(lease_id, lease.end, debit.amount))
    out = []
    for slot in sorted(b.kinds):
        shares = tuple(sorted(held.get(slot, ()), key=lambda s: (s.end, s.lease_id)))
        out.append(CounterValue(slot[0], slot[1], b.kinds[slot], math.fsum(amounts[slot]), shares))
    return tuple(out)


def rebuild_state(
    records: Iterable[Mapping[str, Any]], now: float, *, idempotency_window_s: float, ownership_ttl_s: float
) -> QuotaState:
    """The quota state at `now` implied by records in time order.

    Live leases are admitted decisions (allow or shadow_deny with a `lease`) that were not
    refunded (including the lease of a job an accepted update replaced), released (a cancel)
    or ended by `now`. Cumulative counters (budgets, training operations, calendar-year
    allowances) are every debit minus refunds. Ownership comes from settle records that name a job.
    """
    b = Builder(idempotency_window_s, ownership_ttl_s)
    for record in records:
        _apply(b, record)
    return _state(b, now)


def _state(b: Builder, now: float) -> QuotaState:
    window, ownership_ttl_s = b.window, b.ownership_ttl
    leases = tuple(lease.frozen(i) for i, lease in b.leases.items() if lease.end + window > now)
    idem = tuple(
        IdempotencyState(tag, tenant, key, rec.lease_id, rec.expires, rec.response)
        for (tag, tenant, key), rec in b.idem.items()
        if rec.expires > now
    )
    owners: list[OwnerState] = []
    owned: dict[tuple[str, str], list[tuple[str, float]]] = {pair: [] for pair in b.owned_pairs}
    for (upstream, job_id), entry in b.owners.items():
        lease, since = entry.lease, entry.since
        if since + ownership_ttl_s <= now:
            continue
        owners.append(OwnerState(upstream, job_id, Owner(lease.tenant, lease.ref(entry.lease_id)), since))
        owned[(upstream, lease.tenant)].append((job_id, since))
    return QuotaState(
        now=now,
        counters=_counters(b, now),
        leases=leases,
        idempotency=idem,
        owners=tuple(owners),
        owned=tuple(OwnedJobs(u, t, tuple(sorted(jobs))) for (u, t), jobs in sorted(owned.items())),
        skipped=b.skipped,
    )
