"""An explanation of a decision as plain data: reasons and rules, the tier's path, the price, the caps' room.

`exportgate explain` and `POST /admin/v1/explain` gather the facts (the shell: gateway/http/explain.py)
and decide with the same functions the proxy does; this module only lays the result out, so the
two agree on the decision by construction and differ only in how they show it.
"""

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from gateway.core.codes import CODES
from gateway.core.decide import Decision, Outcome
from gateway.core.headroom import cap_name, headrooms
from gateway.core.jobs import JobSpec
from gateway.core.leases import Counter, Plan, ReserveResult
from gateway.core.policy import Pack, RuleId
from gateway.core.pricing import GpuCatalogue
from gateway.core.tenants import KycStatus, Tenant
from gateway.core.tiers import TierPath, deciding_detail

# The rules every admitted tenant is checked against, and those a priced job's counters add.
ADMISSION_RULES = (RuleId.TIER3, RuleId.KYC)


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _number(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded amount is null."""
    return value if value is not None and math.isfinite(value) else None


def parse_at(value: object) -> float:
    """A date to decide on, as epoch seconds: epoch seconds, or an ISO 8601 date or date-time (naive: UTC)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("an ISO 8601 date or date-time, or epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value < 253402300800:  # before 10000-01-01
            raise ValueError("epoch seconds out of range")
        return float(value)
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 date or date-time") from None
    ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    if ts < 0:
        raise ValueError("dates before 1970 are not decided on")
    return ts


def status_of(decision: Decision) -> int:
    """What the client would be answered: the refusal's status, or 200 for a request that goes through."""
    code = decision.code
    return CODES[code].status if decision.outcome is Outcome.DENY and code is not None else 200


def tier_record(path: TierPath) -> dict[str, Any]:
    """The tier, the countries it was resolved from, and which of them made it (and from which dated list)."""
    rows = []
    for c in path.countries:
        listed = c.listed
        rows.append(
            {
                "role": c.role,
                "country": c.country,
                "counted_as": c.counted_as,
                "tier": int(c.tier) if c.tier is not None else None,
                "list": None if c.tier is None else {3: "tier3", 1: "tier1"}.get(int(c.tier), "tier2 (not listed)"),
                "listed_since": _day(listed.since) if listed else None,
                "listed_until": _day(listed.until) if listed else None,
                "deciding": c in path.deciding,
            }
        )
    return {
        "tier": int(path.tier) if path.tier is not None else None,
        "deciding": [c.role for c in path.deciding],
        "detail": deciding_detail(path) if path.tier is not None else "a country is missing or not ISO 3166-1",
        "countries": rows,
    }


def tenant_record(tenant: Tenant, today: date) -> dict[str, Any]:
    """Who the tenant is for the decision: countries, KYC (as on `today`), group, VEU, licences."""
    kyc = tenant.kyc
    expired = kyc.status is KycStatus.EXPIRED or (
        kyc.status is KycStatus.VERIFIED and kyc.expires_at is not None and kyc.expires_at <= today
    )
    return {
        "id": tenant.id,
        "name": tenant.display_name,
        "countries": tenant.countries(),
        "kyc": {
            "status": kyc.status.value,
            "effective": "expired" if expired else kyc.status.value,
            "verified_at": _day(kyc.verified_at),
            "expires_at": _day(kyc.expires_at),
        },
        "parent_entity": tenant.parent_entity,
        "veu": tenant.veu.value,
        "licences": [
            {"id": lic.id, "lifts": sorted(s.value for s in lic.lifts), "expires": _day(lic.expires)}
            for lic in tenant.licences
        ],
    }


def rule_record(pack: Pack, rule_id: RuleId, now: datetime, objection: str | None) -> dict[str, Any]:
    rule = pack.rule(rule_id)
    return {
        "rule": rule_id.value,
        "enforced_from": _day(rule.enforced_from),
        "state": "enforced" if rule.enforced_on(now) else "shadow",
        "citation": rule.citation,
        "objection": objection,
    }


def reason_records(decision: Decision, pack: Pack) -> list[dict[str, Any]]:
    """Every objection raised, with its rule, whether enforced now (or shadow before its date) and citation."""
    out = []
    for r in decision.reasons:
        rule = pack.rule(r.rule) if r.rule is not None else None
        out.append(
            {
                "code": r.code.value,
                "rule": r.rule.value if r.rule is not None else None,
                "state": "enforced" if r.enforced else "shadow",
                "enforced_from": _day(rule.enforced_from) if rule is not None else None,
                "detail": r.detail,
                "citation": r.citation,
            }
        )
    return out


def rules_considered(decision: Decision, pack: Pack, now: datetime, plan: Plan | None) -> list[dict[str, Any]]:
    """The pack's rules this request was checked against, each with its state and the objection it raised."""
    objections = {r.rule: r.code.value for r in reversed(decision.reasons) if r.rule is not None}
    ids = list(ADMISSION_RULES) if decision.tier is not None else []
    for counter in plan.counters if plan is not None else ():
        if counter.rule not in ids:
            ids.append(counter.rule)
    for reason in decision.reasons:  # a rule planning objected on without a counter (weights_parameters)
        if reason.rule is not None and reason.rule not in ids:
            ids.append(reason.rule)
    return [rule_record(pack, rule_id, now, objections.get(rule_id)) for rule_id in ids]


WEIGHTS_RULES = (RuleId.WEIGHTS_OPS, RuleId.WEIGHTS_BIO, RuleId.WEIGHTS_PARAMETERS, RuleId.WEIGHTS_STORAGE)


def weights_rules(decision: Decision, pack: Pack, now: datetime) -> list[dict[str, Any]]:
    """The weights rules an object request is checked against, each with its state and the objection it raised."""
    objections = {r.rule: r.code.value for r in reversed(decision.reasons) if r.rule is not None}
    return [rule_record(pack, rule_id, now, objections.get(rule_id)) for rule_id in WEIGHTS_RULES]


@dataclass(frozen=True, slots=True)
class PriceFacts:
    """A priced job, and where its numbers came from (scheduler provenance, as records)."""

    spec: JobSpec
    default_model: str | None
    sources: tuple[dict[str, Any], ...]


def price_record(facts: PriceFacts, decision: Decision, catalogue: GpuCatalogue | None) -> dict[str, Any]:
    """GPUs by model with each chip's TPP, the job's TPP, TPP-hours, training operations and walltime."""
    spec, cost = facts.spec, decision.cost
    gpus = []
    for part in spec.parts:
        label = part.model if part.model is not None else facts.default_model
        model = catalogue.lookup(label) if catalogue is not None and label is not None else None
        if model is None and catalogue is not None and label is not None and "|" in label:
            try:
                model = catalogue.resolve(label)
            except ValueError:
                model = None
        gpus.append(
            {
                "label": part.model,
                "model": model.name if model else label,
                "gpus": part.gpus,
                "concurrency": part.concurrency,
                "count": part.gpus * part.concurrency,
                "tpp_per_chip": model.tpp if model else None,
                "controlled": model.controlled if model else None,
                "dense_flops_per_chip": model.dense_flops if model else None,
            }
        )
    out: dict[str, Any] = {
        "gpus": gpus,
        "total_gpus": spec.total_gpus,
        "walltime_s": spec.walltime_s,
        "lineage": spec.lineage,
        "parameters": spec.parameters,
        "purpose": spec.purpose,
        "sources": list(facts.sources),
    }
    if cost is not None:
        out |= {
            "held_tpp": cost.held_tpp,
            "tpp_hours": cost.tpp_hours,
            "training_ops": cost.training_ops,
            "utilisation": catalogue.utilisation if catalogue is not None else None,
        }
    return out


def _room(counter: Counter, held: float) -> float | None:
    if counter.cap is None:
        return None
    return max(0.0, counter.cap - counter.base - held)


def quota_record(plan: Plan, result: ReserveResult | None, decision: Decision) -> dict[str, Any]:
    """Each cap the job would touch, read now without reserving: held, cap, room, what the job would take.

    `room_now` is what still fits under the cap before this job (null: uncapped); `refuses`
    whether this job's share would pass it; `headroom` what would be left after the job, by
    kind, under the enforced caps (gateway.core.headroom), as the response headers report it.
    """
    states = {s.key: s for s in result.counters} if result is not None else {}
    failing = result.failing if result is not None else None
    shadow = set(result.shadow) if result is not None else set()
    rows = []
    for c in plan.counters:
        state = states.get(c.key)
        held = state.before if state is not None else None
        rows.append(
            {
                "key": c.key,
                "cap_name": cap_name(c.key),
                "kind": c.kind.value,
                "share": c.share.value,
                "rule": c.rule.value,
                "state": "enforced" if c.enforced else "shadow",
                "citation": c.citation,
                "code": c.code.value,
                "cap": _number(c.cap),
                "base": c.base,
                "held_now": held,
                "room_now": _number(_room(c, held)) if held is not None else None,
                "job_takes": state.amount if state is not None else c.amount,
                "refuses": c.key == failing or c.key in shadow,
            }
        )
    rooms = headrooms(decision.quota) if decision.quota is not None else {}
    return {
        "basis": decision.basis,
        "lease_end": plan.lease_end,
        "licences": list(plan.licence_ids),
        "exemptions": list(plan.exemptions),
        "counters": rows,
        "headroom": {kind: {"amount": room.amount, "binding": room.binding} for kind, room in rooms.items()},
        "retry_after_s": decision.quota.retry_after_s if decision.quota is not None else None,
    }
