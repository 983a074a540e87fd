"""The operator API on the admin listener, behind admin tokens with roles.

Each route names the role it needs (ROUTES): `read` for looking (a job's lease, explain, tenants,
countries, leases), `operate` for acting on leases (release), `admin` for changing the gateway
(reload); the OpenAPI document (admin_openapi.py) needs no token. Roles are ranked
(gateway.config.admin): a token may call what its role and the roles below it may.
"""

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.config.admin import AdminToken, Role
from gateway.core.codes import Code
from gateway.core.records import followup_body
from gateway.http.admin_explain import ExplainApi
from gateway.http.admin_openapi import document
from gateway.http.admin_usage import UsageApi
from gateway.http.explain import Explainer
from gateway.http.problems import refusal

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"^[A-Za-z0-9._:/\-]{1,253}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guarded = Callable[[web.Request, AdminToken], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class AdminRoute:
    """One operator route: method, aiohttp path, the role it needs (None: no token) and its OpenAPI id."""

    method: str
    path: str
    role: Role | None
    operation: str


ROUTES = (
    AdminRoute("GET", "/admin/v1/openapi.json", None, "openapi"),
    AdminRoute("GET", "/admin/v1/jobs/{upstream}/{job_id:.+}", Role.READ, "job_lookup"),
    AdminRoute("POST", "/admin/v1/jobs/{upstream}/{job_id:.+}/release", Role.OPERATE, "job_release"),
    AdminRoute("POST", "/admin/v1/explain", Role.READ, "explain"),
    AdminRoute("GET", "/admin/v1/tenants", Role.READ, "tenants"),
    AdminRoute("GET", "/admin/v1/tenants/{tenant_id}", Role.READ, "tenant"),
    AdminRoute("GET", "/admin/v1/countries", Role.READ, "countries"),
    AdminRoute("GET", "/admin/v1/leases", Role.READ, "leases"),
    AdminRoute("POST", "/admin/v1/reload", Role.ADMIN, "reload"),
)


class AdminAuth:
    """Which operator a bearer token names, and whether its role allows a call."""

    def __init__(self, tokens: Sequence[AdminToken]) -> None:
        self.tokens = tuple(tokens)

    def operator(self, request: web.Request, needed: Role) -> AdminToken | web.Response:
        """The token's owner if its role allows `needed`; otherwise the refusal to send."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return refusal(Code.AUTH_MISSING, "an admin bearer token is required", "admin")
        return self.holder(token, needed)

    def holder(self, token: str, needed: Role) -> AdminToken | web.Response:
        """The owner of `token` (a bearer token's text, or the console's session cookie) if its role allows
        `needed`; otherwise the refusal to send."""
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        found = None
        for candidate in self.tokens:  # compare against every entry in constant time
            if hmac.compare_digest(candidate.sha256, digest):
                found = candidate
        if found is None:
            return refusal(Code.AUTH_INVALID, "unknown admin token", "admin")
        if not found.role.allows(needed):
            # Authenticated but not allowed: 403, not 401 (a retry with the same token cannot succeed).
            detail = f"this admin token has the {found.role.value} role; this needs {needed.value}"
            return refusal(Code.ROLE_INSUFFICIENT, detail, "admin")
        return found


class AdminApi:
    """The operator routes (ROUTES); usage and explain answer only when their parts are given."""

    def __init__(
        self,
        tokens: Sequence[AdminToken],
        store: QuotaStore,
        ledger: LedgerWriter,
        upstreams: Sequence[str],
        clock: Callable[[], float],
        *,
        policy: PolicyFiles | None = None,
        explainer: Explainer | None = None,
        ledger_dir: Path | None = None,
        reload: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.auth = AdminAuth(tokens)
        self.store = store
        self.ledger = ledger
        self.upstreams = frozenset(upstreams)
        self.clock = clock
        self.policy = policy
        self.explain_api = ExplainApi(explainer) if explainer is not None else None
        self.usage = UsageApi(store, policy, ledger_dir, clock) if policy is not None else None
        self._reload = reload

    def add_routes(self, app: web.Application) -> None:
        handlers: dict[str, Guarded] = {
            "job_lookup": self.lookup,
            "job_release": self.release,
            "reload": self.reload,
        }
        if self.explain_api is not None:
            handlers["explain"] = self.explain_api.explain
        if self.usage is not None:
            handlers |= {
                "tenants": self.usage.tenants,
                "tenant": self.usage.tenant,
                "countries": self.usage.countries,
                "leases": self.usage.leases,
            }
        # A GET of a release is a likely mistake: answer 405 with Allow, before the job lookup would take the path.
        release = next(r.path for r in ROUTES if r.operation == "job_release")
        app.router.add_get(release, self._method_not_allowed)
        for route in ROUTES:
            if route.role is None:
                app.router.add_route(route.method, route.path, self.openapi)
            else:
                app.router.add_route(route.method, route.path, self._guarded(route.role, handlers[route.operation]))

    def _guarded(self, needed: Role, handler: Guarded) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            who = self.auth.operator(request, needed)
            if isinstance(who, web.Response):
                return who
            return await handler(request, who)

        return run

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(document(), headers={"Cache-Control": "no-store"})

    def _target(self, request: web.Request) -> tuple[str, str] | web.Response:
        upstream, job_id = request.match_info["upstream"], request.match_info["job_id"]
        if upstream not in self.upstreams or not _JOB_ID.match(job_id):
            return refusal(Code.ROUTE_NOT_ALLOWED, "unknown upstream or malformed job id", "admin")
        return upstream, job_id

    async def lookup(self, request: web.Request, who: AdminToken) -> web.Response:
        target = self._target(request)
        if isinstance(target, web.Response):
            return target
        try:
            owner = await self.store.owner_of(*target)
        except BackendUnavailable as exc:
            return refusal(Code.BACKEND_UNAVAILABLE, str(exc), "admin")
        if owner is None:
            return refusal(Code.JOB_NOT_OWNED, "no lease is recorded for this job", "admin")
        lease = owner.lease
        return web.json_response(
            {"upstream": target[0], "job_id": target[1], "tenant": owner.tenant_id, "lease_id": lease.lease_id,
             "hash_tag": lease.hash_tag, "counters": [key for key, _ in lease.counters]}
        )  # fmt: skip

    async def release(self, request: web.Request, who: AdminToken) -> web.Response:
        """Record the operator's intent durably, release the held TPP, record the outcome."""
        target = self._target(request)
        if isinstance(target, web.Response):
            return target
        upstream, job_id = target
        base = {"upstream": upstream, "job_id": job_id, "operator": who.name}
        try:
            await self.ledger.append(followup_body("admin_release", "admin", self.clock(), **base), wait=True)
        except LedgerUnavailable as exc:
            return refusal(Code.BACKEND_UNAVAILABLE, f"the ledger cannot record this change: {exc}", "admin")
        try:
            released = await self.store.release_job(upstream, job_id, self.clock())
        except BackendUnavailable as exc:
            return refusal(Code.BACKEND_UNAVAILABLE, str(exc), "admin")
        log.info("operator %s released %s/%s (%s)", who.name, upstream, job_id, released)
        record = followup_body("release", "admin", self.clock(), whole_job=True, released=released, **base)
        try:
            await self.ledger.append(record, wait=True)
        except LedgerUnavailable:
            log.error("operator release of %s/%s happened but its outcome record could not be written", *target)
        return web.json_response({"upstream": upstream, "job_id": job_id, "released": released})

    async def reload(self, request: web.Request, who: AdminToken) -> web.Response:
        """What SIGHUP does: reload registry, pack and key sets; an invalid file keeps the last good one."""
        if self._reload is None or self.policy is None:
            return refusal(Code.BACKEND_UNAVAILABLE, "this gateway cannot reload from here", "admin")
        before = (self.policy.pack.content_hash, self.policy.registry.version)
        accepted = await self._reload()
        pack, registry = self.policy.pack, self.policy.registry
        log.info("operator %s asked for a reload (%s)", who.name, "taken" if accepted else "refused",
                 extra={"operator": who.name})  # fmt: skip
        return web.json_response(
            {
                "accepted": accepted,  # false: a file was invalid (logged); the last good pack and registry serve
                "pack": {"name": pack.name, "version": pack.version, "hash": pack.content_hash},
                "registry": registry.version,
                "changed": before != (pack.content_hash, registry.version),
            }
        )

    async def _method_not_allowed(self, request: web.Request) -> web.Response:
        response = refusal(Code.METHOD_NOT_ALLOWED, "use POST to release", "admin")
        response.headers["Allow"] = "POST"
        return response
