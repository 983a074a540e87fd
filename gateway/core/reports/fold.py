"""The ledger as reports read it: records folded in time order into the quota rebuild's state, with the TPP
each tenant and counter holds kept up to date, each admission and refund named, and what records say of
each tenant (countries, tier, KYC, group, VEU status).

The quota state is the rebuild's own (`core.rebuild.Builder`), so what is held when is what a store rebuilt
from the same records holds; the fold's memory follows live work and the number of tenants, not the
ledger's length.
"""

import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core.leases import CounterKind, Debit
from gateway.core.rebuild import Builder, LeaseEntry
from gateway.core.reports.model import Period, Report

# Counters of TPP a lease holds for its tenant (allowance, group, VEU, licensed allotment); countries count it again.
TPP_PREFIXES = ("tenant:", "group:", "veu:", "licensed:")
ADMITTING = ("allow", "shadow_deny")


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def lease_tpp(debits: Iterable[Debit]) -> float:
    """The TPP a lease holds for its tenant: its allowance, group, VEU and licensed debits (an overflow split
    between allowance and licence adds up to the job's TPP)."""
    return math.fsum(d.amount for d in debits if d.key.startswith(TPP_PREFIXES))


def group_of_key(key: str) -> str | None:
    """`group:falcon` and `licensed:group:falcon` (and calendar-year `group:falcon:2026`) name group falcon."""
    key = key.removeprefix("licensed:")
    if not key.startswith("group:"):
        return None
    name, _, year = key.removeprefix("group:").rpartition(":")
    return name if name and len(year) == 4 and year.isdigit() else key.removeprefix("group:")


@dataclass(slots=True)
class TenantFacts:
    """What the records say of a tenant, the latest record winning; ids, countries and statuses only."""

    id: str
    location: str | None = None
    headquarters: str | None = None
    parent: str | None = None
    tier: int | None = None
    kyc: str | None = None
    kyc_since: float = 0.0
    group: str | None = None
    veu: str | None = None  # "national" or "universal", once an admitted decision's basis said so
    first_ts: float = 0.0
    last_ts: float = 0.0

    @property
    def consignee(self) -> str:
        """Who a cap or a certification counts: the parent group when the tenant has one."""
        return f"group:{self.group}" if self.group else f"tenant:{self.id}"

    def countries(self) -> tuple[str, ...]:
        """Each distinct recorded country (location, headquarters, parent), `unknown` for one not recorded."""
        return tuple(sorted({c or "unknown" for c in (self.location, self.headquarters, self.parent)}))


@dataclass(frozen=True, slots=True)
class Admitted:
    """A decision that took a lease: its record, the lease, and the TPP it holds for its tenant."""

    lease_id: str
    tenant: str
    record: Mapping[str, Any]
    debits: tuple[Debit, ...]
    end: float
    tpp: float


@dataclass(frozen=True, slots=True)
class Events:
    """What one record did to the quota state."""

    admitted: Admitted | None = None
    refunded: tuple[tuple[str, LeaseEntry], ...] = ()  # (lease id, lease) given back whole


NO_EVENTS = Events()


@dataclass(slots=True)
class Fold:
    """Records folded in time order (`apply`); `advance(t)` ends what ended by `t` before it is read."""

    window_s: float
    ownership_ttl_s: float
    builder: Builder = field(init=False)
    tenants: dict[str, TenantFacts] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)  # HELD counter key -> TPP held now
    tenant_held: dict[str, float] = field(default_factory=dict)  # tenant -> TPP held now (its TPP counters)
    location_held: dict[str, float] = field(default_factory=dict)  # tenants' location country -> TPP held now
    live: dict[str, tuple[LeaseEntry, str]] = field(default_factory=dict)  # counted leases, with their location
    ends: list[tuple[float, str]] = field(default_factory=list)
    records: int = 0
    last_ts: float = 0.0
    policies: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (name, version, hash) -> decisions

    def __post_init__(self) -> None:
        self.builder = Builder(self.window_s, self.ownership_ttl_s)

    # -- the held totals -----------------------------------------------------------------------

    def _count(self, lease_id: str, lease: LeaseEntry, location: str, sign: float) -> None:
        for d in lease.debits:
            if d.key.startswith(TPP_PREFIXES):
                self.tenant_held[lease.tenant] = self.tenant_held.get(lease.tenant, 0.0) + sign * d.amount
                self.location_held[location] = self.location_held.get(location, 0.0) + sign * d.amount
            if d.kind is CounterKind.HELD:
                self.held[d.key] = self.held.get(d.key, 0.0) + sign * d.amount
        if sign > 0:
            self.live[lease_id] = (lease, location)
            heapq.heappush(self.ends, (lease.end, lease_id))
        else:
            del self.live[lease_id]

    def _sync(self, lease_id: str, ts: float) -> None:
        lease = self.builder.leases.get(lease_id)
        counted = self.live.get(lease_id)
        holds = lease is not None and not lease.refunded and not lease.released and lease.end > ts
        if holds and counted is None:
            assert lease is not None
            facts = self.tenants.get(lease.tenant)
            self._count(lease_id, lease, (facts.location if facts else None) or "unknown", 1.0)
        elif counted is not None and not holds:
            self._count(lease_id, *counted, -1.0)

    def advance(self, t: float) -> None:
        """End the leases whose end is at or before `t` (an extended one is looked at again at its new end)."""
        while self.ends and self.ends[0][0] <= t:
            _, lease_id = heapq.heappop(self.ends)
            counted = self.live.get(lease_id)
            if counted is None:
                continue
            if counted[0].end > t:
                heapq.heappush(self.ends, (counted[0].end, lease_id))
            else:
                self._count(lease_id, *counted, -1.0)

    # -- records -------------------------------------------------------------------------------

    def _owner_lease(self, record: Mapping[str, Any], job_key: str = "job_id") -> str | None:
        upstream, job_id = text(record.get("upstream")), text(record.get(job_key))
        owner = self.builder.owners.get((upstream, job_id)) if upstream and job_id else None
        return owner.lease_id if owner is not None else None

    def _touched(self, kind: Any, record: Mapping[str, Any]) -> list[str]:
        """The leases a follow-up record may give back, release or hold further (read before it is applied)."""
        decision_id = text(record.get("decision_id"))
        found: list[str | None] = []
        if kind == "refund":
            found.append(decision_id)
        elif kind == "settle" and decision_id is not None:
            found.append(decision_id)
            lease = self.builder.leases.get(decision_id)
            if lease is not None and lease.replaces is not None:
                owner = self.builder.owners.get((text(record.get("upstream")) or "", lease.replaces))
                found.append(owner.lease_id if owner is not None else None)
            found.append(text(record.get("replaced_lease")))
        elif kind in ("release", "extend"):
            found.append(self._owner_lease(record))
        return [i for i in dict.fromkeys(found) if i is not None]

    def apply(self, record: Mapping[str, Any]) -> Events:
        """Fold one record in (records come in time order); what it admitted or gave back."""
        ts = number(record.get("ts")) or 0.0
        self.records += 1
        self.last_ts = max(self.last_ts, ts)
        self.advance(ts)
        kind = record.get("kind")
        if kind in ("decision", "access", "dry_run"):
            self._learn(record, ts)
        b = self.builder
        if kind == "decision":
            decision_id = text(record.get("decision_id"))
            before = b.leases.get(decision_id) if decision_id else None
            b.apply(record)
            lease = b.leases.get(decision_id) if decision_id else None
            if decision_id is None or lease is None or lease is before:
                return NO_EVENTS
            self._sync(decision_id, ts)
            debits = tuple(lease.debits)
            admitted = Admitted(decision_id, lease.tenant, record, debits, lease.end, lease_tpp(debits))
            return Events(admitted=admitted)
        touched = self._touched(kind, record)
        if not touched:
            b.apply(record)
            return NO_EVENTS
        was = {i: (lease, lease.refunded) for i in touched if (lease := b.leases.get(i)) is not None}
        b.apply(record)
        for lease_id in touched:
            self._sync(lease_id, ts)
        refunded = tuple((i, lease) for i, (lease, before) in was.items() if lease.refunded and not before)
        return Events(refunded=refunded) if refunded else NO_EVENTS

    def _learn(self, record: Mapping[str, Any], ts: float) -> None:
        policy = record.get("policy")
        if isinstance(policy, Mapping):
            named = (str(policy.get("name")), str(policy.get("version")), str(policy.get("hash")))
            self.policies[named] = self.policies.get(named, 0) + 1
        tenant_id = text(record.get("tenant"))
        if tenant_id is None:
            return
        facts = self.tenants.get(tenant_id)
        if facts is None:
            facts = self.tenants[tenant_id] = TenantFacts(tenant_id, first_ts=ts)
        facts.last_ts = ts
        countries = record.get("countries")
        if isinstance(countries, Mapping):
            facts.location = text(countries.get("location"))
            facts.headquarters = text(countries.get("headquarters"))
            facts.parent = text(countries.get("parent"))
        tier = record.get("tier")
        if isinstance(tier, int) and not isinstance(tier, bool):
            facts.tier = tier
        kyc = text(record.get("kyc"))
        if kyc is not None and kyc != facts.kyc:
            facts.kyc, facts.kyc_since = kyc, ts
        basis = record.get("basis")
        if basis in ("veu_national", "veu_universal") and record.get("decision") in ADMITTING:
            facts.veu = str(basis).removeprefix("veu_")
        lease = record.get("lease")
        for counter in lease.get("counters") or [] if isinstance(lease, Mapping) else []:
            group = group_of_key(str(counter.get("key", ""))) if isinstance(counter, Mapping) else None
            if group is not None:
                facts.group = group

    def counters_at(self, t: float) -> dict[str, float]:
        """Every counter's value at `t` as the rebuild computes it (held and cumulative), by key."""
        return {c.key: c.value for c in self.builder.state(t).counters}


class Folding(Protocol):
    """One report kind: sampled at each bucket start, shown every record in order, finished at the end."""

    def sample(self, t: float, fold: Fold) -> None: ...

    def record(self, ts: float, record: Mapping[str, Any], events: Events, fold: Fold) -> None: ...

    def finish(self, fold: Fold) -> Report: ...


def run(
    records: Iterable[Mapping[str, Any]],
    period: Period,
    starts: list[float],
    folding: Folding,
    *,
    window_s: float,
    ownership_ttl_s: float,
    ts_of: Callable[[Mapping[str, Any]], float] = lambda r: number(r.get("ts")) or 0.0,
) -> tuple[Report, Fold]:
    """Fold every record before the period's end, sampling at each of `starts` (records after the end are read,
    not used: the shell verifies them); the report, and the fold as it ended."""
    fold = Fold(window_s, ownership_ttl_s)
    i = 0
    for record in records:
        ts = ts_of(record)
        if ts >= period.end:
            continue
        while i < len(starts) and starts[i] <= ts:
            fold.advance(starts[i])
            folding.sample(starts[i], fold)
            i += 1
        folding.record(ts, record, fold.apply(record), fold)
    for start in starts[i:]:
        fold.advance(start)
        folding.sample(start, fold)
    return folding.finish(fold), fold
