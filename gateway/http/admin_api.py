"""The operator API on the admin listener: look up a job's lease and release it, behind admin tokens."""

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Sequence

from aiohttp import web

from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.config.admin import AdminToken, Role
from gateway.core.codes import Code
from gateway.core.records import followup_body
from gateway.http.problems import refusal

log = logging.getLogger(__name__)
_JOB_ID = re.compile(r"^[A-Za-z0-9._:/\-]{1,253}$")


class AdminApi:
    """`GET /admin/v1/jobs/{upstream}/{job_id}` (read) and `POST .../release` (write)."""

    def __init__(
        self,
        tokens: Sequence[AdminToken],
        store: QuotaStore,
        ledger: LedgerWriter,
        upstreams: Sequence[str],
        clock: Callable[[], float],
    ) -> None:
        self.tokens = tuple(tokens)
        self.store = store
        self.ledger = ledger
        self.upstreams = frozenset(upstreams)
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/v1/jobs/{upstream}/{job_id:.+}/release", self._method_not_allowed)
        app.router.add_post("/admin/v1/jobs/{upstream}/{job_id:.+}/release", self.release)
        app.router.add_get("/admin/v1/jobs/{upstream}/{job_id:.+}", self.lookup)

    def _operator(self, request: web.Request, needed: Role) -> AdminToken | web.Response:
        """The token's owner if it grants `needed`; otherwise the refusal to send."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return refusal(Code.AUTH_MISSING, "an admin bearer token is required", "admin")
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        found = None
        for candidate in self.tokens:  # compare against every entry in constant time
            if hmac.compare_digest(candidate.sha256, digest):
                found = candidate
        if found is None:
            return refusal(Code.AUTH_INVALID, "unknown admin token", "admin")
        if needed is Role.WRITE and found.role is not Role.WRITE:
            # Authenticated but not allowed: 403, not 401 (a retry with the same token cannot succeed).
            return refusal(Code.ROLE_INSUFFICIENT, "this admin token has the read role only; this needs write", "admin")
        return found

    def _target(self, request: web.Request) -> tuple[str, str] | web.Response:
        upstream, job_id = request.match_info["upstream"], request.match_info["job_id"]
        if upstream not in self.upstreams or not _JOB_ID.match(job_id):
            return refusal(Code.ROUTE_NOT_ALLOWED, "unknown upstream or malformed job id", "admin")
        return upstream, job_id

    async def lookup(self, request: web.Request) -> web.Response:
        who = self._operator(request, Role.READ)
        target = self._target(request)
        if isinstance(who, web.Response):
            return who
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

    async def release(self, request: web.Request) -> web.Response:
        """Record the operator's intent durably, release the held TPP, record the outcome."""
        who = self._operator(request, Role.WRITE)
        target = self._target(request)
        if isinstance(who, web.Response):
            return who
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

    async def _method_not_allowed(self, request: web.Request) -> web.Response:
        response = refusal(Code.METHOD_NOT_ALLOWED, "use POST to release", "admin")
        response.headers["Allow"] = "POST"
        return response
