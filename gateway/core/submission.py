"""The whole verdict on a job submission or update, shared by live handling and replay."""

from dataclasses import dataclass, replace
from datetime import datetime

from gateway.core.codes import Code
from gateway.core.decide import Decision, refuse, verdict
from gateway.core.jobs import Cost, JobSpec, JobSpecInvalid
from gateway.core.leases import LeaseRef, Plan, ReserveResult
from gateway.core.policy import Pack
from gateway.core.pricing import price
from gateway.core.quota import plan_reservation
from gateway.core.quota_verdict import interpret
from gateway.core.shared_lease import SharedLease, uncredited
from gateway.core.tenants import Tenant


@dataclass(frozen=True, slots=True)
class Priced:
    """A job priced and planned: what it costs and the lease it asks the store for."""

    cost: Cost
    plan: Plan
    replaces_job: str | None = None
    joins: SharedLease | None = None  # the tenant's shared cluster lease this job joins


@dataclass(frozen=True, slots=True)
class Job:
    """What the request says about the job, gathered by the shell before pricing it."""

    spec: JobSpec
    decision_id: str
    upstream: str
    default_model: str | None = None
    idempotency_key: str | None = None
    replaces_job: str | None = None  # an update: the job whose lease the new one replaces
    replaced: LeaseRef | None = None  # ...and that lease, checked as if it were given back
    cost: Cost | None = None  # already known (replay of a record whose model was a default)
    # A shared-lease upstream (Ray priced at its cluster): the tenant's live lease there, which the job joins;
    # checked as if its held shares were given back (its cumulative debits stay: see shared_lease).
    joins: SharedLease | None = None


def price_and_plan(admission: Decision, tenant: Tenant, job: Job, pack: Pack, now: datetime) -> Priced | Decision:
    """Price the job and plan its reservation, or the refusal that needs no counter."""
    if pack.gpus is None or pack.caps is None:
        detail = f"policy pack {pack.name} has no GPU catalogue or caps; submissions cannot be priced"
        return refuse(Code.BACKEND_UNAVAILABLE, detail, admission.tier)
    cost = job.cost
    if cost is None:
        try:
            cost = price(job.spec, pack.gpus, job.default_model, pack.gpus.utilisation)
        except JobSpecInvalid as exc:
            return refuse(Code.JOB_SPEC_INVALID, str(exc), admission.tier)
    assert admission.tier is not None  # an admitted tenant has a tier
    planned = plan_reservation(
        tenant, admission.tier, cost, job.spec.lineage, job.spec.purpose, pack, pack.caps, now,
        decision_id=job.decision_id, idempotency_key=job.idempotency_key, upstream=job.upstream,
        parameters=job.spec.parameters,
    )  # fmt: skip
    if isinstance(planned, Decision):
        if any(r.rule is not None for r in planned.reasons):  # a pack rule's refusal: admission's shadow reasons stay
            planned = verdict(admission.tier, admission.reasons + planned.reasons, planned.basis)
        return replace(planned, cost=cost)
    if job.replaced is not None:  # an update: checked as if the job's old lease were given back
        planned = replace(planned, replaces=job.replaced)
    elif job.joins is not None:  # a job joining its tenant's cluster lease: checked net of its held shares
        planned = replace(planned, replaces=job.joins.lease)
    return Priced(cost, planned, job.replaces_job, job.joins if job.replaced is None else None)


def judge(admission: Decision, priced: Priced, result: ReserveResult, now: datetime) -> Decision:
    """The decision: admission's reasons and the quota's, the basis, the cost and the quota outcome."""
    if priced.joins is not None:  # the store credited the joined lease's cumulative debits too: not theirs to give
        result = uncredited(priced.plan, result)
    quota = interpret(priced.plan, result, now)
    decision = verdict(admission.tier, admission.reasons + quota.reasons, quota.basis)
    outcome = replace(quota.quota, replaces_job=priced.replaces_job) if quota.quota is not None else None
    if outcome is not None and priced.joins is not None:
        outcome = replace(outcome, joins_lease=priced.joins.lease.lease_id, shared_with=priced.joins.jobs)
    return replace(decision, cost=priced.cost, quota=outcome)
