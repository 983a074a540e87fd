"""Who holds what: tenants' and countries' counters against their caps, and the leases behind them.

Pure: the shell reads a QuotaState (from the live store, `QuotaStore.holdings`, or rebuilt from a
ledger) and the current pack and registry, and these functions lay it out. A tenant's caps are the
ones its next job would be checked against: a nominal job is planned for it with the same
`plan_reservation` the proxy uses, so the counters, caps and bases shown are the decision's own.
"""

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.core.headroom import cap_name
from gateway.core.iso import ISO_3166_ALPHA2
from gateway.core.jobs import Cost
from gateway.core.leases import QUOTA_SLOT, Counter, CounterKind, LeaseState, Plan, QuotaState
from gateway.core.policy import Pack
from gateway.core.quota import COUNTRY_PREFIX, allocation_countries, country_key, plan_reservation
from gateway.core.tenants import KycStatus, LicenceScope, Registry, Tenant
from gateway.core.tiers import Tier, resolve_tier

# Held counters of TPP a job's lease debits (allowance, VEU, licensed allotment); countries count it again.
_TPP_HELD = ("tenant:", "group:", "veu:", "licensed:")
_NOMINAL = Cost(held_tpp=1.0, tpp_hours=1.0, training_ops=1.0, walltime_s=3600.0, gpus=1)
# What a usage query may name: ids as the registry and the upstreams spell them.
QUERY_TEXT = re.compile(r"^[A-Za-z0-9._:@/#+\-]{1,128}$")
LEASE_STATES = ("live", "ended", "released", "refunded")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def report_meta(now: datetime, registry: Registry, pack: Pack, source: str | None = None) -> dict[str, Any]:
    """What every usage report starts with: when the holdings were read (and from where, offline) and the
    registry and pack they are laid out against."""
    read_at = {"read_at": now.isoformat().replace("+00:00", "Z")}
    where = {} if source is None else {"source": source}
    return read_at | where | {"registry": registry.version, "policy": {"name": pack.name, "version": pack.version}}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def lease_state(lease: LeaseState, now: float) -> str:
    """`refunded`, `released` (its held shares given back), `ended` (past its end) or `live`."""
    if lease.refunded:
        return "refunded"
    if lease.released:
        return "released"
    return "ended" if lease.end <= now else "live"


@dataclass(frozen=True, slots=True)
class Holdings:
    """A QuotaState indexed for reports: counter values of the quota slot, leases by tenant, jobs by lease."""

    now: float
    values: Mapping[str, float]
    leases: tuple[LeaseState, ...]
    jobs: Mapping[str, tuple[tuple[str, str], ...]]

    @classmethod
    def of(cls, state: QuotaState) -> "Holdings":
        values = {c.key: c.value for c in state.counters if c.hash_tag == QUOTA_SLOT}
        jobs: dict[str, list[tuple[str, str]]] = {}
        for lease in state.leases:
            if lease.job is not None:
                jobs.setdefault(lease.lease_id, []).append(lease.job)
        for owner in state.owners:
            job = (owner.upstream, owner.job_id)
            listed = jobs.setdefault(owner.owner.lease.lease_id, [])
            if job not in listed:
                listed.append(job)
        by_lease = {k: tuple(sorted(v)) for k, v in jobs.items()}
        return cls(state.now, values, tuple(sorted(state.leases, key=lambda x: (x.end, x.lease_id))), by_lease)

    def of_tenant(self, tenant_id: str) -> list[LeaseState]:
        return [lease for lease in self.leases if lease.tenant_id == tenant_id]


def lease_record(lease: LeaseState, holdings: Holdings) -> dict[str, Any]:
    """One lease: whose, its state, its end, the jobs owned under it and what it debited."""
    held_tpp = sum(d.amount for d in lease.debits if d.kind is CounterKind.HELD and d.key.startswith(_TPP_HELD))
    return {
        "lease_id": lease.lease_id,
        "tenant": lease.tenant_id or None,
        "state": lease_state(lease, holdings.now),
        "end": lease.end,
        "end_at": _iso(lease.end),
        "jobs": [{"upstream": u, "job_id": j} for u, j in holdings.jobs.get(lease.lease_id, ())],
        "held_tpp": held_tpp,
        "debits": [
            {"key": d.key, "cap_name": cap_name(d.key), "kind": d.kind.value, "amount": d.amount} for d in lease.debits
        ],
    }


def _tier(tenant: Tenant, pack: Pack, now: datetime) -> Tier | None:
    return resolve_tier(tenant.countries(), pack.tiers, ISO_3166_ALPHA2, now.date())[0]


def _kyc(tenant: Tenant, now: datetime) -> str:
    kyc = tenant.kyc
    if kyc.status is KycStatus.VERIFIED and kyc.expires_at is not None and kyc.expires_at <= now.date():
        return "expired"
    return kyc.status.value


def _planned(tenant: Tenant, tier: Tier, pack: Pack, now: datetime, lineage: str | None) -> tuple[Counter, ...]:
    if pack.caps is None:
        return ()
    plan = plan_reservation(tenant, tier, _NOMINAL, lineage, None, pack, pack.caps, now,
                            decision_id="usage", idempotency_key=None, upstream="")  # fmt: skip
    return plan.counters if isinstance(plan, Plan) else ()


def tenant_counters(tenant: Tenant, pack: Pack, now: datetime, values: Mapping[str, float]) -> tuple[Counter, ...]:
    """The counters the tenant's next job would be checked against (each lineage it has counts for too)."""
    tier = _tier(tenant, pack, now)
    if tier is None:
        return ()
    found = list(_planned(tenant, tier, pack, now, None))
    keys = {c.key for c in found}
    own_ops = f"ops:{tenant.id}:"
    counted = {key[len(own_ops) :] for key in values if key.startswith(own_ops)}
    for lineage in sorted(counted | set(tenant.declared_training_ops)):  # counted here, or declared before
        key = own_ops + lineage
        if key not in keys:
            found.extend(c for c in _planned(tenant, tier, pack, now, lineage) if c.key == key)
            keys.add(key)
    return tuple(found)


def cap_record(counter: Counter, values: Mapping[str, float], sharing: Iterable[str] = ()) -> dict[str, Any]:
    """One counter against its cap: held (or counted) now, the cap, the base declared before, the room left."""
    held = values.get(counter.key, 0.0)
    room = None if counter.cap is None else max(0.0, counter.cap - counter.base - held)
    used = None if not counter.cap else (held + counter.base) / counter.cap
    return {
        "key": counter.key,
        "cap_name": cap_name(counter.key),
        "kind": counter.kind.value,
        "rule": counter.rule.value,
        "state": "enforced" if counter.enforced else "shadow",
        "held": held,
        "base": counter.base,
        "cap": _finite(counter.cap),
        "room": _finite(room),
        "used": _finite(used),
        "shared_with": sorted(sharing),
    }


def _group_members(registry: Registry) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for tenant in registry.tenants.values():
        if tenant.parent_entity:
            groups.setdefault(f"group:{tenant.parent_entity}", []).append(tenant.id)
    return groups


def tenant_summary(tenant_id: str, registry: Registry, pack: Pack, now: datetime, h: Holdings) -> dict[str, Any]:
    """A tenant's row: tier, KYC, every cap with what is held against it, and its live leases."""
    tenant = registry.tenants.get(tenant_id)
    leases = h.of_tenant(tenant_id)
    live = [lease for lease in leases if lease_state(lease, h.now) == "live"]
    out: dict[str, Any] = {
        "id": tenant_id,
        "registered": tenant is not None,
        "name": tenant.display_name if tenant else None,
        "tier": None,
        "kyc": None,
        "caps": [],
        "live_leases": len(live),
        "held_tpp": sum(lease_record(lease, h)["held_tpp"] for lease in live),
    }
    if tenant is None:
        return out
    tier = _tier(tenant, pack, now)
    groups = _group_members(registry)
    out["tier"] = int(tier) if tier is not None else None
    out["kyc"] = _kyc(tenant, now)
    out["caps"] = [
        cap_record(c, h.values, [m for m in groups.get(c.key, []) if m != tenant_id])
        for c in tenant_counters(tenant, pack, now, h.values)
    ]
    return out


def tenants_report(registry: Registry, pack: Pack, now: datetime, h: Holdings) -> list[dict[str, Any]]:
    """Every registered tenant, and any tenant no longer registered that still has leases, by id."""
    ids = set(registry.tenants) | {lease.tenant_id for lease in h.leases if lease.tenant_id}
    return [tenant_summary(i, registry, pack, now, h) for i in sorted(ids)]


def tenant_report(tenant_id: str, registry: Registry, pack: Pack, now: datetime, h: Holdings) -> dict[str, Any] | None:
    """One tenant's summary with every lease the store still keeps for it (released ones shown as such)."""
    leases = h.of_tenant(tenant_id)
    if tenant_id not in registry.tenants and not leases:
        return None
    return tenant_summary(tenant_id, registry, pack, now, h) | {"leases": [lease_record(x, h) for x in leases]}


def _drawing_countries(registry: Registry, pack: Pack, now: datetime) -> set[str]:
    """Countries whose allocation some registered tenant's licence lets it draw on."""
    out: set[str] = set()
    for tenant in registry.tenants.values():
        if any(LicenceScope.TENANT_CAP in lic.lifts for lic in tenant.licences):
            out.update(allocation_countries(tenant, pack.tiers, now.date()))
    return out


def countries_report(registry: Registry, pack: Pack, now: datetime, h: Holdings) -> list[dict[str, Any]]:
    """Each country allocation held against or drawable: held TPP, the allocation, room, who draws on it."""
    held_keys = {k[len(COUNTRY_PREFIX) :] for k in h.values if k.startswith(COUNTRY_PREFIX)}
    out = []
    for country in sorted(held_keys | _drawing_countries(registry, pack, now)):
        key = country_key(country)
        held = h.values.get(key, 0.0)
        cap = pack.caps.country_cap(country) if pack.caps is not None else None
        drawers: dict[str, float] = {}
        for lease in h.leases:
            if lease_state(lease, h.now) != "live":
                continue
            for d in lease.debits:
                if d.key == key and d.kind is CounterKind.HELD:
                    drawers[lease.tenant_id] = drawers.get(lease.tenant_id, 0.0) + d.amount
        out.append(
            {
                "country": country,
                "tier": int(pack.tiers.tier_of(country, now.date())),
                "held": held,
                "cap": _finite(cap),
                "room": _finite(None if cap is None else max(0.0, cap - held)),
                "used": _finite(None if not cap else held / cap),
                "tenants": [{"tenant": t, "held": v} for t, v in sorted(drawers.items())],
            }
        )
    return out


def leases_report(
    h: Holdings, *, tenant: str | None = None, upstream: str | None = None, state: str | None = None, limit: int
) -> dict[str, Any]:
    """Leases by end, filtered by tenant, by the upstream one of its jobs runs on, and by state; at most `limit`."""
    rows = []
    for lease in h.leases:
        if tenant is not None and lease.tenant_id != tenant:
            continue
        if upstream is not None and all(u != upstream for u, _ in h.jobs.get(lease.lease_id, ())):
            continue
        if state is not None and lease_state(lease, h.now) != state:
            continue
        rows.append(lease_record(lease, h))
    return {"leases": rows[:limit], "total": len(rows), "truncated": len(rows) > limit}
