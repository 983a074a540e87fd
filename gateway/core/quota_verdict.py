"""Quota verdicts: what a store's answer to a reservation means, with its reasons and Retry-After."""

import math
from dataclasses import replace
from datetime import datetime

from gateway.core.codes import Code
from gateway.core.decide import Decision, Outcome, Reason, refuse, verdict
from gateway.core.leases import Counter, CounterKind, CounterState, Plan, ReserveResult, ReserveStatus, Share
from gateway.core.outcome import CounterUse, QuotaOutcome
from gateway.core.quota import TOTAL_LINEAGE, country_of_key, epoch


def _detail(counter: Counter, state: CounterState | None) -> str:
    total = counter.base + (state.before + state.amount if state else counter.amount)
    cap = counter.cap or 0.0
    if counter.code is Code.QUOTA_COUNTRY_TPP:
        country = country_of_key(counter.key) or "the country"
        return f"the TPP allocation of {country}, which the tenant's licensed capacity draws on, is used up"
    if counter.code is Code.LICENCE_REQUIRED:
        lineage = counter.key.rsplit(":", 1)[-1]
        scope = "across all lineages" if lineage == TOTAL_LINEAGE else f"for lineage {lineage!r}"
        return f"training operations {scope} would be {total:.4g}, against a cap of {cap:.4g}, without a licence"
    if counter.code is Code.QUOTA_BUDGET_EXHAUSTED:
        return f"TPP-hours this period would be {total:,.0f}, over the budget of {cap:,.0f}"
    return f"TPP held at once would be {total:,.0f}, over the cap of {cap:,.0f}"


def interpret(plan: Plan, result: ReserveResult, now: datetime) -> Decision:
    """The decision a store's answer amounts to; Retry-After only where waiting can help."""
    if result.status is ReserveStatus.IN_PROGRESS:
        reason = Reason(
            Code.REQUEST_IN_PROGRESS,
            None,
            True,
            "a request with this idempotency key is still being decided",
        )
        return Decision(Outcome.DENY, plan.tier, (reason,), plan.basis, quota=QuotaOutcome(plan))
    if result.status is ReserveStatus.REPLAY:
        return Decision(Outcome.ALLOW, plan.tier, (), plan.basis, quota=QuotaOutcome(plan, replay=result.response))
    by_key = {c.key: c for c in plan.counters}
    states = {s.key: s for s in result.counters}
    uses = {
        s.key: CounterUse(s.before, s.amount, s.after, by_key[s.key].cap) for s in result.counters if s.key in by_key
    }
    # The plan's own objections (shadow: an enforced one never reaches the store), then the shadow counters'.
    reasons = list(plan.reasons) + [
        Reason(c.code, c.rule, False, _detail(c, states.get(c.key)), c.citation)
        for c in (by_key[k] for k in result.shadow if k in by_key)
    ]
    if result.status is ReserveStatus.DENIED:
        failing = by_key.get(result.failing or "")
        if failing is None:
            refused = refuse(Code.BACKEND_UNAVAILABLE, "the quota store refused without naming a counter", plan.tier)
            return replace(refused, quota=QuotaOutcome(plan))
        state = states.get(failing.key)
        reasons.insert(0, Reason(failing.code, failing.rule, True, _detail(failing, state), failing.citation))
        amount = state.amount if state else failing.amount
        alone_fits = failing.cap is not None and failing.base + amount <= failing.cap
        retry = None
        if failing.kind is CounterKind.HELD and alone_fits and result.earliest_end is not None:
            retry = max(1, math.ceil(result.earliest_end - epoch(now)))
        quota = QuotaOutcome(plan, uses, retry_after_s=retry)
        return replace(verdict(plan.tier, tuple(reasons), plan.basis), quota=quota)
    spilled = any(states[c.key].amount > 0 for c in plan.counters if c.share is Share.OVERFLOW and c.key in states)
    basis = plan.basis if spilled else plan.allowance_basis
    return replace(verdict(plan.tier, tuple(reasons), basis), quota=QuotaOutcome(plan, uses))
