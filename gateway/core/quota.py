"""Quota planning: the counters a job debits, under which caps, and the lease it asks the store for."""

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime

from gateway.core.caps import CapSettings, LppCount, VeuStep
from gateway.core.catalogue import WeightsSettings
from gateway.core.codes import Code
from gateway.core.decide import Decision, Reason, refuse, verdict
from gateway.core.jobs import Cost
from gateway.core.leases import (
    QUOTA_SLOT,
    Counter,
    CounterKind,
    CounterState,
    LeaseRef,
    Owner,
    Plan,
    ReserveResult,
    ReserveStatus,
    Share,
    StoredResponse,
    split_amounts,
)
from gateway.core.policy import Pack, RuleId
from gateway.core.tenants import BudgetPeriod, Licence, LicenceScope, Tenant, Veu
from gateway.core.tiers import Tier, TierTable
from gateway.core.weights import (
    catalogue_facts,
    lineage_bio_ops_key,
    lineage_ops_key,
    lineage_params_key,
    sci,
    weights_licence,
)

TOTAL_LINEAGE = "*"

# Re-exported: the quota vocabulary is read through this module.
__all__ = [
    "QUOTA_SLOT", "CapSettings", "Counter", "CounterKind", "CounterState", "LeaseRef", "LppCount", "Owner",
    "Plan", "ReserveResult", "ReserveStatus", "Share", "StoredResponse", "VeuStep",
    "allocation_countries", "plan_reservation", "split_amounts",
]  # fmt: skip


COUNTRY_PREFIX = "country:"


def country_key(country: str) -> str:
    """The counter of a country's allocation."""
    return COUNTRY_PREFIX + country


def country_of_key(key: str) -> str | None:
    """The country a counter key is the allocation of, or None for other counters."""
    return key[len(COUNTRY_PREFIX) :] if key.startswith(COUNTRY_PREFIX) else None


def allocation_countries(tenant: Tenant, tiers: TierTable, day: date) -> tuple[str, ...]:
    """The countries whose allocation capacity a licence grants beyond the allowance draws on.

    Allocations are per destination country, so these are the countries the tenant itself is
    located and headquartered in (both when they differ: the conservative reading), never its
    group's parent's. A Tier 1 country has no allocation and is never drawn on; a Tier 3
    country (reached only while the Tier 3 rule is in shadow) is counted like Tier 2. Aliases
    apply (Hong Kong draws on China's).
    """
    out: list[str] = []
    for country in (tenant.location, tenant.headquarters):
        if country is None:
            continue
        code = tiers.aliases.get(country, country)
        if tiers.tier_of(code, day) is not Tier.ONE and code not in out:
            out.append(code)
    return tuple(out)


def epoch(now: datetime) -> float:
    """Seconds since the epoch; a naive `now` is taken as UTC."""
    return (now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp()


def _valid(licence: Licence, day: date) -> bool:
    # Same convention as KYC: the expiry date itself is no longer covered.
    return licence.expires is None or day < licence.expires


def _rule(pack: Pack, rule_id: RuleId, now: datetime) -> tuple[bool, str]:
    rule = pack.rule(rule_id)
    return rule.enforced_on(now), rule.citation


@dataclass(frozen=True, slots=True)
class _Held:
    counters: tuple[Counter, ...]
    basis: str
    allowance_basis: str
    licence_ids: tuple[str, ...]


def _chips(cost: Cost) -> tuple[float, float]:
    """The dearest and cheapest chip's TPP; a cost that does not know them is one indivisible chip."""
    if cost.chip_tpp_max > 0 and cost.chip_tpp_min > 0:
        return cost.chip_tpp_max, cost.chip_tpp_min
    return cost.held_tpp, cost.held_tpp


def _held(tenant: Tenant, tier: Tier, cost: Cost, pack: Pack, caps: CapSettings, now: datetime) -> _Held:
    enforced, citation = _rule(pack, RuleId.TENANT_CAP, now)
    tpp = cost.held_tpp

    def tenant_counter(key: str, cap: float | None, kind: CounterKind, share: Share) -> Counter:
        # Only a HEADROOM split needs the chip sizes: it keeps whole chips under the allowance.
        chip_max, chip_min = _chips(cost) if share is Share.HEADROOM else (0.0, 0.0)
        return Counter(
            key,
            tpp,
            cap,
            kind,
            Code.QUOTA_TENANT_TPP,
            RuleId.TENANT_CAP,
            enforced,
            share=share,
            citation=citation,
            chip_max=chip_max,
            chip_min=chip_min,
        )

    override = tenant.tpp_cap
    subject = f"group:{tenant.parent_entity}" if tenant.parent_entity else f"tenant:{tenant.id}"
    if tier is Tier.ONE or tenant.veu is not Veu.NONE:
        if tier is Tier.ONE:
            key, cap = subject, caps.tier1_cap_tpp
            basis = "tier1_uncapped" if cap is None else "tier1_cap"
        elif tenant.veu is Veu.NATIONAL:
            key, cap, basis = f"veu:{tenant.id}", caps.national_veu_cap(now.date()), "veu_national"
        else:
            key, cap, basis = f"veu:{tenant.id}", caps.universal_veu_cap_tpp, "veu_universal"
        if override is not None:
            cap, basis = override, "override"
        counter = tenant_counter(key, cap, CounterKind.HELD, Share.FIXED)
        return _Held((counter,), basis, basis, ())
    allowance = caps.lpp_tpp if override is None else override
    allowance_basis = "lpp" if override is None else "override"
    licensed_key, kind = f"licensed:{subject}", CounterKind.HELD
    if caps.lpp_count is LppCount.CALENDAR_YEAR:
        subject, kind = f"{subject}:{now.year:04d}", CounterKind.CUMULATIVE
    day = now.date()
    valid = [lic for lic in tenant.licences if _valid(lic, day)]
    lifting = [lic for lic in valid if LicenceScope.TENANT_CAP in lic.lifts]
    if not lifting:
        counter = tenant_counter(subject, allowance, kind, Share.FIXED)
        return _Held((counter,), allowance_basis, allowance_basis, ())
    # Capacity within the allowance draws on no country cap; what a licence grants beyond it
    # draws on both the licensed allotment and the allocation of each Tier 2 country the
    # tenant is located or headquartered in (each takes the whole overflow).
    allotments = [lic.tpp for lic in lifting]
    licensed_cap = None if any(a is None for a in allotments) else sum(a or 0.0 for a in allotments)
    country_lifters = [lic for lic in valid if LicenceScope.COUNTRY_CAP in lic.lifts]
    country_enforced, country_citation = _rule(pack, RuleId.COUNTRY_CAP, now)
    countries = tuple(
        Counter(
            country_key(cc),
            tpp,
            None if country_lifters else caps.country_cap(cc),
            CounterKind.HELD,
            Code.QUOTA_COUNTRY_TPP,
            RuleId.COUNTRY_CAP,
            country_enforced,
            share=Share.OVERFLOW,
            citation=country_citation,
        )
        for cc in allocation_countries(tenant, pack.tiers, now.date())
    )
    counters = (
        tenant_counter(subject, allowance, kind, Share.HEADROOM),
        tenant_counter(licensed_key, licensed_cap, CounterKind.HELD, Share.OVERFLOW),
        *countries,
    )
    ids = tuple(dict.fromkeys(lic.id for lic in [*lifting, *country_lifters]))
    basis = "licence:" + "+".join(lic.id for lic in lifting)
    return _Held(counters, basis, allowance_basis, ids)


def _ops(
    tenant: Tenant,
    tier: Tier,
    ops: float,
    lineage: str | None,
    purpose: str | None,
    pack: Pack,
    caps: CapSettings,
    now: datetime,
) -> tuple[tuple[Counter, ...], tuple[str, ...], tuple[str, ...]]:
    """The training-operations counters, the licences lifting them, and the exemptions that skipped them.

    An exemption is the pack's (an exempt lineage) or the tenant's own certification (a
    declared exempt purpose, such as inference); it is named (`lineage:<name>`,
    `purpose:<purpose>`) so the ledger shows why the operations were not counted.
    """
    name = lineage or "default"
    if tier is Tier.ONE or ops <= 0:
        return (), (), ()
    if name in caps.exempt_lineages:
        return (), (), (f"lineage:{name}",)
    if purpose is not None and purpose in caps.exempt_purposes:
        return (), (), (f"purpose:{purpose}",)
    enforced, citation = _rule(pack, RuleId.TRAINING_THRESHOLD, now)
    day = now.date()
    licences = [lic for lic in tenant.licences if _valid(lic, day) and LicenceScope.TRAINING_THRESHOLD in lic.lifts]

    def covered(lin: str) -> list[Licence]:
        return [lic for lic in licences if lic.lineage is None or lic.lineage == lin]

    def counter(key: str, cap: float | None, base: float, reach: bool) -> Counter:
        return Counter(
            key,
            ops,
            cap,
            CounterKind.CUMULATIVE,
            Code.LICENCE_REQUIRED,
            RuleId.TRAINING_THRESHOLD,
            enforced,
            base,
            reach,
            citation=citation,
        )

    declared = tenant.declared_training_ops
    mine = covered(name)
    if mine:
        # A licence lifts the threshold for its lineage: metered, capped only by its allotment,
        # and kept out of the across-lineage total that catches renamed models.
        allotments = [lic.training_ops for lic in mine]
        cap = None if any(a is None for a in allotments) else max(a or 0.0 for a in allotments)
        key = f"ops:{tenant.id}:{name}"
        return (counter(key, cap, declared.get(name, 0.0), False),), tuple(lic.id for lic in mine), ()
    threshold = caps.training_threshold_ops
    out = [counter(f"ops:{tenant.id}:{name}", threshold, declared.get(name, 0.0), True)]
    if caps.per_tenant_total:
        base = sum(v for k, v in declared.items() if k != TOTAL_LINEAGE and not covered(k))
        out.append(counter(f"ops:{tenant.id}:{TOTAL_LINEAGE}", threshold, base, True))
    return tuple(out), (), ()


def _lineage(
    cost: Cost, lineage: str | None, purpose: str | None, pack: Pack, caps: CapSettings
) -> tuple[Counter, ...]:
    """The lineage's own training-operations meters: every admitted job declaring it, whatever its tenant's tier.

    `lineage_ops:<lineage>` (uncapped, cumulative) is what makes a lineage's weights controlled
    (gateway/core/weights.py); `lineage_bio_ops:<lineage>` the part of it from jobs whose declared
    purpose is a biological-sequence data domain of the pack's weights.yaml. A declared exempt
    purpose (inference) trains nothing and adds to neither.
    """
    if lineage is None or cost.training_ops <= 0 or (purpose is not None and purpose in caps.exempt_purposes):
        return ()
    rule = pack.rule(RuleId.WEIGHTS_OPS)

    def meter(key: str) -> Counter:
        return Counter(key, cost.training_ops, None, CounterKind.CUMULATIVE, Code.WEIGHTS_CONTROLLED,
                       RuleId.WEIGHTS_OPS, True, citation=rule.citation)  # fmt: skip

    out = [meter(lineage_ops_key(lineage))]
    if pack.weights is not None and purpose is not None and purpose in pack.weights.bio_data_domains:
        out.append(meter(lineage_bio_ops_key(lineage)))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Parameters:
    meters: tuple[Counter, ...] = ()
    objection: Reason | None = None
    licence_ids: tuple[str, ...] = ()


def _parameters(tenant: Tenant, tier: Tier, parameters: float | None, lineage: str | None, pack: Pack,
                now: datetime) -> _Parameters:  # fmt: skip
    """The parameter threshold (rule `weights_parameters`, weights.yaml `thresholds.parameters`) on a job that
    declares its model's parameter count.

    A count over the threshold (the rule's "over 1e23 parameters", as for objects) meters the job's lineage:
    `lineage_params_declared:<lineage>` takes 1 per admitted job, whatever the tier, uncapped, and any count
    there makes the lineage's weights controlled (gateway/core/weights.py). A tenant outside Tier 1 needs a
    valid licence lifting `weights` that names the job's lineage (the licence reading and holding those
    weights needs; a job declaring no lineage cannot be covered by one), else `licence_required`: enforced
    from the rule's date, shadow before. A lineage the catalogue has published or exempt that day is not
    controlled, and needs no licence.
    """
    settings = pack.weights or WeightsSettings()
    threshold = settings.parameters
    if parameters is None or threshold is None or parameters <= threshold:
        return _Parameters()
    rule = pack.rule(RuleId.WEIGHTS_PARAMETERS)
    meters: tuple[Counter, ...] = ()
    if lineage is not None:
        meters = (Counter(lineage_params_key(lineage), 1.0, None, CounterKind.CUMULATIVE, Code.WEIGHTS_CONTROLLED,
                          RuleId.WEIGHTS_PARAMETERS, True, citation=rule.citation),)  # fmt: skip
    if tier is Tier.ONE:
        return _Parameters(meters)
    day = now.date()
    if lineage is not None:
        facts = catalogue_facts(settings, lineage, day)
        if facts.published or facts.exempt is not None:
            return _Parameters(meters)
        licence = weights_licence(tenant, lineage, day)
        if licence is not None:
            return _Parameters(meters, licence_ids=(licence,))
    model = f"lineage {lineage}" if lineage is not None else "a model of no declared lineage"
    detail = (
        f"the job declares {sci(parameters)} parameters for {model}, over the licence trigger of {sci(threshold)} "
        f"(rule {RuleId.WEIGHTS_PARAMETERS.value}); a tenant outside Tier 1 needs a licence lifting weights that "
        "names the lineage" + ("" if lineage is not None else ": declare the lineage the licence names")
    )
    objection = Reason(Code.LICENCE_REQUIRED, RuleId.WEIGHTS_PARAMETERS, rule.enforced_on(now), detail, rule.citation)
    return _Parameters(meters, objection)


def _budget(tenant: Tenant, cost: Cost, pack: Pack, now: datetime) -> tuple[Counter, ...]:
    budget = tenant.budget
    if budget is None:
        return ()
    enforced, citation = _rule(pack, RuleId.BUDGET, now)
    period = f"{now.year:04d}-{now.month:02d}" if budget.period is BudgetPeriod.MONTH else f"{now.year:04d}"
    return (
        Counter(
            f"budget:{tenant.id}:{period}",
            cost.tpp_hours,
            budget.tpp_hours,
            CounterKind.CUMULATIVE,
            Code.QUOTA_BUDGET_EXHAUSTED,
            RuleId.BUDGET,
            enforced,
            citation=citation,
        ),
    )


def plan_reservation(
    tenant: Tenant,
    tier: Tier,
    cost: Cost,
    lineage: str | None,
    purpose: str | None,
    pack: Pack,
    caps: CapSettings,
    now: datetime,
    *,
    decision_id: str,
    idempotency_key: str | None,
    upstream: str,
    parameters: float | None = None,
) -> Plan | Decision:
    """The counters a job debits and the lease it takes, or a refusal that needs no counter.

    `tier` is the tenant's resolved tier (the most restrictive of its three countries). A
    Tier 3 tenant only gets here when the Tier 3 rule is in shadow; it is then mapped like
    Tier 2, so its capacity is still counted. `parameters` is the model's parameter count the
    job declares (see `_parameters`): over the pack's threshold without a licence, a refusal
    (enforced) or an objection the plan carries (shadow).
    """
    if not tenant.location or not tenant.headquarters or (tenant.parent_entity and not tenant.parent_headquarters):
        return refuse(
            Code.TENANT_COUNTRY_UNKNOWN,
            "a country the tenant's caps are chosen by (location, headquarters, group parent) is unknown",
            tier,
        )
    amounts = (cost.held_tpp, cost.tpp_hours, cost.training_ops, cost.walltime_s)
    if any(not math.isfinite(a) or a < 0 for a in amounts):
        return refuse(Code.JOB_SPEC_INVALID, "the job's price is negative or not a finite number", tier)
    if lineage == TOTAL_LINEAGE:
        return refuse(Code.JOB_SPEC_INVALID, f"lineage {TOTAL_LINEAGE!r} is reserved", tier)
    utc = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(UTC)
    params = _parameters(tenant, tier, parameters, lineage, pack, utc)
    if params.objection is not None and params.objection.enforced:
        return verdict(tier, (params.objection,))
    held = _held(tenant, tier, cost, pack, caps, utc)
    ops, ops_licences, exemptions = _ops(tenant, tier, cost.training_ops, lineage, purpose, pack, caps, utc)
    meters = (*_lineage(cost, lineage, purpose, pack, caps), *params.meters)
    counters = tuple(c for c in (*held.counters, *ops, *_budget(tenant, cost, pack, utc), *meters) if c.amount > 0)
    return Plan(
        hash_tag=QUOTA_SLOT,
        tenant_id=tenant.id,
        decision_id=decision_id,
        idempotency_key=idempotency_key,
        upstream=upstream,
        tier=tier,
        lease_end=epoch(utc) + cost.walltime_s + caps.pending_allowance_s,
        counters=counters,
        basis=held.basis,
        allowance_basis=held.allowance_basis,
        licence_ids=tuple(dict.fromkeys((*held.licence_ids, *ops_licences, *params.licence_ids))),
        exemptions=exemptions,
        reasons=(params.objection,) if params.objection is not None else (),
    )
