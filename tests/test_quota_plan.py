"""The cap mapping (plan_reservation) and the reading of a store's answer (interpret), pure."""

import dataclasses
import math
from datetime import UTC, date, datetime
from typing import Any

import pytest

from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.caps import load_caps
from gateway.config.located import Problem
from gateway.config.pack import load_pack
from gateway.core.codes import Code
from gateway.core.decide import Decision, Outcome
from gateway.core.jobs import Cost, JobPart, JobSpec
from gateway.core.leases import CounterValue
from gateway.core.policy import Pack, Rule, RuleId
from gateway.core.pricing import price
from gateway.core.quota import (
    QUOTA_SLOT,
    CapSettings,
    Counter,
    CounterKind,
    CounterState,
    LppCount,
    Plan,
    ReserveResult,
    ReserveStatus,
    Share,
    StoredResponse,
    allocation_countries,
    plan_reservation,
    split_amounts,
)
from gateway.core.quota_book import QuotaBook
from gateway.core.quota_verdict import interpret
from gateway.core.tenants import Budget, BudgetPeriod, Kyc, KycStatus, Licence, LicenceScope, Tenant, Veu
from gateway.core.tiers import Tier, TierTable

BUNDLED_DIR = BUNDLED_POLICIES / "ai-diffusion-2025"
CAPS_FILE = BUNDLED_DIR / "caps.yaml"
BUNDLED = load_pack(BUNDLED_DIR)
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
GRACE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
H100 = 15_832.0
LPP = 26_900_000.0
T = CounterKind.HELD
C = CounterKind.CUMULATIVE
FIX, ROOM, OVER = Share.FIXED, Share.HEADROOM, Share.OVERFLOW


def _caps() -> CapSettings:
    problems: list[Problem] = []
    caps = load_caps(CAPS_FILE, problems)
    assert problems == []
    return caps


CAPS = _caps()
PACK = Pack(
    name="test",
    version="1",
    content_hash="",
    tiers=TierTable((), (), {}),
    rules={
        rule: Rule(rule, date(2025, 5, 15))
        for rule in (RuleId.TENANT_CAP, RuleId.COUNTRY_CAP, RuleId.TRAINING_THRESHOLD)
    }
    | {RuleId.BUDGET: Rule(RuleId.BUDGET, None)},
)


def tenant(**fields: Any) -> Tenant:
    base: dict[str, Any] = {
        "id": "t1",
        "display_name": "T",
        "identities": (),
        "location": "SG",
        "headquarters": "SG",
        "parent_headquarters": None,
        "kyc": Kyc(KycStatus.VERIFIED),
    }
    return Tenant(**(base | fields))


def cost(gpus: int = 8, tpp: float = H100, hours: float = 2.0, ops: float = 0.0) -> Cost:
    return Cost(held_tpp=gpus * tpp, tpp_hours=gpus * tpp * hours, training_ops=ops, walltime_s=hours * 3600, gpus=gpus)


def plan(
    who: Tenant,
    tier: Tier = Tier.TWO,
    job: Cost | None = None,
    *,
    lineage: str | None = None,
    purpose: str | None = None,
    caps: CapSettings = CAPS,
    now: datetime = NOW,
    pack: Pack = PACK,
) -> Plan:
    out = plan_reservation(
        who,
        tier,
        job or cost(),
        lineage,
        purpose,
        pack,
        caps,
        now,
        decision_id="d1",
        idempotency_key="k1",
        upstream="slurm",
    )
    assert isinstance(out, Plan), out
    return out


def shape(p: Plan) -> list[tuple[str, float | None, CounterKind, Share]]:
    return [(c.key, c.cap, c.kind, c.share) for c in p.counters]


L_CAP = Licence("L1", frozenset({LicenceScope.TENANT_CAP}), tpp=100e6)
L_COUNTRY = Licence("L2", frozenset({LicenceScope.COUNTRY_CAP}))
L_TRAIN = Licence("L3", frozenset({LicenceScope.TRAINING_THRESHOLD}), lineage="llama")
L_TRAIN_ALL = Licence("L4", frozenset({LicenceScope.TRAINING_THRESHOLD}), training_ops=5e26)
L_EXPIRED = Licence("L9", frozenset({LicenceScope.TENANT_CAP}), tpp=1e9, expires=NOW.date())
SG_DOUBLED = dataclasses.replace(CAPS, country_overrides={"SG": 1.58e9})

HELD_CASES = [
    ("tier1-uncapped-metered", tenant(headquarters="US", location="US"), Tier.ONE, CAPS,
     [("tenant:t1", None, T, FIX)], "tier1_uncapped"),
    ("tier1-capped-by-pack", tenant(headquarters="US"), Tier.ONE, dataclasses.replace(CAPS, tier1_cap_tpp=1e9),
     [("tenant:t1", 1e9, T, FIX)], "tier1_cap"),
    ("tier2-lpp", tenant(), Tier.TWO, CAPS, [("tenant:t1", LPP, T, FIX)], "lpp"),
    ("tier2-group-shares-parent-key", tenant(headquarters="MY", parent_entity="acme", parent_headquarters="SG"),
     Tier.TWO, CAPS, [("group:acme", LPP, T, FIX)], "lpp"),
    ("tier2-override", tenant(tpp_cap=50e6), Tier.TWO, CAPS, [("tenant:t1", 50e6, T, FIX)], "override"),
    ("tier1-override", tenant(headquarters="US", tpp_cap=1e6), Tier.ONE, CAPS,
     [("tenant:t1", 1e6, T, FIX)], "override"),
    ("licence-raises-cap-and-draws-on-country", tenant(licences=(L_CAP,)), Tier.TWO, CAPS,
     [("tenant:t1", LPP, T, ROOM), ("licensed:tenant:t1", 100e6, T, OVER), ("country:SG", 790e6, T, OVER)],
     "licence:L1"),
    ("licence-country-override-doubled", tenant(licences=(L_CAP,)), Tier.TWO, SG_DOUBLED,
     [("tenant:t1", LPP, T, ROOM), ("licensed:tenant:t1", 100e6, T, OVER), ("country:SG", 1.58e9, T, OVER)],
     "licence:L1"),
    ("licence-lifting-country-cap", tenant(licences=(L_CAP, L_COUNTRY)), Tier.TWO, CAPS,
     [("tenant:t1", LPP, T, ROOM), ("licensed:tenant:t1", 100e6, T, OVER), ("country:SG", None, T, OVER)],
     "licence:L1"),
    ("licence-over-override", tenant(tpp_cap=50e6, licences=(L_CAP,)), Tier.TWO, CAPS,
     [("tenant:t1", 50e6, T, ROOM), ("licensed:tenant:t1", 100e6, T, OVER), ("country:SG", 790e6, T, OVER)],
     "licence:L1"),
    ("group-licence-draws-on-members-own-country",
     tenant(parent_entity="acme", parent_headquarters="AE", licences=(L_CAP,)), Tier.TWO, CAPS,
     [("group:acme", LPP, T, ROOM), ("licensed:group:acme", 100e6, T, OVER), ("country:SG", 790e6, T, OVER)],
     "licence:L1"),
    ("expired-licence-ignored", tenant(licences=(L_EXPIRED,)), Tier.TWO, CAPS, [("tenant:t1", LPP, T, FIX)], "lpp"),
    ("nveu-2026-q4", tenant(veu=Veu.NATIONAL, licences=(L_CAP,)), Tier.TWO, CAPS,
     [("veu:t1", 4_272_750_000.0, T, FIX)], "veu_national"),
    ("uveu-uncapped", tenant(veu=Veu.UNIVERSAL), Tier.TWO, CAPS, [("veu:t1", None, T, FIX)], "veu_universal"),
    ("uveu-capped-by-pack", tenant(veu=Veu.UNIVERSAL), Tier.TWO, dataclasses.replace(CAPS, universal_veu_cap_tpp=2e9),
     [("veu:t1", 2e9, T, FIX)], "veu_universal"),
    ("lpp-calendar-year", tenant(), Tier.TWO, dataclasses.replace(CAPS, lpp_count=LppCount.CALENDAR_YEAR),
     [("tenant:t1:2026", LPP, C, FIX)], "lpp"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("who", "tier", "caps", "expected", "basis"),
    [case[1:] for case in HELD_CASES],
    ids=[case[0] for case in HELD_CASES],
)
def test_held_tpp_counters(
    who: Tenant, tier: Tier, caps: CapSettings, expected: list[tuple[str, float | None, CounterKind, Share]], basis: str
) -> None:
    """Each tenant kind holds its TPP on the counters, caps and basis the pack maps it to."""
    p = plan(who, tier, caps=caps)
    assert shape(p) == expected
    assert p.basis == basis
    assert all(c.amount == 8 * H100 for c in p.counters)


def test_group_members_share_one_slot_and_counter() -> None:
    """Affiliates of one parent_entity draw on the same key in the one quota slot."""
    a = plan(tenant(id="a", headquarters="MY", parent_entity="acme", parent_headquarters="SG"))
    b = plan(tenant(id="b", headquarters="TH", parent_entity="acme", parent_headquarters="SG"))
    assert (a.hash_tag, a.counters[0].key) == (b.hash_tag, b.counters[0].key) == (QUOTA_SLOT, "group:acme")
    assert (a.tenant_id, b.tenant_id) == ("a", "b")


ALLOCATION_CASES = [
    ("own-country-not-the-parents",
     tenant(location="SA", headquarters="SA", parent_entity="g", parent_headquarters="AE"), ["country:SA"]),
    ("located-and-headquartered-apart-draws-on-both", tenant(location="SG", headquarters="MY"),
     ["country:SG", "country:MY"]),
    ("tier1-parent-member-in-tier2",
     tenant(location="SA", headquarters="SA", parent_entity="g", parent_headquarters="US"), ["country:SA"]),
    ("tier1-headquarters-never-drawn", tenant(location="SA", headquarters="GB"), ["country:SA"]),
    ("tier1-member-of-tier2-group-draws-on-none",
     tenant(location="US", headquarters="US", parent_entity="g", parent_headquarters="AE"), []),
    ("hong-kong-draws-on-china", tenant(location="HK", headquarters="HK"), ["country:CN"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("who", "countries"), [c[1:] for c in ALLOCATION_CASES], ids=[c[0] for c in ALLOCATION_CASES]
)
def test_licensed_capacity_draws_on_the_tenants_own_countries(who: Tenant, countries: list[str]) -> None:
    """Licensed overflow draws on each non-Tier-1 country the tenant is located or headquartered in, in one slot."""
    p = plan(dataclasses.replace(who, licences=(L_CAP,)), pack=BUNDLED)
    drawn = [c for c in p.counters if c.code is Code.QUOTA_COUNTRY_TPP]
    assert [c.key for c in drawn] == countries
    assert all((c.share, c.amount, c.cap) == (OVER, 8 * H100, 790e6) for c in drawn)
    assert p.hash_tag == QUOTA_SLOT
    assert [f"country:{cc}" for cc in allocation_countries(who, BUNDLED.tiers, NOW.date())] == countries


@pytest.mark.parametrize(
    ("day", "cap"),
    [
        (date(2024, 12, 31), 0.0),
        (date(2025, 1, 1), 633_000_000.0),
        (date(2025, 3, 31), 633_000_000.0),
        (date(2025, 4, 1), 949_500_000.0),
        (date(2026, 7, 15), 3_481_500_000.0),
        (date(2030, 1, 1), 5_064_000_000.0),
    ],
    ids=["before-schedule", "2025-q1-start", "2025-q1-end", "2025-q2", "2026-q3", "after-2027"],
)
def test_national_veu_schedule_by_quarter(day: date, cap: float) -> None:
    """An NVEU's cap is the cumulative schedule step in force on the day (zero before it starts)."""
    p = plan(tenant(veu=Veu.NATIONAL), now=datetime(day.year, day.month, day.day, 12, tzinfo=UTC))
    assert shape(p) == [("veu:t1", cap, T, FIX)]


OPS = 1e24
EXEMPT_LINEAGE = dataclasses.replace(CAPS, exempt_lineages=frozenset({"open-weights"}))
EXEMPT_PURPOSE = dataclasses.replace(CAPS, exempt_purposes=frozenset({"inference"}))
NO_EXEMPT_PURPOSE = dataclasses.replace(CAPS, exempt_purposes=frozenset())
LLAMA = (1e26, True, 0.0)
TRAIN_CASES = [
    ("lineage-and-total", tenant(), "llama", None, CAPS,
     {"ops:t1:llama": LLAMA, "ops:t1:*": LLAMA}, ()),
    ("no-lineage-is-default", tenant(), None, None, CAPS,
     {"ops:t1:default": LLAMA, "ops:t1:*": LLAMA}, ()),
    ("total-off", tenant(), "llama", None, dataclasses.replace(CAPS, per_tenant_total=False),
     {"ops:t1:llama": LLAMA}, ()),
    ("declared-ops-as-base", tenant(declared_training_ops={"llama": 9e25, "mistral": 2e25}), "llama", None, CAPS,
     {"ops:t1:llama": (1e26, True, 9e25), "ops:t1:*": (1e26, True, 1.1e26)}, ()),
    ("licence-for-lineage-lifts-cap", tenant(licences=(L_TRAIN,)), "llama", None, CAPS,
     {"ops:t1:llama": (None, False, 0.0)}, ("L3",)),
    ("licence-for-other-lineage-ignored", tenant(licences=(L_TRAIN,), declared_training_ops={"llama": 5e25}),
     "gpt", None, CAPS, {"ops:t1:gpt": LLAMA, "ops:t1:*": LLAMA}, ()),
    ("licence-for-all-lineages-with-allotment", tenant(licences=(L_TRAIN_ALL,)), "gpt", None, CAPS,
     {"ops:t1:gpt": (5e26, False, 0.0)}, ("L4",)),
    ("exempt-lineage", tenant(), "open-weights", None, EXEMPT_LINEAGE, {}, ()),
    ("exempt-purpose", tenant(), "llama", "inference", EXEMPT_PURPOSE, {}, ()),
    ("bundled-pack-exempts-declared-inference", tenant(), "llama", "inference", CAPS, {}, ()),
    ("declared-training-counted", tenant(), "llama", "training", CAPS,
     {"ops:t1:llama": LLAMA, "ops:t1:*": LLAMA}, ()),
    ("operator-removed-the-exemption", tenant(), "llama", "inference", NO_EXEMPT_PURPOSE,
     {"ops:t1:llama": LLAMA, "ops:t1:*": LLAMA}, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("who", "lineage", "purpose", "caps", "expected", "licences"),
    [case[1:] for case in TRAIN_CASES],
    ids=[case[0] for case in TRAIN_CASES],
)
def test_training_threshold_counters(
    who: Tenant,
    lineage: str | None,
    purpose: str | None,
    caps: CapSettings,
    expected: dict[str, tuple[float | None, bool, float]],
    licences: tuple[str, ...],
) -> None:
    """Training ops accumulate per lineage and per tenant, refusing when the total reaches 1e26."""
    p = plan(who, job=cost(ops=OPS), lineage=lineage, purpose=purpose, caps=caps)
    ops = {c.key: (c.cap, c.reach_refuses, c.base) for c in p.counters if c.key.startswith("ops:")}
    assert ops == expected
    for c in p.counters:
        if c.key.startswith("ops:"):
            assert (c.kind, c.code, c.rule, c.amount) == (C, Code.LICENCE_REQUIRED, RuleId.TRAINING_THRESHOLD, OPS)
    assert p.licence_ids == licences


EXEMPTIONS = [
    ("declared-inference", "inference", "llama", CAPS, ("purpose:inference",)),
    ("exempt-lineage", None, "open-weights", EXEMPT_LINEAGE, ("lineage:open-weights",)),
    ("declared-training", "training", "llama", CAPS, ()),
    ("exemption-removed-by-operator", "inference", "llama", NO_EXEMPT_PURPOSE, ()),
]


@pytest.mark.parametrize(
    ("purpose", "lineage", "caps", "exemptions"), [e[1:] for e in EXEMPTIONS], ids=[e[0] for e in EXEMPTIONS]
)
def test_exemptions_are_named_in_the_decision(
    purpose: str | None, lineage: str, caps: CapSettings, exemptions: tuple[str, ...]
) -> None:
    """A training count skipped on an exemption is named in the plan and the decision, so the ledger can show why."""
    p = plan(tenant(), job=cost(ops=OPS), lineage=lineage, purpose=purpose, caps=caps)
    assert p.exemptions == exemptions
    assert any(c.key.startswith("ops:") for c in p.counters) is (exemptions == ())
    admitted = ReserveResult(ReserveStatus.ADMITTED, states(*((c.key, 0.0, c.amount) for c in p.counters)))
    quota = interpret(p, admitted, NOW).quota
    assert quota is not None
    assert quota.exemptions == exemptions


NEAR_1E26 = tenant(declared_training_ops={"llama": 9.9999999e25})
ONE_H100_HOUR = JobSpec((JobPart(1, "h100"),), 3600.0)


@pytest.mark.parametrize(
    ("purpose", "caps", "outcome"),
    [
        ("inference", CAPS, Outcome.ALLOW),
        ("training", CAPS, Outcome.DENY),
        (None, CAPS, Outcome.DENY),
        ("inference", NO_EXEMPT_PURPOSE, Outcome.DENY),
    ],
    ids=["declared-inference-admitted", "declared-training-refused", "undeclared-refused", "exemption-removed"],
)
def test_inference_near_the_training_threshold(purpose: str | None, caps: CapSettings, outcome: Outcome) -> None:
    """Near 1e26 the bundled pack admits declared inference and refuses training; without the exemption both count."""
    assert BUNDLED.gpus is not None
    job = price(ONE_H100_HOUR, BUNDLED.gpus, None, 1.0)
    p = plan(NEAR_1E26, job=job, lineage="llama", purpose=purpose, caps=caps, pack=BUNDLED)
    decision = interpret(p, QuotaBook().reserve(p, NOW.timestamp()), NOW)
    assert decision.outcome is outcome
    if outcome is Outcome.DENY:
        assert decision.code is Code.LICENCE_REQUIRED


def test_tier1_has_no_training_threshold() -> None:
    """Tenants resolved to Tier 1 are capped on TPP only, whatever they train; the lineage is still metered.

    The lineage's own meter (`lineage_ops:<lineage>`, every tier, no cap) is what makes its weights
    controlled (gateway/core/weights.py); it never refuses.
    """
    p = plan(tenant(headquarters="US"), Tier.ONE, cost(ops=5e26), lineage="big")
    assert [c.key for c in p.counters] == ["tenant:t1", "lineage_ops:big"]
    assert p.counters[1].cap is None and p.counters[1].amount == 5e26


L_WEIGHTS = Licence("W1", frozenset({LicenceScope.WEIGHTS}), lineage="big")
PARAMS_SHADOW = dataclasses.replace(PACK, rules={**PACK.rules, RuleId.WEIGHTS_PARAMETERS: Rule(
    RuleId.WEIGHTS_PARAMETERS, date(2027, 1, 1), "mission statement")})  # fmt: skip


def params_plan(who: Tenant, tier: Tier, parameters: float | None, pack: Pack = PACK) -> Plan | Decision:
    return plan_reservation(who, tier, cost(ops=5e24), "big", None, pack, CAPS, NOW, decision_id="d1",
                            idempotency_key=None, upstream="slurm", parameters=parameters)  # fmt: skip


@pytest.mark.parametrize(
    ("who", "tier", "parameters", "keys", "licences"),
    [
        (tenant(headquarters="US"), Tier.ONE, 1e24,
         ["tenant:t1", "lineage_ops:big", "lineage_params_declared:big"], ()),
        (tenant(licences=(L_WEIGHTS,)), Tier.TWO, 1e24,
         ["tenant:t1", "ops:t1:big", "ops:t1:*", "lineage_ops:big", "lineage_params_declared:big"], ("W1",)),
        (tenant(), Tier.TWO, 1e23, ["tenant:t1", "ops:t1:big", "ops:t1:*", "lineage_ops:big"], ()),
        (tenant(), Tier.TWO, None, ["tenant:t1", "ops:t1:big", "ops:t1:*", "lineage_ops:big"], ()),
    ],
    ids=["tier1-over", "tier2-licensed-over", "tier2-at-threshold", "tier2-undeclared"],
)
def test_declared_parameters_meter_the_lineage(
    who: Tenant, tier: Tier, parameters: float | None, keys: list[str], licences: tuple[str, ...]
) -> None:
    """A job declaring over the pack's parameter threshold (weights.yaml, 1e23 by default) takes 1 from the lineage's
    uncapped `lineage_params_declared:<lineage>` (what makes its weights controlled); at the threshold, nothing."""
    p = params_plan(who, tier, parameters)
    assert isinstance(p, Plan)
    assert [c.key for c in p.counters] == keys
    assert p.licence_ids == licences and p.reasons == ()
    meter = next((c for c in p.counters if c.key == "lineage_params_declared:big"), None)
    if meter is not None:
        assert (meter.amount, meter.cap, meter.kind, meter.rule) == (1.0, None, C, RuleId.WEIGHTS_PARAMETERS)


def test_declared_parameters_need_a_licence_outside_tier1() -> None:
    """Enforced: refused before the store is asked. In shadow: the plan carries the objection and the verdict
    keeps it whatever the store says (here it admits), and the lineage is metered."""
    refused = params_plan(tenant(), Tier.TWO, 1e24)
    assert isinstance(refused, Decision)
    assert (refused.outcome, refused.code, refused.reasons[0].rule) == (
        Outcome.DENY, Code.LICENCE_REQUIRED, RuleId.WEIGHTS_PARAMETERS)  # fmt: skip
    shadow = params_plan(tenant(), Tier.TWO, 1e24, PARAMS_SHADOW)
    assert isinstance(shadow, Plan)
    assert [(r.code, r.enforced, r.citation) for r in shadow.reasons] == [
        (Code.LICENCE_REQUIRED, False, "mission statement")]  # fmt: skip
    assert shadow.counters[-1].key == "lineage_params_declared:big"
    decision = interpret(shadow, QuotaBook().reserve(shadow, NOW.timestamp()), NOW)
    assert (decision.outcome, decision.code) == (Outcome.SHADOW_DENY, Code.LICENCE_REQUIRED)


@pytest.mark.parametrize(
    ("period", "key"),
    [(BudgetPeriod.MONTH, "budget:t1:2026-11"), (BudgetPeriod.YEAR, "budget:t1:2026")],
    ids=["month", "year"],
)
def test_budget_keyed_by_period(period: BudgetPeriod, key: str) -> None:
    """A period budget debits TPP-hours to a counter named after the current month or year."""
    p = plan(tenant(budget=Budget(period, 1e6)))
    budget = p.counters[-1]
    assert (budget.key, budget.cap, budget.kind, budget.amount) == (key, 1e6, C, 8 * H100 * 2)
    assert (budget.code, budget.rule) == (Code.QUOTA_BUDGET_EXHAUSTED, RuleId.BUDGET)


def test_grace_period_counters_unenforced() -> None:
    """Before a rule's enforced-from date its counters still debit but refuse only in shadow."""
    p = plan(tenant(licences=(L_CAP,), budget=Budget(BudgetPeriod.MONTH, 1.0)), job=cost(ops=OPS), now=GRACE)
    enforced = {c.key: c.enforced for c in p.counters}
    assert enforced == {
        "tenant:t1": False,
        "licensed:tenant:t1": False,
        "country:SG": False,
        "ops:t1:default": False,
        "ops:t1:*": False,
        "budget:t1:2025-03": True,
    }
    assert all(c.enforced for c in plan(tenant(), job=cost(ops=OPS)).counters)


def test_lease_slot_and_identity() -> None:
    """The lease ends after walltime plus the pending allowance; ids and upstream are carried."""
    p = plan(tenant(), job=cost(hours=2.0))
    assert p.lease_end == NOW.timestamp() + 7200 + CAPS.pending_allowance_s
    assert (p.hash_tag, p.tenant_id, p.decision_id, p.idempotency_key, p.upstream) == (
        QUOTA_SLOT, "t1", "d1", "k1", "slurm"
    )
    assert p.ref.counters == (("tenant:t1", T),)


def test_uncontrolled_chips_hold_nothing() -> None:
    """A job on uncontrolled chips (zero TPP) debits no TPP counter at all."""
    assert plan(tenant(), job=cost(tpp=0.0)).counters == ()


@pytest.mark.parametrize(
    ("who", "job", "lineage", "code"),
    [
        (tenant(parent_entity="acme", parent_headquarters=None), cost(), None, Code.TENANT_COUNTRY_UNKNOWN),
        (tenant(headquarters=None), cost(), None, Code.TENANT_COUNTRY_UNKNOWN),
        (tenant(), cost(tpp=-1.0), None, Code.JOB_SPEC_INVALID),
        (tenant(), cost(ops=math.nan), None, Code.JOB_SPEC_INVALID),
        (tenant(), cost(), "*", Code.JOB_SPEC_INVALID),
    ],
    ids=["group-without-parent-country", "no-headquarters", "negative-price", "nan-ops", "reserved-lineage"],
)
def test_static_refusals(who: Tenant, job: Cost, lineage: str | None, code: Code) -> None:
    """What no counter could settle is refused before the store is asked."""
    out = plan_reservation(
        who, Tier.TWO, job, lineage, None, PACK, CAPS, NOW, decision_id="d", idempotency_key=None, upstream="u"
    )
    assert isinstance(out, Decision)
    assert (out.outcome, out.code) == (Outcome.DENY, code)


def counter(cap: float | None, *, reach: bool = False, base: float = 0.0, share: Share = FIX) -> Counter:
    return Counter("k", 10.0, cap, T, Code.QUOTA_TENANT_TPP, RuleId.TENANT_CAP, True, base, reach, share)


@pytest.mark.parametrize(
    ("c", "before", "refuses"),
    [
        (counter(100.0), 89.0, False),
        (counter(100.0), 90.0, False),
        (counter(100.0), 90.5, True),
        (counter(100.0, reach=True), 89.0, False),
        (counter(100.0, reach=True), 90.0, True),
        (counter(100.0, reach=True, base=50.0), 39.0, False),
        (counter(100.0, reach=True, base=50.0), 40.0, True),
        (counter(None), 1e30, False),
    ],
    ids=["tpp-below", "tpp-exactly-at-cap", "tpp-over", "ops-below", "ops-reaches", "base-below", "base-reaches",
         "uncapped"],
)  # fmt: skip
def test_boundaries(c: Counter, before: float, refuses: bool) -> None:
    """TPP caps refuse only past the cap; the training threshold refuses on reaching it."""
    assert c.refuses(before, c.amount) is refuses


def test_split_fills_allowance_then_overflows() -> None:
    """Headroom counters take what fits; overflow counters take the rest of the same job."""
    counters = [counter(100.0, share=ROOM), counter(None, share=OVER), counter(5.0, share=OVER), counter(1.0)]
    counters = [dataclasses.replace(c, amount=30.0) for c in counters]
    assert split_amounts(counters, [50.0, 0.0, 0.0, 0.0]) == (30.0, 0.0, 0.0, 30.0)
    assert split_amounts(counters, [80.0, 0.0, 0.0, 0.0]) == (20.0, 10.0, 10.0, 30.0)
    assert split_amounts(counters, [120.0, 0.0, 0.0, 0.0]) == (0.0, 30.0, 30.0, 30.0)


def chipped(cap: float | None, share: Share, chip_max: float, chip_min: float, amount: float) -> Counter:
    return dataclasses.replace(counter(cap, share=share), amount=amount, chip_max=chip_max, chip_min=chip_min)


WHOLE_CHIPS = [
    ("job-fits", 80.0, 10.0, 10.0, 20.0, (80.0, 0.0)),
    ("room-for-two-and-a-half-chips", 80.0, 10.0, 10.0, 75.0, (20.0, 60.0)),
    ("room-under-one-chip", 80.0, 10.0, 10.0, 95.0, (0.0, 80.0)),
    ("mixed-chips-count-the-dearest-credit-the-cheapest", 22.0, 10.0, 6.0, 80.0, (12.0, 10.0)),
    ("divisible-without-chip-sizes", 80.0, 0.0, 0.0, 75.0, (25.0, 55.0)),
]


@pytest.mark.parametrize(
    ("amount", "chip_max", "chip_min", "before", "takes"), [w[1:] for w in WHOLE_CHIPS], ids=[w[0] for w in WHOLE_CHIPS]
)
def test_split_keeps_whole_chips_under_the_allowance(
    amount: float, chip_max: float, chip_min: float, before: float, takes: tuple[float, float]
) -> None:
    """A job that does not fit leaves no fraction of a chip under the allowance; the overflow is rounded up."""
    counters = [chipped(100.0, ROOM, chip_max, chip_min, amount), chipped(None, OVER, 0.0, 0.0, amount)]
    assert split_amounts(counters, [before, 0.0]) == takes


@pytest.mark.parametrize(
    ("left", "outcome"),
    [(7.5 * H100, Outcome.DENY), (8 * H100, Outcome.ALLOW)],
    ids=["crosses-by-half-a-gpu-refused", "whole-gpus-fit-exactly"],
)
def test_country_allocation_counts_whole_chips(left: float, outcome: Outcome) -> None:
    """With half an H100 of allowance left an 8-H100 job costs the country 8 H100s: crossing it by half is refused."""
    assert BUNDLED.gpus is not None
    job = price(JobSpec((JobPart(8, "h100"),), 7200.0), BUNDLED.gpus, None, 1.0)
    p = plan(tenant(licences=(L_CAP,)), job=job, pack=BUNDLED)
    book = QuotaBook()
    book.load([CounterValue(p.hash_tag, "tenant:t1", T, LPP - H100 / 2),
               CounterValue(p.hash_tag, "country:SG", T, 790e6 - left)], [])  # fmt: skip
    result = book.reserve(p, NOW.timestamp())
    decision = interpret(p, result, NOW)
    assert (decision.outcome, decision.code) == (outcome, Code.QUOTA_COUNTRY_TPP if outcome is Outcome.DENY else None)
    assert {s.key: s.amount for s in result.counters if not s.key.startswith("ops:")} == {
        "tenant:t1": 0.0, "licensed:tenant:t1": 8 * H100, "country:SG": 8 * H100,
    }  # fmt: skip


def test_saudi_member_of_uae_group_is_refused_on_saudi_arabias_allocation() -> None:
    """The reported case: a Saudi member of a UAE group is refused when Saudi Arabia has 16,296 TPP left."""
    assert BUNDLED.gpus is not None
    member = tenant(id="dune-sa", location="SA", headquarters="SA", parent_entity="dunes", parent_headquarters="AE",
                    licences=(L_CAP,))  # fmt: skip
    p = plan(member, job=price(JobSpec((JobPart(8, "h100"),), 3600.0), BUNDLED.gpus, None, 1.0), pack=BUNDLED)
    book = QuotaBook()
    book.load([CounterValue(p.hash_tag, "group:dunes", T, LPP - 1432.0),
               CounterValue(p.hash_tag, "country:SA", T, 790e6 - 16_296.0)], [])  # fmt: skip
    result = book.reserve(p, NOW.timestamp())
    decision = interpret(p, result, NOW)
    assert (decision.outcome, decision.code, result.failing) == (Outcome.DENY, Code.QUOTA_COUNTRY_TPP, "country:SA")
    assert "SA" in decision.reasons[0].detail
    assert book.value(p.hash_tag, "country:AE", NOW.timestamp()) == 0.0


LICENSED = plan(tenant(licences=(L_CAP,)))
TPP8 = 8 * H100


def states(*rows: tuple[str, float, float]) -> tuple[CounterState, ...]:
    return tuple(CounterState(key, before, amount, before + amount) for key, before, amount in rows)


def test_interpret_admitted_within_allowance() -> None:
    """An admitted licensed tenant's job that fit within the LPP allowance is authorised by LPP."""
    result = ReserveResult(
        ReserveStatus.ADMITTED,
        states(("tenant:t1", 0.0, TPP8), ("licensed:tenant:t1", 0.0, 0.0), ("country:SG", 0.0, 0.0)),
    )
    decision = interpret(LICENSED, result, NOW)
    assert (decision.outcome, decision.basis, decision.reasons) == (Outcome.ALLOW, "lpp", ())
    quota = decision.quota.counters if decision.quota is not None else None
    assert quota is not None
    assert quota["tenant:t1"].as_record() == {"before": 0.0, "amount": TPP8, "after": TPP8, "cap": LPP}


def test_interpret_admitted_on_licence() -> None:
    """Capacity drawn beyond the allowance is authorised by the licence."""
    result = ReserveResult(
        ReserveStatus.ADMITTED,
        states(("tenant:t1", LPP, 0.0), ("licensed:tenant:t1", 0.0, TPP8), ("country:SG", 0.0, TPP8)),
    )
    assert interpret(LICENSED, result, NOW).basis == "licence:L1"


def test_interpret_shadow_overrun() -> None:
    """An unenforced overrun admits as shadow_deny and names the rule it would have broken."""
    p = plan(tenant(), now=GRACE)
    result = ReserveResult(ReserveStatus.ADMITTED, states(("tenant:t1", LPP, TPP8)), shadow=("tenant:t1",))
    decision = interpret(p, result, GRACE)
    assert (decision.outcome, decision.forwards, decision.code) == (Outcome.SHADOW_DENY, True, Code.QUOTA_TENANT_TPP)
    assert decision.reasons[0].enforced is False


@pytest.mark.parametrize(
    ("p", "failing", "before", "earliest", "code", "retry"),
    [
        (plan(tenant()), "tenant:t1", LPP - 1000, NOW.timestamp() + 90.2, Code.QUOTA_TENANT_TPP, 91),
        (plan(tenant()), "tenant:t1", LPP - 1000, NOW.timestamp() - 1, Code.QUOTA_TENANT_TPP, 1),
        (plan(tenant(), job=cost(gpus=2000)), "tenant:t1", 0.0, NOW.timestamp() + 90, Code.QUOTA_TENANT_TPP, None),
        (LICENSED, "country:SG", 790e6, NOW.timestamp() + 30, Code.QUOTA_COUNTRY_TPP, 30),
        (plan(tenant(), job=cost(ops=OPS)), "ops:t1:*", 1e26, None, Code.LICENCE_REQUIRED, None),
        (plan(tenant(budget=Budget(BudgetPeriod.MONTH, 1.0))), "budget:t1:2026-11", 1.0, None,
         Code.QUOTA_BUDGET_EXHAUSTED, None),
    ],
    ids=["held-retry-after", "retry-after-at-least-1", "job-alone-too-big-no-retry", "country-retry-after",
         "ops-threshold-no-retry", "budget-no-retry"],
)  # fmt: skip
def test_interpret_denied(
    p: Plan, failing: str, before: float, earliest: float | None, code: Code, retry: int | None
) -> None:
    """A refusal carries the failing counter's code, and Retry-After only where a lease end helps."""
    counters = tuple(
        CounterState(c.key, before if c.key == failing else 0.0, c.amount, before if c.key == failing else 0.0)
        for c in p.counters
    )
    result = ReserveResult(ReserveStatus.DENIED, counters, failing, (), earliest, None)
    decision = interpret(p, result, NOW)
    assert (decision.outcome, decision.code) == (Outcome.DENY, code)
    assert (decision.quota.retry_after_s if decision.quota is not None else None) == retry


def test_interpret_retries() -> None:
    """A retry in flight is refused request_in_progress; a completed one replays its response."""
    p = plan(tenant())
    in_progress = interpret(p, ReserveResult(ReserveStatus.IN_PROGRESS), NOW)
    assert (in_progress.outcome, in_progress.code) == (Outcome.DENY, Code.REQUEST_IN_PROGRESS)
    stored = StoredResponse(200, (("content-type", "application/json"),), b'{"job_id": 7}')
    replay = interpret(p, ReserveResult(ReserveStatus.REPLAY, response=stored), NOW)
    assert (replay.outcome, replay.quota.replay if replay.quota is not None else None) == (Outcome.ALLOW, stored)


def test_stored_response_is_bounded() -> None:
    """Responses kept for replay are at most 64 KiB."""
    StoredResponse(200, (), b"x" * 65536)
    with pytest.raises(ValueError, match="65536 bytes"):
        StoredResponse(200, (), b"x" * 65537)
