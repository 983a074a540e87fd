"""How much more a tenant can take under the caps a reservation touched, and which cap binds first.

Read from the quota outcome of one decision: each counter's value after it (before it, for a
refusal: nothing was debited), its cap and its base. Only enforced caps count: a cap in shadow
refuses nothing. Held TPP counters combine as the store splits them (gateway.core.leases.Share):
each FIXED counter takes the whole of a next job, so the least room of them binds; HEADROOM
counters (a licensed tenant's allowance) take what fits and OVERFLOW counters (its licensed
allotment and its countries' allocations) each take the rest, so the room is the allowance's
plus the least of the overflows'. Whole chips are not accounted for: the room is an upper bound.
"""

import math
from dataclasses import dataclass

from gateway.core.codes import Code
from gateway.core.leases import Counter, Share
from gateway.core.outcome import CounterUse, QuotaOutcome
from gateway.core.quota import COUNTRY_PREFIX, TOTAL_LINEAGE

TPP_CODES = (Code.QUOTA_TENANT_TPP, Code.QUOTA_COUNTRY_TPP)


@dataclass(frozen=True, slots=True)
class Headroom:
    """`amount` more fits under the caps of one kind; `binding` names the cap that refuses first."""

    amount: float
    binding: str


def cap_name(key: str) -> str:
    """A counter key as a tenant may read it: which cap, without the tenant's own id.

    `tenant:acme` -> `tenant`, `group:falcon` -> `group`, `veu:x` -> `veu`, `licensed:...` -> `licence`,
    `country:AE` -> `country:AE`, `ops:t:llama` -> `lineage:llama`, `ops:t:*` -> `lineages`, `budget:...` -> `budget`.
    """
    kind, _, rest = key.partition(":")
    if key.startswith(COUNTRY_PREFIX):
        return key
    if kind == "ops":
        lineage = rest.rpartition(":")[2]
        return "lineages" if lineage == TOTAL_LINEAGE else f"lineage:{lineage}"
    return {"licensed": "licence"}.get(kind, kind)


def _room(counter: Counter, use: CounterUse | None) -> float:
    """What still fits under one counter's cap (infinite without an enforced cap); never below 0."""
    if counter.cap is None or not counter.enforced or use is None:
        return math.inf
    return max(0.0, counter.cap - counter.base - use.after)


def _tightest(counters: list[tuple[Counter, float]]) -> tuple[float, str]:
    room, name = math.inf, ""
    for counter, r in counters:
        if r < room:
            room, name = r, cap_name(counter.key)
    return room, name


def _combine(counters: list[tuple[Counter, float]]) -> tuple[float, str]:
    """The room of one kind's counters, as the store splits a next job among them."""
    fixed = [(c, r) for c, r in counters if c.share is Share.FIXED]
    shared = [(c, r) for c, r in counters if c.share is Share.HEADROOM]
    overflow = [(c, r) for c, r in counters if c.share is Share.OVERFLOW]
    room, name = _tightest(fixed)
    if shared or overflow:
        extra, extra_name = _tightest(overflow) if overflow else (0.0, "")
        split = sum(r for _, r in shared) + extra
        if split < room:
            # The allowance fills first; the overflow cap refuses what goes past it (or the allowance alone).
            room, name = split, extra_name or _tightest(shared)[1]
    return room, name


def headrooms(outcome: QuotaOutcome) -> dict[str, Headroom]:
    """By kind (`tpp`, `training_ops`, `tpp_hours`), the room left under the enforced caps the plan touched;
    a kind whose counters have no enforced cap (uncapped, or in shadow) is absent."""
    uses = outcome.counters or {}
    kinds: dict[str, list[tuple[Counter, float]]] = {"tpp": [], "training_ops": [], "tpp_hours": []}
    for counter in outcome.plan.counters:
        if counter.code in TPP_CODES:
            kind = "tpp"
        elif counter.code is Code.LICENCE_REQUIRED:
            kind = "training_ops"
        elif counter.code is Code.QUOTA_BUDGET_EXHAUSTED:
            kind = "tpp_hours"
        else:
            continue
        kinds[kind].append((counter, _room(counter, uses.get(counter.key))))
    out: dict[str, Headroom] = {}
    for kind, counters in kinds.items():
        room, name = _combine(counters)
        if math.isfinite(room):
            out[kind] = Headroom(room, name)
    return out
