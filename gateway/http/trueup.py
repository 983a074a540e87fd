"""Reconciliation's read-back: price what the scheduler allocated to a leased job, and true its lease up or down.

The job's held capacity is leased again at what it really holds (the new lease is checked as if
the old one were given back, as an update is), the old lease's held shares are released, and the
job's ownership moves to the new lease; cumulative debits stay where admission put them. Each
true-up is a `decision` record (`route_kind: true_up`, with the new lease) written before anything
moves, then a `release` of the old lease and a `settle` of the new one: rebuilds and replays apply
them as they apply updates. A job that holds more than its lease and goes over a cap once charged
for it is still charged (its count must be true), and then handled by the pack's
`enforcement.over_allocation`: `cancel` (an `over_allocation` record, then the scheduler's own
cancel as the job's owner) or `alert` (the record and a metric; the job runs on).
"""

import contextlib
import logging
from dataclasses import asdict
from datetime import UTC, datetime

from gateway.adapters.ids import new_decision_id
from gateway.adapters.ledger.writer import LedgerUnavailable
from gateway.adapters.quota import BackendUnavailable
from gateway.adapters.upstream import Upstream
from gateway.core.decide import Decision, Facts, decide
from gateway.core.jobs import JobPart, JobSpec
from gateway.core.leases import Plan, ReserveStatus, StoredResponse
from gateway.core.policy import Action
from gateway.core.records import decision_body, followup_body
from gateway.core.routes import RouteKind
from gateway.core.submission import Job, Priced, judge, price_and_plan
from gateway.core.tenants import Tenant
from gateway.core.trueup import direction, forced, held_only, leased_tpp
from gateway.http.reconcile_parts import ReconcileParts
from gateway.schedulers.base import JobView

log = logging.getLogger(__name__)


class TrueUp:
    """Trues leases to what schedulers allocated; a job's allocation seen before and unchanged costs nothing."""

    def __init__(self, parts: ReconcileParts) -> None:
        self.store, self.ledger, self.policy, self.metrics = parts.store, parts.ledger, parts.policy, parts.metrics
        self.clock, self.send, self._error = parts.clock, parts.send, parts.backend_error
        self._seen: dict[tuple[str, str], tuple[tuple[JobPart, ...], bool]] = {}

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop what is remembered of jobs no longer owned."""
        self._seen = {job: parts for job, parts in self._seen.items() if job in keep}

    async def check(
        self, upstream: Upstream, tenant: Tenant, job_id: str, view: JobView, walltime_s: float
    ) -> str | None:
        """True the job's lease to `view.allocated`; the outcome (`up`, `down`, `over_allocation`, `error`) or None."""
        if view.allocated is None or upstream.adapter is None:
            return None
        key = (upstream.name, job_id)
        seen = (view.allocated, view.settled)
        if self._seen.get(key) == seen:
            return None
        try:
            amounts = await self.store.held_amounts(upstream.name, job_id)
            owner = await self.store.owner_of(upstream.name, job_id)
        except BackendUnavailable as exc:
            self._error("quota", f"reading the lease of {job_id} on {upstream.name}: {exc}")
            return "error"
        if amounts is None or owner is None or owner.tenant_id != tenant.id:
            return None
        pack, now = self.policy.pack, self.clock()
        when = datetime.fromtimestamp(now, UTC)
        admission = decide(Facts(when, tenant, RouteKind.UPDATE), pack)
        if admission.tier is None:
            return None  # the tenant's countries no longer resolve: nothing can be priced; its lease stays
        decision_id = new_decision_id()
        spec = JobSpec(parts=view.allocated, walltime_s=view.walltime_s or walltime_s)
        job = Job(spec, decision_id, upstream.name, upstream.adapter.default_gpu_model, replaced=owner.lease)
        priced = price_and_plan(admission, tenant, job, pack, when)
        if isinstance(priced, Decision):
            why = priced.reasons[-1].detail if priced.reasons else priced.code
            log.warning("reconcile: what job %s on %s was allocated cannot be priced: %s", job_id, upstream.name, why)
            self._seen[key] = seen
            return None
        plan = held_only(priced.plan)
        leased = leased_tpp(plan, amounts)
        way = None if leased is None else direction(priced.cost.held_tpp, leased, settled=view.settled)
        self._seen[key] = seen
        if way is None or leased is None:
            return None
        try:
            result = await self.store.reserve(plan, now)
            over: tuple[str, ...] = ()
            if result.status is ReserveStatus.DENIED:  # charged all the same: the job holds it now
                plan = forced(plan)
                result = await self.store.reserve(plan, now)
                over = result.shadow
        except BackendUnavailable as exc:
            self._error("quota", f"true-up of {job_id} on {upstream.name}: {exc}")
            return "error"
        if result.status is not ReserveStatus.ADMITTED:
            return "error"
        decision = judge(admission, Priced(priced.cost, plan), result, when)
        action = pack.enforcement.over_allocation if over else None
        record = decision_body(
            decision_id=decision_id, ts=now, tenant=tenant, identity=None, client_ip="", route="reconcile.true_up",
            route_kind="true_up", method="RECONCILE", path=upstream.adapter.status_path(job_id) or "",
            upstream=upstream.name, decision=decision, pack=pack, registry_version=self.policy.registry.version,
            job={"parts": [asdict(p) for p in spec.parts], "walltime_s": spec.walltime_s}, entry="reconcile",
        )  # fmt: skip
        record |= {
            "job_id": job_id, "direction": way.value, "leased_tpp": leased, "replaced_lease": owner.lease.lease_id,
            "over_allocation": list(over), "action": action.value if action else None,
        }  # fmt: skip
        try:
            await self.ledger.append(record, wait=True)
        except LedgerUnavailable as exc:
            await self._undo(plan, f"ledger: {exc}")
            return "error"
        await self._move(upstream, tenant, job_id, owner.lease.lease_id, plan, now)
        self.metrics.true_ups.labels(way.value, action.value if action else "none").inc()
        log.info("reconcile: job %s on %s holds %.0f TPP, its lease held %.0f; trued %s",
                 job_id, upstream.name, priced.cost.held_tpp, leased, way.value)  # fmt: skip
        if action is None:
            return way.value
        await self._over_allocated(upstream, tenant, job_id, decision_id, over, action)
        return "over_allocation"

    async def _move(self, upstream: Upstream, tenant: Tenant, job_id: str, old: str, plan: Plan, now: float) -> None:
        """Release the old lease's held shares, then own the job under the new lease; record both."""
        base = {"tenant": tenant.id, "upstream": upstream.name, "job_id": job_id}
        try:
            released = await self.store.release_job(upstream.name, job_id, now)
            await self.store.complete(plan, upstream=upstream.name, job_id=job_id,
                                      response=StoredResponse(200, (), b""), now=now)  # fmt: skip
        except BackendUnavailable as exc:
            self._error("quota", f"moving {job_id} on {upstream.name} to its trued-up lease: {exc}")
            return  # both leases may be held: an over-count until the next true-up or the job's end
        try:
            await self.ledger.append(followup_body("release", old, now, **base, released=released, whole_job=True,
                                                   reason="true_up"), wait=False)  # fmt: skip
            await self.ledger.append(followup_body("settle", plan.decision_id, now, **base, status=200, settled=True),
                                     wait=False)  # fmt: skip
        except LedgerUnavailable as exc:
            self._error("ledger", f"true-up follow-ups of {job_id} on {upstream.name}: {exc}")

    async def _over_allocated(
        self, upstream: Upstream, tenant: Tenant, job_id: str, decision_id: str, over: tuple[str, ...], action: Action
    ) -> None:
        """Record that the job is over a cap, then cancel it through the scheduler when the pack says so."""
        assert upstream.adapter is not None
        cancel = upstream.adapter.cancel_request(job_id) if action is Action.CANCEL else None
        body = followup_body("over_allocation", decision_id, self.clock(), tenant=tenant.id, upstream=upstream.name,
                             job_id=job_id, counters=list(over), action=action.value,
                             cancelled=cancel is not None)  # fmt: skip
        try:
            await self.ledger.append(body, wait=True)
        except LedgerUnavailable as exc:
            self._error("ledger", f"over-allocation record of {job_id} on {upstream.name}: {exc}; not cancelled")
            return
        log.warning("reconcile: job %s on %s holds more than its lease and is over %s; %s",
                    job_id, upstream.name, ", ".join(over), "cancelling it" if cancel else "alert only")  # fmt: skip
        if cancel is not None:
            answered = await self.send(upstream, tenant, *cancel)
            if answered is None or answered[0] >= 300:
                log.error("reconcile: cancelling over-allocated job %s on %s: %s", job_id, upstream.name,
                          "no answer" if answered is None else f"answered {answered[0]}")  # fmt: skip

    async def _undo(self, plan: Plan, why: str) -> None:
        with contextlib.suppress(BackendUnavailable):  # else the new lease ends at its own end: an over-count
            await self.store.refund(plan, self.clock())
        self._error("ledger", f"true-up not recorded ({why}); its reservation is given back")
