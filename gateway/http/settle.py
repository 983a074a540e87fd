"""The settle stage: after the upstream answered, complete, refund or hold the reservation, and record it."""

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.core.leases import MAX_STORED_BODY, Plan, StoredResponse
from gateway.core.shared_lease import REASON, SharedLease
from gateway.core.submission import Priced
from gateway.http import forward
from gateway.http.call import Call, JobCall
from gateway.http.cluster_lease import detach, siblings
from gateway.http.relay import answer
from gateway.http.responder import Responder

log = logging.getLogger(__name__)
STORED_HEADERS = ("Content-Type",)
_MOVED = StoredResponse(200, (), b"")  # what a job moved to a shared lease is completed with (never replayed)


def _stored(result: forward.Buffered, decision_id: str) -> StoredResponse:
    headers = tuple((h, result.headers[h]) for h in STORED_HEADERS if h in result.headers)
    headers += (("X-Exportgate-Decision-Id", decision_id),)
    body = result.body if len(result.body) <= MAX_STORED_BODY else b""
    return StoredResponse(result.status, headers, body)


class Settler:
    """Brings the quota store in line with what the upstream did, and records each follow-up."""

    def __init__(self, store: QuotaStore, responder: Responder, clock: Callable[[], float]) -> None:
        self.store = store
        self.responder = responder
        self.clock = clock

    async def failed(self, call: Call, plan: Plan, exc: forward.UpstreamFailure) -> web.Response:
        """No answer from the upstream: refund what never left, hold what may have become a job."""
        if exc.sent:  # when in doubt, hold: the job may exist
            await self.responder.followup("unsettled", call, reason=exc.code.value)
        else:
            await self.refund(call, plan, exc.code.value)
        return self.responder.reply(call, exc.code, exc.detail)

    async def answered(self, job: JobCall, priced: Priced, result: forward.Buffered) -> web.Response:
        """Settle on the upstream's answer: refund a definitive rejection, else complete the lease."""
        a, adapter, planned, replaces = job.admitted, job.adapter, priced.plan, priced.replaces_job
        call = a.call
        if adapter.definitive_rejection(result.status, result.body):
            await self.refund(call, planned, f"upstream rejected with {result.status}")
            return answer(result, a.decision_id)
        ok = 200 <= result.status < 300
        job_id = adapter.job_id_from_response(a.match, result.status, result.body) if ok else None
        if replaces is not None and ok:
            job_id = replaces
        old = planned.replaces if replaces is not None and ok else None
        try:
            if replaces is not None and old is not None:
                # The new lease holds the job's whole total: the lease the job is held under now (the
                # one checked against, unless a concurrent update replaced it first) is given back whole.
                current = await self.store.owner_of(a.upstream.name, replaces)
                if current is not None and current.tenant_id == planned.tenant_id:
                    old = current.lease if current.lease.lease_id != planned.decision_id else old
                await self.store.refund(old, self.clock())
            await self.store.complete(
                planned,
                upstream=a.upstream.name,
                job_id=job_id,
                response=_stored(result, a.decision_id),
                now=self.clock(),
            )
        except BackendUnavailable:
            self.responder.backend_error("quota")
            log.error("decision %s: the job was submitted but its settlement could not be stored", a.decision_id)
        extra = {} if old is None else {"replaced_lease": old.lease_id}
        await self.responder.followup("settle", call, job_id=job_id, status=result.status, settled=ok, **extra)
        if priced.joins is not None and ok:
            await self._join(call, planned, priced.joins)
        return answer(result, a.decision_id)

    async def _join(self, call: Call, plan: Plan, joins: SharedLease) -> None:
        """The scheduler took a job that joined its tenant's cluster lease: own that lease's jobs by the new one,
        release the old one's held shares (its cumulative debits stay) and hold the new one at least as long.

        Each step is recorded as it is done; one that fails leaves both leases held (counted twice, never less).
        """
        upstream, old, now = call.upstream.name, joins.lease.lease_id, self.clock()
        ref = replace(plan.ref, idempotency_key=None)  # owns jobs; the submission's stored answer stays its own
        done: list[tuple[str, dict[str, Any]]] = []
        try:
            moving = [job_id for job_id in joins.jobs if await self._owned_by(upstream, job_id, plan.tenant_id, old)]
            if not moving or await self.store.held_amounts(upstream, moving[0]) is None:
                return  # the old lease ended, or a concurrent submission moved its jobs first
            anchor = moving[0]  # the old lease is released through the one job still owned under it
            end = await self.store.extend_job(upstream, anchor, now, now)  # its end, held as it is
            for job_id in moving[1:]:
                await self.store.complete(ref, upstream=upstream, job_id=job_id, response=_MOVED, now=now)
                done.append(("settle", {"job_id": job_id, "settled": True, "reason": REASON}))
            released = await self.store.release_job(upstream, anchor, now)
            done.insert(0, ("release", {"job_id": anchor, "released": released, "whole_job": True, "reason": REASON,
                                        "lease": old}))  # fmt: skip
            await self.store.complete(ref, upstream=upstream, job_id=anchor, response=_MOVED, now=now)
            done.append(("settle", {"job_id": anchor, "settled": True, "reason": REASON}))
            if end is not None and end > plan.lease_end:
                after = await self.store.extend_job(upstream, anchor, end, now)
                if after is not None:
                    done.append(("extend", {"job_id": anchor, "end": after, "reason": REASON}))
        except BackendUnavailable:
            self.responder.backend_error("quota")
            log.error("decision %s: the jobs of lease %s could not all be moved to it", call.decision_id, old)
        finally:
            for kind, fields in done:
                await self.responder.followup(kind, call, **fields)

    async def _owned_by(self, upstream: str, job_id: str, tenant_id: str, lease_id: str) -> bool:
        owner = await self.store.owner_of(upstream, job_id)
        return owner is not None and owner.tenant_id == tenant_id and owner.lease.lease_id == lease_id

    async def replayed(self, call: Call, stored: StoredResponse) -> web.Response:
        """A retry of a completed submission gets the first answer again; nothing is forwarded."""
        headers = dict(stored.headers)
        await self.responder.followup("replay", call, first_decision_id=headers.get("X-Exportgate-Decision-Id"))
        response = web.Response(status=stored.status, body=stored.body, headers=headers)
        response.headers["X-Exportgate-Replayed"] = "true"
        return response

    async def refund(self, call: Call, plan: Plan, why: str) -> None:
        try:
            await self.store.refund(plan, self.clock())
            refunded = True
        except BackendUnavailable:
            self.responder.backend_error("quota")
            refunded = False
        await self.responder.followup("refund", call, reason=why, refunded=refunded)

    async def released(self, job: JobCall, job_id: str) -> None:
        """A cancel went through: give the job's capacity back, unless only a part of it was cancelled."""
        a = job.admitted
        whole = a.whole_job(job_id)
        released = False
        held_for: tuple[str, ...] = ()
        try:
            # A shared cluster lease is held while another job of the tenant is owned under it: they are taken
            # as live (the safe side); reconciliation releases the lease once it sees the last of them over.
            if whole and job.adapter.shares_cluster_lease():
                held_for = await siblings(self.store, a.upstream.name, a.tenant.id, job_id)
                if held_for:  # this one is over: the lease is held for the others only
                    await detach(self.store, a.upstream.name, job_id, self.clock())
            # Cancelling one array task or het component leaves the rest running: hold it all.
            if whole and not held_for:
                released = await self.store.release_job(a.upstream.name, job_id, self.clock())
        except BackendUnavailable:
            self.responder.backend_error("quota")
            log.error("cancel of %r went through but its lease could not be released yet", job_id[:64])
        extra = {"held_for": list(held_for), "reason": REASON} if held_for else {}
        await self.responder.followup("release", a.call, job_id=job_id, released=released, whole_job=whole, **extra)
