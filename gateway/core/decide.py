"""decide(): the pure admission decision over a request's facts and the active pack."""

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from gateway.core.codes import Code
from gateway.core.iso import ISO_3166_ALPHA2
from gateway.core.jobs import Cost
from gateway.core.outcome import QuotaOutcome
from gateway.core.policy import Pack, ReadAccess, RuleId
from gateway.core.reason import Reason as Reason  # re-exported: decisions are read through this module
from gateway.core.routes import RouteKind
from gateway.core.tenants import KycStatus, Tenant
from gateway.core.tiers import Tier, deciding_detail, resolve_tier, tier_path


class Outcome(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    SHADOW_DENY = "shadow_deny"


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything decide() needs, gathered by the shell before calling it."""

    now: datetime
    tenant: Tenant | None
    route_kind: RouteKind


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict: outcome, refusal code, every reason considered; for a job also its cost and quota outcome."""

    outcome: Outcome
    tier: Tier | None
    reasons: tuple[Reason, ...] = ()
    basis: str = "tier_default"
    cost: Cost | None = None
    quota: QuotaOutcome | None = None

    @property
    def code(self) -> Code | None:
        """The refusal code: the first enforced reason's, else the first shadow reason's."""
        enforced = [r for r in self.reasons if r.enforced]
        first = enforced or list(self.reasons)
        return first[0].code if first else None

    @property
    def forwards(self) -> bool:
        return self.outcome is not Outcome.DENY


def verdict(tier: Tier | None, reasons: tuple[Reason, ...], basis: str = "tier_default") -> Decision:
    """Deny on any enforced reason, shadow-deny on unenforced ones, else allow."""
    if any(r.enforced for r in reasons):
        return Decision(Outcome.DENY, tier, reasons, basis)
    if reasons:
        return Decision(Outcome.SHADOW_DENY, tier, reasons, basis)
    return Decision(Outcome.ALLOW, tier, reasons, basis)


def refuse(code: Code, detail: str, tier: Tier | None = None) -> Decision:
    """A refusal that no pack rule governs (authentication, routing, backends)."""
    return Decision(Outcome.DENY, tier, (Reason(code, None, True, detail),))


def _kyc_reasons(facts: Facts, tenant: Tenant, pack: Pack) -> list[Reason]:
    rule = pack.rule(RuleId.KYC)
    enforced = rule.enforced_on(facts.now)
    kyc = tenant.kyc
    today = facts.now.date()
    expired = kyc.status is KycStatus.EXPIRED or (
        kyc.status is KycStatus.VERIFIED and kyc.expires_at is not None and kyc.expires_at <= today
    )
    status = "expired" if expired else kyc.status.value
    if status == "verified":
        return []
    if not facts.route_kind.changes_jobs and pack.kyc.reads.get(status) is ReadAccess.ALLOW:
        return []
    code = Code.KYC_EXPIRED if expired else Code.KYC_NOT_VERIFIED
    what = "GPU job submissions" if facts.route_kind.changes_jobs else "this route"
    return [Reason(code, RuleId.KYC, enforced, f"KYC status is {status}; {what} need a verified status", rule.citation)]


def decide(facts: Facts, pack: Pack) -> Decision:
    """Admit or refuse a request on identity, country tier and KYC; pricing comes after."""
    tenant = facts.tenant
    if tenant is None:
        return refuse(Code.TENANT_UNKNOWN, "the token is valid but maps to no registered tenant")
    tier, unknown = resolve_tier(tenant.countries(), pack.tiers, ISO_3166_ALPHA2, facts.now.date())
    if tier is None:
        roles = ", ".join(unknown)
        return refuse(Code.TENANT_COUNTRY_UNKNOWN, f"country missing or not ISO 3166-1 alpha-2: {roles}")
    reasons: list[Reason] = []
    if tier is Tier.THREE:
        rule = pack.rule(RuleId.TIER3)
        # Name the deciding country: "parent headquarters CN is Tier 3".
        path = tier_path(tenant.countries(), pack.tiers, ISO_3166_ALPHA2, facts.now.date())
        reasons.append(
            Reason(
                Code.TIER3_EMBARGOED, RuleId.TIER3, rule.enforced_on(facts.now), deciding_detail(path), rule.citation
            )
        )
    reasons.extend(_kyc_reasons(facts, tenant, pack))
    return verdict(tier, tuple(reasons))


class DecisionMemo:
    """`decide`, remembered per (day, tenant, route kind, pack).

    decide() reads the time only as a date, and tenants and packs are immutable: a reload builds new
    ones, which miss here, so nothing stale is ever returned. Entries hold their tenant and pack, so
    an id is never reused while its entry lives; the memo is emptied when it holds `size` entries.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: dict[tuple[date, int, RouteKind, int], tuple[Tenant, Pack, Decision]] = {}

    def decide(self, facts: Facts, pack: Pack) -> Decision:
        tenant = facts.tenant
        if tenant is None:
            return decide(facts, pack)
        key = (facts.now.date(), id(tenant), facts.route_kind, id(pack))
        hit = self._entries.get(key)
        if hit is not None and hit[0] is tenant and hit[1] is pack:
            return hit[2]
        decision = decide(facts, pack)
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (tenant, pack, decision)
        return decision
