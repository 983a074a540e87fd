"""The admission stages: authenticate, resolve the tenant, match the route, decide on tier and KYC."""

from gateway.adapters.auth import Authenticator, AuthError
from gateway.adapters.policy_files import PolicyFiles
from gateway.core.codes import Code
from gateway.core.decide import DecisionMemo, Facts, decide, refuse
from gateway.core.paths import canonical_or_none
from gateway.core.routes import MatchMemo, RouteKind, RouteMatch, allowed_methods, unbound_param
from gateway.core.tenants import Identity, Tenant
from gateway.http.call import Admitted, Call, Refused

# Admission is the same for every request of a tenant on a route kind on one day: decided once. So is the
# route a method and path match in an upstream's table.
_ADMISSIONS = DecisionMemo()
_MATCHES = MatchMemo()


async def authenticate(auth: Authenticator, call: Call) -> Identity | Refused:
    """The caller's identity from its bearer token."""
    try:
        return await auth.authenticate(call.headers.get("Authorization"))
    except AuthError as exc:
        return Refused(refuse(exc.code, exc.detail))


def resolve_tenant(policy: PolicyFiles, call: Call, identity: Identity) -> Tenant | Refused:
    """The registered tenant the identity maps to."""
    tenant = policy.registry.lookup(identity)
    if tenant is None:
        return Refused(decide(Facts(call.when, None, RouteKind.PLAIN_READ), policy.pack))
    return tenant


def match_request(call: Call) -> RouteMatch | Refused:
    """The upstream route the method and path name: 404 for an unknown path, 405 with `Allow` for another method."""
    method, routes = call.method, call.upstream.routes
    if canonical_or_none(call.path) is None:
        detail = "the path is not in normal form (encoded, dot or double-slash segments)"
        return Refused(refuse(Code.ROUTE_NOT_ALLOWED, detail))
    path = call.upstream.local_path(call.path)  # the scheduler's own path (an upstream may strip its prefix)
    match = _MATCHES.match(routes, method, path)
    if match is not None:
        return match
    allowed = allowed_methods(routes, path)
    if not allowed:
        return Refused(refuse(Code.ROUTE_NOT_ALLOWED, f"{method} {path[:256]} is not an allowed route"))
    allow = ", ".join(sorted(allowed))
    detail = f"{method[:16]} is not allowed on {path[:256]}; allowed: {allow}"
    return Refused(refuse(Code.METHOD_NOT_ALLOWED, detail), allow)


def admit(policy: PolicyFiles, call: Call, tenant: Tenant, match: RouteMatch) -> Admitted | Refused:
    """Tier and KYC admission (core `decide`), with the upstream's own checks around it."""
    upstream = call.upstream
    unbound = unbound_param(match.params, upstream.settings.bind_params, tenant.upstream_identity)
    if unbound is not None:
        detail = f"{unbound} {match.params[unbound][:64]!r} does not belong to this tenant"
        return Refused(refuse(Code.ROUTE_NOT_ALLOWED, detail))
    decision = _ADMISSIONS.decide(Facts(call.when, tenant, match.route.kind), policy.pack)
    if not decision.forwards:
        return Refused(decision)
    missing = upstream.missing_identity(tenant)
    if missing:  # never fall back to the gateway's own scheduler identity
        detail = f"the tenant has no {', '.join(missing)} for upstream {upstream.name} in the registry"
        return Refused(refuse(Code.TENANT_UNKNOWN, detail, decision.tier))
    return Admitted(call, tenant, match, decision)
