"""Ledger record bodies for decisions and their follow-ups: ids, countries, statuses; no PII."""

from collections.abc import Mapping
from typing import Any

from gateway.core.decide import Decision
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
    cost: Mapping[str, Any] | None = None,
    quota_before: Mapping[str, float] | None = None,
    quota_after: Mapping[str, float] | None = None,
    licences: list[str] | None = None,
    lease: Mapping[str, Any] | None = None,
    kind: str = "decision",
    exemptions: list[str] | None = None,
) -> dict[str, Any]:
    """One decision as the ledger keeps it (`kind` is `decision` or `access`)."""
    return {
        "kind": kind,
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
        "licences": licences or [],
        # Counts skipped on the pack's exemptions (`purpose:inference` is the tenant's own certification).
        "exemptions": exemptions or [],
        "job": dict(job) if job is not None else None,
        "cost": dict(cost) if cost is not None else None,
        "decision": decision.outcome.value,
        "code": decision.code.value if decision.code else None,
        "reasons": [
            {"code": r.code.value, "rule": r.rule.value if r.rule else None, "enforced": r.enforced, "detail": r.detail}
            for r in decision.reasons
        ],
        "policy": {"name": pack.name, "version": pack.version, "hash": pack.content_hash},
        "registry": registry_version,
        "quota_before": dict(quota_before) if quota_before is not None else None,
        "quota_after": dict(quota_after) if quota_after is not None else None,
        "lease": dict(lease) if lease is not None else None,
    }


def followup_body(kind: str, decision_id: str, ts: float, **fields: Any) -> dict[str, Any]:
    """A record that settles, refunds or releases what an earlier decision reserved."""
    return {"kind": kind, "decision_id": decision_id, "ts": ts, **fields}
