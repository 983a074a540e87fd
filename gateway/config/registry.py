"""Load the tenant registry file into a Registry; names stay in the file, never the ledger."""

import hashlib
import re
from pathlib import Path

from gateway.config.fields import Fields, as_number, as_str, field_where, resolve_path
from gateway.config.located import ConfigError, Node, Problem, load_file
from gateway.core.iso import country_problem
from gateway.core.tenants import (
    AccessKey,
    Budget,
    BudgetPeriod,
    Identity,
    Kyc,
    KycStatus,
    Licence,
    LicenceScope,
    ObjectStoreAccess,
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
    "object_store",
)
# An S3 access key id: what clients put in their SigV4 credential (AWS uses 16-128 word characters).
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{8,128}$")
MIN_SECRET_CHARS = 16


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


def _kyc(tenant: Fields) -> Kyc:
    node, problems = tenant.child("kyc"), tenant.problems
    if node is None:
        tenant.missing("kyc")
        return Kyc(KycStatus.PENDING)
    fields = Fields(node, problems, ("status", "verified_at", "expires_at"))
    status = fields.choice("status", [s.value for s in KycStatus], "pending", required=True)
    verified_at = fields.day("verified_at")
    expires_at = fields.day("expires_at")
    if status == "verified" and verified_at is None:
        fields.problem("verified_at", "required when status is verified")
    if verified_at and expires_at and expires_at <= verified_at:
        fields.problem("expires_at", "must be after verified_at")
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
                fields.problem("lifts", f"{lift!r} is not one of {known}")
        tpp = fields.number("tpp")
        if tpp is not None and tpp <= 0:
            fields.problem("tpp", "must be positive")
        if LicenceScope.WEIGHTS in scopes and fields.child("lineage") is None:
            fields.problem("lineage", "required: a weights licence names the lineage it covers")
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
        fields.problem("tpp_hours", "must be positive")
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


def _object_store(node: Node | None, problems: list[Problem]) -> ObjectStoreAccess | None:
    """`object_store: {buckets: [patterns], access_keys: [{id, secret_file}]}`; each secret is read from its
    file now (relative to the registry's directory), so the registry's text never holds one."""
    if node is None or node.raw is None:
        return None
    fields = Fields(node, problems, ("buckets", "access_keys"))
    buckets: list[str] = fields.texts("buckets", [])
    for i, pattern in enumerate(buckets):
        if not pattern or "/" in pattern:
            problems.append(field_where(node, "buckets").problem(f"buckets[{i}]: {pattern!r} is not a bucket pattern"))
    keys: list[AccessKey] = []
    keys_node = fields.child("access_keys")
    if keys_node is not None and keys_node.raw is not None:
        if not isinstance(keys_node.raw, list):
            problems.append(keys_node.problem("must be a list of {id, secret_file}"))
        else:
            for item in keys_node.elements():
                key = Fields(item, problems, ("id", "secret_file"))
                key_id: str = key.text("id", "", required=True)
                file: str | None = key.text("secret_file", required=True)
                if key_id and not _KEY_ID.match(key_id):
                    key.problem("id", "must be 8-128 letters, digits, '_', '.' or '-'")
                path = resolve_path(Path(item.file).parent, file)
                if path is None:
                    continue
                try:
                    secret = path.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else "not UTF-8 text"
                    key.problem("secret_file", f"cannot read {path}: {reason}")
                    continue
                if len(secret) < MIN_SECRET_CHARS or any(c.isspace() for c in secret):
                    key.problem("secret_file", f"{path} must hold one secret of at least {MIN_SECRET_CHARS} characters")
                    continue
                keys.append(AccessKey(key_id, secret))
    return ObjectStoreAccess(tuple(buckets), tuple(keys))


def _country(fields: Fields, key: str, tenant_id: str, warnings: list[Problem]) -> str | None:
    """An assigned ISO 3166-1 alpha-2 code; anything else is a problem. A country not yet
    recorded (absent or null) is only a warning: the tenant's requests fail closed."""
    child = fields.child(key)
    if child is None or child.raw is None:
        if fields.ok:
            warnings.append(
                fields.where(key).problem(
                    f"missing: tenant {tenant_id!r} is refused tenant_country_unknown until it is recorded"
                )
            )
        return None
    if not isinstance(child.raw, str):
        fields.problem(key, f'must be a string, not {type(child.raw).__name__} (quote codes such as "NO")')
        return None
    problem = country_problem(child.raw)
    if problem is not None:
        fields.problem(key, problem)
        return None
    return child.raw


def _tenant(node: Node, problems: list[Problem], warnings: list[Problem]) -> Tenant | None:
    fields = Fields(node, problems, TENANT_KEYS)
    if not fields.ok:
        return None
    tenant_id: str = fields.text("id", "", required=True)
    if tenant_id and not all(c.isalnum() or c in "-_." for c in tenant_id):
        fields.problem("id", f"{tenant_id!r} may use only letters, digits, '-', '_', '.'")
    tpp_cap = fields.number("tpp_cap")
    if tpp_cap is not None and tpp_cap < 0:
        fields.problem("tpp_cap", "must not be negative")
    return Tenant(
        id=tenant_id,
        display_name=fields.text("display_name", tenant_id),
        identities=_identities(fields.child("identities"), problems),
        location=_country(fields, "location", tenant_id, warnings),
        headquarters=_country(fields, "headquarters", tenant_id, warnings),
        parent_headquarters=_country(fields, "parent_headquarters", tenant_id, warnings),
        kyc=_kyc(fields),
        parent_entity=fields.text("parent_entity"),
        veu=Veu(fields.choice("veu", [v.value for v in Veu], "none")),
        licences=_licences(fields.child("licences"), problems),
        tpp_cap=tpp_cap,
        budget=_budget(fields.child("budget"), problems),
        upstream_identity=_str_map(fields.child("upstream_identity"), problems),
        declared_training_ops=_ops_map(fields.child("declared_training_ops"), problems),
        object_store=_object_store(fields.child("object_store"), problems),
    )


def parse_registry(root: Node, warnings: list[Problem] | None = None) -> Registry:
    """Validate a parsed registry document; duplicate ids or identities and non-ISO countries are
    problems. Tenants whose countries are not yet recorded are added to `warnings`."""
    problems: list[Problem] = []
    warnings = [] if warnings is None else warnings
    fields = Fields(root, problems, ("tenants",))
    tenants_node = fields.child("tenants")
    tenants: list[Tenant] = []
    if tenants_node is None or not isinstance(tenants_node.raw, list):
        fields.problem("tenants", "required list")
    else:
        seen_ids: set[str] = set()
        seen_identities: dict[Identity, str] = {}
        seen_keys: dict[str, str] = {}
        for item in tenants_node.elements():
            tenant = _tenant(item, problems, warnings)
            if tenant is None:
                continue
            if tenant.id in seen_ids:
                problems.append(field_where(item, "id").problem(f"duplicate tenant id {tenant.id!r}"))
            seen_ids.add(tenant.id)
            for key in tenant.object_store.access_keys if tenant.object_store else ():
                owner = seen_keys.get(key.id)
                if owner is not None:
                    message = f"access key {key.id} is already {owner!r}'s"
                    problems.append(field_where(item, "object_store").problem(message))
                seen_keys[key.id] = tenant.id
            for identity in tenant.identities:
                other = seen_identities.get(identity)
                if other is not None:
                    message = f"({identity.issuer}, {identity.subject}) already maps to {other!r}"
                    problems.append(field_where(item, "identities").problem(message))
                seen_identities[identity] = tenant.id
            tenants.append(tenant)
    if problems:
        raise ConfigError(problems)
    return build_registry(tenants)


def load_registry(path: Path, warnings: list[Problem] | None = None) -> Registry:
    """Load the registry file; its version is the SHA-256 of its bytes."""
    registry = parse_registry(load_file(path), warnings)
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return build_registry(list(registry.tenants.values()), version)
