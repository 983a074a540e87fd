"""Submissions a front proxy forwards itself (Envoy ext_authz with `with_request_body`): priced and reserved here.

The decision service hands a submission route with its buffered body to `FrontSubmissions`. It
runs the proxy's own stages on those bytes: the adapter's parser, the idempotency key, then the
reservation stage (http/reserve.py: price, reserve, judge, record durably). An allowed job is
thus debited and recorded before Envoy forwards it, exactly as through the full proxy.

What the front proxy does not give back is the scheduler's answer, so the gateway never learns
the job's id. Until it does, the lease is owned by a placeholder, `p<ms>.<decision id>` under
`<upstream>#front`, recorded by a `settle` record (`settled: false`). Reconciliation settles it
(http/front_adopt.py): the sweep for jobs the gateway never admitted adopts an unowned live GPU
job of the tenant's scheduler identity into the oldest placeholder, moving ownership to the
job's id (a `settle` record naming the placeholder), after which the job is reconciled like any
other; a placeholder nobody adopted within the adoption window (the scheduler refused the job,
or Envoy never sent it) has its held capacity released, and its cumulative counts kept.

So a submission decided here never escapes the ledger or the quota: the reservation and the
record come first, and capacity comes back only through a recorded release. Only upstreams whose
adapter can list live jobs (Slurm, Ray) are priced here; other submissions, updates and
submissions naming Ray code packages are refused `route_needs_proxy`, as nginx's are.
"""

from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from gateway.adapters.ledger.writer import LedgerUnavailable
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.core.codes import Code
from gateway.core.decide import refuse
from gateway.core.jobs import JobSpecInvalid
from gateway.core.leases import StoredResponse
from gateway.core.records import followup_body
from gateway.core.routes import RouteKind
from gateway.http.call import Admitted, JobCall, Refused
from gateway.http.decision import Answer, Asked, answer_of
from gateway.http.job_body import JobBody, content_encoding, idempotency_key
from gateway.http.relay import identity_headers
from gateway.http.reserve import Replayed, Reservations, Reserved
from gateway.http.responder import Responder
from gateway.http.settle import Settler

SCOPE_SUFFIX = "#front"
PLACED = StoredResponse(202, (("Content-Type", "application/json"),), b'{"exportgate": "forwarded by a front proxy"}')


def placeholder_scope(upstream: str) -> str:
    """Where placeholders of `upstream`'s front-proxy submissions are owned."""
    return upstream + SCOPE_SUFFIX


def placeholder_id(now: float, decision_id: str) -> str:
    """A placeholder's job id: when it was placed (ms) and the decision; ids sort oldest first by length then text."""
    return f"p{int(now * 1000)}.{decision_id}"


def placed_at(job_id: str) -> float | None:
    """When a placeholder was placed, from its id; None for an id that is not one."""
    head, _, rest = job_id.partition(".")
    if not head.startswith("p") or not head[1:].isdigit() or not rest:
        return None
    return int(head[1:]) / 1000


class FrontSubmissions:
    """The decision service's `job_changes`: a submission with its body, priced, reserved and placed."""

    def __init__(
        self,
        policy: PolicyFiles,
        store: QuotaStore,
        responder: Responder,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.responder = responder
        self.clock = clock
        self.reservations = Reservations(policy, store, responder, Settler(store, responder, clock))

    async def __call__(self, a: Admitted, asked: Asked) -> Answer:
        adapter, route = a.upstream.adapter, a.match.route
        tier = a.admission.tier
        if route.kind is not RouteKind.SUBMIT or adapter is None or adapter.live_jobs_path() is None:
            detail = (
                f"{route.kind.value} routes of upstream {a.upstream.name} are served only through the full proxy "
                "(the gateway reads the scheduler's answer)"
            )
            return await self._refused(a, Refused(refuse(Code.ROUTE_NEEDS_PROXY, detail, tier)))
        if adapter.shares_cluster_lease():
            detail = (
                f"submissions to {a.upstream.name} join the tenant's shared cluster lease, which only the full proxy "
                "settles"
            )
            return await self._refused(a, Refused(refuse(Code.ROUTE_NEEDS_PROXY, detail, tier)))
        if asked.body is None:
            detail = "submissions are priced from their body: send it (Envoy: with_request_body), or use the full proxy"
            return await self._refused(a, Refused(refuse(Code.ROUTE_NEEDS_PROXY, detail, tier)))
        headers = CIMultiDict(asked.headers)
        try:
            spec = adapter.parse_submission(a.match, headers.get("Content-Type"), content_encoding(headers), asked.body)
        except JobSpecInvalid as exc:
            return await self._refused(a, Refused(refuse(Code.JOB_SPEC_INVALID, str(exc), tier)))
        if spec.packages:
            detail = "submissions naming code packages are served only through the full proxy (it checks their owner)"
            return await self._refused(a, Refused(refuse(Code.ROUTE_NEEDS_PROXY, detail, tier)))
        idem = idempotency_key(headers, spec, tier)
        if isinstance(idem, Refused):
            return await self._refused(a, idem)
        reserved = await self.reservations.reserve(JobCall(a, adapter), JobBody(asked.body, spec, idem))
        if isinstance(reserved, web.Response):
            return answer_of(reserved, a.decision_id, _code(a))
        if isinstance(reserved, Replayed):
            first = dict(reserved.stored.headers).get("X-Exportgate-Decision-Id", "an earlier decision")
            detail = (
                f"this Idempotency-Key was decided already ({first}); a front proxy cannot replay the scheduler's "
                "first answer: look the job up, or retry through the full proxy"
            )
            return await self._refused(a, Refused(refuse(Code.REQUEST_IN_PROGRESS, detail, tier)))
        await self._place(a, asked, reserved)
        return Answer(200, identity_headers(a, reserved.decision), b"", a.decision_id, None)

    async def _place(self, a: Admitted, asked: Asked, reserved: Reserved) -> None:
        """Own the lease by a placeholder until reconciliation adopts the job; recorded before the allow."""
        plan = reserved.priced.plan
        now = self.clock()
        scope, job_id = placeholder_scope(a.upstream.name), placeholder_id(now, a.decision_id)
        try:
            await self.store.complete(plan, upstream=scope, job_id=job_id, response=PLACED, now=now)
        except BackendUnavailable:
            # The lease holds to its end (never less than the job's walltime) and the job is flagged as
            # unadmitted when it runs: counted either way, never lost.
            self.responder.backend_error("quota")
        body = followup_body("settle", a.decision_id, now, tenant=a.tenant.id, upstream=scope, job_id=job_id,
                             settled=False, entry=asked.entry)  # fmt: skip
        try:
            await self.responder.ledger.append(body, wait=True)
        except LedgerUnavailable:
            self.responder.backend_error("ledger")

    async def _refused(self, a: Admitted, refused: Refused) -> Answer:
        response = await self.responder.refused(a.call, refused)
        return answer_of(response, a.decision_id, refused.decision.code or Code.BACKEND_UNAVAILABLE)


def _code(a: Admitted) -> Code:
    """The code the responder answered with (it notes it on the call)."""
    try:
        return Code(a.call.refusal or Code.BACKEND_UNAVAILABLE.value)
    except ValueError:
        return Code.BACKEND_UNAVAILABLE
