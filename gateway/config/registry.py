"""Load the tenant registry file into a Registry; names stay in the file, never the ledger."""

import hashlib
from pathlib import Path

from gateway.config.fields import Fields, as_number, as_str
from gateway.config.located import ConfigError, Node, Problem, load_file
from gateway.core.tenants import (
    Budget,
    BudgetPeriod,
    Identity,
    Kyc,
    KycStatus,
    Licence,
    LicenceScope,
    Registry,
    Tenant,
    Veu,
    build_registry,
)

TENANT_KEYS = (
    "id",
    "display_name",
    "identities",
    "location",
    "headquarters",
    "parent_headquarters",
    "parent_entity",
    "kyc",
    "veu",
    "licences",
    "tpp_cap",
    "budget",
    "declared_training_ops",
    "upstream_identity",
)


def _identities(node: Node | None, problems: list[Problem]) -> tuple[Identity, ...]:
    if node is None or not isinstance(node.raw, list) or not node.raw:
        if node is not None:
            problems.append(node.problem("must be a non-empty list of {issuer, subject}"))
        return ()
    out = []
    for item in node.elements():
        fields = Fields(item, problems, ("issuer", "subject"))
        issuer = fields.text("issuer", required=True)
        subject = fields.text("subject", required=True)
        if issuer and subject:
            out.append(Identity(issuer, subject))
    return tuple(out)


def _kyc(node: Node | None, problems: list[Problem], where: Node) -> Kyc:
    if node is None:
        problems.append(where.problem("kyc: required"))
        return Kyc(KycStatus.PENDING)
    fields = Fields(node, problems, ("status", "verified_at", "expires_at"))
    status = fields.choice("status", [s.value for s in KycStatus], "pending", required=True)
    verified_at = fields.day("verified_at")
    expires_at = fields.day("expires_at")
    if status == "verified" and verified_at is None:
        problems.append(node.problem("verified_at: required when status is verified"))
    if verified_at and expires_at and expires_at <= verified_at:
        problems.append(node.problem("expires_at: must be after verified_at"))
    return Kyc(KycStatus(status), verified_at, expires_at)


def _licences(node: Node | None, problems: list[Problem]) -> tuple[Licence, ...]:
    if node is None or node.raw is None:
        return ()
    if not isinstance(node.raw, list):
        problems.append(node.problem("must be a list"))
        return ()
    out = []
    for item in node.elements():
        fields = Fields(item, problems, ("id", "lifts", "tpp", "lineage", "training_ops", "expires"))
        lifts: list[str] = fields.texts("lifts", [], required=True)
        scopes = set()
        for lift in lifts:
            try:
                scopes.add(LicenceScope(lift))
            except ValueError:
                known = ", ".join(s.value for s in LicenceScope)
                problems.append(item.problem(f"lifts: {lift!r} is not one of {known}"))
        tpp = fields.number("tpp")
        if tpp is not None and tpp <= 0:
            problems.append(item.problem("tpp: must be positive"))
        out.append(
            Licence(
                fields.text("id", "", required=True),
                frozenset(scopes),
                tpp,
                fields.text("lineage"),
                fields.number("training_ops"),
                fields.day("expires"),
            )
        )
    return tuple(out)


def _budget(node: Node | None, problems: list[Problem]) -> Budget | None:
    if node is None or node.raw is None:
        return None
    fields = Fields(node, problems, ("period", "tpp_hours"))
    period = fields.choice("period", [p.value for p in BudgetPeriod], "month", required=True)
    hours = fields.number("tpp_hours", 0.0, required=True)
    if hours <= 0:
        problems.append(node.problem("tpp_hours: must be positive"))
    return Budget(BudgetPeriod(period), hours)


def _str_map(node: Node | None, problems: list[Problem]) -> dict[str, str]:
    if node is None or node.raw is None:
        return {}
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be a mapping of strings"))
        return {}
    out = {}
    for key, child in node.items():
        try:
            out[key] = as_str(child)
        except ValueError as exc:
            problems.append(child.problem(str(exc)))
    return out


def _ops_map(node: Node | None, problems: list[Problem]) -> dict[str, float]:
    if node is None or node.raw is None:
        return {}
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be a mapping of lineage to operations"))
        return {}
    out = {}
    for key, child in node.items():
        try:
            value = as_number(child)
        except ValueError as exc:
            problems.append(child.problem(str(exc)))
            continue
        if value < 0:
            problems.append(child.problem("must not be negative"))
        out[key] = value
    return out


def _country(fields: Fields, key: str) -> str | None:
    """Countries are kept as written; an unknown code fails closed at decision time."""
    value: str | None = fields.text(key)
    return value


def _tenant(node: Node, problems: list[Problem]) -> Tenant | None:
    fields = Fields(node, problems, TENANT_KEYS)
    if not fields.ok:
        return None
    tenant_id: str = fields.text("id", "", required=True)
    if tenant_id and not all(c.isalnum() or c in "-_." for c in tenant_id):
        problems.append(node.problem(f"id: {tenant_id!r} may use only letters, digits, '-', '_', '.'"))
    tpp_cap = fields.number("tpp_cap")
    if tpp_cap is not None and tpp_cap < 0:
        problems.append(node.problem("tpp_cap: must not be negative"))
    return Tenant(
        id=tenant_id,
        display_name=fields.text("display_name", tenant_id),
        identities=_identities(fields.child("identities"), problems),
        location=_country(fields, "location"),
        headquarters=_country(fields, "headquarters"),
        parent_headquarters=_country(fields, "parent_headquarters"),
        kyc=_kyc(fields.child("kyc"), problems, node),
        parent_entity=fields.text("parent_entity"),
        veu=Veu(fields.choice("veu", [v.value for v in Veu], "none")),
        licences=_licences(fields.child("licences"), problems),
        tpp_cap=tpp_cap,
        budget=_budget(fields.child("budget"), problems),
        upstream_identity=_str_map(fields.child("upstream_identity"), problems),
        declared_training_ops=_ops_map(fields.child("declared_training_ops"), problems),
    )


def parse_registry(root: Node) -> Registry:
    """Validate a parsed registry document; duplicate ids or identities are problems."""
    problems: list[Problem] = []
    fields = Fields(root, problems, ("tenants",))
    tenants_node = fields.child("tenants")
    tenants: list[Tenant] = []
    if tenants_node is None or not isinstance(tenants_node.raw, list):
        problems.append(root.problem("tenants: required list"))
    else:
        seen_ids: set[str] = set()
        seen_identities: dict[Identity, str] = {}
        for item in tenants_node.elements():
            tenant = _tenant(item, problems)
            if tenant is None:
                continue
            if tenant.id in seen_ids:
                problems.append(item.problem(f"id: duplicate tenant id {tenant.id!r}"))
            seen_ids.add(tenant.id)
            for identity in tenant.identities:
                other = seen_identities.get(identity)
                if other is not None:
                    problems.append(
                        item.problem(f"identities: ({identity.issuer}, {identity.subject}) already maps to {other!r}")
                    )
                seen_identities[identity] = tenant.id
            tenants.append(tenant)
    if problems:
        raise ConfigError(problems)
    return build_registry(tenants)


def load_registry(path: Path) -> Registry:
    """Load the registry file; its version is the SHA-256 of its bytes."""
    registry = parse_registry(load_file(path))
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return build_registry(list(registry.tenants.values()), version)
