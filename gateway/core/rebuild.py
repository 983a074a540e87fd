"""Recompute quota state (leases, counters, idempotency, ownership) from ledger records."""

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
    LeaseState,
    OwnedJobs,
    Owner,
    OwnerState,
    QuotaState,
    StoredResponse,
)  # fmt: skip

RESERVING_ROUTES = ("submit", "update", "true_up")  # true_up: reconciliation read back a larger or smaller allocation


@dataclass(slots=True)
class _Lease:
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


@dataclass(slots=True)
class _Idem:
    lease_id: str
    expires: float
    response: StoredResponse | None = None


@dataclass(slots=True)
class _Builder:
    window: float
    ownership_ttl: float
    leases: dict[str, _Lease] = field(default_factory=dict)
    idem: dict[tuple[str, str, str], _Idem] = field(default_factory=dict)
    owners: dict[tuple[str, str], tuple[str, float]] = field(default_factory=dict)
    owned_pairs: set[tuple[str, str]] = field(default_factory=set)
    skipped: int = 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_lease(record: Mapping[str, Any]) -> tuple[str, _Lease] | None:
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
        try:
            kind = CounterKind(str(item.get("kind")))
        except ValueError:
            return None
        if key is None or amount is None:
            return None
        refs.append((key, kind))
        if amount > 0:
            debits.append(Debit(key, kind, amount))
    built = _Lease(tag, tenant, end, _text(lease.get("idempotency_key")), debits, tuple(refs),
                   _text(lease.get("replaces_job")))  # fmt: skip
    return decision_id, built


def _apply(b: _Builder, record: Mapping[str, Any]) -> None:
    kind = record.get("kind")
    ts = _number(record.get("ts")) or 0.0
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
        if lease.idem is not None:
            b.idem[(lease.tag, lease.tenant, lease.idem)] = _Idem(lease_id, ts + b.window)
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
    elif kind == "extend":
        upstream, job_id, end = _text(record.get("upstream")), _text(record.get("job_id")), _number(record.get("end"))
        if upstream is not None and job_id is not None and end is not None:
            _extend(b, upstream, job_id, end, ts)


def _refund(b: _Builder, lease_id: str) -> None:
    lease = b.leases.get(lease_id)
    if lease is None or lease.refunded:
        return
    lease.refunded = lease.released = True
    if lease.idem is not None:
        key = (lease.tag, lease.tenant, lease.idem)
        found = b.idem.get(key)
        if found is not None and found.lease_id == lease_id and found.response is None:
            del b.idem[key]


def _release(b: _Builder, upstream: str, job_id: str, ts: float) -> None:
    entry = b.owners.get((upstream, job_id))
    if entry is None or entry[1] + b.ownership_ttl <= ts:
        return
    lease = b.leases.get(entry[0])
    if lease is not None:
        lease.released = True


def _extend(b: _Builder, upstream: str, job_id: str, end: float, ts: float) -> None:
    """Reconciliation saw the job alive: its lease is held until `end` (a lapsed one is held again)."""
    entry = b.owners.get((upstream, job_id))
    if entry is None or entry[1] + b.ownership_ttl <= ts:
        return
    lease = b.leases.get(entry[0])
    if lease is not None and not lease.released:
        lease.end = max(lease.end, end)


def _give_back_replaced(b: _Builder, lease: _Lease, upstream: str, replaced: str | None, ts: float) -> None:
    """An accepted update gives the job's old lease back whole (held and cumulative), as the gateway does.

    The settle record names that lease (`replaced_lease`); older records do not, so the job's owner is used.
    """
    if replaced is None:
        assert lease.replaces is not None
        entry = b.owners.get((upstream, lease.replaces))
        if entry is None or entry[1] + b.ownership_ttl <= ts:
            return
        replaced = entry[0]
    old = b.leases.get(replaced)
    if old is not None and old.tenant == lease.tenant:
        _refund(b, replaced)


def _settle(b: _Builder, lease_id: str, record: Mapping[str, Any], ts: float) -> None:
    lease = b.leases.get(lease_id)
    if lease is None or lease.refunded:
        return
    upstream, job_id = _text(record.get("upstream")), _text(record.get("job_id"))
    if upstream is not None and job_id is not None:
        if lease.replaces is not None:
            _give_back_replaced(b, lease, upstream, _text(record.get("replaced_lease")), ts)
        b.owners[(upstream, job_id)] = (lease_id, ts)
        b.owned_pairs.add((upstream, lease.tenant))
        lease.job = (upstream, job_id)
    status = record.get("status")
    if lease.idem is not None and isinstance(status, int) and not isinstance(status, bool):
        key = (lease.tag, lease.tenant, lease.idem)
        found = b.idem.get(key)
        if found is None or found.lease_id == lease_id:
            # Response bodies are not in the ledger: a replay after a rebuild keeps the first
            # attempt's status and decision id, with an empty body.
            response = StoredResponse(status, (("X-Exportgate-Decision-Id", lease_id),), b"")
            b.idem[key] = _Idem(lease_id, ts + b.window, response)


def _counters(leases: Mapping[str, _Lease], now: float) -> tuple[CounterValue, ...]:
    kinds: dict[tuple[str, str], CounterKind] = {}
    amounts: dict[tuple[str, str], list[float]] = {}
    held: dict[tuple[str, str], list[HeldShare]] = {}
    for lease_id, lease in leases.items():
        for debit in lease.debits:
            slot = (lease.tag, debit.key)
            kinds.setdefault(slot, debit.kind)
            amounts.setdefault(slot, [])
            if lease.refunded:
                continue
            if debit.kind is CounterKind.CUMULATIVE:
                amounts[slot].append(debit.amount)
            elif not lease.released and lease.end > now:
                amounts[slot].append(debit.amount)
                held.setdefault(slot, []).append(HeldShare(lease_id, lease.end, debit.amount))
    out = []
    for slot in sorted(kinds):
        shares = tuple(sorted(held.get(slot, ()), key=lambda s: (s.end, s.lease_id)))
        out.append(CounterValue(slot[0], slot[1], kinds[slot], math.fsum(amounts[slot]), shares))
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
    b = _Builder(idempotency_window_s, ownership_ttl_s)
    for record in records:
        _apply(b, record)
    leases = tuple(lease.frozen(i) for i, lease in b.leases.items() if lease.end + idempotency_window_s > now)
    idem = tuple(
        IdempotencyState(tag, tenant, key, rec.lease_id, rec.expires, rec.response)
        for (tag, tenant, key), rec in b.idem.items()
        if rec.expires > now
    )
    owners: list[OwnerState] = []
    owned: dict[tuple[str, str], list[tuple[str, float]]] = {pair: [] for pair in b.owned_pairs}
    for (upstream, job_id), (lease_id, since) in b.owners.items():
        lease = b.leases[lease_id]
        if since + ownership_ttl_s <= now:
            continue
        owners.append(OwnerState(upstream, job_id, Owner(lease.tenant, lease.frozen(lease_id).ref), since))
        owned[(upstream, lease.tenant)].append((job_id, since))
    return QuotaState(
        now=now,
        counters=_counters(b.leases, now),
        leases=leases,
        idempotency=idem,
        owners=tuple(owners),
        owned=tuple(OwnedJobs(u, t, tuple(sorted(jobs))) for (u, t), jobs in sorted(owned.items())),
        skipped=b.skipped,
    )
