"""The pure part of the true-up: the TPP a lease holds, read from its held amounts, and which way to true it."""

import dataclasses

import pytest

from gateway.core.codes import Code
from gateway.core.leases import Counter, CounterKind, Plan, Share
from gateway.core.policy import RuleId
from gateway.core.tiers import Tier
from gateway.core.trueup import Direction, direction, forced, held_only, leased_tpp


def counter(key: str, share: Share, kind: CounterKind = CounterKind.HELD) -> Counter:
    return Counter(key, 100.0, 1000.0, kind, Code.QUOTA_TENANT_TPP, RuleId.TENANT_CAP, True, share=share)


def plan(*counters: Counter) -> Plan:
    return Plan("quota", "t1", "d1", None, "slurm", Tier.TWO, 0.0, counters, "lpp", "lpp", ())


FIXED = plan(counter("tenant:t1", Share.FIXED), counter("ops:t1:default", Share.FIXED, CounterKind.CUMULATIVE))
SPLIT = plan(counter("tenant:t1", Share.HEADROOM), counter("licensed:tenant:t1", Share.OVERFLOW),
             counter("country:AE", Share.OVERFLOW))  # fmt: skip


@pytest.mark.parametrize(
    ("shape", "amounts", "expected"),
    [
        (FIXED, {"tenant:t1": 60.0}, 60.0),
        # Within the allowance 40, beyond it 20 on the licence and (the same 20) on the country.
        (SPLIT, {"tenant:t1": 40.0, "licensed:tenant:t1": 20.0, "country:AE": 20.0}, 60.0),
        (SPLIT, {"tenant:t1": 60.0}, 60.0),  # all within the allowance: the overflow counters took nothing
        (FIXED, {"group:g": 60.0}, None),  # the registry moved the tenant into a group since admission
    ],
    ids=["fixed", "split", "within-allowance", "other-shape"],
)
def test_leased_tpp(shape: Plan, amounts: dict[str, float], expected: float | None) -> None:
    assert leased_tpp(shape, amounts) == expected


def test_direction_needs_a_real_difference_and_gives_back_only_when_settled() -> None:
    assert direction(3 * 15832.0, 15832.0, settled=False) is Direction.UP
    assert direction(15832.0, 15832.0 * (1 + 1e-12), settled=True) is None  # float noise
    assert direction(15832.0, 4 * 15832.0, settled=False) is None  # an array task may still start
    assert direction(15832.0, 4 * 15832.0, settled=True) is Direction.DOWN


def test_held_only_and_forced() -> None:
    """A true-up moves only held counters, and when forced enforces none of them."""
    assert [c.key for c in held_only(FIXED).counters] == ["tenant:t1"]
    assert all(not c.enforced for c in forced(SPLIT).counters)
    assert forced(SPLIT).counters == tuple(dataclasses.replace(c, enforced=False) for c in SPLIT.counters)
