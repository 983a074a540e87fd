"""The proxy handler: authenticate, resolve, route, decide, record, then forward or refuse."""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.adapters.auth import Authenticator, AuthError
from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import QuotaStore
from gateway.adapters.upstream import Upstream, pick_upstream
from gateway.config.settings import Settings
from gateway.core.codes import Code
from gateway.core.decide import Decision, Facts, decide, refuse
from gateway.core.paths import canonical_or_none
from gateway.core.records import decision_body
from gateway.core.routes import RouteKind, RouteMatch, allowed_methods, match_route, unbound_param
from gateway.core.tenants import Identity, Tenant
from gateway.http import forward
from gateway.http.body import BodyTooLarge, BodyTooSlow, ClientClosed, Pace, client_gone, read_limited
from gateway.http.headers import client_ip, forwarded_headers, upstream_request_headers
from gateway.http.jobs import JobFlows
from gateway.http.problems import refusal

log = logging.getLogger(__name__)
# The `status_class` of requests whose client went away before its answer (nginx logs these as 499).
CLIENT_CLOSED = "client_closed"


@dataclass
class Exchange:
    """What the handler learned about one request so far (for the ledger and metrics)."""

    decision_id: str
    started: float
    now: float
    client_ip: str
    upstream: Upstream
    path: str
    identity: Identity | None = None
    tenant: Tenant | None = None
    match: RouteMatch | None = None
    job: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> RouteKind | None:
        return self.match.route.kind if self.match else None


class Gateway:
    """Holds the gateway's parts; `handle` is the aiohttp handler for every proxied request."""

    def __init__(
        self,
        settings: Settings,
        policy: PolicyFiles,
        auth: Authenticator,
        ledger: LedgerWriter,
        metrics: Metrics,
        upstreams: list[Upstream],
        store: QuotaStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.auth = auth
        self.ledger = ledger
        self.metrics = metrics
        self.upstreams = upstreams
        self.clock = clock
        self.jobs = JobFlows(self, store)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        peer = request.remote
        ex = Exchange(
            decision_id=uuid.uuid4().hex,
            started=time.perf_counter(),
            now=self.clock(),
            client_ip=client_ip(peer, request.headers.getall("X-Forwarded-For", []), self.settings.trusted_proxies),
            upstream=pick_upstream(self.upstreams, raw_path),
            path=raw_path,
        )
        try:
            response = await self._handle(request, ex)
        except asyncio.CancelledError:
            # aiohttp cancels the handler of a vanished client only with handler_cancellation on.
            if client_gone(request):
                self._client_closed(request, ex, "cancelled")
            raise
        except Exception as exc:
            if isinstance(exc, ClientClosed) or (isinstance(exc, ConnectionError) and client_gone(request)):
                # The client's fault (hung up mid-body, or before its answer could be written): no 5xx.
                self._client_closed(request, ex, str(exc) or type(exc).__name__)
                return web.Response(status=499, reason="Client Closed Request")  # never delivered
            # The last line of defence: a bug answers problem+json, never a traceback or a 500.
            # It counts as a 5xx even if the client has left too: the fault is the gateway's.
            log.exception("unexpected error on %s %s (decision %s)", request.method, ex.path[:256], ex.decision_id)
            response = self.reply(ex, Code.BACKEND_UNAVAILABLE, "the gateway could not complete this request")
        else:
            if client_gone(request):  # answered, but nobody is left to read it (nginx's 499)
                self._client_closed(request, ex, "before the answer was written")
                return response
        kind = ex.kind.value if ex.kind else "none"
        self.metrics.requests.labels(kind, f"{response.status // 100}xx").inc()
        self.metrics.request_seconds.labels(kind).observe(time.perf_counter() - ex.started)
        return response

    def _client_closed(self, request: web.Request, ex: Exchange, why: str) -> None:
        """Count and log a request its client abandoned: a status class of its own, never ERROR."""
        kind = ex.kind.value if ex.kind else "none"
        self.metrics.requests.labels(kind, CLIENT_CLOSED).inc()
        self.metrics.request_seconds.labels(kind).observe(time.perf_counter() - ex.started)
        log.info("client closed %s %s (decision %s): %s", request.method, ex.path[:256], ex.decision_id, why[:200])

    async def _handle(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        try:
            ex.identity = await self.auth.authenticate(request.headers.get("Authorization"))
        except AuthError as exc:
            return await self.refuse_with(request, ex, refuse(exc.code, exc.detail))
        pack, registry = self.policy.pack, self.policy.registry
        ex.tenant = registry.lookup(ex.identity)
        now = datetime.fromtimestamp(ex.now, UTC)
        if ex.tenant is None:
            return await self.refuse_with(request, ex, decide(Facts(now, None, RouteKind.PLAIN_READ), pack))
        if canonical_or_none(ex.path) is None:
            return await self.refuse_with(
                request,
                ex,
                refuse(
                    Code.ROUTE_NOT_ALLOWED, "the path is not in normal form (encoded, dot or double-slash segments)"
                ),
            )
        ex.match = match_route(ex.upstream.routes, request.method, ex.path)
        if ex.match is None:
            return await self._no_route(request, ex)
        unbound = unbound_param(ex.match.params, ex.upstream.settings.bind_params, ex.tenant.upstream_identity)
        if unbound is not None:
            detail = f"{unbound} {ex.match.params[unbound][:64]!r} does not belong to this tenant"
            return await self.refuse_with(request, ex, refuse(Code.ROUTE_NOT_ALLOWED, detail))
        decision = decide(Facts(now, ex.tenant, ex.match.route.kind), pack)
        if not decision.forwards:
            return await self.refuse_with(request, ex, decision)
        missing = ex.upstream.missing_identity(ex.tenant)
        if missing:  # never fall back to the gateway's own scheduler identity
            detail = f"the tenant has no {', '.join(missing)} for upstream {ex.upstream.name} in the registry"
            return await self.refuse_with(request, ex, refuse(Code.TENANT_UNKNOWN, detail, decision.tier))
        kind = ex.match.route.kind
        if kind is RouteKind.PLAIN_READ:
            return await self.access(request, ex, decision)
        if ex.upstream.adapter is None:  # the config loader allows only plain reads without one
            return await self.refuse_with(request, ex, refuse(Code.ROUTE_NOT_ALLOWED, "no scheduler adapter"))
        flow = {
            RouteKind.SUBMIT: self.jobs.submit,
            RouteKind.UPDATE: self.jobs.update,
            RouteKind.CANCEL: self.jobs.cancel,
            RouteKind.READ: self.jobs.read,
            RouteKind.LIST: self.jobs.listing,
        }[kind]
        return await flow(request, ex, decision)

    async def _no_route(self, request: web.Request, ex: Exchange) -> web.StreamResponse:
        """404 for a path no route knows; 405 with `Allow` for a known path asked with another method."""
        allowed = allowed_methods(ex.upstream.routes, ex.path)
        if not allowed:
            detail = f"{request.method} {ex.path[:256]} is not an allowed route"
            return await self.refuse_with(request, ex, refuse(Code.ROUTE_NOT_ALLOWED, detail))
        allow = ", ".join(sorted(allowed))
        detail = f"{request.method[:16]} is not allowed on {ex.path[:256]}; allowed: {allow}"
        response = await self.refuse_with(request, ex, refuse(Code.METHOD_NOT_ALLOWED, detail))
        response.headers["Allow"] = allow
        return response

    # -- the three paths ------------------------------------------------------------------

    async def refuse_with(self, request: web.Request, ex: Exchange, decision: Decision) -> web.StreamResponse:
        """Record the refusal durably (best effort if the ledger is down), then answer."""
        code = decision.code or Code.BACKEND_UNAVAILABLE
        self.count(decision)
        try:
            await self.ledger.append(self.record(request, ex, decision), wait=True)
        except LedgerUnavailable:
            self.metrics.backend_errors.labels("ledger").inc()
        reason = next((r for r in decision.reasons if r.enforced), None)
        return self.reply(
            ex,
            code,
            reason.detail if reason else code.value,
            citation=reason.citation if reason else "",
            retry_after=ex.extra.get("retry_after"),
        )

    def reply(
        self, ex: Exchange, code: Code, detail: str, *, citation: str = "", retry_after: int | None = None
    ) -> web.Response:
        """A refusal in the upstream scheduler's dialect when it has one, else problem+json."""
        adapter = ex.upstream.adapter
        return refusal(
            code,
            detail,
            ex.decision_id,
            citation=citation,
            retry_after=retry_after,
            dialect=adapter.refusal if adapter is not None else None,
        )

    async def access(self, request: web.Request, ex: Exchange, decision: Decision) -> web.StreamResponse:
        """Reads: append the access record to the next batch without waiting, then forward."""
        try:
            await self.ledger.append(self.record(request, ex, decision, kind="access"), wait=False)
        except LedgerUnavailable as exc:
            return await self.backend_down(request, ex, decision, "ledger", str(exc))
        self.count(decision)
        return await self.forward(request, ex, decision, None)

    # -- helpers --------------------------------------------------------------------------

    async def backend_down(
        self, request: web.Request, ex: Exchange, decision: Decision, backend: str, detail: str
    ) -> web.StreamResponse:
        self.metrics.backend_errors.labels(backend).inc()
        log.error("refusing %s %s: %s unavailable: %s", request.method, ex.path, backend, detail)
        down = refuse(
            Code.BACKEND_UNAVAILABLE, f"the {backend} cannot record this decision; nothing was forwarded", decision.tier
        )
        self.count(down)
        return self.reply(ex, Code.BACKEND_UNAVAILABLE, down.reasons[0].detail)

    async def read_body(self, request: web.Request) -> bytes | Code:
        """The whole body as sent, or the refusal code when it is too large or too slow (raises ClientClosed)."""
        limits = self.settings.limits
        try:
            return await read_limited(
                request, limits.max_body_bytes, Pace(limits.body_timeout_s, limits.body_min_rate_bytes_s)
            )
        except BodyTooLarge:
            return Code.BODY_TOO_LARGE
        except BodyTooSlow:
            self.metrics.connections_refused.labels("body_timeout").inc()
            return Code.REQUEST_TIMEOUT

    def upstream_headers(self, request: web.Request, ex: Exchange, decision: Decision) -> CIMultiDict[str]:
        headers = upstream_request_headers(request.headers)
        headers.update(
            forwarded_headers(
                request.remote,
                request.headers.getall("X-Forwarded-For", []),
                self.settings.trusted_proxies,
                request.scheme,
                request.host,
            )
        )
        assert ex.tenant is not None
        headers.update(ex.upstream.credential_headers(ex.tenant))
        headers["X-Exportgate-Tenant"] = ex.tenant.id
        headers["X-Exportgate-Tier"] = str(int(decision.tier)) if decision.tier is not None else ""
        headers["X-Exportgate-Decision-Id"] = ex.decision_id
        return headers

    async def forward(
        self, request: web.Request, ex: Exchange, decision: Decision, body: bytes | None
    ) -> web.StreamResponse:
        session = ex.upstream.session
        assert session is not None and ex.match is not None
        url = ex.upstream.url_for(request.raw_path)  # already checked to be in normal form
        headers = self.upstream_headers(request, ex, decision)
        observe = self.metrics.upstream_seconds.labels(ex.upstream.name).observe
        try:
            if ex.match.route.websocket and request.headers.get("Upgrade", "").lower() == "websocket":
                return await forward.websocket(request, session, url, headers)
            return await forward.stream(
                request, session, url, headers, body, observe, {"X-Exportgate-Decision-Id": ex.decision_id}
            )
        except forward.UpstreamFailure as exc:
            return self.reply(ex, exc.code, exc.detail)

    def record(self, request: web.Request, ex: Exchange, decision: Decision, kind: str = "decision") -> dict[str, Any]:
        quota = ex.extra.get("quota")
        return decision_body(
            decision_id=ex.decision_id,
            ts=ex.now,
            tenant=ex.tenant,
            identity=ex.identity,
            client_ip=ex.client_ip,
            route=ex.match.route.name if ex.match else None,
            route_kind=ex.kind.value if ex.kind else None,
            method=request.method,
            path=ex.path[:512],
            upstream=ex.upstream.name,
            decision=decision,
            pack=self.policy.pack,
            registry_version=self.policy.registry.version,
            job=ex.job,
            cost=ex.cost,
            quota_before={k: v["before"] for k, v in quota.items()} if quota else None,
            quota_after={k: v["after"] for k, v in quota.items()} if quota else None,
            licences=ex.extra.get("licences"),
            lease=ex.extra.get("lease"),
            kind=kind,
            exemptions=ex.extra.get("exemptions"),
        )

    def count(self, decision: Decision) -> None:
        tier = str(int(decision.tier)) if decision.tier is not None else "none"
        code = decision.code.value if decision.code else ""
        self.metrics.decisions.labels(decision.outcome.value, code, tier).inc()
