"""Read-back true-up: the held capacity of what a scheduler really allocated, against what a job's lease holds.

Admission prices the most a request lets the scheduler allocate; reconciliation then reads
what it did allocate. A job holding more than its lease is charged the difference (and, over
a cap, handled by the pack's `enforcement.over_allocation`); a job that runs with less, and
can be given nothing more, gives the difference back. Only held capacity (TPP in use) is trued
up: cumulative counters (training operations, budgets) keep what admission debited, since the
lineage and purpose they are counted under are in the request, not in the scheduler's answer.
"""

import dataclasses
from enum import StrEnum

from gateway.core.leases import Counter, CounterKind, Plan, Share

# Differences smaller than this share of the lease are float noise, not a different allocation.
TOLERANCE = 1e-9


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


def held_only(plan: Plan) -> Plan:
    """The plan with its held counters alone: a true-up moves capacity in use, never cumulative totals."""
    return dataclasses.replace(plan, counters=tuple(c for c in plan.counters if c.kind is CounterKind.HELD))


def forced(plan: Plan) -> Plan:
    """The plan with no counter enforced: the job runs whether or not it fits, so its count must be true."""
    return dataclasses.replace(plan, counters=tuple(dataclasses.replace(c, enforced=False) for c in plan.counters))


def leased_tpp(plan: Plan, amounts: dict[str, float]) -> float | None:
    """The TPP a lease holds, read from its held amounts by the shape `plan` (priced the same way) has.

    A fixed counter holds the whole TPP; an allowance split holds it as the allowance's share
    plus the overflow (each overflow counter holds the whole overflow). None when the lease has
    none of the plan's counters (the registry or pack changed its shape since admission).
    """
    held: list[Counter] = [c for c in plan.counters if c.kind is CounterKind.HELD]
    fixed = [amounts[c.key] for c in held if c.share is Share.FIXED and c.key in amounts]
    if fixed:
        return max(fixed)
    headroom = [amounts[c.key] for c in held if c.share is Share.HEADROOM and c.key in amounts]
    overflow = [amounts[c.key] for c in held if c.share is Share.OVERFLOW and c.key in amounts]
    if not headroom and not overflow:
        return None
    return sum(headroom) + (overflow[0] if overflow else 0.0)


def direction(allocated_tpp: float, leased: float, *, settled: bool) -> Direction | None:
    """UP when the scheduler allocated more than the lease holds; DOWN when less and nothing more can start."""
    slack = TOLERANCE * max(allocated_tpp, leased, 1.0)
    if allocated_tpp > leased + slack:
        return Direction.UP
    if allocated_tpp < leased - slack and settled:
        return Direction.DOWN
    return None
