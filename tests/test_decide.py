"""decide(): every admission code, tier resolution, enforced-from dates and dated D:5 membership."""

from dataclasses import replace
from datetime import UTC, date, datetime

import pytest

from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.pack import load_pack
from gateway.core.codes import Code
from gateway.core.decide import Facts, Outcome, decide
from gateway.core.policy import Pack, Rule, RuleId
from gateway.core.routes import RouteKind
from gateway.core.tenants import Identity, Kyc, KycStatus, Tenant
from gateway.core.tiers import Tier

PACK = load_pack(BUNDLED_POLICIES / "ai-diffusion-2025")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
VERIFIED = Kyc(KycStatus.VERIFIED, date(2025, 1, 1), date(2030, 1, 1))


def tenant(loc: str | None = "SE", hq: str | None = "SE", parent: str | None = "SE", kyc: Kyc = VERIFIED) -> Tenant:
    return Tenant("t1", "T1", (Identity("iss", "t1"),), loc, hq, parent, kyc)


CASES = [
    ("tier1-verified", tenant(), RouteKind.SUBMIT, Outcome.ALLOW, None, Tier.ONE),
    ("tier2-verified", tenant("AE", "AE", "AE"), RouteKind.SUBMIT, Outcome.ALLOW, None, Tier.TWO),
    ("unknown-tenant", None, RouteKind.SUBMIT, Outcome.DENY, Code.TENANT_UNKNOWN, None),
    ("tier3-location", tenant("CN", "SE", "SE"), RouteKind.SUBMIT, Outcome.DENY, Code.TIER3_EMBARGOED, Tier.THREE),
    ("tier3-headquarters", tenant("SE", "RU", "SE"), RouteKind.READ, Outcome.DENY, Code.TIER3_EMBARGOED, Tier.THREE),
    (
        "tier2-location-tier3-parent",
        tenant("AE", "AE", "CN"),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.TIER3_EMBARGOED,
        Tier.THREE,
    ),
    (
        "tier1-subsidiary-of-tier3-parent",
        tenant("SE", "SE", "IR"),
        RouteKind.LIST,
        Outcome.DENY,
        Code.TIER3_EMBARGOED,
        Tier.THREE,
    ),
    ("hong-kong-is-china", tenant("HK", "HK", "HK"), RouteKind.SUBMIT, Outcome.DENY, Code.TIER3_EMBARGOED, Tier.THREE),
    ("macau-is-tier3", tenant("MO", "MO", "MO"), RouteKind.SUBMIT, Outcome.DENY, Code.TIER3_EMBARGOED, Tier.THREE),
    (
        "missing-headquarters",
        tenant("SE", None, "SE"),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.TENANT_COUNTRY_UNKNOWN,
        None,
    ),
    ("non-iso-parent", tenant("SE", "SE", "XX"), RouteKind.READ, Outcome.DENY, Code.TENANT_COUNTRY_UNKNOWN, None),
    (
        "lowercase-is-not-iso",
        tenant("se", "SE", "SE"),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.TENANT_COUNTRY_UNKNOWN,
        None,
    ),
    (
        "kyc-pending-submit",
        tenant(kyc=Kyc(KycStatus.PENDING)),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.KYC_NOT_VERIFIED,
        Tier.ONE,
    ),
    (
        "kyc-pending-update",
        tenant(kyc=Kyc(KycStatus.PENDING)),
        RouteKind.UPDATE,
        Outcome.DENY,
        Code.KYC_NOT_VERIFIED,
        Tier.ONE,
    ),
    (
        "kyc-pending-read-allowed-by-pack",
        tenant(kyc=Kyc(KycStatus.PENDING)),
        RouteKind.READ,
        Outcome.ALLOW,
        None,
        Tier.ONE,
    ),
    (
        "kyc-rejected-submit",
        tenant(kyc=Kyc(KycStatus.REJECTED)),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.KYC_NOT_VERIFIED,
        Tier.ONE,
    ),
    (
        "kyc-rejected-read-denied-by-pack",
        tenant(kyc=Kyc(KycStatus.REJECTED)),
        RouteKind.LIST,
        Outcome.DENY,
        Code.KYC_NOT_VERIFIED,
        Tier.ONE,
    ),
    (
        "kyc-status-expired",
        tenant(kyc=Kyc(KycStatus.EXPIRED)),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.KYC_EXPIRED,
        Tier.ONE,
    ),
    (
        "kyc-verified-past-expiry",
        tenant(kyc=Kyc(KycStatus.VERIFIED, date(2020, 1, 1), date(2026, 11, 27))),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.KYC_EXPIRED,
        Tier.ONE,
    ),
    ("kyc-expired-read-allowed", tenant(kyc=Kyc(KycStatus.EXPIRED)), RouteKind.READ, Outcome.ALLOW, None, Tier.ONE),
    (
        "tier3-wins-over-kyc",
        tenant("CN", "CN", "CN", Kyc(KycStatus.PENDING)),
        RouteKind.SUBMIT,
        Outcome.DENY,
        Code.TIER3_EMBARGOED,
        Tier.THREE,
    ),
]


@pytest.mark.parametrize(("case", "who", "kind", "outcome", "code", "tier"), CASES, ids=[c[0] for c in CASES])
def test_decide_table(
    case: str, who: Tenant | None, kind: RouteKind, outcome: Outcome, code: Code | None, tier: Tier | None
) -> None:
    """Each tenant shape gets the outcome, refusal code and tier the pack prescribes."""
    decision = decide(Facts(NOW, who, kind), PACK)
    assert (decision.outcome, decision.code, decision.tier) == (outcome, code, tier)


def _with_rule(pack: Pack, rule_id: RuleId, enforced_from: date | None) -> Pack:
    rules = dict(pack.rules)
    rules[rule_id] = Rule(rule_id, enforced_from, "test")
    return replace(pack, rules=rules)


def test_future_dated_rule_is_shadow_deny() -> None:
    """Before a rule's enforced-from date its refusal is recorded as shadow_deny and the request goes through."""
    pack = _with_rule(PACK, RuleId.TIER3, date(2027, 1, 1))
    decision = decide(Facts(NOW, tenant("CN", "CN", "CN"), RouteKind.SUBMIT), pack)
    assert decision.outcome is Outcome.SHADOW_DENY
    assert decision.forwards
    assert decision.code is Code.TIER3_EMBARGOED
    after = decide(Facts(datetime(2027, 1, 1, tzinfo=UTC), tenant("CN", "CN", "CN"), RouteKind.SUBMIT), pack)
    assert after.outcome is Outcome.DENY


def test_shadow_and_enforced_reasons_deny_on_the_enforced_one() -> None:
    """A shadow reason never hides an enforced one: the enforced code is the refusal."""
    pack = _with_rule(PACK, RuleId.TIER3, date(2027, 1, 1))
    decision = decide(Facts(NOW, tenant("CN", "CN", "CN", Kyc(KycStatus.PENDING)), RouteKind.SUBMIT), pack)
    assert decision.outcome is Outcome.DENY
    assert decision.code is Code.KYC_NOT_VERIFIED
    assert [r.enforced for r in decision.reasons] == [False, True]


@pytest.mark.parametrize(
    ("day", "tier"),
    [(date(2026, 2, 2), Tier.THREE), (date(2026, 2, 3), Tier.TWO), (date(2026, 11, 27), Tier.TWO)],
    ids=["day-before-removal", "removal-day", "after-removal"],
)
def test_cambodia_left_d5_on_2026_02_03(day: date, tier: Tier) -> None:
    """A country that left D:5 on a date is Tier 3 before it and Tier 2 from that day."""
    decision = decide(
        Facts(datetime(day.year, day.month, day.day, tzinfo=UTC), tenant("KH", "KH", "KH"), RouteKind.SUBMIT), PACK
    )
    assert decision.tier is tier
    assert decision.forwards == (tier is Tier.TWO)


def test_pack_without_a_rule_enforces_it() -> None:
    """A pack that leaves a rule out fails closed: the rule is enforced from the start."""
    rules: dict[RuleId, Rule] = {k: v for k, v in PACK.rules.items() if k is not RuleId.KYC}
    decision = decide(Facts(NOW, tenant(kyc=Kyc(KycStatus.PENDING)), RouteKind.SUBMIT), replace(PACK, rules=rules))
    assert decision.outcome is Outcome.DENY
