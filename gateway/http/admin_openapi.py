"""The admin listener described in OpenAPI 3.1, served at `/admin/v1/openapi.json`.

Kept here as data, next to the routes it describes: tests/test_admin_openapi.py validates it with
openapi-spec-validator and checks that the admin application serves exactly the paths and methods
it lists. Each operation names the admin role it needs in `x-exportgate-role`.
"""

from typing import Any

VERSION = "1"

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_STRING_OR_NULL = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _ref("Problem")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_AUTH_PROBLEMS = {
    "401": _problem("`auth_missing` (no bearer token) or `auth_invalid` (not in the tokens file)"),
    "403": _problem("`role_insufficient`: the token's role does not allow this call"),
}


def _operation(op_id: str, summary: str, role: str | None, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": responses}
    if role is not None:
        out["security"] = [{"adminToken": []}]
        out["x-exportgate-role"] = role
        out["responses"] = responses | _AUTH_PROBLEMS
    else:
        out["security"] = []
    return out | more


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


_ID_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9._:@/#+\-]{1,128}$"}
_MALFORMED = {"400": _problem("`request_malformed`: an unknown or repeated query parameter, or a bad value")}
_STORE_DOWN = {"503": _problem("`backend_unavailable`: the quota store cannot answer")}


def _schemas() -> dict[str, Any]:
    cap = {
        "type": "object",
        "properties": {
            "key": {"type": "string"},
            "cap_name": {"type": "string", "description": "tenant, group, veu, licence, country:CC, lineage:L"},
            "kind": {"enum": ["held", "cumulative"]},
            "rule": {"type": "string"},
            "state": {"enum": ["enforced", "shadow"]},
            "held": {"type": "number"},
            "base": {"type": "number"},
            "cap": _NUMBER_OR_NULL,
            "room": _NUMBER_OR_NULL,
            "used": _NUMBER_OR_NULL,
            "shared_with": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["key", "cap_name", "kind", "held", "cap", "room"],
    }
    lease = {
        "type": "object",
        "properties": {
            "lease_id": {"type": "string"},
            "tenant": _STRING_OR_NULL,
            "state": {"enum": ["live", "ended", "released", "refunded"]},
            "end": {"type": "number"},
            "end_at": {"type": "string", "format": "date-time"},
            "jobs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"upstream": {"type": "string"}, "job_id": {"type": "string"}},
                    "required": ["upstream", "job_id"],
                },
            },
            "held_tpp": {"type": "number"},
            "debits": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["lease_id", "state", "end", "jobs", "held_tpp", "debits"],
    }
    tenant = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "registered": {"type": "boolean"},
            "name": _STRING_OR_NULL,
            "tier": {"type": ["integer", "null"]},
            "kyc": _STRING_OR_NULL,
            "caps": {"type": "array", "items": _ref("Cap")},
            "live_leases": {"type": "integer"},
            "held_tpp": {"type": "number"},
        },
        "required": ["id", "registered", "tier", "kyc", "caps", "live_leases", "held_tpp"],
    }
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details with exportgate's stable code",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "code": {"type": "string"},
                "detail": {"type": "string"},
                "decision_id": {"type": "string"},
                "citation": {"type": "string"},
            },
            "required": ["type", "title", "status", "code", "detail", "decision_id"],
        },
        "Cap": cap,
        "Lease": lease,
        "TenantUsage": tenant,
        "Question": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "tenant": {"type": "string", "description": "the tenant's id (or give `token`)"},
                "token": {"type": "string", "description": "one of the tenant's bearer tokens (or give `tenant`)"},
                "method": {"type": "string", "pattern": "^[A-Z]{1,16}$"},
                "path": {"type": "string", "description": "as the client sends it, query included"},
                "body": {"description": "the request body, as JSON"},
                "body_text": {"type": "string", "description": "the request body, as text"},
                "content_type": {"type": "string", "default": "application/json"},
                "idempotency_key": {"type": "string"},
                "at": {
                    "type": ["string", "number"],
                    "description": "decide as on this date (ISO 8601, or epoch seconds); counters are read now",
                },
            },
            "required": ["method", "path"],
        },
        "Explanation": {
            "type": "object",
            "properties": {
                "decision": {"enum": ["allow", "deny", "shadow_deny"]},
                "code": _STRING_OR_NULL,
                "status": {"type": "integer", "description": "what the client would be answered (200: forwarded)"},
                "detail": _STRING_OR_NULL,
                "decided_at": {"type": "string", "description": "the stage that decided"},
                "at": {"type": "string", "format": "date-time"},
                "read_at": {"type": "string", "format": "date-time"},
                "request": {"type": "object"},
                "identity": {"type": ["object", "null"]},
                "tenant": {"type": ["object", "null"]},
                "tier": {"type": ["object", "null"], "description": "the tier, each country and the deciding ones"},
                "reasons": {"type": "array", "items": {"type": "object"}},
                "rules": {"type": "array", "items": {"type": "object"}},
                "price": {"type": ["object", "null"], "description": "GPUs by model, TPP, ops, walltime, sources"},
                "quota": {"type": ["object", "null"], "description": "each cap touched: held, cap, room, take"},
                "policy": {"type": "object"},
                "registry": {"type": "string"},
                "notes": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["decision", "code", "status", "reasons", "rules"],
        },
    }


def _paths() -> dict[str, Any]:
    usage_meta = {"read_at": {"type": "string"}, "registry": {"type": "string"}, "policy": {"type": "object"}}
    return {
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics (OpenMetrics when the scraper's Accept asks)",
                None,
                {"200": {"description": "the exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            )
        },
        "/healthz": {"get": _operation("healthz", "Liveness: always 200", None, {"200": _json("alive", {})})},
        "/readyz": {
            "get": _operation(
                "readyz",
                "Readiness and its parts",
                None,
                {"200": _json("ready", {"type": "object"}), "503": _json("not ready", {"type": "object"})},
            )
        },
        "/admin/v1/openapi.json": {
            "get": _operation("openapi", "This document", None, {"200": _json("OpenAPI 3.1", {"type": "object"})})
        },
        "/admin/v1/jobs/{upstream}/{job_id}": {
            "parameters": [_path("upstream", "a configured upstream"), _path("job_id", "the scheduler's job id")],
            "get": _operation(
                "job_lookup",
                "A job's owner, lease and counters",
                "read",
                {
                    "200": _json("the job's lease", {"type": "object"}),
                    "404": _problem("`route_not_allowed` or `job_not_owned`"),
                    **_STORE_DOWN,
                },
            ),
        },
        "/admin/v1/jobs/{upstream}/{job_id}/release": {
            "parameters": [_path("upstream", "a configured upstream"), _path("job_id", "the scheduler's job id")],
            "post": _operation(
                "job_release",
                "Release a job's held TPP (recorded before and after)",
                "operate",
                {"200": _json("released", {"type": "object"}), "404": _problem("`route_not_allowed`"), **_STORE_DOWN},
            ),
            "get": _operation(
                "job_release_get",
                "Not allowed: use POST",
                None,
                {"405": _problem("`method_not_allowed`, with `Allow: POST`")},
            ),
        },
        "/admin/v1/explain": {
            "post": _operation(
                "explain",
                "Explain the decision a request would get, forwarding and reserving nothing",
                "read",
                {
                    "200": _json("the explanation", _ref("Explanation")),
                    "400": _problem("`request_malformed`"),
                    "413": _problem("`body_too_large`"),
                },
                requestBody={"required": True, "content": {"application/json": {"schema": _ref("Question")}}},
            ),
        },
        "/admin/v1/tenants": {
            "get": _operation(
                "tenants",
                "Every tenant: tier, KYC, held against each cap, live leases",
                "read",
                {
                    "200": _json(
                        "tenants",
                        {
                            "type": "object",
                            "properties": usage_meta | {"tenants": {"type": "array", "items": _ref("TenantUsage")}},
                        },
                    ),
                    **_MALFORMED,
                    **_STORE_DOWN,
                },
            ),
        },
        "/admin/v1/tenants/{tenant_id}": {
            "parameters": [_path("tenant_id", "the tenant's id")],
            "get": _operation(
                "tenant",
                "One tenant: its caps, its leases (jobs, costs, ends) and its recent decisions",
                "read",
                {
                    "200": _json(
                        "the tenant",
                        {
                            "allOf": [
                                _ref("TenantUsage"),
                                {
                                    "type": "object",
                                    "properties": {
                                        "leases": {"type": "array", "items": _ref("Lease")},
                                        "recent_decisions": {"type": "array", "items": {"type": "object"}},
                                    },
                                },
                            ]
                        },
                    ),
                    "404": _problem("`route_not_allowed`: no such tenant"),
                    **_MALFORMED,
                    **_STORE_DOWN,
                },
            ),
        },
        "/admin/v1/countries": {
            "get": _operation(
                "countries",
                "Each country allocation: held TPP against it, and who draws on it",
                "read",
                {
                    "200": _json(
                        "countries",
                        {
                            "type": "object",
                            "properties": usage_meta | {"countries": {"type": "array", "items": {"type": "object"}}},
                        },
                    ),
                    **_MALFORMED,
                    **_STORE_DOWN,
                },
            ),
        },
        "/admin/v1/leases": {
            "get": _operation(
                "leases",
                "Leases by end, live and kept (released, refunded, ended)",
                "read",
                {
                    "200": _json(
                        "leases",
                        {
                            "type": "object",
                            "properties": usage_meta
                            | {
                                "leases": {"type": "array", "items": _ref("Lease")},
                                "total": {"type": "integer"},
                                "truncated": {"type": "boolean"},
                            },
                        },
                    ),
                    **_MALFORMED,
                    **_STORE_DOWN,
                },
                parameters=[
                    _query("tenant", "only this tenant's leases", _ID_SCHEMA),
                    _query("upstream", "only leases with a job on this upstream", _ID_SCHEMA),
                    _query("state", "only leases in this state", {"enum": ["live", "ended", "released", "refunded"]}),
                    _query(
                        "limit", "at most this many (default 1000)", {"type": "integer", "minimum": 1, "maximum": 10000}
                    ),
                ],
            ),
        },
        "/admin/v1/reload": {
            "post": _operation(
                "reload",
                "Reload registry, pack and key sets (as SIGHUP)",
                "admin",
                {"200": _json("what serves now", {"type": "object"}), "503": _problem("`backend_unavailable`")},
            ),
        },
    }


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _page(op_id: str, summary: str, *, signed_in: bool = True, **more: Any) -> dict[str, Any]:
    """A console page (docs/console.md): HTML, behind a read token given as a bearer header or the login cookie
    (`signed_in`), or open (the sign-in form itself)."""
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "security": []}
    out["responses"] = {"200": _html("the page"), "401": _html("the sign-in page: no token, or an unknown one")}
    if signed_in:
        out |= {"security": [{"adminToken": []}, {"consoleCookie": []}], "x-exportgate-role": "read"}
        out["responses"] |= {"403": _html("a POST without the session's CSRF token, or from another origin")}
    return out | more


def _console_paths() -> dict[str, Any]:
    """The console's HTML pages and forms (gateway/http/console.py)."""
    return {
        "/console": {"get": _page("console_root", "Redirects to /console/", signed_in=False,
                                  responses={"302": {"description": "to /console/"}})},
        "/console/": {"get": _page("console_overview", "Readiness, ledger chains, recent refusals, countries")},
        "/console/login": {
            "get": _page("console_login_form", "The sign-in form", signed_in=False),
            "post": _page("console_login", "Sign in: sets the HttpOnly, SameSite=Strict session cookie",
                          signed_in=False, responses={"303": {"description": "to /console/"},
                                                      "401": _html("unknown token")}),
        },
        "/console/logout": {"post": _page("console_logout", "Sign out (the form's CSRF token)")},
        "/console/tenants": {"get": _page("console_tenants", "Tenants: tier, KYC, held TPP against caps, leases")},
        "/console/tenants/{tenant_id}": {
            "parameters": [_path("tenant_id", "a tenant id")],
            "get": _page("console_tenant", "One tenant: caps, leases, recent decisions, access log"),
        },
        "/console/countries": {"get": _page("console_countries", "Country allocations held against")},
        "/console/reports": {"get": _page("console_reports", "The report form, or a report over the live ledger")},
        "/console/explain": {
            "get": _page("console_explain_form", "The explain form"),
            "post": _page("console_explain", "Explain the form's request (the form's CSRF token)"),
        },
    }  # fmt: skip


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the admin listener."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "exportgate admin API",
            "version": VERSION,
            "description": "Operator routes on the admin listener. Tokens come from `admin.tokens_file`; "
            "roles are ranked read < operate < admin. Refusals are problem+json with a stable code.",
        },
        "paths": _paths() | _console_paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "consoleCookie": {"type": "apiKey", "in": "cookie", "name": "eg_console"},
            },
        },
    }
