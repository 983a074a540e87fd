"""Re-decide recorded job submissions under another pack and registry, and count what would change."""

import re
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.core.catalogue import WeightsSettings
from gateway.core.codes import Code
from gateway.core.decide import Decision, Facts, decide, refuse
from gateway.core.jobs import Cost, JobPart, JobSpec
from gateway.core.leases import LeaseRef, ReserveStatus
from gateway.core.policy import Pack
from gateway.core.quota_book import LeaseKey, QuotaBook
from gateway.core.rebuild import parse_lease
from gateway.core.routes import RouteKind
from gateway.core.shared_lease import SharedLease
from gateway.core.submission import Job, judge, price_and_plan
from gateway.core.tenants import Kyc, KycStatus, Licence, LicenceScope, Registry, Tenant, Veu
from gateway.core.weights import (
    WeightsOp,
    WeightsQuestion,
    catalogue_facts,
    decide_weights,
    facts_from_record,
    lineage_status,
)

REDECIDED = ("submit", "update")
# Refusals decided before pricing on facts no pack changes; kept when the new pack admits.
STICKY = frozenset(
    {
        Code.BODY_TOO_LARGE,
        Code.JOB_UPDATE_NOT_ALLOWED,
        Code.REQUEST_IN_PROGRESS,
        Code.JOB_NOT_OWNED,
        Code.ROUTE_NEEDS_PROXY,  # asked of a decision entry, which never prices: no pack admits it there
    }
)
_YEAR = re.compile(r":[0-9]{4}$")


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded decision that would come out differently."""

    decision_id: str
    ts: float
    tenant: str | None
    countries: tuple[str, ...]
    old_tier: int | None
    new_tier: int | None
    old: str
    new: str
    unpriced: bool = False


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay found: how many decisions it re-decided and which would change."""

    pack: str
    facts: str
    decided: int
    changes: tuple[Change, ...]
    skipped: int = 0
    incomplete_facts: tuple[str, ...] = ()

    def transitions(self) -> dict[str, int]:
        """Changed decisions by `old -> new` outcome (a code, `allow`, or `shadow_deny:<code>`)."""
        return dict(sorted(Tally(f"{c.old} -> {c.new}" for c in self.changes).items()))

    def by_tier(self) -> dict[str, int]:
        """Changed decisions by `old tier -> new tier`."""
        return dict(sorted(Tally(f"{_tier(c.old_tier)} -> {_tier(c.new_tier)}" for c in self.changes).items()))

    def by_country(self) -> dict[str, int]:
        """Changed decisions under each distinct country of their tenant (one decision may count twice)."""
        return dict(sorted(Tally(country for c in self.changes for country in c.countries).items()))


def _tier(tier: int | None) -> str:
    return "none" if tier is None else str(tier)


def label(outcome: str, code: str | None) -> str:
    """How a decision is named in a report: `allow`, the refusal code, or `shadow_deny:<code>`."""
    if outcome == "allow":
        return "allow"
    if outcome == "shadow_deny":
        return f"shadow_deny:{code}"
    return code or "deny"


@dataclass(slots=True)
class TenantHints:
    """Facts about tenants that single records leave out, learnt from all of them."""

    groups: dict[str, str] = field(default_factory=dict)
    veu: dict[str, Veu] = field(default_factory=dict)
    incomplete: set[str] = field(default_factory=set)


def learn_hints(records: Sequence[Mapping[str, Any]]) -> TenantHints:
    """Parent groups from counter keys, VEU status from the basis, and who held facts the ledger lacks."""
    hints = TenantHints()
    for record in records:
        tenant = record.get("tenant")
        if record.get("kind") != "decision" or not isinstance(tenant, str):
            continue
        basis = record.get("basis")
        if basis in ("veu_national", "veu_universal"):
            hints.veu[tenant] = Veu.NATIONAL if basis == "veu_national" else Veu.UNIVERSAL
        if record.get("licences") or basis == "override" or str(basis).startswith("licence:"):
            hints.incomplete.add(tenant)
        lease = record.get("lease")
        for counter in lease.get("counters", []) if isinstance(lease, Mapping) else []:
            key = str(counter.get("key", "")) if isinstance(counter, Mapping) else ""
            key = key.removeprefix("licensed:")
            if key.startswith("group:"):
                hints.groups[tenant] = _YEAR.sub("", key.removeprefix("group:"))
            elif key.startswith("budget:"):
                hints.incomplete.add(tenant)
    return hints


def recorded_tenant(record: Mapping[str, Any], hints: TenantHints) -> Tenant | None:
    """The tenant as the record describes it: countries, KYC status, parent group and VEU status.

    The ledger keeps ids, countries and statuses only, so licences, cap overrides, budgets
    and declared training operations are absent; KYC counts as expired if the record's
    reasons said so (the record keeps the status, not the expiry date).
    """
    tenant_id, countries = record.get("tenant"), record.get("countries")
    if not isinstance(tenant_id, str) or not isinstance(countries, Mapping):
        return None
    codes = {r.get("code") for r in record.get("reasons") or [] if isinstance(r, Mapping)}
    try:
        status = KycStatus.EXPIRED if Code.KYC_EXPIRED.value in codes else KycStatus(str(record.get("kyc")))
    except ValueError:
        status = KycStatus.PENDING
    place = {role: value if isinstance(value, str) else None for role, value in countries.items()}
    return Tenant(
        id=tenant_id,
        display_name=tenant_id,
        identities=(),
        location=place.get("location"),
        headquarters=place.get("headquarters"),
        parent_headquarters=place.get("parent"),
        kyc=Kyc(status),
        parent_entity=hints.groups.get(tenant_id),
        veu=hints.veu.get(tenant_id, Veu.NONE),
    )


def _recorded_cost(raw: Any) -> Cost | None:
    if not isinstance(raw, Mapping):
        return None
    try:
        # Records before chip sizes were kept leave them 0: the job then splits as one unit.
        return Cost(float(raw["tpp"]), float(raw["tpp_hours"]), float(raw["training_ops"]),
                    float(raw["walltime_s"]), int(raw["gpus"]),
                    float(raw.get("chip_tpp_max", 0.0)), float(raw.get("chip_tpp_min", 0.0)))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def _spec(job: Mapping[str, Any]) -> JobSpec:
    parts = tuple(JobPart(int(p["gpus"]), p.get("model"), int(p.get("concurrency", 1))) for p in job.get("parts") or [])
    walltime = job.get("walltime_s")
    params = job.get("parameters")  # absent in records written before jobs declared it: none declared
    return JobSpec(parts, float(walltime) if walltime is not None else None, job.get("purpose"), job.get("lineage"),
                   parameters=float(params) if params is not None else None)  # fmt: skip


def _defaulted(spec: JobSpec) -> bool:
    """Whether the job left a part's GPU model to the adapter's default."""
    return any(p.model is None and p.gpus * p.concurrency > 0 for p in spec.parts)


@dataclass(slots=True)
class _Replayer:
    pack: Pack
    registry: Registry | None
    hints: TenantHints
    book: QuotaBook = field(default_factory=QuotaBook)
    leases: dict[str, LeaseKey] = field(default_factory=dict)  # decision id -> the lease it took in `book`
    replaces: dict[str, str] = field(default_factory=dict)
    jobs: dict[tuple[str, str], LeaseKey] = field(default_factory=dict)
    known_jobs: set[tuple[str, str]] = field(default_factory=set)
    blocked_cancels: set[str] = field(default_factory=set)
    decided: int = 0
    skipped: int = 0
    changes: list[Change] = field(default_factory=list)

    def tenant(self, record: Mapping[str, Any]) -> Tenant | None:
        if self.registry is None:
            return recorded_tenant(record, self.hints)
        return self.registry.tenants.get(str(record.get("tenant")))

    def follow(self, record: Mapping[str, Any]) -> None:
        """Apply a settle, refund, release or cancel to the simulated world."""
        kind, decision_id = record.get("kind"), str(record.get("decision_id"))
        upstream, job_id = record.get("upstream"), record.get("job_id")
        job = (upstream, job_id) if isinstance(upstream, str) and isinstance(job_id, str) else None
        if kind == "decision" and record.get("route_kind") == "true_up":
            parsed = parse_lease(record)  # what the scheduler allocated: held whatever the pack says
            if parsed is not None:
                lease_id, lease = parsed
                self.book.impose((lease.tag, lease_id), lease.end, ((d.key, d.kind, d.amount) for d in lease.debits))
                self.leases[lease_id] = (lease.tag, lease_id)
        elif kind == "decision" and record.get("route_kind") == "cancel" and record.get("decision") != "deny":
            admission = decide(Facts(_when(record), self.tenant(record), RouteKind.CANCEL), self.pack)
            if not admission.forwards:
                self.blocked_cancels.add(decision_id)
        elif kind == "refund" and decision_id in self.leases:
            self.book.refund(self.leases[decision_id])
        elif kind == "settle" and job is not None:
            self.known_jobs.add(job)
            if decision_id in self.leases:
                replaced = self.replaces.get(decision_id)
                if replaced is not None and (job[0], replaced) in self.jobs:
                    self.book.refund(self.jobs[(job[0], replaced)])  # an update gives the old lease back whole
                self.jobs[job] = self.leases[decision_id]
        elif kind == "extend" and job is not None and job in self.jobs:
            end, ts = record.get("end"), record.get("ts")
            if isinstance(end, int | float) and isinstance(ts, int | float):
                self.book.extend(self.jobs[job], float(end), float(ts))
        elif kind == "release" and job in self.jobs and decision_id not in self.blocked_cancels:
            assert job is not None
            # Cancelling one array task holds the job; a shared cluster lease other jobs use is held (`held_for`).
            if record.get("whole_job", True) is not False and not record.get("held_for"):
                self.book.release(self.jobs[job])

    def redecide_object(self, record: Mapping[str, Any]) -> None:
        """A decision on an object's weights (gateway/core/weights.py), remade under the replay's pack."""
        try:
            decision = redecide_weights(record, self.tenant(record), self.pack)
        except (KeyError, TypeError, ValueError):
            self.skipped += 1
            return
        if decision is not None:
            self._compare(record, decision)

    def _compare(self, record: Mapping[str, Any], decision: Decision, unpriced: bool = False) -> None:
        self.decided += 1
        old = label(str(record.get("decision")), record.get("code"))
        new = label(decision.outcome.value, decision.code.value if decision.code else None)
        if old != new:
            countries = record.get("countries") or {}
            distinct = tuple(sorted({c for c in countries.values() if isinstance(c, str)}))
            tenant = record.get("tenant")
            old_tier = record.get("tier")
            new_tier = int(decision.tier) if decision.tier is not None else None
            self.changes.append(Change(str(record.get("decision_id")), float(record.get("ts") or 0.0),
                                       tenant if isinstance(tenant, str) else None, distinct, old_tier, new_tier, old,
                                       new, unpriced))  # fmt: skip

    def redecide(self, record: Mapping[str, Any]) -> None:
        decision_id = record.get("decision_id")
        ts = record.get("ts")
        if not isinstance(decision_id, str) or not isinstance(ts, int | float):
            self.skipped += 1
            return
        try:
            decision, unpriced = self._decide(record, decision_id, float(ts))
        except (KeyError, TypeError, ValueError):
            self.skipped += 1
            return
        self.decided += 1
        old = label(str(record.get("decision")), record.get("code"))
        new = label(decision.outcome.value, decision.code.value if decision.code else None)
        old_tier = record.get("tier")
        new_tier = int(decision.tier) if decision.tier is not None else None
        if old != new:
            countries = record.get("countries") or {}
            distinct = tuple(sorted({c for c in countries.values() if isinstance(c, str)}))
            tenant = record.get("tenant")
            self.changes.append(Change(decision_id, float(ts), tenant if isinstance(tenant, str) else None,
                                       distinct, old_tier, new_tier, old, new, unpriced))  # fmt: skip

    def _decide(self, record: Mapping[str, Any], decision_id: str, ts: float) -> tuple[Decision, bool]:
        now = _when(record)
        tenant = self.tenant(record)
        admission = decide(Facts(now, tenant, RouteKind(record["route_kind"])), self.pack)
        if not admission.forwards or tenant is None:
            return admission, False
        recorded_code = record.get("code")
        if record.get("decision") == "deny" and recorded_code in STICKY:
            return refuse(Code(recorded_code), "as recorded", admission.tier), False
        parsed = parse_lease({**record, "decision": "allow"})
        replaced = parsed[1].replaces if parsed else None
        upstream = str(record.get("upstream"))
        if replaced is not None and (upstream, replaced) in self.known_jobs and (upstream, replaced) not in self.jobs:
            return refuse(Code.JOB_NOT_OWNED, "its submission would have been refused", admission.tier), False
        job = record.get("job")
        if not isinstance(job, Mapping):
            if record.get("decision") != "deny":
                return admission, False  # an update that changes no resources
            if recorded_code in (Code.JOB_SPEC_INVALID.value, Code.BACKEND_UNAVAILABLE.value):
                return refuse(Code(recorded_code), "as recorded", admission.tier), False
            return admission, True  # refused before its body was read: admitted, but unpriced
        spec = _spec(job)
        # The adapter's default model is not in the ledger: a job that left it to one keeps its recorded price.
        cost = _recorded_cost(record.get("cost")) if _defaulted(spec) else None
        if cost is None and _defaulted(spec) and self.pack.gpus is not None and self.pack.caps is not None:
            return refuse(Code(recorded_code or Code.JOB_SPEC_INVALID), "as recorded", admission.tier), False
        old = self.jobs.get((upstream, replaced)) if replaced is not None else None
        # Checked as if the job's old lease were given back, as the gateway does.
        lease = LeaseRef(old[0], tenant.id, old[1], None, ()) if old is not None else None
        joins = self._joins(record, upstream, tenant.id) if replaced is None else None
        priced = price_and_plan(admission, tenant, Job(spec, decision_id, upstream, replaced=lease, cost=cost,
                                                       joins=joins), self.pack, now)  # fmt: skip
        if isinstance(priced, Decision):
            return priced, False
        reserved = self.book.reserve(priced.plan, ts)
        if reserved.status is ReserveStatus.ADMITTED:
            self.leases[decision_id] = (priced.plan.hash_tag, decision_id)
        decision = judge(admission, priced, reserved, now)
        if decision.forwards and replaced is not None:
            self.replaces[decision_id] = replaced
        return decision, False

    def _joins(self, record: Mapping[str, Any], upstream: str, tenant_id: str) -> SharedLease | None:
        """The lease the replay holds the jobs a submission joined under (their shared cluster lease), if any."""
        lease = record.get("lease")
        shared = lease.get("shared_with") if isinstance(lease, Mapping) else None
        jobs = tuple(j for j in shared if isinstance(j, str)) if isinstance(shared, list) else ()
        held = [self.jobs[(upstream, j)] for j in jobs if (upstream, j) in self.jobs]
        return SharedLease(LeaseRef(held[0][0], tenant_id, held[0][1], None, ()), jobs) if held else None


def redecide_weights(record: Mapping[str, Any], tenant: Tenant | None, pack: Pack) -> Decision | None:
    """A recorded decision on an object's weights under `pack`: the lineage's recorded facts (the operations the
    gateway had counted, the object's declarations) with the pack's catalogue, thresholds, storage list and rules.

    None for a record with no weights decision to remake (a listing, an object of no lineage, a refusal before
    the weights rules were asked). Raises ValueError, TypeError or KeyError for a record that cannot be read.
    """
    weights = record.get("weights")
    if not isinstance(weights, Mapping) or weights.get("op") not in ("read", "write") or tenant is None:
        return None
    raw = weights.get("lineage")
    now = _when(record)
    admission = decide(Facts(now, tenant, RouteKind(record["route_kind"])), pack)
    if not isinstance(raw, Mapping):
        return admission if "basis" in weights else None
    recorded = facts_from_record(raw)
    settings = pack.weights or WeightsSettings()
    facts = catalogue_facts(settings, recorded.lineage, now.date(), counted_ops=recorded.counted_ops,
                            counted_bio_ops=recorded.counted_bio_ops, parameters=recorded.parameters,
                            data_domain=recorded.data_domain,
                            counted_param_jobs=recorded.counted_param_jobs)  # fmt: skip
    basis = str(weights.get("basis", ""))
    if basis.startswith("licence:") and not any(lic.id == basis[8:] for lic in tenant.licences):
        # The ledger keeps the licence's id, not the licence: a recorded tenant holds the one it showed.
        lic = Licence(basis[8:], frozenset({LicenceScope.WEIGHTS}), lineage=recorded.lineage)
        tenant = replace(tenant, licences=(*tenant.licences, lic))
    status = lineage_status(facts, settings, pack, now)
    question = WeightsQuestion(WeightsOp(weights["op"]), tenant, status, str(weights["bucket"]))
    return decide_weights(question, admission, settings, pack, now).decision


def _when(record: Mapping[str, Any]) -> datetime:
    return datetime.fromtimestamp(float(record.get("ts") or 0.0), UTC)


def replay(records: Sequence[Mapping[str, Any]], pack: Pack, registry: Registry | None = None) -> ReplayReport:
    """Re-decide every recorded submission and update, in order, simulating quota state forward.

    Records must be in time order. Tenant facts come from `registry` when given (the file as
    it is now, for all of history), else from each record (see `recorded_tenant`). Follow-up
    records apply to the simulated world: refunds and settles to leases the replay admitted,
    releases to jobs whose submission it admitted; leases end by each record's time.
    """
    replayer = _Replayer(pack, registry, learn_hints(records))
    for record in records:
        if record.get("kind") in ("decision", "access") and isinstance(record.get("weights"), Mapping):
            replayer.redecide_object(record)
        elif record.get("kind") == "decision" and record.get("route_kind") in REDECIDED:
            replayer.redecide(record)
        else:
            replayer.follow(record)
    incomplete = () if registry is not None else tuple(sorted(replayer.hints.incomplete))
    facts = f"registry {registry.version}" if registry is not None else "recorded"
    return ReplayReport(
        pack=f"{pack.name} {pack.version} {pack.content_hash[:12]}",
        facts=facts,
        decided=replayer.decided,
        changes=tuple(replayer.changes),
        skipped=replayer.skipped,
        incomplete_facts=incomplete,
    )
