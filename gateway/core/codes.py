"""The refusal codes: each maps to one HTTP status and one title, in one table."""

from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    """Stable, snake_case refusal codes that tenants' tools may rely on."""

    AUTH_MISSING = "auth_missing"
    AUTH_INVALID = "auth_invalid"
    TENANT_UNKNOWN = "tenant_unknown"
    TIER3_EMBARGOED = "tier3_embargoed"
    KYC_NOT_VERIFIED = "kyc_not_verified"
    KYC_EXPIRED = "kyc_expired"
    LICENCE_REQUIRED = "licence_required"
    QUOTA_TENANT_TPP = "quota_tenant_tpp"
    QUOTA_COUNTRY_TPP = "quota_country_tpp"
    QUOTA_BUDGET_EXHAUSTED = "quota_budget_exhausted"
    JOB_SPEC_INVALID = "job_spec_invalid"
    JOB_NOT_OWNED = "job_not_owned"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    TENANT_COUNTRY_UNKNOWN = "tenant_country_unknown"
    ROUTE_NOT_ALLOWED = "route_not_allowed"
    JOB_UPDATE_NOT_ALLOWED = "job_update_not_allowed"
    REQUEST_IN_PROGRESS = "request_in_progress"
    BODY_TOO_LARGE = "body_too_large"
    UPSTREAM_UNREACHABLE = "upstream_unreachable"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    ROLE_INSUFFICIENT = "role_insufficient"
    REQUEST_TIMEOUT = "request_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    PACKAGE_NOT_OWNED = "package_not_owned"
    PACKAGE_CONFLICT = "package_conflict"
    ROUTE_NEEDS_PROXY = "route_needs_proxy"
    REQUEST_MALFORMED = "request_malformed"
    WEIGHTS_CONTROLLED = "weights_controlled"
    STORAGE_NOT_COMPLIANT = "storage_not_compliant"


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """How a code is rendered: HTTP status and a short human title."""

    status: int
    title: str


CODES: dict[Code, CodeInfo] = {
    Code.AUTH_MISSING: CodeInfo(401, "Authentication required"),
    Code.AUTH_INVALID: CodeInfo(401, "Invalid credentials"),
    Code.TENANT_UNKNOWN: CodeInfo(403, "Tenant not registered"),
    Code.TIER3_EMBARGOED: CodeInfo(451, "Unavailable for export-control reasons"),
    Code.KYC_NOT_VERIFIED: CodeInfo(403, "Customer identification not verified"),
    Code.KYC_EXPIRED: CodeInfo(403, "Customer identification expired"),
    Code.LICENCE_REQUIRED: CodeInfo(403, "Export licence required"),
    Code.QUOTA_TENANT_TPP: CodeInfo(429, "Tenant compute cap reached"),
    Code.QUOTA_COUNTRY_TPP: CodeInfo(429, "Country compute allocation reached"),
    Code.QUOTA_BUDGET_EXHAUSTED: CodeInfo(403, "Period compute budget exhausted"),
    Code.JOB_SPEC_INVALID: CodeInfo(400, "Job submission cannot be priced"),
    Code.JOB_NOT_OWNED: CodeInfo(404, "Job not found"),
    Code.BACKEND_UNAVAILABLE: CodeInfo(503, "Compliance backend unavailable"),
    Code.TENANT_COUNTRY_UNKNOWN: CodeInfo(403, "Tenant country unknown"),
    Code.ROUTE_NOT_ALLOWED: CodeInfo(404, "Route not allowed"),
    Code.JOB_UPDATE_NOT_ALLOWED: CodeInfo(403, "Job update not allowed"),
    Code.REQUEST_IN_PROGRESS: CodeInfo(409, "Request already in progress"),
    Code.BODY_TOO_LARGE: CodeInfo(413, "Request body too large"),
    Code.UPSTREAM_UNREACHABLE: CodeInfo(502, "Scheduler unreachable"),
    Code.UPSTREAM_TIMEOUT: CodeInfo(504, "Scheduler did not answer in time"),
    Code.METHOD_NOT_ALLOWED: CodeInfo(405, "Method not allowed on this route"),
    Code.ROLE_INSUFFICIENT: CodeInfo(403, "Token lacks the role this needs"),
    Code.REQUEST_TIMEOUT: CodeInfo(408, "Request did not arrive in time"),
    Code.TOO_MANY_CONNECTIONS: CodeInfo(503, "Too many open connections"),
    Code.PACKAGE_NOT_OWNED: CodeInfo(404, "Package not found"),
    Code.PACKAGE_CONFLICT: CodeInfo(409, "Package name holds other content"),
    # A decision entry (nginx auth_request, Envoy ext_authz) cannot serve a route whose body or answer the
    # gateway must see (submit, update, cancel, listing, code package): send it through the full proxy.
    Code.ROUTE_NEEDS_PROXY: CodeInfo(403, "Route served only through the full proxy"),
    Code.REQUEST_MALFORMED: CodeInfo(400, "Request cannot be read"),
    # Model weights (docs/weights.md): who may read or write a controlled lineage's objects, and where.
    Code.WEIGHTS_CONTROLLED: CodeInfo(403, "Controlled model weights"),
    Code.STORAGE_NOT_COMPLIANT: CodeInfo(403, "Storage does not meet the conditions for controlled weights"),
}
