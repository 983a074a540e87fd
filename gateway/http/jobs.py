"""Job routes: price and reserve submissions, check ownership, release on cancel, filter listings."""

import logging
import re
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.adapters.ledger.writer import LedgerUnavailable
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.core.codes import Code
from gateway.core.decide import Decision, refuse, verdict
from gateway.core.jobs import JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.leases import MAX_STORED_BODY, LeaseRef, Owner, Plan, ReserveStatus, StoredResponse
from gateway.core.pricing import price
from gateway.core.quota import country_of_key, interpret, plan_reservation
from gateway.core.records import followup_body
from gateway.core.routes import RouteMatch
from gateway.http import forward
from gateway.http.body import close_after
from gateway.schedulers import SchedulerAdapter

if TYPE_CHECKING:
    from gateway.http.proxy import Exchange, Gateway

log = logging.getLogger(__name__)
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
LISTING_LIMIT = 32 * 1024 * 1024
STORED_HEADERS = ("Content-Type",)


def _job_record(spec: JobSpec) -> dict[str, Any]:
    return {
        "parts": [asdict(p) for p in spec.parts],
        "walltime_s": spec.walltime_s,
        "purpose": spec.purpose,
        "lineage": spec.lineage,
    }


def _stored(result: forward.Buffered, decision_id: str) -> StoredResponse:
    headers = tuple((h, result.headers[h]) for h in STORED_HEADERS if h in result.headers)
    headers += (("X-Exportgate-Decision-Id", decision_id),)
    body = result.body if len(result.body) <= MAX_STORED_BODY else b""
    return StoredResponse(result.status, headers, body)


def lease_record(planned: Plan, quota: Decision, replaces: str | None) -> dict[str, Any]:
    """What the ledger needs to rebuild this reservation: slot, end, debits, idempotency key."""
    states = quota.extra.get("quota")
    amounts = {k: v["amount"] for k, v in states.items()} if isinstance(states, dict) else {}
    return {
        "hash_tag": planned.hash_tag,
        "lease_end": planned.lease_end,
        "idempotency_key": planned.idempotency_key,
        "replaces_job": replaces,
        "counters": [
            {"key": c.key, "kind": c.kind.value, "amount": amounts.get(c.key, c.amount)} for c in planned.counters
        ],
    }


def _whole_job(match: RouteMatch, job_id: str | None) -> bool:
    """Whether the route names the whole owned job, not one part of it (Slurm's `12_3`, `12+1`)."""
    return match.job_id is None or match.job_id == job_id


def _content_encoding(request: web.Request) -> str | None:
    """Every Content-Encoding the client sent, joined: the upstream reads them all, so the adapter must too."""
    values = request.headers.getall("Content-Encoding", [])
    return ", ".join(values) if values else None


def _respond(result: forward.Buffered, decision_id: str) -> web.Response:
    response = web.Response(status=result.status, body=result.body, headers=result.headers)
    response.headers["X-Exportgate-Decision-Id"] = decision_id
    return response


class JobFlows:
    """The paths of requests that create, change, name or list jobs."""

    def __init__(self, gateway: "Gateway", store: QuotaStore) -> None:
        self.gw = gateway
        self.store = store

    # -- entry points ---------------------------------------------------------------------

    async def submit(self, request: web.Request, ex: "Exchange", admission: Decision) -> web.StreamResponse:
        """Price, reserve atomically, record durably, forward, then settle or refund."""
        adapter = ex.upstream.adapter
        assert adapter is not None and ex.match is not None
        body = await self.gw.read_body(request)
        if isinstance(body, Code):
            return await self._unread(request, ex, admission, body)
        try:
            spec = adapter.parse_submission(
                ex.match, request.headers.get("Content-Type"), _content_encoding(request), body
            )
        except JobSpecInvalid as exc:
            return await self._deny(request, ex, admission, Code.JOB_SPEC_INVALID, str(exc))
        idem = request.headers.get("Idempotency-Key") or spec.idempotency_key
        if idem is not None and not IDEMPOTENCY_KEY.match(idem):
            detail = "Idempotency-Key: 1 to 128 letters, digits, '.', '_', ':' or '-'"
            return await self._deny(request, ex, admission, Code.JOB_SPEC_INVALID, detail)
        return await self._reserve_and_forward(request, ex, admission, adapter, spec, body, idem, replaces=None)

    async def update(self, request: web.Request, ex: "Exchange", admission: Decision) -> web.StreamResponse:
        """An update that changes resources is priced as the new total; others are owned reads."""
        adapter = ex.upstream.adapter
        assert adapter is not None and ex.match is not None
        owner = await self._owner(request, ex, admission)
        if not isinstance(owner, Owner):
            return owner
        body = await self.gw.read_body(request)
        if isinstance(body, Code):
            return await self._unread(request, ex, admission, body)
        try:
            spec = adapter.parse_update(ex.match, request.headers.get("Content-Type"), _content_encoding(request), body)
        except JobUpdateNotAllowed as exc:
            return await self._deny(request, ex, admission, Code.JOB_UPDATE_NOT_ALLOWED, str(exc))
        except JobSpecInvalid as exc:
            return await self._deny(request, ex, admission, Code.JOB_SPEC_INVALID, str(exc))
        if spec is None:
            return await self._recorded_forward(request, ex, admission, body)
        job_id = adapter.job_id_of(ex.match)
        if not _whole_job(ex.match, job_id):
            # Its new total would replace the whole job's lease while pricing only the part.
            detail = f"the update changes the resources of part of job {job_id}; update the whole job"
            return await self._deny(request, ex, admission, Code.JOB_UPDATE_NOT_ALLOWED, detail)
        return await self._reserve_and_forward(
            request, ex, admission, adapter, spec, body, None, replaces=job_id, replaced=owner.lease
        )

    async def cancel(self, request: web.Request, ex: "Exchange", admission: Decision) -> web.StreamResponse:
        """Forward an owned cancel; when the scheduler accepts it, give the job's capacity back."""
        adapter = ex.upstream.adapter
        assert adapter is not None and ex.match is not None
        denied = await self._ownership(request, ex, admission)
        if denied is not None:
            return denied
        job_id = adapter.job_id_of(ex.match)
        result = await self._fetch_recorded(request, ex, admission, None)
        if isinstance(result, web.StreamResponse):
            return result
        if 200 <= result.status < 300 and job_id is not None:
            whole = _whole_job(ex.match, job_id)
            released = False
            try:
                # Cancelling one array task or het component leaves the rest running: hold it all.
                if whole:
                    released = await self.store.release_job(ex.upstream.name, job_id, self.gw.clock())
            except BackendUnavailable:
                self.gw.metrics.backend_errors.labels("quota").inc()
                log.error("cancel of %s went through but its lease could not be released yet", job_id)
            await self._followup("release", ex, job_id=job_id, released=released, whole_job=whole)
        return _respond(result, ex.decision_id)

    async def read(self, request: web.Request, ex: "Exchange", admission: Decision) -> web.StreamResponse:
        """Routes naming a job reach the scheduler only for the job's owner."""
        denied = await self._ownership(request, ex, admission)
        if denied is not None:
            return denied
        return await self.gw.access(request, ex, admission)

    async def listing(self, request: web.Request, ex: "Exchange", admission: Decision) -> web.StreamResponse:
        """Listings are read whole and cut down to the tenant's own jobs."""
        adapter = ex.upstream.adapter
        assert adapter is not None and ex.match is not None and ex.tenant is not None
        try:
            owned = await self.store.owned_jobs(ex.upstream.name, ex.tenant.id)
        except BackendUnavailable as exc:
            return await self.gw.backend_down(request, ex, admission, "quota", str(exc))
        result = await self._fetch_recorded(request, ex, admission, None, wait=False, limit=LISTING_LIMIT)
        if isinstance(result, web.StreamResponse):
            return result
        body = result.body
        if 200 <= result.status < 300:
            body = adapter.filter_listing(ex.match, result.body, owned.__contains__)
        return _respond(forward.Buffered(result.status, result.headers, body), ex.decision_id)

    # -- the reservation path -------------------------------------------------------------

    async def _reserve_and_forward(
        self,
        request: web.Request,
        ex: "Exchange",
        admission: Decision,
        adapter: SchedulerAdapter,
        spec: JobSpec,
        body: bytes,
        idem: str | None,
        *,
        replaces: str | None,
        replaced: LeaseRef | None = None,
    ) -> web.StreamResponse:
        pack = self.gw.policy.pack
        assert ex.tenant is not None and admission.tier is not None and ex.match is not None
        ex.job = _job_record(spec)
        if pack.gpus is None or pack.caps is None:
            detail = f"policy pack {pack.name} has no GPU catalogue or caps; submissions cannot be priced"
            return await self._deny(request, ex, admission, Code.BACKEND_UNAVAILABLE, detail)
        try:
            cost = price(spec, pack.gpus, adapter.default_gpu_model, pack.gpus.utilisation)
        except JobSpecInvalid as exc:
            return await self._deny(request, ex, admission, Code.JOB_SPEC_INVALID, str(exc))
        ex.cost = cost.as_record()
        now_dt = datetime.fromtimestamp(ex.now, UTC)
        planned = plan_reservation(
            ex.tenant, admission.tier, cost, spec.lineage, spec.purpose, pack, pack.caps, now_dt,
            decision_id=ex.decision_id, idempotency_key=idem, upstream=ex.upstream.name,
        )  # fmt: skip
        if isinstance(planned, Decision):
            return await self.gw.refuse_with(request, ex, planned)
        if replaced is not None:  # an update: checked as if the job's old lease were given back
            planned = replace(planned, replaces=replaced)
        try:
            result = await self.store.reserve(planned, ex.now)
        except BackendUnavailable as exc:
            return await self.gw.backend_down(request, ex, admission, "quota", str(exc))
        if result.status is ReserveStatus.REPLAY and result.response is not None:
            return await self._replay(ex, admission, result.response)
        quota = interpret(planned, result, now_dt)
        ex.extra["quota"] = quota.extra.get("quota")
        ex.extra["retry_after"] = quota.extra.get("retry_after_s")
        ex.extra["licences"] = list(planned.licence_ids)
        ex.extra["exemptions"] = list(planned.exemptions)
        ex.extra["lease"] = lease_record(planned, quota, replaces)
        decision = verdict(admission.tier, admission.reasons + quota.reasons, quota.basis)
        if not decision.forwards:
            return await self.gw.refuse_with(request, ex, decision)
        self._observe_countries(ex)
        try:
            await self.gw.ledger.append(self.gw.record(request, ex, decision), wait=True)
        except LedgerUnavailable as exc:
            await self._refund(planned, ex, "ledger unavailable")
            return await self.gw.backend_down(request, ex, decision, "ledger", str(exc))
        self.gw.count(decision)
        return await self._send(request, ex, decision, adapter, planned, body, replaces)

    async def _send(
        self,
        request: web.Request,
        ex: "Exchange",
        decision: Decision,
        adapter: SchedulerAdapter,
        planned: Plan,
        body: bytes,
        replaces: str | None,
    ) -> web.StreamResponse:
        assert ex.match is not None
        try:
            result = await self._fetch(request, ex, decision, body)
        except forward.UpstreamFailure as exc:
            if exc.sent:  # when in doubt, hold: the job may exist
                await self._followup("unsettled", ex, reason=exc.code.value)
            else:
                await self._refund(planned, ex, exc.code.value)
            return self.gw.reply(ex, exc.code, exc.detail)
        if adapter.definitive_rejection(result.status, result.body):
            await self._refund(planned, ex, f"upstream rejected with {result.status}")
            return _respond(result, ex.decision_id)
        ok = 200 <= result.status < 300
        job_id = adapter.job_id_from_response(ex.match, result.status, result.body) if ok else None
        if replaces is not None and ok:
            job_id = replaces
        old = planned.replaces if replaces is not None and ok else None
        try:
            if replaces is not None and old is not None:
                # The new lease holds the job's whole total: the lease the job is held under now (the
                # one checked against, unless a concurrent update replaced it first) is given back whole.
                current = await self.store.owner_of(ex.upstream.name, replaces)
                if current is not None and current.tenant_id == planned.tenant_id:
                    old = current.lease if current.lease.lease_id != planned.decision_id else old
                await self.store.refund(old, self.gw.clock())
            await self.store.complete(
                planned,
                upstream=ex.upstream.name,
                job_id=job_id,
                response=_stored(result, ex.decision_id),
                now=self.gw.clock(),
            )
        except BackendUnavailable:
            self.gw.metrics.backend_errors.labels("quota").inc()
            log.error("decision %s: the job was submitted but its settlement could not be stored", ex.decision_id)
        extra = {} if old is None else {"replaced_lease": old.lease_id}
        await self._followup("settle", ex, job_id=job_id, status=result.status, settled=ok, **extra)
        return _respond(result, ex.decision_id)

    async def _replay(self, ex: "Exchange", admission: Decision, stored: StoredResponse) -> web.StreamResponse:
        """A retry of a completed submission gets the first answer again; nothing is forwarded."""
        headers = dict(stored.headers)
        await self._followup("replay", ex, first_decision_id=headers.get("X-Exportgate-Decision-Id"))
        response = web.Response(status=stored.status, body=stored.body, headers=headers)
        response.headers["X-Exportgate-Replayed"] = "true"
        return response

    async def _refund(self, planned: Plan, ex: "Exchange", why: str) -> None:
        try:
            await self.store.refund(planned, self.gw.clock())
            refunded = True
        except BackendUnavailable:
            self.gw.metrics.backend_errors.labels("quota").inc()
            refunded = False
        await self._followup("refund", ex, reason=why, refunded=refunded)

    # -- helpers --------------------------------------------------------------------------

    async def _ownership(self, request: web.Request, ex: "Exchange", admission: Decision) -> web.StreamResponse | None:
        """None when the tenant owns the job the route names; otherwise the refusal to send."""
        owner = await self._owner(request, ex, admission)
        return None if isinstance(owner, Owner) else owner

    async def _owner(self, request: web.Request, ex: "Exchange", admission: Decision) -> Owner | web.StreamResponse:
        """The owner (this tenant) of the job the route names; otherwise the refusal to send."""
        adapter = ex.upstream.adapter
        assert adapter is not None and ex.match is not None and ex.tenant is not None
        job_id = adapter.job_id_of(ex.match)
        if job_id is None:
            return await self._deny(request, ex, admission, Code.JOB_NOT_OWNED, "no job id")
        try:
            owner = await self.store.owner_of(ex.upstream.name, job_id)
        except BackendUnavailable as exc:
            return await self.gw.backend_down(request, ex, admission, "quota", str(exc))
        if owner is None or owner.tenant_id != ex.tenant.id:
            detail = f"job {job_id[:64]} was not submitted by this tenant through the gateway"
            return await self._deny(request, ex, admission, Code.JOB_NOT_OWNED, detail)
        return owner

    async def _deny(
        self, request: web.Request, ex: "Exchange", admission: Decision, code: Code, detail: str
    ) -> web.StreamResponse:
        """Refuse with `code`, keeping the tier admission resolved."""
        return await self.gw.refuse_with(request, ex, refuse(code, detail, admission.tier))

    async def _unread(
        self, request: web.Request, ex: "Exchange", admission: Decision, code: Code
    ) -> web.StreamResponse:
        """A body too large or too slow: refused before anything is reserved."""
        limits = self.gw.settings.limits
        if code is Code.BODY_TOO_LARGE:
            detail = f"the body exceeds {self.gw.settings.max_body_bytes} bytes"
        else:
            detail = (
                f"the body paused over {limits.body_timeout_s:g} s or arrived slower than "
                f"{limits.body_min_rate_bytes_s:g} bytes/s"
            )
        # The rest of the body is never read: the connection closes after this answer.
        return close_after(await self._deny(request, ex, admission, code, detail))

    async def _fetch(
        self, request: web.Request, ex: "Exchange", decision: Decision, body: bytes | None, limit: int = LISTING_LIMIT
    ) -> forward.Buffered:
        session = ex.upstream.session
        assert session is not None
        observe = self.gw.metrics.upstream_seconds.labels(ex.upstream.name).observe
        headers = self.gw.upstream_headers(request, ex, decision)
        return await forward.fetch(
            request, session, ex.upstream.url_for(request.raw_path), headers, body, observe, limit
        )

    async def _fetch_recorded(
        self,
        request: web.Request,
        ex: "Exchange",
        decision: Decision,
        body: bytes | None,
        *,
        wait: bool = True,
        limit: int = LISTING_LIMIT,
    ) -> forward.Buffered | web.StreamResponse:
        """Record (waiting for job-changing routes), then fetch; a refusal response on failure."""
        try:
            await self.gw.ledger.append(self.gw.record(request, ex, decision, kind="decision" if wait else "access"),
                                        wait=wait)  # fmt: skip
        except LedgerUnavailable as exc:
            return await self.gw.backend_down(request, ex, decision, "ledger", str(exc))
        self.gw.count(decision)
        try:
            return await self._fetch(request, ex, decision, body, limit)
        except forward.UpstreamFailure as exc:
            return self.gw.reply(ex, exc.code, exc.detail)

    async def _recorded_forward(
        self, request: web.Request, ex: "Exchange", decision: Decision, body: bytes
    ) -> web.StreamResponse:
        result = await self._fetch_recorded(request, ex, decision, body)
        return result if isinstance(result, web.StreamResponse) else _respond(result, ex.decision_id)

    async def _followup(self, kind: str, ex: "Exchange", **fields: Any) -> None:
        """Settle, refund, release and replay records reference the decision; they do not wait."""
        body = followup_body(kind, ex.decision_id, self.gw.clock(), tenant=ex.tenant.id if ex.tenant else None,
                             upstream=ex.upstream.name, **fields)  # fmt: skip
        try:
            await self.gw.ledger.append(body, wait=False)
        except LedgerUnavailable:
            self.gw.metrics.backend_errors.labels("ledger").inc()
            log.error("ledger: %s record of %s could not be queued", kind, ex.decision_id)

    def _observe_countries(self, ex: "Exchange") -> None:
        for key, state in (ex.extra.get("quota") or {}).items():
            country = country_of_key(key)
            if country is not None:
                self.gw.metrics.country_tpp_held.labels(country).set(state["after"])
                if state.get("cap") is not None:
                    self.gw.metrics.country_tpp_cap.labels(country).set(state["cap"])
