"""The Kubernetes ValidatingAdmissionWebhook: an AdmissionReview v1 in, the proxy's own decision out.

The API server asks before it stores a Job, Pod, RayCluster, RayJob or PyTorchJob, whoever
created it (kubectl straight at the API server included). A create is decided exactly as the
proxy decides a POST of the same object: the same route table, adapter parser, core `decide`
(through `admit`), pricing, plan, quota reservation and `judge`, and the same decision record
(`entry: k8s_admission`). What differs is around it:

* the tenant comes from the request's user or namespace (http/webhook_tenant.py);
* an allowed create's lease is owned by the object's namespace, name and uid under
  `<upstream>#admission`, and reconciliation releases it when the object finishes, is deleted,
  or was never stored (http/webhook_objects.py); a `settle` record makes that ownership durable;
* a dry run (`request.dryRun`) is priced and decided against the counters as they are, holds
  nothing, and is recorded as a `dry_run` record (no lease, never re-decided by replay);
* an update that changes what the object holds is priced old against new: it is allowed when it
  holds no more (its lease stays as it is, so a reduction is credited only when the object ends)
  and refused `job_update_not_allowed` when it would hold more or resumes a suspended object; a
  change of metadata only (labels, finalizers, owners) is allowed unrecorded, whoever makes it;
* deletes are allowed (reconciliation releases what they free), and so is any resource or
  subresource the adapter does not price, and what the full proxy itself sends (`proxy_users`:
  the proxy priced it, holds its lease and recorded it).

A refusal answers `allowed: false` with a `Status` whose `code` is the refusal's HTTP status and
whose `message` starts `exportgate <code>:`; the API server shows the client that message.
"""

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway.adapters.ids import new_decision_id
from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.quota_preview import preview
from gateway.adapters.upstream import Upstream
from gateway.config.admission_webhook import WebhookSettings
from gateway.config.limits import Limits
from gateway.core.codes import CODES, Code
from gateway.core.decide import Decision, Outcome, refuse
from gateway.core.jobs import IDEMPOTENCY_KEY, JobSpecInvalid
from gateway.core.leases import Plan, ReserveStatus, StoredResponse
from gateway.core.records import followup_body
from gateway.core.routes import RouteKind, RouteMatch, match_route
from gateway.core.submission import Job, Priced, judge, price_and_plan
from gateway.http.admission import admit
from gateway.http.body import BodyTooLarge, BodyTooSlow, ClientClosed, Pace, read_limited
from gateway.http.call import Admitted, Call, Refused
from gateway.http.job_body import job_record
from gateway.http.problems import refusal
from gateway.http.responder import Responder
from gateway.http.webhook_objects import owned_upstream
from gateway.http.webhook_tenant import Requester, covering_owner, requester
from gateway.http.webhook_update import check_update
from gateway.schedulers.base import dump_json, load_json
from gateway.schedulers.kubernetes_review import Review, ReviewInvalid, admitted_id, answer, gpu_free_pod, parse_review

log = logging.getLogger(__name__)
ENTRY = "k8s_admission"
# An AdmissionReview holds the object and, on update, the old one: the API server stores objects of up to 1.5 MiB.
MAX_REVIEW_BYTES = 8 * 1024 * 1024
JSON = "application/json"


class AdmissionWebhook:
    """Answers AdmissionReviews for one Kubernetes upstream (see the module)."""

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        policy: PolicyFiles,
        store: QuotaStore,
        ledger: LedgerWriter,
        metrics: Metrics,
        upstream: Upstream,
        limits: Limits,
        clock: Callable[[], float],
    ) -> None:
        assert upstream.adapter is not None, "the webhook's upstream is a kubernetes one (checked at load)"
        self.settings = settings
        self.policy = policy
        self.store = store
        self.ledger = ledger
        self.upstream = upstream
        self.adapter = upstream.adapter
        self.owned = owned_upstream(upstream.name)
        self.pace = Pace(limits.body_timeout_s, limits.body_min_rate_bytes_s)
        self.clock = clock
        self.responder = Responder(ledger, metrics, policy, clock)

    # -- the HTTP exchange ----------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        decision_id = new_decision_id()
        try:
            raw = await read_limited(request, MAX_REVIEW_BYTES, self.pace)
        except BodyTooLarge:
            return refusal(Code.BODY_TOO_LARGE, f"an AdmissionReview of at most {MAX_REVIEW_BYTES} bytes", decision_id)
        except BodyTooSlow:
            return refusal(Code.REQUEST_TIMEOUT, "the AdmissionReview arrived too slowly", decision_id)
        except ClientClosed:
            return web.Response(status=499, reason="Client Closed Request")  # never delivered
        try:
            review = parse_review(load_json(raw))
        except (JobSpecInvalid, ReviewInvalid) as exc:
            uid = exc.uid if isinstance(exc, ReviewInvalid) else None
            detail = f"not an AdmissionReview {str(exc)[:200]}"
            if uid is None:
                return refusal(Code.REQUEST_MALFORMED, detail, decision_id)
            return _json(self._refusal(uid, Code.REQUEST_MALFORMED, detail, decision_id))
        try:
            return _json(await self.review(request, review, decision_id))
        except Exception:  # the last line of defence: a bug refuses (failurePolicy: Fail would too), never a 500
            log.exception("admission webhook: unexpected error on review %s (decision %s)", review.uid, decision_id)
            detail = "the gateway could not decide this review"
            return _json(self._refusal(review.uid, Code.BACKEND_UNAVAILABLE, detail, decision_id))

    async def review(self, request: web.Request, review: Review, decision_id: str) -> dict[str, Any]:
        """The answer to one review (see the module for what is decided how)."""
        route = review.api_route()
        if route is None or review.sub_resource:
            return answer(review.uid, True)  # deletes, connects, status and scale: nothing is priced
        method, path = route
        match = match_route(self.upstream.routes, method, path)
        if match is None or not match.route.kind.changes_jobs:
            return answer(review.uid, True)  # a resource the adapter does not price
        call = Call(
            request=None, method=method, headers={}, decision_id=decision_id, started=time.perf_counter(),
            now=self.clock(), client_ip=request.remote or "", upstream=self.upstream, path=path, entry=ENTRY,
        )  # fmt: skip
        call.match = match
        try:
            if match.route.kind is RouteKind.UPDATE:
                return await self._update(call, review, match)
            return await self._create(call, review, match)
        finally:
            self.responder.finished(call, 200)

    # -- creates --------------------------------------------------------------------------

    async def _create(self, call: Call, review: Review, match: RouteMatch) -> dict[str, Any]:
        who = requester(self.policy.registry, self.settings, self.upstream, review)
        call.identity = who.identity
        if review.username in self.settings.proxy_users:
            return await self._unpriced(call, review, "through_proxy", None, who.tenant)
        if who.controller:
            covered = await covering_owner(self.store, self.upstream, self.owned, review)
            if covered is not None:
                return await self._unpriced(call, review, "covered_by_owner", {"covered_by": covered}, who.tenant)
            if review.resource.key == "pods" and gpu_free_pod(review.obj):
                return await self._unpriced(call, review, "no_gpu", None, who.tenant)
        admitted = await self._admit(call, review, who, match)
        if not isinstance(admitted, Admitted):
            return admitted
        tier = admitted.admission.tier
        if not review.object_uid or not review.name:
            detail = "metadata.name and metadata.uid: the API server sent an object without them"
            return await self._refuse(call, review, refuse(Code.JOB_SPEC_INVALID, detail, tier))
        try:  # the proxy's own parser, on the object a POST of it would create
            spec = self.adapter.parse_submission(match, JSON, None, dump_json(review.obj))
        except JobSpecInvalid as exc:
            return await self._refuse(call, review, refuse(Code.JOB_SPEC_INVALID, str(exc), tier))
        call.job = job_record(spec)
        # The API server resends a call's review when its answer was lost: the same request and object, one lease.
        key = f"{review.uid}.{review.object_uid}"
        idem = key if IDEMPOTENCY_KEY.match(key) and not review.dry_run else None
        facts = Job(spec, call.decision_id, self.upstream.name, self.adapter.default_gpu_model, idem)
        priced = price_and_plan(admitted.admission, admitted.tenant, facts, self.policy.pack, call.when)
        if isinstance(priced, Decision):
            return await self._refuse(call, review, priced)
        if review.dry_run:
            return await self._dry_run(call, review, admitted, priced)
        return await self._reserve(call, review, admitted, priced)

    async def _admit(self, call: Call, review: Review, who: Requester, match: RouteMatch) -> Admitted | dict[str, Any]:
        """The request through the proxy's admission stage for the requester's tenant, or the refusal's answer."""
        if who.tenant is None:
            return await self._refuse(call, review, refuse(Code.TENANT_UNKNOWN, who.unknown))
        call.tenant = who.tenant
        admitted = admit(self.policy, call, who.tenant, match)
        if isinstance(admitted, Refused):
            return await self._refuse(call, review, admitted.decision)
        return admitted

    async def _reserve(self, call: Call, review: Review, a: Admitted, priced: Priced) -> dict[str, Any]:
        plan = priced.plan
        try:
            result = await self.store.reserve(plan, call.now)
        except BackendUnavailable as exc:
            return await self._backend_down(call, review, a, "quota", str(exc))
        if result.status is ReserveStatus.REPLAY and result.response is not None:
            return _replayed(review, result.response)  # the API server sent this review again
        decision = judge(a.admission, priced, result, call.when)
        if not decision.forwards:
            refused = await self._refuse(call, review, decision)
            if result.status is ReserveStatus.ADMITTED:
                await self._refund(call, plan, "refused on its cumulative counts")
            return refused
        self.responder.observe_countries(decision)
        if not await self._record(call, decision):
            await self._refund(call, plan, "ledger unavailable")
            return await self._backend_down(call, review, a, "ledger", "the decision could not be recorded")
        doc = self._allowed(call, review, decision)
        job_id = admitted_id(review.resource.key, review.namespace, review.name, review.object_uid)
        await self._own(call, plan, job_id, doc)
        return doc

    async def _own(self, call: Call, plan: Plan, job_id: str, doc: dict[str, Any]) -> None:
        """The object's lease, owned by its uid (reconciliation reads it back); recorded for rebuilds."""
        stored = StoredResponse(200, (("Content-Type", JSON),), dump_json(doc))
        try:
            await self.store.complete(plan, upstream=self.owned, job_id=job_id, response=stored, now=self.clock())
        except BackendUnavailable:
            self.responder.backend_error("quota")
            log.error("decision %s: admitted, but its ownership could not be stored (held until it ends)",
                      call.decision_id)  # fmt: skip
        body = followup_body("settle", call.decision_id, self.clock(), tenant=plan.tenant_id, upstream=self.owned,
                             job_id=job_id, status=200, settled=True, entry=ENTRY)  # fmt: skip
        try:
            await self.ledger.append(body, wait=False)
        except LedgerUnavailable:
            self.responder.backend_error("ledger")
            log.error("ledger: settle record of %s could not be queued", call.decision_id)

    async def _dry_run(self, call: Call, review: Review, a: Admitted, priced: Priced) -> dict[str, Any]:
        """Priced and decided against the counters as they are; nothing held, recorded as a dry run."""
        try:
            result = await preview(self.store, priced.plan, call.now)
        except BackendUnavailable as exc:
            return await self._backend_down(call, review, a, "quota", str(exc))
        decision = judge(a.admission, priced, result, call.when)
        await self._record(call, decision, kind="dry_run", extra={"lease": None, "quota_after": None})
        return self._allowed(call, review, decision) if decision.forwards else self._denied(call, review, decision)

    # -- updates --------------------------------------------------------------------------

    async def _update(self, call: Call, review: Review, match: RouteMatch) -> dict[str, Any]:
        if review.username in self.settings.proxy_users:
            return answer(review.uid, True)  # the proxy priced this update itself (a PUT of the whole object)
        check = check_update(self.adapter, self.upstream.routes, self.policy.pack, review, match)
        if check is None:
            return answer(review.uid, True)  # metadata, or spec fields that hold nothing: nothing priced changes
        who = requester(self.policy.registry, self.settings, self.upstream, review)
        call.identity = who.identity
        admitted = await self._admit(call, review, who, match)
        if not isinstance(admitted, Admitted):
            return admitted
        if check.refusal is not None:
            return await self._refuse(call, review, refuse(check.refusal[0], check.refusal[1], admitted.admission.tier))
        # Holds no more than before: allowed, its lease unchanged. No `job` in the record: nothing was reserved.
        decision = replace(admitted.admission, cost=check.cost)
        if not await self._record(call, decision):
            return await self._backend_down(call, review, admitted, "ledger", "the decision could not be recorded")
        return self._allowed(call, review, decision)

    # -- records and answers --------------------------------------------------------------

    async def _record(
        self, call: Call, decision: Decision, *, kind: str = "decision", extra: dict[str, Any] | None = None
    ) -> bool:
        """Record the decision durably and count it; False when the ledger cannot take it."""
        body = self.responder.record(call, decision, kind=kind) | (extra or {})
        self.responder.count(decision)
        try:
            await self.ledger.append(body, wait=True)
        except LedgerUnavailable:
            self.responder.backend_error("ledger")
            return False
        return True

    async def _unpriced(
        self, call: Call, review: Review, basis: str, job: dict[str, Any] | None, tenant: Any
    ) -> dict[str, Any]:
        """A controller's object that holds nothing of its own: allowed, and an access record says why."""
        call.tenant = tenant
        call.job = job
        decision = Decision(Outcome.ALLOW, None, (), basis=basis)
        body = self.responder.record(call, decision, kind="access")
        self.responder.count(decision)
        try:
            await self.ledger.append(body, wait=False)
        except LedgerUnavailable:
            self.responder.backend_error("ledger")
        return answer(review.uid, True, audit={"decision-id": call.decision_id})

    async def _refuse(self, call: Call, review: Review, decision: Decision) -> dict[str, Any]:
        await self._record(call, decision, kind="dry_run" if review.dry_run else "decision")  # best effort
        return self._denied(call, review, decision)

    async def _refund(self, call: Call, plan: Plan, why: str) -> None:
        try:
            refunded = await self.store.refund(plan, self.clock())
        except BackendUnavailable:
            self.responder.backend_error("quota")
            refunded = False
        await self.responder.followup("refund", call, reason=why, refunded=refunded)

    async def _backend_down(self, call: Call, review: Review, a: Admitted, backend: str, why: str) -> dict[str, Any]:
        self.responder.backend_error(backend)
        log.error("admission webhook: refusing review %s: %s unavailable: %s", review.uid, backend, why)
        detail = f"the {backend} cannot record this decision; nothing was admitted"
        decision = refuse(Code.BACKEND_UNAVAILABLE, detail, a.admission.tier)
        self.responder.count(decision)
        return self._denied(call, review, decision)

    def _allowed(self, call: Call, review: Review, decision: Decision) -> dict[str, Any]:
        warnings = tuple(
            f"exportgate shadow_deny {r.code.value}: {r.detail} (decision {call.decision_id})" for r in decision.reasons
        )  # a rule not yet enforced: allowed, and the client is told
        return answer(review.uid, True, warnings=warnings, audit={"decision-id": call.decision_id})

    def _denied(self, call: Call, review: Review, decision: Decision) -> dict[str, Any]:
        code = decision.code or Code.BACKEND_UNAVAILABLE
        reason = next((r for r in decision.reasons if r.enforced), None)
        detail = reason.detail if reason is not None else code.value
        retry = decision.quota.retry_after_s if decision.quota is not None else None
        return self._refusal(review.uid, code, detail, call.decision_id, retry_after=retry)

    def _refusal(
        self, uid: str, code: Code, detail: str, decision_id: str, *, retry_after: int | None = None
    ) -> dict[str, Any]:
        """A refused review: a `Status` in the adapter's dialect whose message is `exportgate <code>: ...`."""
        info = CODES[code]
        rendered = self.adapter.refusal(code.value, info.status, info.title, detail, decision_id)
        status: dict[str, Any] = json.loads(rendered[1]) if rendered is not None else {"status": "Failure"}
        status.update(code=info.status, message=f"exportgate {code.value}: {detail} (decision {decision_id})")
        if retry_after is not None:
            details = status.setdefault("details", {})
            details["retryAfterSeconds"] = max(1, int(retry_after))
        return answer(uid, False, status=status, audit={"decision-id": decision_id, "code": code.value})


def _replayed(review: Review, stored: StoredResponse) -> dict[str, Any]:
    """The first answer to a review sent again (its body may be gone after a rebuild: then it was allowed)."""
    doc = json.loads(stored.body) if stored.body else None
    if isinstance(doc, dict) and isinstance(doc.get("response"), dict):
        return doc
    return answer(review.uid, 200 <= stored.status < 300)


def _json(doc: dict[str, Any]) -> web.Response:
    return web.Response(body=dump_json(doc), content_type=JSON, headers={"Cache-Control": "no-store"})
