"""Routes that name a job: the ownership stage, then the owned read or the cancel and its release."""

from aiohttp import web

from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.slurm_jobs import parent_job
from gateway.core.codes import Code
from gateway.core.decide import refuse
from gateway.core.jobs import JobSpecInvalid
from gateway.core.leases import Owner
from gateway.http.call import JobCall, Refused
from gateway.http.reads import Reads
from gateway.http.relay import answer
from gateway.http.responder import Responder
from gateway.http.settle import Settler


async def find_owner(store: QuotaStore, job: JobCall) -> Owner | Refused | BackendUnavailable:
    """The owner of the job the route names when it is this tenant; else the refusal, or the store's failure."""
    a = job.admitted
    job_id = job.adapter.job_id_of(a.match)
    if job_id is None:
        return Refused(refuse(Code.JOB_NOT_OWNED, "no job id", a.admission.tier))
    try:
        owner = await store.owner_of(a.upstream.name, job_id)
        if owner is None:  # an array task or het component by its own id: its parent's owner
            parent = await parent_job(a.upstream, a.tenant, job_id)
            owner = await store.owner_of(a.upstream.name, parent) if parent is not None else None
    except BackendUnavailable as exc:
        return exc
    if owner is None or owner.tenant_id != a.tenant.id:
        detail = f"job {job_id[:64]} was not submitted by this tenant through the gateway"
        return Refused(refuse(Code.JOB_NOT_OWNED, detail, a.admission.tier))
    return owner


class OwnedJobs:
    """A job the route names reaches the scheduler only for its owner."""

    def __init__(self, store: QuotaStore, responder: Responder, reads: Reads, settler: Settler) -> None:
        self.store = store
        self.responder = responder
        self.reads = reads
        self.settler = settler

    async def owner(self, job: JobCall) -> Owner | web.Response:
        """The owner (this tenant) of the job the route names; otherwise the refusal to send."""
        a = job.admitted
        found = await find_owner(self.store, job)
        if isinstance(found, BackendUnavailable):
            return self.responder.backend_down(a.call, a.admission, "quota", str(found))
        if isinstance(found, Refused):
            return await self.responder.refuse(a.call, found.decision)
        return found

    async def read(self, job: JobCall) -> web.StreamResponse:
        owner = await self.owner(job)
        return owner if isinstance(owner, web.Response) else await self.reads.access(job.admitted)

    async def cancel(self, job: JobCall) -> web.StreamResponse:
        """Forward an owned cancel; when the scheduler accepts it, give the job's capacity back."""
        owner = await self.owner(job)
        if isinstance(owner, web.Response):
            return owner
        a = job.admitted
        job_id = job.adapter.job_id_of(a.match)
        try:
            target = job.adapter.cancel_target(a.request.raw_path)
        except JobSpecInvalid as exc:  # it would leave the job running while its capacity came back
            return await self.responder.refuse(a.call, refuse(Code.JOB_SPEC_INVALID, str(exc), a.admission.tier))
        result = await self.reads.fetch_recorded(a, a.admission, None, target=target)
        if isinstance(result, web.StreamResponse):
            return result
        if 200 <= result.status < 300 and job_id is not None:
            await self.settler.released(job, job_id)
        return answer(result, a.decision_id)
