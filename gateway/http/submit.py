"""Submissions and updates: read and price the body, decide, reserve, record, forward, settle."""

from aiohttp import web

from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import QuotaStore
from gateway.core.codes import Code
from gateway.core.decide import refuse
from gateway.core.leases import LeaseRef
from gateway.http import forward
from gateway.http.call import JobCall, Refused
from gateway.http.job_body import BodyReader, JobBody
from gateway.http.owned import OwnedJobs
from gateway.http.packages import Packages
from gateway.http.quota_headers import set_quota_headers
from gateway.http.reads import Reads
from gateway.http.relay import Relay, answer
from gateway.http.reserve import Replayed, Reservations
from gateway.http.responder import Responder
from gateway.http.settle import Settler


class Submissions:
    """The reservation path: every stage once, in order, each handing the next what it made."""

    def __init__(
        self,
        policy: PolicyFiles,
        store: QuotaStore,
        responder: Responder,
        *,
        reader: BodyReader,
        relay: Relay,
        reads: Reads,
        owned: OwnedJobs,
        settler: Settler,
        packages: Packages,
    ) -> None:
        self.policy = policy
        self.store = store
        self.responder = responder
        self.reader = reader
        self.relay = relay
        self.reads = reads
        self.owned = owned
        self.settler = settler
        self.packages = packages
        self.reservations = Reservations(policy, store, responder, settler)

    async def submit(self, job: JobCall) -> web.StreamResponse:
        body = await self.reader.submission(job)
        if isinstance(body, Refused):
            return await self.responder.refused(job.admitted.call, body)
        if body.spec is not None:
            refused = await self.packages.check_submission(job, body.spec)  # code it may run
            if refused is not None:
                return refused
        return await self._reserve_and_forward(job, body)

    async def update(self, job: JobCall) -> web.StreamResponse:
        """An update that changes resources is priced as the new total; others are owned, recorded fetches."""
        owner = await self.owned.owner(job)
        if isinstance(owner, web.Response):
            return owner
        body = await self.reader.update(job)
        if isinstance(body, Refused):
            return await self.responder.refused(job.admitted.call, body)
        a = job.admitted
        if body.spec is None:
            result = await self.reads.fetch_recorded(a, a.admission, body.raw)
            return result if isinstance(result, web.StreamResponse) else answer(result, a.decision_id)
        job_id = job.adapter.job_id_of(a.match)
        if not a.whole_job(job_id):
            # Its new total would replace the whole job's lease while pricing only the part.
            shown = (job_id or "")[:64]
            detail = f"the update changes the resources of part of job {shown}; update the whole job"
            refused = refuse(Code.JOB_UPDATE_NOT_ALLOWED, detail, a.admission.tier)
            return await self.responder.refuse(a.call, refused)
        return await self._reserve_and_forward(job, body, replaces=job_id, replaced=owner.lease)

    async def _reserve_and_forward(
        self, job: JobCall, body: JobBody, *, replaces: str | None = None, replaced: LeaseRef | None = None
    ) -> web.StreamResponse:
        a, call = job.admitted, job.admitted.call
        reserved = await self.reservations.reserve(job, body, replaces=replaces, replaced=replaced)
        if isinstance(reserved, web.StreamResponse):
            return reserved
        if isinstance(reserved, Replayed):
            return await self.settler.replayed(call, reserved.stored)
        priced, decision = reserved.priced, reserved.decision
        try:
            answered = await self.relay.fetch(a, decision, body.raw)
        except forward.UpstreamFailure as exc:
            return await self.settler.failed(call, priced.plan, exc)
        response = await self.settler.answered(job, priced, answered)
        if 200 <= response.status < 300:  # the lease holds: the job's cost and the room its caps have left
            set_quota_headers(response.headers, decision)
        return response
