"""Ledger record bodies for decisions and their follow-ups: ids, countries, statuses; no PII."""

from collections.abc import Mapping
from typing import Any

from gateway.core.decide import Decision
from gateway.core.outcome import QuotaOutcome
from gateway.core.policy import Pack
from gateway.core.tenants import Identity, Tenant


def decision_body(
    *,
    decision_id: str,
    ts: float,
    tenant: Tenant | None,
    identity: Identity | None,
    client_ip: str,
    route: str | None,
    route_kind: str | None,
    method: str,
    path: str,
    upstream: str,
    decision: Decision,
    pack: Pack,
    registry_version: str,
    job: Mapping[str, Any] | None = None,
    kind: str = "decision",
    entry: str = "proxy",
) -> dict[str, Any]:
    """One decision as the ledger keeps it (`kind` is `decision` or `access`).

    `entry` names who asked: the full proxy (`proxy`), a decision entry a front proxy or control plane
    calls (`nginx`, `envoy_http`, `envoy_grpc`, `k8s_admission`), or the gateway itself (`reconcile`).
    Records written before entries existed have no `entry`; readers take it as `proxy`.
    """
    quota, cost = decision.quota, decision.cost
    uses = quota.counters if quota is not None else None
    return {
        "kind": kind,
        "entry": entry,
        "decision_id": decision_id,
        "ts": ts,
        "tenant": tenant.id if tenant else None,
        "issuer": identity.issuer if identity else None,
        "client_ip": client_ip,
        "countries": tenant.countries() if tenant else None,
        "tier": int(decision.tier) if decision.tier is not None else None,
        "kyc": tenant.kyc.status.value if tenant else None,
        "route": route,
        "route_kind": route_kind,
        "method": method,
        "path": path,
        "upstream": upstream,
        "basis": decision.basis,
        "licences": list(quota.licence_ids) if quota is not None else [],
        # Counts skipped on the pack's exemptions (`purpose:inference` is the tenant's own certification).
        "exemptions": list(quota.exemptions) if quota is not None else [],
        "job": dict(job) if job is not None else None,
        "cost": cost.as_record() if cost is not None else None,
        "decision": decision.outcome.value,
        "code": decision.code.value if decision.code else None,
        "reasons": [
            {"code": r.code.value, "rule": r.rule.value if r.rule else None, "enforced": r.enforced, "detail": r.detail}
            for r in decision.reasons
        ],
        "policy": {"name": pack.name, "version": pack.version, "hash": pack.content_hash},
        "registry": registry_version,
        "quota_before": {k: u.before for k, u in uses.items()} if uses else None,
        "quota_after": {k: u.after for k, u in uses.items()} if uses else None,
        "lease": lease_record(quota) if quota is not None else None,
    }


def lease_record(quota: QuotaOutcome) -> dict[str, Any]:
    """What the ledger needs to rebuild this reservation: slot, end, debits, idempotency key."""
    plan, uses = quota.plan, quota.counters or {}
    return {
        "hash_tag": plan.hash_tag,
        "lease_end": plan.lease_end,
        "idempotency_key": plan.idempotency_key,
        "replaces_job": quota.replaces_job,
        "counters": [
            {"key": c.key, "kind": c.kind.value, "amount": uses[c.key].amount if c.key in uses else c.amount}
            for c in plan.counters
        ],
    } | ({"joins_lease": quota.joins_lease, "shared_with": list(quota.shared_with)} if quota.joins_lease else {})


def followup_body(kind: str, decision_id: str, ts: float, **fields: Any) -> dict[str, Any]:
    """A record that settles, refunds or releases what an earlier decision reserved."""
    return {"kind": kind, "decision_id": decision_id, "ts": ts, **fields}
