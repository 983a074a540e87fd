"""The reservation stage of a priced job, whoever forwards it: price, reserve, judge, record.

The full proxy runs it before it forwards a submission or update; the decision service runs it
for a front proxy that forwards the body itself (Envoy with `with_request_body`). Either way a
job that passes has its counters debited, its lease held and its decision durably recorded
before anything reaches the scheduler; a refusal is recorded and answered, and what the store
took for it is refunded.
"""

from dataclasses import dataclass

from aiohttp import web

from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.core.decide import Decision
from gateway.core.leases import LeaseRef, ReserveStatus, StoredResponse
from gateway.core.submission import Job, Priced, judge, price_and_plan
from gateway.http.call import JobCall
from gateway.http.cluster_lease import live_lease
from gateway.http.job_body import JobBody, job_record
from gateway.http.responder import Responder
from gateway.http.settle import Settler


@dataclass(frozen=True, slots=True)
class Reserved:
    """A job admitted, reserved and recorded: what it costs and the decision that forwards it."""

    priced: Priced
    decision: Decision


@dataclass(frozen=True, slots=True)
class Replayed:
    """A retry of a completed idempotency key: the first answer, nothing debited."""

    stored: StoredResponse


class Reservations:
    """price -> reserve -> judge -> record, once per job; a refusal comes back as the response to send."""

    def __init__(self, policy: PolicyFiles, store: QuotaStore, responder: Responder, settler: Settler) -> None:
        self.policy = policy
        self.store = store
        self.responder = responder
        self.settler = settler

    async def reserve(
        self, job: JobCall, body: JobBody, *, replaces: str | None = None, replaced: LeaseRef | None = None
    ) -> Reserved | Replayed | web.Response:
        a, call = job.admitted, job.admitted.call
        assert body.spec is not None  # only bodies that price reach here
        call.job = job_record(body.spec)
        try:  # a tenant's live jobs on a cluster priced whole share one lease: a new one joins it
            joins = await live_lease(self.store, a.upstream.name, a.tenant.id) if (
                replaces is None and job.adapter.shares_cluster_lease()) else None  # fmt: skip
        except BackendUnavailable as exc:
            return self.responder.backend_down(call, a.admission, "quota", str(exc))
        facts = Job(body.spec, a.decision_id, a.upstream.name, job.adapter.default_gpu_model,
                    body.idempotency_key, replaces, replaced, joins=joins)  # fmt: skip
        priced = price_and_plan(a.admission, a.tenant, facts, self.policy.pack, call.when)
        if isinstance(priced, Decision):
            return await self.responder.refuse(call, priced)
        try:
            result = await self.store.reserve(priced.plan, call.now)
        except BackendUnavailable as exc:
            return self.responder.backend_down(call, a.admission, "quota", str(exc))
        if result.status is ReserveStatus.REPLAY and result.response is not None:
            return Replayed(result.response)
        decision = judge(a.admission, priced, result, call.when)
        if not decision.forwards:
            refusal = await self.responder.refuse(call, decision)
            if result.status is ReserveStatus.ADMITTED:  # the store took it; the verdict (a joined lease's) did not
                await self.settler.refund(call, priced.plan, "refused on its cumulative counts")
            return refusal
        self.responder.observe_countries(decision)
        refused = await self.responder.commit(call, decision)
        if refused is not None:
            await self.settler.refund(call, priced.plan, "ledger unavailable")
            return refused
        return Reserved(priced, decision)
