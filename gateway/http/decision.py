"""The decision core for requests the gateway does not forward itself: the proxy's stages, without the relay.

Front proxies and control planes (nginx `auth_request`, Envoy ext_authz over HTTP or gRPC, a
Kubernetes admission webhook) ask `DecisionService.check` about a request they forward
themselves. It runs the stages the proxy's pipeline runs (authenticate, resolve the tenant, match
the route of the upstream's table, admit on tier and KYC), checks ownership of the job a read
names, records the decision through the same responder (same ledger record, with its `entry`, and
the same metrics) and answers:

* allow (200): the headers the front proxy passes upstream (the tenant, its tier, the decision id
  and the credentials the gateway holds for that upstream, as the proxy sets them);
* refusal: the status, headers and body the proxy would have answered (problem+json, or the
  scheduler's dialect), and the stable code.

Routes whose body or answer the gateway must see are not decided here (`needs_proxy`): a submission
or update is priced from its body and settled or refunded from the scheduler's answer, a cancel
releases its lease when the scheduler accepts it (and a Kubernetes delete is rewritten so it ends
the pods), a listing is cut down to the tenant's own jobs and a Ray code package is read by its
digest. They are refused `route_needs_proxy`, so a front proxy sends them to the full proxy (see
`exportgate nginx-config`); an entry that prices submissions itself passes `job_changes`.
"""

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.adapters.auth import Authenticator
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.upstream import Upstream
from gateway.core.codes import Code
from gateway.core.decide import refuse
from gateway.core.routes import Route, RouteKind
from gateway.http.admission import admit, authenticate, match_request, resolve_tenant
from gateway.http.call import Admitted, Call, JobCall, Refused
from gateway.http.owned import find_owner
from gateway.http.relay import identity_headers
from gateway.http.responder import Responder
from gateway.schedulers import SchedulerAdapter
from gateway.schedulers.ray import PACKAGE_ROUTES, RayAdapter

log = logging.getLogger(__name__)

ENTRIES = ("proxy", "nginx", "envoy_http", "envoy_grpc", "k8s_admission")
# Route kinds the full proxy alone serves: it reads their body (submit, update) or their answer (the
# lease a cancel releases, the listing it filters).
PROXY_KINDS = frozenset({RouteKind.SUBMIT, RouteKind.UPDATE, RouteKind.CANCEL, RouteKind.LIST})


@dataclass(frozen=True, slots=True)
class Asked:
    """A request a front proxy or control plane is about to forward, as it describes it."""

    entry: str  # "proxy" | "nginx" | "envoy_http" | "envoy_grpc" | "k8s_admission"
    method: str
    path: str  # raw path as the client sent it to the front proxy, query included
    headers: Mapping[str, str]  # case-insensitive lookups (multidict.CIMultiDict or CIMultiDictProxy)
    client_ip: str
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The decision as the asking entry passes it on."""

    status: int  # 200 allows; otherwise the refusal status
    # allow: headers the front proxy passes upstream; refusal: headers for the client (Content-Type, Allow, ...)
    headers: dict[str, str]
    body: bytes  # refusal: the problem+json (or scheduler dialect) body; allow: b""
    decision_id: str
    code: str | None  # stable refusal code (a gateway.core.codes.Code) or None on allow

    @property
    def allowed(self) -> bool:
        return self.status == 200


# Decides a job-changing route (submit, update) for an entry that sees its body; the default refuses it.
JobChanges = Callable[[Admitted, Asked], Awaitable[Answer]]


def needs_proxy(adapter: SchedulerAdapter | None, route: Route) -> bool:
    """Whether only the full proxy can serve `route`: the gateway must read its body or its answer."""
    return route.kind in PROXY_KINDS or (isinstance(adapter, RayAdapter) and route in PACKAGE_ROUTES)


def answer_of(response: web.Response, decision_id: str, code: Code | None) -> Answer:
    """A refusal the responder rendered (and recorded), as an Answer."""
    body = response.body
    return Answer(
        status=response.status,
        headers=dict(response.headers),
        body=body if isinstance(body, bytes) else b"",
        decision_id=decision_id,
        code=code,
    )


class DecisionService:
    """authenticate -> resolve tenant -> match route -> admit -> ownership -> record; one answer per ask."""

    def __init__(
        self,
        auth: Authenticator,
        policy: PolicyFiles,
        upstreams: list[Upstream],
        store: QuotaStore,
        responder: Responder,
        *,
        clock: Callable[[], float] = time.time,
        job_changes: JobChanges | None = None,
    ) -> None:
        self.auth = auth
        self.policy = policy
        self.upstreams = upstreams
        self.store = store
        self.responder = responder
        self.clock = clock
        self.job_changes = job_changes

    async def check(self, asked: Asked) -> Answer:
        """Decide, record and count one asked request; never raises (a fault answers backend_unavailable)."""
        path = asked.path.split("?", 1)[0]
        call = Call.begin(
            None,
            asked.method,
            asked.headers,
            clock=self.clock,
            client_ip=asked.client_ip,
            upstreams=self.upstreams,
            path=path,
            entry=asked.entry,
        )
        try:
            answer = await self._run(call, asked)
        except Exception:
            # The last line of defence, as in the proxy: problem+json and a 5xx, never a traceback to the caller.
            log.exception("unexpected error on %s from %s (decision %s)", call.shown, asked.entry, call.decision_id)
            detail = "the gateway could not decide this request"
            response = self.responder.reply(call, Code.BACKEND_UNAVAILABLE, detail)
            answer = answer_of(response, call.decision_id, Code.BACKEND_UNAVAILABLE)
        self.responder.finished(call, answer.status)
        return answer

    async def _run(self, call: Call, asked: Asked) -> Answer:
        identity = await authenticate(self.auth, call)
        if isinstance(identity, Refused):
            return await self._refused(call, identity)
        call.identity = identity
        tenant = resolve_tenant(self.policy, call, identity)
        if isinstance(tenant, Refused):
            return await self._refused(call, tenant)
        call.tenant = tenant
        match = match_request(call)
        if isinstance(match, Refused):
            return await self._refused(call, match)
        call.match = match
        admitted = admit(self.policy, call, tenant, match)
        if isinstance(admitted, Refused):
            return await self._refused(call, admitted)
        return await self._decide(admitted, asked)

    async def _decide(self, a: Admitted, asked: Asked) -> Answer:
        route, adapter = a.match.route, a.upstream.adapter
        if needs_proxy(adapter, route):
            if self.job_changes is not None and route.kind.changes_jobs:
                return await self.job_changes(a, asked)
            detail = (
                f"{route.kind.value} routes are served only through the full proxy "
                "(the gateway reads their body or the scheduler's answer)"
            )
            return await self._refused(a.call, Refused(refuse(Code.ROUTE_NEEDS_PROXY, detail, a.admission.tier)))
        if route.kind is not RouteKind.PLAIN_READ:
            if adapter is None:  # the config loader allows only plain reads without one
                return await self._refused(a.call, Refused(refuse(Code.ROUTE_NOT_ALLOWED, "no scheduler adapter")))
            owner = await find_owner(self.store, JobCall(a, adapter))
            if isinstance(owner, BackendUnavailable):
                quota_down = self.responder.backend_down(a.call, a.admission, "quota", str(owner))
                return answer_of(quota_down, a.decision_id, Code.BACKEND_UNAVAILABLE)
            if isinstance(owner, Refused):
                return await self._refused(a.call, owner)
        down = await self.responder.commit(a.call, a.admission, wait=False)  # an access record, as the proxy's reads
        if down is not None:
            return answer_of(down, a.decision_id, Code.BACKEND_UNAVAILABLE)
        return Answer(200, identity_headers(a, a.admission), b"", a.decision_id, None)

    async def _refused(self, call: Call, refused: Refused) -> Answer:
        response = await self.responder.refused(call, refused)
        return answer_of(response, call.decision_id, refused.decision.code or Code.BACKEND_UNAVAILABLE)
