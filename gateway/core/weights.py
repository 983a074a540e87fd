"""Model weights: which lineages are controlled, and who may read or write their objects where (pure).

ECCN 4E091 controls the weights of models trained with 1e26 operations or more (fine-tunes included;
published open-weight models and models below the most capable published one excluded), and
15 CFR 740.27(a)(3) sets conditions for holding them: an entity headquartered in Tier 1 (with its
ultimate parent), outside Country Group D:5 and Macau, in storage meeting paragraphs 14, 15 and 18
of Supplement No. 10 to part 748 (compliance date 2026-01-15). The pack's `weights.yaml` says it
as data (`WeightsSettings`): the thresholds, the model catalogue (object patterns, operations
declared for models trained elsewhere, parameter counts, data domain, published and exempt, each
dated) and the buckets declared to meet the storage conditions.

`lineage_status` turns a lineage's facts (the operations the gateway counted for it, the declared
ones, its parameters, the admitted jobs that declared it over the parameter threshold, and its
domain) into controlled or not, naming each threshold it reached and what
releases it; `decide_weights` decides one read, write or listing entry on it. The shell gathers
the facts (gateway/http/objects.py); `exportgate replay` and `explain` call the same functions.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from gateway.core.catalogue import WeightsSettings
from gateway.core.codes import Code
from gateway.core.decide import Decision, Reason, verdict
from gateway.core.policy import Pack, RuleId
from gateway.core.tenants import LicenceScope, Tenant
from gateway.core.tiers import Tier

# The counters the quota plan debits for every admitted job declaring a lineage (all tiers, uncapped).
LINEAGE_OPS_PREFIX = "lineage_ops:"
LINEAGE_BIO_OPS_PREFIX = "lineage_bio_ops:"
# ...and for every admitted job declaring the lineage's parameter count over the pack's threshold (1 each).
LINEAGE_PARAMS_PREFIX = "lineage_params_declared:"
# Object metadata the gateway writes at upload (S3 user metadata: sent as x-amz-meta-<name>).
META_LINEAGE = "exportgate-lineage"
META_PARAMS = "exportgate-params"
META_DOMAIN = "exportgate-data-domain"
META_TENANT = "exportgate-tenant"
META_DECISION = "exportgate-decision-id"


def lineage_ops_key(lineage: str) -> str:
    return LINEAGE_OPS_PREFIX + lineage


def lineage_bio_ops_key(lineage: str) -> str:
    return LINEAGE_BIO_OPS_PREFIX + lineage


def lineage_params_key(lineage: str) -> str:
    return LINEAGE_PARAMS_PREFIX + lineage


class WeightsOp(StrEnum):
    """What a request does to an object of the store."""

    READ = "read"  # GET, HEAD, a presigned URL minted for a read
    WRITE = "write"  # PUT, multipart upload
    DELETE = "delete"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class LineageFacts:
    """What is known of one lineage when a decision is taken: the gateway's counts and the declarations."""

    lineage: str
    counted_ops: float = 0.0  # admitted jobs declaring the lineage, every tier (lineage_ops:<lineage>)
    counted_bio_ops: float = 0.0  # ...of which declared a biological-sequence data domain as their purpose
    declared_ops: float = 0.0  # the catalogue's operations for training done elsewhere
    parameters: float | None = None  # the largest of the catalogue's and the object's declared count
    data_domain: str | None = None  # the catalogue's or the object's declared domain
    published: bool = False
    exempt: str | None = None  # the exemption's justification, while it holds
    # Admitted jobs that declared the lineage's parameter count over the pack's threshold, every tier
    # (lineage_params_declared:<lineage>): any makes the lineage "over the parameter threshold".
    counted_param_jobs: float = 0.0

    @property
    def total_ops(self) -> float:
        return self.counted_ops + self.declared_ops

    def as_record(self) -> dict[str, Any]:
        return {
            "lineage": self.lineage,
            "counted_ops": self.counted_ops,
            "counted_bio_ops": self.counted_bio_ops,
            "declared_ops": self.declared_ops,
            "parameters": self.parameters,
            "data_domain": self.data_domain,
            "published": self.published,
            "exempt": self.exempt,
            "counted_param_jobs": self.counted_param_jobs,
        }


def facts_from_record(raw: Mapping[str, Any]) -> LineageFacts:
    """A recorded lineage's facts (`LineageFacts.as_record`); raises ValueError/TypeError/KeyError when unreadable."""
    params = raw.get("parameters")
    domain = raw.get("data_domain")
    exempt = raw.get("exempt")
    return LineageFacts(
        lineage=str(raw["lineage"]),
        counted_ops=float(raw.get("counted_ops") or 0.0),
        counted_bio_ops=float(raw.get("counted_bio_ops") or 0.0),
        declared_ops=float(raw.get("declared_ops") or 0.0),
        parameters=float(params) if params is not None else None,
        data_domain=str(domain) if domain is not None else None,
        published=bool(raw.get("published")),
        exempt=str(exempt) if exempt is not None else None,
        counted_param_jobs=float(raw.get("counted_param_jobs") or 0.0),  # absent in records before jobs declared it
    )


def catalogue_facts(
    settings: WeightsSettings,
    lineage: str,
    day: date,
    *,
    counted_ops: float = 0.0,
    counted_bio_ops: float = 0.0,
    parameters: float | None = None,
    data_domain: str | None = None,
    counted_param_jobs: float = 0.0,
) -> LineageFacts:
    """A lineage's facts on `day`: the gateway's counts, the object's own declarations, and the catalogue's entry.

    The larger parameter count wins (object metadata or catalogue), and a domain the catalogue
    names wins over the object's; declared operations count from their `as_of` date, published
    from `since`, an exemption within its window.
    """
    entry = settings.entry(lineage)
    declared = 0.0
    published = False
    exempt = None
    if entry is not None:
        if entry.declared is not None and (entry.declared.as_of is None or entry.declared.as_of <= day):
            declared = entry.declared.ops
        if entry.parameters is not None:
            parameters = entry.parameters if parameters is None else max(parameters, entry.parameters)
        data_domain = entry.data_domain or data_domain
        published = entry.published is not None and entry.published.holds(day)
        if entry.exempt is not None and entry.exempt.window.holds(day):
            exempt = entry.exempt.justification
    return LineageFacts(lineage, counted_ops, counted_bio_ops, declared, parameters, data_domain, published, exempt,
                        counted_param_jobs)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Control:
    """One threshold a lineage reached: the rule, whether it is enforced on the decision's date, why."""

    rule: RuleId
    enforced: bool
    detail: str
    citation: str


@dataclass(frozen=True, slots=True)
class LineageStatus:
    """Controlled or not, and why: the thresholds reached and what (published, exempt) releases them."""

    facts: LineageFacts
    controls: tuple[Control, ...] = ()
    released_by: str | None = None  # "published" or "exempt: <justification>"

    @property
    def controlled(self) -> bool:
        """Controlled under some rule, enforced or in shadow (a shadow control refuses only in shadow)."""
        return bool(self.controls) and self.released_by is None

    @property
    def enforced(self) -> bool:
        return self.controlled and any(c.enforced for c in self.controls)

    def deciding(self) -> Control | None:
        """The control a refusal names: the first enforced one, else the first."""
        if not self.controlled:
            return None
        return next((c for c in self.controls if c.enforced), self.controls[0])

    def as_record(self) -> dict[str, Any]:
        return {
            **self.facts.as_record(),
            "total_ops": self.facts.total_ops,
            "controlled": self.controlled,
            "controls": [
                {"rule": c.rule.value, "state": "enforced" if c.enforced else "shadow", "detail": c.detail}
                for c in self.controls
            ],
            "released_by": self.released_by,
        }


def sci(value: float) -> str:
    """A count as decisions word it: 1e+23, 4.05e+11."""
    return f"{value:.3g}"


def bio_mainly(facts: LineageFacts, settings: WeightsSettings) -> bool:
    """Trained mainly on biological sequence data: the declared domain says so, or most counted operations did."""
    if facts.data_domain is not None:
        return facts.data_domain in settings.bio_data_domains
    return facts.counted_ops > 0 and facts.counted_bio_ops * 2 > facts.counted_ops


def lineage_status(facts: LineageFacts, settings: WeightsSettings, pack: Pack, now: datetime) -> LineageStatus:
    """Which thresholds the lineage has reached (each a dated rule of the pack), and what releases them."""
    controls: list[Control] = []

    def reached(rule_id: RuleId, detail: str) -> None:
        rule = pack.rule(rule_id)
        controls.append(Control(rule_id, rule.enforced_on(now), detail, rule.citation))

    total, name = facts.total_ops, facts.lineage
    ops, bio, params = settings.training_ops, settings.bio_training_ops, settings.parameters
    if ops is not None and total >= ops:
        reached(RuleId.WEIGHTS_OPS, f"lineage {name} was trained with {sci(total)} operations (threshold {sci(ops)})")
    if bio is not None and total >= bio and bio_mainly(facts, settings):
        detail = f"lineage {name} was trained mainly on biological sequence data with {sci(total)} operations"
        reached(RuleId.WEIGHTS_BIO, f"{detail} (threshold {sci(bio)})")
    if params is not None and facts.parameters is not None and facts.parameters > params:
        detail = f"lineage {name} has {sci(facts.parameters)} parameters"
        reached(RuleId.WEIGHTS_PARAMETERS, f"{detail} (licence trigger: over {sci(params)})")
    elif params is not None and facts.counted_param_jobs > 0:
        jobs = f"{facts.counted_param_jobs:.0f} admitted job" + ("" if facts.counted_param_jobs == 1 else "s")
        detail = f"lineage {name} was declared over {sci(params)} parameters by {jobs}"
        reached(RuleId.WEIGHTS_PARAMETERS, f"{detail} (licence trigger: over {sci(params)})")
    released = None
    if controls and facts.published:
        released = "published"
    elif controls and facts.exempt is not None:
        released = f"exempt: {facts.exempt}"
    return LineageStatus(facts, tuple(controls), released)


@dataclass(frozen=True, slots=True)
class WeightsQuestion:
    """One decision on an object: who, what, which lineage (None: the object is of none), which bucket."""

    op: WeightsOp
    tenant: Tenant
    status: LineageStatus | None
    bucket: str


def holder_eligible(tenant: Tenant, pack: Pack, day: date) -> tuple[bool, str]:
    """Headquartered, with its ultimate parent, in Tier 1, and located outside D:5 and Macau (the pack's Tier 3).

    Returns whether, and why not (the first failing country, by role).
    """
    tiers = pack.tiers

    def tier(country: str | None) -> Tier | None:
        if country is None:
            return None
        return tiers.tier_of(tiers.aliases.get(country, country), day)

    for role, country in (("headquarters", tenant.headquarters), ("parent headquarters", tenant.parent_headquarters)):
        if tier(country) is not Tier.ONE:
            return False, f"{role} {country or 'unknown'} is not Tier 1"
    location = tier(tenant.location)
    if location is None or location is Tier.THREE:
        return False, f"location {tenant.location or 'unknown'} is in Country Group D:5 or Macau"
    return True, ""


def weights_licence(tenant: Tenant, lineage: str, day: date) -> str | None:
    """The id of a valid licence lifting the weights rule that names `lineage`, if the tenant holds one."""
    for lic in tenant.licences:
        valid = lic.expires is None or day < lic.expires
        if valid and LicenceScope.WEIGHTS in lic.lifts and lic.lineage == lineage:
            return lic.id
    return None


@dataclass(frozen=True, slots=True)
class WeightsDecision:
    """The verdict on one object, with what it was made of (for the ledger, replay and explain)."""

    decision: Decision
    status: LineageStatus | None
    basis: str  # "not_controlled", "tier1_holder", "licence:<id>", or the refusal's code
    storage: str | None = None  # a write: the storage entry that covers the bucket ("" when none does)

    def as_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"basis": self.basis, "lineage": self.status.as_record() if self.status else None}
        if self.storage is not None:
            out["storage_compliant"] = bool(self.storage)
            out["storage_facility"] = self.storage or None
        return out


def decide_weights(q: WeightsQuestion, admission: Decision, settings: WeightsSettings, pack: Pack,
                   now: datetime) -> WeightsDecision:  # fmt: skip
    """Admission's reasons plus the weights rules' for one object.

    Reading (or writing) a controlled lineage's objects needs an eligible holder (`holder_eligible`)
    or a licence naming the lineage, else `weights_controlled`. Writing one needs a bucket the pack
    declares meets the storage conditions, else `storage_not_compliant`. Deleting and listing need
    nothing more (a listing leaves out what the tenant may not read). Each refusal is enforced from
    its rule's date and in shadow before it, as every rule is.
    """
    status, day = q.status, now.date()
    reasons: list[Reason] = []
    basis = "not_controlled"
    storage: str | None = None
    control = status.deciding() if status is not None else None
    if status is not None and control is not None and q.op in (WeightsOp.READ, WeightsOp.WRITE):
        eligible, why = holder_eligible(q.tenant, pack, day)
        licence = weights_licence(q.tenant, status.facts.lineage, day)
        if eligible:
            basis = "tier1_holder"
        elif licence is not None:
            basis = f"licence:{licence}"
        else:
            basis = Code.WEIGHTS_CONTROLLED.value
            what = "read" if q.op is WeightsOp.READ else "hold"
            detail = f"{control.detail}; its weights are controlled (ECCN 4E091) and this tenant may not {what} " \
                     f"them without a licence naming the lineage: {why}"  # fmt: skip
            reasons.append(Reason(Code.WEIGHTS_CONTROLLED, control.rule, control.enforced, detail, control.citation))
        if q.op is WeightsOp.WRITE:
            covered = settings.storage_compliant(q.bucket, day)
            storage = covered.facility or covered.pattern if covered is not None else ""
            if covered is None:
                rule = pack.rule(RuleId.WEIGHTS_STORAGE)
                detail = f"bucket {q.bucket} is not declared to meet the storage conditions for controlled weights " \
                         f"(lineage {status.facts.lineage})"  # fmt: skip
                reasons.append(Reason(Code.STORAGE_NOT_COMPLIANT, RuleId.WEIGHTS_STORAGE, rule.enforced_on(now)
                                      and control.enforced, detail, rule.citation))  # fmt: skip
    decided = verdict(admission.tier, admission.reasons + tuple(reasons), basis)
    return WeightsDecision(decided, status, basis, storage)


def finite_count(value: str) -> float | None:
    """A declared count from object metadata (`4.05e11`, `405000000000`): positive and finite, else None."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


@dataclass(frozen=True, slots=True)
class ObjectFacts:
    """What an object says of itself (its gateway-written metadata) and what the catalogue says of its name."""

    bucket: str
    key: str
    lineage: str | None = None
    parameters: float | None = None
    data_domain: str | None = None
    source: str = "none"  # where the lineage came from: "catalogue", "metadata" or "none"
    extra: Mapping[str, str] = field(default_factory=dict)


def object_facts(settings: WeightsSettings, bucket: str, key: str, metadata: Mapping[str, str]) -> ObjectFacts:
    """The object's lineage (the catalogue's pattern first: the operator's word wins), parameters and domain.

    `metadata` is the object's user metadata, lower-case names without the `x-amz-meta-` prefix.
    """
    lineage = settings.lineage_of(bucket, key)
    source = "catalogue" if lineage is not None else "none"
    if lineage is None:
        declared = (metadata.get(META_LINEAGE) or "").strip()
        if declared:
            lineage, source = declared, "metadata"
    params = finite_count(metadata.get(META_PARAMS, ""))
    domain = (metadata.get(META_DOMAIN) or "").strip() or None
    return ObjectFacts(bucket, key, lineage, params, domain, source)
