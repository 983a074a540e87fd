"""The typed quota outcome a decision carries: counter states, retry hint, plan and replayed answer."""

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.leases import Plan, StoredResponse


@dataclass(frozen=True, slots=True)
class CounterUse:
    """One counter as the reservation left it, with the cap it was checked against."""

    before: float
    amount: float
    after: float
    cap: float | None

    def as_record(self) -> dict[str, float | None]:
        return {"before": self.before, "amount": self.amount, "after": self.after, "cap": self.cap}


@dataclass(frozen=True, slots=True)
class QuotaOutcome:
    """What reserving a plan came to, beside the verdict: the ledger and the reply read it."""

    plan: Plan
    # None when the store named no counter states (a retry in flight, an unnamed refusal).
    counters: Mapping[str, CounterUse] | None = None
    retry_after_s: int | None = None
    replay: StoredResponse | None = None
    # The job an update's lease replaces (the ledger rebuilds the replacement from it).
    replaces_job: str | None = None
    # A job joining its tenant's shared cluster lease: that lease and the live jobs owned under it (the ledger
    # names them so a replay checks the job net of the same lease).
    joins_lease: str | None = None
    shared_with: tuple[str, ...] = ()

    @property
    def licence_ids(self) -> tuple[str, ...]:
        return self.plan.licence_ids

    @property
    def exemptions(self) -> tuple[str, ...]:
        return self.plan.exemptions

    @property
    def lease_end(self) -> float:
        return self.plan.lease_end
