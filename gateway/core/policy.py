"""Policy packs as values: dated rules, tier lists and the settings every rule reads."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

from gateway.core.caps import CapSettings
from gateway.core.catalogue import WeightsSettings
from gateway.core.pricing import GpuCatalogue
from gateway.core.tiers import TierTable


class RuleId(StrEnum):
    """The rules a pack can carry; each has its own enforced-from date."""

    TIER3 = "tier3"
    KYC = "kyc"
    TENANT_CAP = "tenant_cap"
    COUNTRY_CAP = "country_cap"
    BUDGET = "budget"
    TRAINING_THRESHOLD = "training_threshold"
    # Model weights (gateway/core/weights.py): each way a lineage becomes controlled, and where it may be stored.
    WEIGHTS_OPS = "weights_ops"
    WEIGHTS_BIO = "weights_bio"
    WEIGHTS_PARAMETERS = "weights_parameters"
    WEIGHTS_STORAGE = "weights_storage"


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule and the date from which its refusals are enforced (shadow before it)."""

    id: RuleId
    enforced_from: date | None
    citation: str = ""

    def enforced_on(self, now: datetime) -> bool:
        return self.enforced_from is None or now.date() >= self.enforced_from


class ReadAccess(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class KycSettings:
    """What each KYC status may still do on read routes (submissions need `verified`)."""

    reads: Mapping[str, ReadAccess] = field(
        default_factory=lambda: {
            "pending": ReadAccess.ALLOW,
            "expired": ReadAccess.ALLOW,
            "rejected": ReadAccess.DENY,
        }
    )


class Action(StrEnum):
    """What reconciliation does about a job it finds out of line: stop it, or leave it running and say so."""

    CANCEL = "cancel"
    ALERT = "alert"


@dataclass(frozen=True, slots=True)
class Enforcement:
    """What reconciliation does about what the scheduler really runs.

    `over_allocation`: a job holding more than its lease, and over a cap once charged for it
    (default: cancel it through the scheduler). `unadmitted`: a live GPU job of a tenant's
    scheduler identity that no lease covers, submitted around the gateway (default: alert).
    Either way the job is recorded in the ledger and counted.
    """

    over_allocation: Action = Action.CANCEL
    unadmitted: Action = Action.ALERT


@dataclass(frozen=True, slots=True)
class Pack:
    """One loaded policy pack: identity, tiers, dated rules, GPU catalogue and cap settings."""

    name: str
    version: str
    content_hash: str
    tiers: TierTable
    rules: Mapping[RuleId, Rule]
    kyc: KycSettings = field(default_factory=KycSettings)
    gpus: GpuCatalogue | None = None
    caps: CapSettings | None = None
    enforcement: Enforcement = field(default_factory=Enforcement)
    weights: WeightsSettings | None = None  # weights.yaml: the model catalogue and the weights rules' settings

    def rule(self, rule_id: RuleId) -> Rule:
        """A rule by id; a pack that omits one enforces it from the start (fail closed)."""
        return self.rules.get(rule_id) or Rule(rule_id, None)
