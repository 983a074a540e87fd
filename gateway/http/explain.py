"""Explain a request without forwarding or reserving anything: the proxy's own stages, run dry.

`Explainer.explain` takes a tenant (or one of its tokens), a method and path, an optional job
body and an optional date, and runs what the proxy's pipeline runs: authenticate, resolve the
tenant, match the route, admit (core `decide`: tier and KYC), then the route kind's checks
(ownership of a named job, the cancel's query, the body read by the scheduler adapter, pricing
and the quota plan, `judge`). Where the proxy reserves, the explainer reads the counters the plan
touches and reserves on a scratch copy of them (adapters/quota_preview.py): nothing is written,
no ledger record is made, nothing reaches a scheduler. `POST /admin/v1/explain` and `exportgate
explain` both call it.

`at` moves the decision's date (the rules' enforced-from dates, the dated tier lists, KYC and
licence expiry, the period of budgets); the counters are always read as they are now, since
reading a lease store at another time would end or keep leases wrongly.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.adapters.auth import Authenticator
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.quota_preview import preview
from gateway.adapters.upstream import Upstream, pick_upstream
from gateway.config.limits import Limits
from gateway.core.catalogue import WeightsSettings
from gateway.core.codes import Code
from gateway.core.decide import Decision, Facts, decide, refuse
from gateway.core.explain import (
    PriceFacts,
    price_record,
    quota_record,
    reason_records,
    rules_considered,
    status_of,
    tenant_record,
    tier_record,
    weights_rules,
)
from gateway.core.iso import ISO_3166_ALPHA2
from gateway.core.jobs import IDEMPOTENCY_KEY, JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.leases import CounterState, Owner, Plan, ReserveResult, ReserveStatus
from gateway.core.quota_book import QuotaBook
from gateway.core.routes import Route, RouteKind, RouteMatch
from gateway.core.submission import Job, Priced, judge, price_and_plan
from gateway.core.tenants import Tenant
from gateway.core.tiers import tier_path
from gateway.core.weights import WeightsOp, WeightsQuestion, decide_weights, object_facts
from gateway.http.admission import admit, authenticate, match_request
from gateway.http.call import Admitted, Call, JobCall, Refused
from gateway.http.cluster_lease import live_lease
from gateway.http.objects import admit_object, lineage_now
from gateway.http.owned import find_owner
from gateway.schedulers.base import load_json
from gateway.schedulers.provenance import body_sources
from gateway.schedulers.s3 import NotAllowed, S3Adapter, classify, split_query

EXPLAIN_ID = "explain"  # the decision id an explanation carries: it is never recorded


@dataclass(frozen=True, slots=True)
class Question:
    """What to explain: a tenant by id or by token, a request, and the date to decide it on (None: now)."""

    method: str
    path: str  # as the client would send it, query included
    tenant_id: str | None = None
    token: str | None = None
    body: bytes | None = None
    content_type: str | None = "application/json"
    content_encoding: str | None = None
    idempotency_key: str | None = None
    at: float | None = None


@dataclass(slots=True)
class _Found:
    """What the stages learnt on the way to the decision."""

    stage: str = "authentication"
    tenant: Tenant | None = None
    allow: str | None = None
    owner: Owner | None = None
    spec: JobSpec | None = None
    doc: Any = None
    priced: Priced | None = None
    result: ReserveResult | None = None
    notes: list[str] = field(default_factory=list)
    weights: dict[str, Any] | None = None  # an object-store request: the weights decision's record


class Explainer:
    """The proxy's decision for one request, dry: see the module docstring."""

    def __init__(
        self,
        policy: PolicyFiles,
        upstreams: list[Upstream],
        store: QuotaStore,
        limits: Limits,
        *,
        auth: Authenticator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.upstreams = upstreams
        self.store = store
        self.limits = limits
        self.auth = auth
        self.clock = clock

    async def explain(self, q: Question) -> dict[str, Any]:
        """The decision and everything it was made of, as plain data (see gateway.core.explain)."""
        now = self.clock()
        at = now if q.at is None else q.at
        raw_path = q.path.split("?", 1)[0]
        headers = {"Authorization": f"Bearer {q.token}"} if q.token is not None else {}
        call = Call(
            request=None, method=q.method.upper(), headers=headers, decision_id=EXPLAIN_ID,
            started=time.perf_counter(), now=at, client_ip="", upstream=pick_upstream(self.upstreams, raw_path),
            path=raw_path,
        )  # fmt: skip
        found = _Found()
        decision = await self._decide(q, call, found, now)
        return self._layout(q, call, found, decision, at, now)

    # -- the stages, as the pipeline runs them ----------------------------------------------------

    async def _decide(self, q: Question, call: Call, found: _Found, now: float) -> Decision:
        pack, registry = self.policy.pack, self.policy.registry
        if q.token is not None:
            if self.auth is None:
                return refuse(Code.AUTH_INVALID, "tokens cannot be verified here: name the tenant instead")
            identity = await authenticate(self.auth, call)
            if isinstance(identity, Refused):
                return identity.decision
            call.identity = identity
            tenant = registry.lookup(identity)
        else:
            tenant = registry.tenants.get(q.tenant_id or "")
        found.stage = "tenant"
        if tenant is None:
            return decide(Facts(call.when, None, RouteKind.PLAIN_READ), pack)
        call.tenant = found.tenant = tenant
        found.stage = "route"
        if isinstance(call.upstream.adapter, S3Adapter):
            return await self._object(q, call, found, tenant, now)
        match = match_request(call)
        if isinstance(match, Refused):
            found.allow = match.allow
            return match.decision
        call.match = match
        found.stage = "admission"
        admitted = admit(self.policy, call, tenant, match)
        if isinstance(admitted, Refused):
            return admitted.decision
        return await self._flow(q, admitted, found, now)

    async def _flow(self, q: Question, a: Admitted, found: _Found, now: float) -> Decision:
        kind = a.match.route.kind
        if kind is RouteKind.PLAIN_READ:
            found.stage = "allowed"
            if a.upstream.adapter is not None and a.match.route.name.startswith("ray.package"):
                found.notes.append("a Ray code package's owner is checked by the proxy itself, not here")
            return a.admission
        adapter = a.upstream.adapter
        if adapter is None:
            return refuse(Code.ROUTE_NOT_ALLOWED, "no scheduler adapter")
        job = JobCall(a, adapter)
        if kind in (RouteKind.READ, RouteKind.CANCEL, RouteKind.UPDATE):
            found.stage = "ownership"
            owner = await find_owner(self.store, job)
            if isinstance(owner, BackendUnavailable):
                return refuse(Code.BACKEND_UNAVAILABLE, f"the quota store cannot answer: {owner}", a.admission.tier)
            if isinstance(owner, Refused):
                return owner.decision
            found.owner = owner
            if kind is RouteKind.CANCEL:
                try:
                    adapter.cancel_target(q.path)
                except JobSpecInvalid as exc:
                    return refuse(Code.JOB_SPEC_INVALID, str(exc), a.admission.tier)
            if kind is not RouteKind.UPDATE:
                found.stage = "allowed"
                return a.admission
        if kind is RouteKind.LIST:
            found.stage = "allowed"
            return a.admission
        return await self._priced(q, job, found, now)

    async def _priced(self, q: Question, job: JobCall, found: _Found, now: float) -> Decision:
        a, adapter = job.admitted, job.adapter
        tier = a.admission.tier
        found.stage = "body"
        body = q.body or b""
        if len(body) > self.limits.max_body_bytes:
            return refuse(Code.BODY_TOO_LARGE, f"the body exceeds {self.limits.max_body_bytes} bytes", tier)
        update = a.match.route.kind is RouteKind.UPDATE
        parse = adapter.parse_update if update else adapter.parse_submission
        try:
            spec = parse(a.match, q.content_type, q.content_encoding, body)
        except JobUpdateNotAllowed as exc:
            return refuse(Code.JOB_UPDATE_NOT_ALLOWED, str(exc), tier)
        except JobSpecInvalid as exc:
            return refuse(Code.JOB_SPEC_INVALID, str(exc), tier)
        found.spec = spec
        found.doc = _document(q)
        idem = None if update else q.idempotency_key or (spec.idempotency_key if spec is not None else None)
        if idem is not None and not IDEMPOTENCY_KEY.match(idem):
            return refuse(
                Code.JOB_SPEC_INVALID, "Idempotency-Key: 1 to 128 letters, digits, '.', '_', ':' or '-'", tier
            )
        if spec is None:  # an update of no resources: an owned, recorded fetch
            found.stage = "allowed"
            return a.admission
        if spec.packages:
            found.notes.append("the code packages the job runs are checked by the proxy itself, not here")
        credits: dict[str, float] = {}
        replaces = replaced = joins = None
        try:
            if update:
                replaces = adapter.job_id_of(a.match)
                if not a.whole_job(replaces):
                    shown = (replaces or "")[:64]
                    detail = f"the update changes the resources of part of job {shown}; update the whole job"
                    return refuse(Code.JOB_UPDATE_NOT_ALLOWED, detail, tier)
                replaced = found.owner.lease if found.owner is not None else None
                credits = await self.store.held_amounts(a.upstream.name, replaces or "") or {}
                found.notes.append("an update is checked net of the held TPP of the job's lease (not of its "
                                   "cumulative counts, which the proxy also credits)")  # fmt: skip
            elif adapter.shares_cluster_lease():
                joins = await live_lease(self.store, a.upstream.name, a.tenant.id)
                if joins is not None and joins.jobs:
                    credits = await self.store.held_amounts(a.upstream.name, joins.jobs[0]) or {}
        except BackendUnavailable as exc:
            return refuse(Code.BACKEND_UNAVAILABLE, f"the quota store cannot answer: {exc}", tier)
        found.stage = "pricing"
        facts = Job(spec, EXPLAIN_ID, a.upstream.name, adapter.default_gpu_model, idem, replaces, replaced,
                    joins=joins)  # fmt: skip
        priced = price_and_plan(a.admission, a.tenant, facts, self.policy.pack, a.call.when)
        if isinstance(priced, Decision):
            return priced
        found.priced = priced
        found.stage = "quota"
        try:
            found.result = await _preview(self.store, priced.plan, now, credits)
        except BackendUnavailable as exc:
            return refuse(Code.BACKEND_UNAVAILABLE, f"the quota store cannot answer: {exc}", tier)
        return judge(a.admission, priced, found.result, a.call.when)

    async def _object(self, q: Question, call: Call, found: _Found, tenant: Tenant, now: float) -> Decision:
        """An object-store request: the S3 operation, admission and buckets, then the weights rules on the lineage
        the catalogue names for the object (its metadata is not read here: the proxy reads it from the store)."""
        raw_query = q.path.partition("?")[2]
        try:
            s3 = classify(call.method, call.upstream.local_path(call.path), split_query(raw_query), {})
        except NotAllowed as exc:
            return refuse(Code.ROUTE_NOT_ALLOWED, str(exc))
        call.match = RouteMatch(Route.of(f"s3.{s3.op.value}", (call.method,), "/{bucket}/{key}", s3.op.route_kind),
                                {"bucket": s3.bucket, "key": s3.key})  # fmt: skip
        found.stage = "admission"
        admission = admit_object(self.policy, call, tenant, s3)
        if not admission.forwards or s3.op.weights_op is WeightsOp.LIST:
            if s3.op.weights_op is WeightsOp.LIST:
                found.notes.append("a listing leaves out the objects the tenant may not read (decided per object)")
            return admission
        found.stage = "weights"
        settings = self.policy.pack.weights or WeightsSettings()
        facts = object_facts(settings, s3.bucket, s3.key, {})
        if facts.lineage is None:
            found.notes.append("no catalogue pattern names this object; the proxy also reads the lineage the gateway "
                               "wrote into its metadata at upload")  # fmt: skip
        try:
            status = await lineage_now(self.store, self.policy, facts, call.when, now)
        except BackendUnavailable as exc:
            return refuse(Code.BACKEND_UNAVAILABLE, f"the quota store cannot answer: {exc}", admission.tier)
        question = WeightsQuestion(s3.op.weights_op, tenant, status, s3.bucket)
        wd = decide_weights(question, admission, settings, self.policy.pack, call.when)
        found.weights = {"op": s3.op.weights_op.value, "s3_op": s3.op.value, "bucket": s3.bucket, "key": s3.key,
                         "lineage_source": facts.source, **wd.as_record()}  # fmt: skip
        return wd.decision

    # -- the answer -------------------------------------------------------------------------------

    def _layout(
        self, q: Question, call: Call, found: _Found, decision: Decision, at: float, now: float
    ) -> dict[str, Any]:
        pack, when = self.policy.pack, call.when
        tenant = found.tenant
        reason = next((r for r in decision.reasons if r.enforced), None) or next(iter(decision.reasons), None)
        match = call.match
        out: dict[str, Any] = {
            "decision": decision.outcome.value,
            "code": decision.code.value if decision.code is not None else None,
            "status": status_of(decision),
            "detail": reason.detail if reason is not None else None,
            "decided_at": found.stage if decision.reasons else "allowed",
            "at": _iso(at),
            "read_at": _iso(now),
            "request": {
                "method": call.method,
                "path": q.path,
                "upstream": call.upstream.name,
                "route": match.route.name if match else None,
                "route_kind": match.route.kind.value if match else None,
                "allow": found.allow,
            },
            "identity": {"issuer": call.identity.issuer, "subject": call.identity.subject} if call.identity else None,
            "tenant": tenant_record(tenant, when.date()) if tenant is not None else None,
            "tier": None,
            "reasons": reason_records(decision, pack),
            "rules": [],
            "price": None,
            "quota": None,
            "policy": {"name": pack.name, "version": pack.version, "hash": pack.content_hash},
            "registry": self.policy.registry.version,
            "notes": found.notes,
        }
        if tenant is not None:
            out["tier"] = tier_record(tier_path(tenant.countries(), pack.tiers, ISO_3166_ALPHA2, when.date()))
        plan = found.priced.plan if found.priced is not None else None
        out["rules"] = rules_considered(decision, pack, when, plan) if tenant is not None else []
        if found.spec is not None:
            sources = body_sources(call.upstream.adapter, found.doc, found.spec)
            default = call.upstream.adapter.default_gpu_model if call.upstream.adapter is not None else None
            facts = PriceFacts(found.spec, default, tuple(s.as_record() for s in sources))
            out["price"] = price_record(facts, decision, pack.gpus)
        if plan is not None:
            out["quota"] = quota_record(plan, found.result, decision)
        if found.weights is not None:
            out["weights"] = found.weights
            out["rules"] += weights_rules(decision, pack, when)
        return out


def _document(q: Question) -> Any:
    """The body as JSON for provenance (None when it is not, or is encoded: the adapter read it anyway)."""
    if not q.body or q.content_encoding:
        return None
    try:
        return load_json(q.body)
    except JobSpecInvalid:
        return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


async def _preview(store: QuotaStore, plan: Plan, now: float, credits: Mapping[str, float]) -> ReserveResult:
    """What reserving `plan` would answer now, reserving nothing; net of `credits` (a replaced or joined lease's
    held shares, which the live store checks the plan without)."""
    if not credits:
        return await preview(store, plan, now)
    book = QuotaBook()
    held: dict[str, float] = {}
    for counter in plan.counters:
        held[counter.key] = await store.counter_value(plan.hash_tag, counter.key, now)
        book.values[(plan.hash_tag, counter.key)] = max(0.0, held[counter.key] - credits.get(counter.key, 0.0))
    result = book.reserve(replace(plan, replaces=None), now)
    # As the live store answers: the counters as they stand (the credit only moved the check).
    took = result.status is ReserveStatus.ADMITTED
    states = tuple(
        CounterState(s.key, held[s.key], s.amount, held[s.key] + (s.amount if took else 0.0)) for s in result.counters
    )
    return replace(result, counters=states)
