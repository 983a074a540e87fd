"""What a quota store is asked and answers: counters, plans, lease references and results."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.core.codes import Code
from gateway.core.policy import RuleId
from gateway.core.reason import Reason
from gateway.core.tiers import Tier

MAX_STORED_BODY = 64 * 1024

# The Redis Cluster hash tag of every quota key (`eg:{quota}:...`). Country allocations are
# per destination country and a tenant may draw on two (location and headquarters), while a
# group's allowance is shared by members in different countries: counters that one
# reservation debits together are linked across groups and countries, and a slot per
# country or group would split a reservation over slots (or a cap over counters) as soon as
# the registry links them. One slot keeps every reservation one atomic script on Cluster;
# the price is that quota scripts run on one master (Cluster still gives fail-over).
QUOTA_SLOT = "quota"


class CounterKind(StrEnum):
    """HELD counters give back when a lease ends; CUMULATIVE ones only on refund."""

    HELD = "held"
    CUMULATIVE = "cumulative"


class Share(StrEnum):
    """How a counter's debit is sized when a job's TPP is split between allowances.

    FIXED debits `amount`. HEADROOM counters, in plan order, each take as much of `amount`
    as still fits under their cap and never refuse. OVERFLOW counters take what the HEADROOM
    counters before them left over (all of `amount` if there were none).

    Chips are allocated whole: when the job does not fit, a HEADROOM counter with a
    `chip_max` takes only as many chips as surely fit (room // chip_max), each credited at
    `chip_min`, so no fraction of a chip stays under the allowance and the overflow (the
    country allocation) is rounded up. One chip model: an exact chip boundary; mixed models:
    the error falls on the overflow side. Without `chip_max` the amount is divisible.
    """

    FIXED = "fixed"
    HEADROOM = "headroom"
    OVERFLOW = "overflow"


@dataclass(frozen=True, slots=True)
class Counter:
    """One counter a reservation debits, with its cap and the refusal it raises."""

    key: str
    amount: float
    cap: float | None
    kind: CounterKind
    code: Code
    rule: RuleId
    enforced: bool
    base: float = 0.0
    reach_refuses: bool = False
    share: Share = Share.FIXED
    citation: str = ""
    chip_max: float = 0.0
    chip_min: float = 0.0

    def refuses(self, before: float, amount: float) -> bool:
        """True if debiting `amount` onto `before` (plus `base`) passes, or reaches, the cap."""
        if self.cap is None or amount <= 0:
            return False
        total = before + self.base + amount
        return total >= self.cap if self.reach_refuses else total > self.cap


def split_amounts(counters: Sequence[Counter], befores: Sequence[float]) -> tuple[float, ...]:
    """What each counter is debited, given the stored values (mirrored in quota_reserve.lua)."""
    out: list[float] = []
    rest: float | None = None
    for counter, before in zip(counters, befores, strict=True):
        if counter.share is Share.HEADROOM:
            pool = counter.amount if rest is None else rest
            room = pool if counter.cap is None else max(0.0, counter.cap - counter.base - before)
            take = pool if pool <= room else room
            if take < pool and counter.chip_max > 0:
                take = min(pool, math.floor(room / counter.chip_max) * counter.chip_min)
            out.append(take)
            rest = pool - take
        elif counter.share is Share.OVERFLOW:
            out.append(counter.amount if rest is None else rest)
        else:
            out.append(counter.amount)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class LeaseRef:
    """Enough to find a lease again: its slot, tenant, id, idempotency key and counters."""

    hash_tag: str
    tenant_id: str
    lease_id: str
    idempotency_key: str | None
    counters: tuple[tuple[str, CounterKind], ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one atomic reservation does: the counters, the lease and the idempotency key."""

    hash_tag: str
    tenant_id: str
    decision_id: str
    idempotency_key: str | None
    upstream: str
    tier: Tier
    lease_end: float
    counters: tuple[Counter, ...]
    basis: str
    allowance_basis: str
    licence_ids: tuple[str, ...]
    # The lease of the job this plan's job replaces (an update): while it is live, each counter
    # is checked as if that lease's current debit on it were already given back. Debits are whole.
    replaces: LeaseRef | None = None
    # Why a count the job would otherwise debit was skipped (`purpose:inference`,
    # `lineage:<name>`): recorded with the decision so the ledger can explain it.
    exemptions: tuple[str, ...] = ()
    # Objections planning found without the store, in shadow (before their rule's date): the verdict carries
    # them whatever the store answers. An enforced one refuses before the store is asked (no plan at all).
    reasons: tuple[Reason, ...] = ()

    @property
    def ref(self) -> LeaseRef:
        kinds = tuple((c.key, c.kind) for c in self.counters)
        return LeaseRef(self.hash_tag, self.tenant_id, self.decision_id, self.idempotency_key, kinds)


class ReserveStatus(StrEnum):
    ADMITTED = "admitted"
    DENIED = "denied"
    IN_PROGRESS = "in_progress"
    REPLAY = "replay"


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first attempt's response, replayed to retries with the same idempotency key."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __post_init__(self) -> None:
        if len(self.body) > MAX_STORED_BODY:
            raise ValueError(f"stored response body over {MAX_STORED_BODY} bytes")


@dataclass(frozen=True, slots=True)
class CounterState:
    """One counter as the reservation found and left it (after == before when not debited)."""

    key: str
    before: float
    amount: float
    after: float


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """A store's answer to one reservation."""

    status: ReserveStatus
    counters: tuple[CounterState, ...] = ()
    failing: str | None = None
    shadow: tuple[str, ...] = ()
    earliest_end: float | None = None
    retry_after_s: float | None = None
    response: StoredResponse | None = None


@dataclass(frozen=True, slots=True)
class Owner:
    """Who owns an upstream job, and the lease its capacity is held under."""

    tenant_id: str
    lease: LeaseRef


# -- quota state: what a store holds, as rebuilt from the ledger or restored into a store --------


@dataclass(frozen=True, slots=True)
class Debit:
    """What one lease took from one counter."""

    key: str
    kind: CounterKind
    amount: float


@dataclass(frozen=True, slots=True)
class LeaseState:
    """One reservation as a store keeps it; refunded and released leases stay until collected."""

    hash_tag: str
    lease_id: str
    tenant_id: str
    end: float
    idempotency_key: str | None
    debits: tuple[Debit, ...]
    counters: tuple[tuple[str, CounterKind], ...]
    released: bool = False
    refunded: bool = False
    job: tuple[str, str] | None = None

    @property
    def ref(self) -> LeaseRef:
        return LeaseRef(self.hash_tag, self.tenant_id, self.lease_id, self.idempotency_key, self.counters)


@dataclass(frozen=True, slots=True)
class HeldShare:
    """A live lease's part of a held counter."""

    lease_id: str
    end: float
    amount: float


@dataclass(frozen=True, slots=True)
class CounterValue:
    """A counter's value (zero when nothing is held or debited) and, if held, its live leases."""

    hash_tag: str
    key: str
    kind: CounterKind
    value: float
    held: tuple[HeldShare, ...] = ()


@dataclass(frozen=True, slots=True)
class IdempotencyState:
    """An idempotency record: pending (no response) or done with the response to replay."""

    hash_tag: str
    tenant_id: str
    key: str
    lease_id: str
    expires: float
    response: StoredResponse | None


@dataclass(frozen=True, slots=True)
class OwnerState:
    """Who owns an upstream job, since when."""

    upstream: str
    job_id: str
    owner: Owner
    since: float


@dataclass(frozen=True, slots=True)
class OwnedJobs:
    """The jobs a tenant owns on one upstream (empty when all have lapsed)."""

    upstream: str
    tenant_id: str
    jobs: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class QuotaState:
    """Everything a quota store holds, as the ledger says it should be at one instant."""

    now: float
    counters: tuple[CounterValue, ...] = ()
    leases: tuple[LeaseState, ...] = ()
    idempotency: tuple[IdempotencyState, ...] = ()
    owners: tuple[OwnerState, ...] = ()
    owned: tuple[OwnedJobs, ...] = ()
    skipped: int = 0

    def tags(self) -> list[str]:
        """The hash tags (Redis slots) this state names, sorted."""
        found = {c.hash_tag for c in self.counters} | {lease.hash_tag for lease in self.leases}
        return sorted(found | {i.hash_tag for i in self.idempotency})
