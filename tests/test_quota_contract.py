"""One contract for every QuotaStore: in memory, on Redis, and on a three-master Redis Cluster."""

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway.adapters.quota import QuotaStore, StoredResponse
from gateway.adapters.quota_memory import MemoryQuotaStore
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.pack import load_pack
from gateway.core.codes import Code
from gateway.core.jobs import JobPart, JobSpec
from gateway.core.leases import QUOTA_SLOT, Counter, CounterKind, LeaseRef, Plan, ReserveStatus, Share
from gateway.core.policy import RuleId
from gateway.core.pricing import price
from gateway.core.quota import plan_reservation
from gateway.core.tenants import Kyc, KycStatus, Licence, LicenceScope, Tenant
from gateway.core.tiers import Tier
from tests.redis_cluster import RedisClusterProcesses, start_cluster

NOW = 1_800_000_000.0
WINDOW = 24 * 3600.0
TAG = "FR"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    """A three-master Redis Cluster for this module."""
    nodes = start_cluster()
    yield nodes
    nodes.stop()


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Which store to build, and the URL of its server (started only when needed)."""
    kind: str = request.param
    if kind == "memory":
        return kind, ""
    server = request.getfixturevalue("redis_server" if kind == "redis" else "cluster")
    return kind, server.url


@pytest.fixture
async def store(backend: tuple[str, str]) -> AsyncIterator[QuotaStore]:
    """A fresh store; Redis-backed ones get a key prefix of their own on the shared server."""
    kind, url = backend
    built: QuotaStore
    if kind == "memory":
        built = MemoryQuotaStore(idempotency_window_s=WINDOW)
    else:
        prefix = f"t{uuid.uuid4().hex[:10]}:"
        built = RedisQuotaStore.from_url(url, cluster=kind == "cluster", prefix=prefix, idempotency_window_s=WINDOW)
    yield built
    await built.close()


def held(
    key: str,
    amount: float,
    cap: float | None,
    *,
    enforced: bool = True,
    share: Share = Share.FIXED,
    chips: tuple[float, float] = (0.0, 0.0),
) -> Counter:
    code = Code.QUOTA_COUNTRY_TPP if key.startswith("country:") else Code.QUOTA_TENANT_TPP
    return Counter(key, amount, cap, CounterKind.HELD, code, RuleId.TENANT_CAP, enforced, share=share,
                   chip_max=chips[0], chip_min=chips[1])  # fmt: skip


def ops(key: str, amount: float, cap: float | None, *, base: float = 0.0) -> Counter:
    return Counter(
        key, amount, cap, CounterKind.CUMULATIVE, Code.LICENCE_REQUIRED, RuleId.TRAINING_THRESHOLD, True, base, True
    )


def make_plan(
    *counters: Counter, idem: str | None = None, tenant: str = "t1", end: float = NOW + 3600, decision: str = ""
) -> Plan:
    return Plan(
        hash_tag=TAG,
        tenant_id=tenant,
        decision_id=decision or uuid.uuid4().hex,
        idempotency_key=idem,
        upstream="slurm",
        tier=Tier.TWO,
        lease_end=end,
        counters=counters,
        basis="lpp",
        allowance_basis="lpp",
        licence_ids=(),
    )


RESPONSE = StoredResponse(200, (("content-type", "application/json"), ("x-slurm", "1")), b'{"job_id": 42}\x00\xff')


async def test_admit_within_cap(store: QuotaStore) -> None:
    """A job within every cap is admitted and debited."""
    result = await store.reserve(make_plan(held("tenant:t1", 40.0, 100.0)), NOW)
    assert result.status is ReserveStatus.ADMITTED
    assert [(s.key, s.before, s.amount, s.after) for s in result.counters] == [("tenant:t1", 0.0, 40.0, 40.0)]
    assert await store.counter_value(TAG, "tenant:t1", NOW) == 40.0


async def test_tpp_cap_exactly_reached_is_allowed(store: QuotaStore) -> None:
    """Holding exactly the cap is allowed; one TPP more is refused."""
    assert (await store.reserve(make_plan(held("tenant:t1", 60.0, 100.0)), NOW)).status is ReserveStatus.ADMITTED
    assert (await store.reserve(make_plan(held("tenant:t1", 40.0, 100.0)), NOW)).status is ReserveStatus.ADMITTED
    refused = await store.reserve(make_plan(held("tenant:t1", 1.0, 100.0)), NOW)
    assert (refused.status, refused.failing) == (ReserveStatus.DENIED, "tenant:t1")
    assert await store.counter_value(TAG, "tenant:t1", NOW) == 100.0


async def test_training_threshold_refuses_on_reaching(store: QuotaStore) -> None:
    """Training operations may approach the threshold but never reach it; declared ops count."""
    assert (await store.reserve(make_plan(ops("ops:t1:a", 60.0, 100.0)), NOW)).status is ReserveStatus.ADMITTED
    refused = await store.reserve(make_plan(ops("ops:t1:a", 40.0, 100.0)), NOW)
    assert (refused.status, refused.failing) == (ReserveStatus.DENIED, "ops:t1:a")
    assert (await store.reserve(make_plan(ops("ops:t1:b", 39.0, 100.0, base=60.0)), NOW)).status is (
        ReserveStatus.ADMITTED
    )
    assert (await store.reserve(make_plan(ops("ops:t1:b", 1.0, 100.0, base=60.0)), NOW)).status is (
        ReserveStatus.DENIED
    )
    assert await store.counter_value(TAG, "ops:t1:a", NOW) == 60.0


async def test_big_operation_counts_keep_precision(store: QuotaStore) -> None:
    """Counts near 1e26 (beyond int64) keep every bit, so the threshold boundary is exact."""
    assert (await store.reserve(make_plan(ops("ops:t1:a", 5e25, 1e26)), NOW)).status is ReserveStatus.ADMITTED
    assert (await store.reserve(make_plan(ops("ops:t1:a", 5e25, 1e26)), NOW)).status is ReserveStatus.DENIED
    assert (await store.reserve(make_plan(ops("ops:t1:a", 4.9e25, 1e26)), NOW)).status is ReserveStatus.ADMITTED
    assert await store.counter_value(TAG, "ops:t1:a", NOW) == 5e25 + 4.9e25
    third = 1e26 / 3
    await store.reserve(make_plan(ops("ops:t1:b", third, None)), NOW)
    await store.reserve(make_plan(ops("ops:t1:b", third, None)), NOW)
    assert await store.counter_value(TAG, "ops:t1:b", NOW) == third + third


async def test_all_or_nothing(store: QuotaStore) -> None:
    """A failing counter leaves every other counter of the reservation unchanged."""
    await store.reserve(make_plan(held("country:FR", 90.0, 100.0), tenant="other"), NOW)
    plan = make_plan(held("tenant:t1", 20.0, 1000.0), held("country:FR", 20.0, 100.0), ops("ops:t1:a", 5.0, 1e26))
    refused = await store.reserve(plan, NOW)
    assert (refused.status, refused.failing) == (ReserveStatus.DENIED, "country:FR")
    assert [(s.before, s.after) for s in refused.counters] == [(0.0, 0.0), (90.0, 90.0), (0.0, 0.0)]
    assert await store.counter_value(TAG, "tenant:t1", NOW) == 0.0
    assert await store.counter_value(TAG, "country:FR", NOW) == 90.0
    assert await store.counter_value(TAG, "ops:t1:a", NOW) == 0.0


async def test_spill_fills_allowance_then_licence_and_country(store: QuotaStore) -> None:
    """Capacity beyond the allowance draws on the licence and the country; a full country refuses."""

    def job(tpp: float) -> Plan:
        return make_plan(
            held("tenant:t1", tpp, 100.0, share=Share.HEADROOM),
            held("licensed:tenant:t1", tpp, 1000.0, share=Share.OVERFLOW),
            held("country:FR", tpp, 150.0, share=Share.OVERFLOW),
        )

    first = await store.reserve(job(80.0), NOW)
    assert [s.amount for s in first.counters] == [80.0, 0.0, 0.0]
    second = await store.reserve(job(80.0), NOW)
    assert [s.amount for s in second.counters] == [20.0, 60.0, 60.0]
    third = await store.reserve(job(100.0), NOW)
    assert (third.status, third.failing) == (ReserveStatus.DENIED, "country:FR")
    assert [await store.counter_value(TAG, k, NOW) for k in ("tenant:t1", "licensed:tenant:t1", "country:FR")] == [
        100.0,
        60.0,
        60.0,
    ]


async def test_spill_keeps_whole_chips_under_the_allowance(store: QuotaStore) -> None:
    """With half a chip of allowance left the country is charged every chip; crossing it by half a chip refuses."""
    await store.reserve(make_plan(held("tenant:t1", 95.0, 100.0)), NOW)  # 5 left: half a 10-TPP chip

    def job(tpp: float, country_cap: float, chips: tuple[float, float]) -> Plan:
        return make_plan(
            held("tenant:t1", tpp, 100.0, share=Share.HEADROOM, chips=chips),
            held("licensed:tenant:t1", tpp, None, share=Share.OVERFLOW),
            held("country:FR", tpp, country_cap, share=Share.OVERFLOW),
        )

    refused = await store.reserve(job(80.0, 75.0, (10.0, 10.0)), NOW)  # a split keeping half a chip would fit
    assert (refused.status, refused.failing) == (ReserveStatus.DENIED, "country:FR")
    assert [s.amount for s in refused.counters] == [0.0, 80.0, 80.0]
    admitted = await store.reserve(job(80.0, 80.0, (10.0, 10.0)), NOW)
    assert admitted.status is ReserveStatus.ADMITTED
    assert [s.amount for s in admitted.counters] == [0.0, 80.0, 80.0]
    await store.reserve(make_plan(held("tenant:t2", 80.0, 100.0)), NOW)  # 20 left
    mixed_job = make_plan(
        held("tenant:t2", 22.0, 100.0, share=Share.HEADROOM, chips=(10.0, 6.0)),
        held("licensed:tenant:t2", 22.0, None, share=Share.OVERFLOW),
    )
    mixed = await store.reserve(mixed_job, NOW)
    assert [s.amount for s in mixed.counters] == [12.0, 10.0]  # two chips surely fit, credited at the cheapest
    assert [await store.counter_value(TAG, k, NOW) for k in ("tenant:t1", "country:FR", "tenant:t2")] == [
        95.0,
        80.0,
        92.0,
    ]


PACK = load_pack(BUNDLED_POLICIES / "ai-diffusion-2025")
H100 = 15832.0


async def test_two_country_allocations_in_one_reservation(store: QuotaStore) -> None:
    """A licensed tenant located in one Tier 2 country and headquartered in another draws on both, in one slot."""
    assert PACK.caps is not None and PACK.gpus is not None
    caps, gpus = dataclasses.replace(PACK.caps, country_overrides={"MY": 2 * H100}), PACK.gpus
    who = Tenant(id=f"sg-{uuid.uuid4().hex[:6]}", display_name="x", identities=(), location="SG", headquarters="MY",
                 parent_headquarters="MY", kyc=Kyc(KycStatus.VERIFIED), tpp_cap=2 * H100,
                 licences=(Licence("L", frozenset({LicenceScope.TENANT_CAP})),))  # fmt: skip
    now = datetime.fromtimestamp(NOW, UTC)

    def plan(count: int) -> Plan:
        cost = price(JobSpec((JobPart(count, "h100"),), 3600.0), gpus, None, 1.0)
        out = plan_reservation(who, Tier.TWO, cost, None, None, PACK, caps, now, decision_id=uuid.uuid4().hex,
                               idempotency_key=None, upstream="slurm")  # fmt: skip
        assert isinstance(out, Plan) and out.hash_tag == QUOTA_SLOT
        return out

    first = await store.reserve(plan(3), NOW)  # two H100s within the allowance, one drawn on both countries
    assert first.status is ReserveStatus.ADMITTED
    assert {s.key: s.amount for s in first.counters if s.amount and not s.key.startswith("ops:")} == {
        f"tenant:{who.id}": 2 * H100, f"licensed:tenant:{who.id}": H100, "country:SG": H100, "country:MY": H100,
    }  # fmt: skip
    refused = await store.reserve(plan(2), NOW)
    assert (refused.status, refused.failing) == (ReserveStatus.DENIED, "country:MY")
    assert [await store.counter_value(QUOTA_SLOT, f"country:{cc}", NOW) for cc in ("SG", "MY")] == [H100, H100]


async def test_idempotent_retry_replays_and_debits_once(store: QuotaStore) -> None:
    """A retry of a completed submission gets the stored response and is not debited again."""
    first = make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1")
    assert (await store.reserve(first, NOW)).status is ReserveStatus.ADMITTED
    await store.complete(first, upstream="slurm", job_id="42", response=RESPONSE, now=NOW + 1)
    retry = await store.reserve(make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1"), NOW + 2)
    assert (retry.status, retry.response) == (ReserveStatus.REPLAY, RESPONSE)
    assert await store.counter_value(TAG, "tenant:t1", NOW + 2) == 10.0
    other_tenant = await store.reserve(make_plan(held("tenant:t2", 10.0, 100.0), idem="key-1", tenant="t2"), NOW)
    assert other_tenant.status is ReserveStatus.ADMITTED


async def test_idempotency_window_lapses(store: QuotaStore) -> None:
    """After the window a key is new again, judged on the caller's clock."""
    first = make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1")
    await store.reserve(first, NOW)
    await store.complete(first, upstream="slurm", job_id="42", response=RESPONSE, now=NOW)
    later = await store.reserve(make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1"), NOW + WINDOW + 1)
    assert later.status is ReserveStatus.ADMITTED


async def test_concurrent_retry_is_in_progress(store: QuotaStore) -> None:
    """A retry while the first attempt is in flight is refused without a debit."""
    first = make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1")
    assert (await store.reserve(first, NOW)).status is ReserveStatus.ADMITTED
    retry = await store.reserve(make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1"), NOW + 1)
    assert retry.status is ReserveStatus.IN_PROGRESS
    same_decision = await store.reserve(make_plan(held("tenant:t1", 10.0, 100.0), decision=first.decision_id), NOW)
    assert same_decision.status is ReserveStatus.IN_PROGRESS
    assert await store.counter_value(TAG, "tenant:t1", NOW + 1) == 10.0


async def test_refund_gives_everything_back_once(store: QuotaStore) -> None:
    """A refund returns held and cumulative debits once and lets the key be retried afresh."""
    plan = make_plan(held("tenant:t1", 10.0, 100.0), ops("ops:t1:a", 5.0, 100.0), idem="key-1")
    await store.reserve(plan, NOW)
    assert await store.refund(plan.ref, NOW + 1) is True
    assert await store.refund(plan, NOW + 1) is False
    assert await store.counter_value(TAG, "tenant:t1", NOW + 1) == 0.0
    assert await store.counter_value(TAG, "ops:t1:a", NOW + 1) == 0.0
    retry = await store.reserve(make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1"), NOW + 2)
    assert retry.status is ReserveStatus.ADMITTED


async def test_refund_after_lease_end_returns_cumulative_only(store: QuotaStore) -> None:
    """Held capacity a lease already gave back at its end is not given back twice."""
    plan = make_plan(held("tenant:t1", 10.0, 100.0), ops("ops:t1:a", 5.0, 100.0), end=NOW + 10)
    await store.reserve(plan, NOW)
    await store.reserve(make_plan(held("tenant:t1", 30.0, 100.0)), NOW + 20)
    assert await store.refund(plan, NOW + 30) is True
    assert await store.counter_value(TAG, "tenant:t1", NOW + 30) == 30.0
    assert await store.counter_value(TAG, "ops:t1:a", NOW + 30) == 0.0


async def test_release_on_cancel(store: QuotaStore) -> None:
    """Cancelling a job returns its held TPP once; its cumulative debits stay."""
    plan = make_plan(held("tenant:t1", 10.0, 100.0), ops("ops:t1:a", 5.0, 100.0))
    await store.reserve(plan, NOW)
    await store.complete(plan, upstream="slurm", job_id="42", response=RESPONSE, now=NOW)
    assert await store.release_job("slurm", "42", NOW + 1) is True
    assert await store.release_job("slurm", "42", NOW + 1) is False
    assert await store.release_job("slurm", "unknown", NOW + 1) is False
    assert await store.counter_value(TAG, "tenant:t1", NOW + 1) == 0.0
    assert await store.counter_value(TAG, "ops:t1:a", NOW + 1) == 5.0


async def test_extending_a_live_job_keeps_its_capacity_held(store: QuotaStore) -> None:
    """A job the scheduler says still lives keeps its TPP past the lease's first end, and blocks the next job."""
    plan = make_plan(held("tenant:t1", 60.0, 100.0), ops("ops:t1:a", 5.0, 100.0), end=NOW + 10)
    await store.reserve(plan, NOW)
    await store.complete(plan, upstream="slurm", job_id="42", response=RESPONSE, now=NOW)
    assert await store.extend_job("slurm", "42", NOW + 100, NOW + 5) == NOW + 100
    assert await store.extend_job("slurm", "42", NOW + 50, NOW + 6) == NOW + 100  # never shortened
    assert await store.counter_value(TAG, "tenant:t1", NOW + 60) == 60.0
    refused = await store.reserve(make_plan(held("tenant:t1", 60.0, 100.0)), NOW + 60)
    assert (refused.status, refused.earliest_end) == (ReserveStatus.DENIED, NOW + 100)
    assert await store.counter_value(TAG, "tenant:t1", NOW + 100) == 0.0
    assert await store.counter_value(TAG, "ops:t1:a", NOW + 100) == 5.0  # cumulative debits are not taken twice


async def test_extending_a_lapsed_share_holds_it_again(store: QuotaStore) -> None:
    """A lease that ran out while its job runs is held again (over the cap if need be); released ones stay ended."""
    first = make_plan(held("tenant:t1", 60.0, 100.0), end=NOW + 10)
    await store.reserve(first, NOW)
    await store.complete(first, upstream="slurm", job_id="1", response=RESPONSE, now=NOW)
    second = make_plan(held("tenant:t1", 60.0, 100.0), end=NOW + 1000)
    assert (await store.reserve(second, NOW + 20)).status is ReserveStatus.ADMITTED
    assert await store.extend_job("slurm", "1", NOW + 500, NOW + 30) == NOW + 500
    assert await store.counter_value(TAG, "tenant:t1", NOW + 31) == 120.0
    assert await store.extend_job("slurm", "1", NOW + 600, NOW + 32) == NOW + 600  # held once, not twice
    assert await store.counter_value(TAG, "tenant:t1", NOW + 33) == 120.0
    assert await store.release_job("slurm", "1", NOW + 40) is True
    assert await store.extend_job("slurm", "1", NOW + 700, NOW + 41) is None
    assert await store.extend_job("slurm", "unknown", NOW + 700, NOW + 41) is None
    assert await store.counter_value(TAG, "tenant:t1", NOW + 42) == 60.0


async def test_held_amounts_of_a_job(store: QuotaStore) -> None:
    """What a job's live lease holds per held counter (cumulative debits are not held); nothing once released."""
    plan = make_plan(held("tenant:t1", 60.0, 100.0), held("country:AE", 60.0, None), ops("ops:t1:a", 5.0, 100.0))
    await store.reserve(plan, NOW)
    assert await store.held_amounts("slurm", "42") is None  # not owned yet
    await store.complete(plan, upstream="slurm", job_id="42", response=RESPONSE, now=NOW)
    assert await store.held_amounts("slurm", "42") == {"tenant:t1": 60.0, "country:AE": 60.0}
    await store.release_job("slurm", "42", NOW + 1)
    assert await store.held_amounts("slurm", "42") is None


def replacing(plan: Plan, old: LeaseRef) -> Plan:
    """`plan` as an update of the job held under `old`."""
    return dataclasses.replace(plan, replaces=old)


async def test_update_is_checked_without_the_lease_it_replaces(store: QuotaStore) -> None:
    """An update at the cap is admitted (debiting its whole total) where a new job is refused; the old lease goes."""
    old = make_plan(held("tenant:t1", 40.0, 100.0), ops("ops:t1:a", 60.0, 100.0), idem="job-1")
    await store.reserve(old, NOW)
    await store.complete(old, upstream="slurm", job_id="7", response=RESPONSE, now=NOW)
    new = make_plan(held("tenant:t1", 80.0, 100.0), ops("ops:t1:a", 60.0, 100.0))
    refused = await store.reserve(new, NOW + 1)
    assert (refused.status, refused.failing) == (ReserveStatus.DENIED, "tenant:t1")
    admitted = await store.reserve(replacing(new, old.ref), NOW + 1)
    assert admitted.status is ReserveStatus.ADMITTED
    assert [(s.before, s.amount, s.after) for s in admitted.counters] == [(40.0, 80.0, 120.0), (60.0, 60.0, 120.0)]
    # The scheduler accepted the update: the old lease is given back whole, the job is the new lease's.
    assert await store.refund(old.ref, NOW + 2) is True
    await store.complete(new, upstream="slurm", job_id="7", response=RESPONSE, now=NOW + 2)
    assert await store.counter_value(TAG, "tenant:t1", NOW + 2) == 80.0
    assert await store.counter_value(TAG, "ops:t1:a", NOW + 2) == 60.0
    owner = await store.owner_of("slurm", "7")
    assert owner is not None and owner.lease == new.ref
    assert await store.owned_jobs("slurm", "t1") == {"7"}
    replay = await store.reserve(make_plan(held("tenant:t1", 40.0, 100.0), idem="job-1"), NOW + 3)
    assert (replay.status, replay.response) == (ReserveStatus.REPLAY, RESPONSE)  # the old answer still replays
    assert await store.release_job("slurm", "7", NOW + 3) is True
    assert await store.counter_value(TAG, "tenant:t1", NOW + 3) == 0.0


async def test_update_credit_ignores_an_ended_held_share(store: QuotaStore) -> None:
    """Once the replaced lease has ended its held share is already gone; its cumulative debit still counts."""
    old = make_plan(held("tenant:t1", 40.0, 100.0), ops("ops:t1:a", 60.0, 100.0), end=NOW + 10)
    await store.reserve(old, NOW)
    await store.reserve(make_plan(held("tenant:t1", 60.0, 100.0)), NOW)
    over = replacing(make_plan(held("tenant:t1", 41.0, 100.0), ops("ops:t1:a", 50.0, 100.0)), old.ref)
    refused = await store.reserve(over, NOW + 20)
    assert (refused.status, refused.failing) == (ReserveStatus.DENIED, "tenant:t1")
    fits = replacing(make_plan(held("tenant:t1", 40.0, 100.0), ops("ops:t1:a", 50.0, 100.0)), old.ref)
    assert (await store.reserve(fits, NOW + 20)).status is ReserveStatus.ADMITTED
    assert await store.counter_value(TAG, "tenant:t1", NOW + 20) == 100.0
    assert await store.counter_value(TAG, "ops:t1:a", NOW + 20) == 110.0


async def test_update_credit_needs_a_live_lease_in_the_same_slot(store: QuotaStore) -> None:
    """A replaced lease that was released, refunded, or lies in another slot gives no credit."""
    await store.reserve(make_plan(ops("ops:t1:a", 60.0, 100.0)), NOW)
    released = make_plan(ops("ops:t1:a", 30.0, 100.0))
    refunded = make_plan(ops("ops:t1:b", 30.0, 100.0))
    await store.reserve(make_plan(ops("ops:t1:b", 60.0, 100.0)), NOW)
    await store.reserve(released, NOW)
    await store.reserve(refunded, NOW)
    await store.complete(released, upstream="slurm", job_id="8", response=RESPONSE, now=NOW)
    await store.release_job("slurm", "8", NOW + 1)
    await store.refund(refunded, NOW + 1)
    # Released: 90 stays debited (cumulative); refunded: 60 is left. Either credit would admit these.
    for key, amount, old in (("ops:t1:a", 11.0, released.ref), ("ops:t1:b", 41.0, refunded.ref)):
        refused = await store.reserve(replacing(make_plan(ops(key, amount, 100.0)), old), NOW + 2)
        assert (refused.status, refused.failing) == (ReserveStatus.DENIED, key)
    live = make_plan(ops("ops:t1:c", 40.0, 100.0))
    await store.reserve(live, NOW)
    elsewhere = dataclasses.replace(live.ref, hash_tag="DE")
    assert (await store.reserve(replacing(make_plan(ops("ops:t1:c", 60.0, 100.0)), elsewhere), NOW + 2)).status is (
        ReserveStatus.DENIED
    )
    assert (await store.reserve(replacing(make_plan(ops("ops:t1:c", 60.0, 100.0)), live.ref), NOW + 2)).status is (
        ReserveStatus.ADMITTED
    )


async def test_capacity_returns_at_lease_end(store: QuotaStore) -> None:
    """When a lease ends on the caller's clock its capacity is free again."""
    await store.reserve(make_plan(held("tenant:t1", 100.0, 100.0), end=NOW + 10), NOW)
    assert (await store.reserve(make_plan(held("tenant:t1", 1.0, 100.0)), NOW + 9.5)).status is ReserveStatus.DENIED
    assert (await store.reserve(make_plan(held("tenant:t1", 1.0, 100.0)), NOW + 10)).status is ReserveStatus.ADMITTED
    assert await store.counter_value(TAG, "tenant:t1", NOW + 10) == 1.0


async def test_retry_after_is_earliest_lease_end(store: QuotaStore) -> None:
    """A held cap refusal reports when the earliest lease on that counter ends."""
    await store.reserve(make_plan(held("tenant:t1", 50.0, 100.0), end=NOW + 50), NOW)
    await store.reserve(make_plan(held("tenant:t1", 50.0, 100.0), end=NOW + 20.5), NOW)
    refused = await store.reserve(make_plan(held("tenant:t1", 10.0, 100.0)), NOW + 0.5)
    assert (refused.status, refused.earliest_end, refused.retry_after_s) == (ReserveStatus.DENIED, NOW + 20.5, 20.0)


async def test_ownership(store: QuotaStore) -> None:
    """Completed jobs are owned by their tenant, per upstream, and listed for that tenant only."""
    for job_id, tenant in (("1", "t1"), ("2", "t1"), ("3", "t2")):
        plan = make_plan(held(f"tenant:{tenant}", 1.0, 100.0), tenant=tenant)
        await store.reserve(plan, NOW)
        await store.complete(plan, upstream="slurm", job_id=job_id, response=RESPONSE, now=NOW)
    owner = await store.owner_of("slurm", "1")
    assert owner is not None
    assert (owner.tenant_id, owner.lease.hash_tag) == ("t1", TAG)
    assert await store.owner_of("slurm", "4") is None
    assert await store.owner_of("ray", "1") is None
    assert await store.owned_jobs("slurm", "t1") == {"1", "2"}
    assert await store.owned_jobs("slurm", "t2") == {"3"}
    assert await store.owned_jobs("ray", "t1") == set()


async def test_ownership_moves_to_another_job_id(store: QuotaStore) -> None:
    """A placeholder's lease owned by a second job id, then the placeholder disowned: the lease stays held and
    is owned (and released) by the new id only; disowning what nobody owns is a no-op."""
    plan = make_plan(held("tenant:t1", 5.0, 100.0))
    await store.reserve(plan, NOW)
    await store.complete(plan, upstream="slurm#front", job_id="p1.x", response=RESPONSE, now=NOW)
    await store.complete(plan.ref, upstream="slurm", job_id="77", response=RESPONSE, now=NOW + 1)
    await store.disown("slurm#front", "p1.x")
    await store.disown("slurm#front", "never-owned")
    assert await store.owner_of("slurm#front", "p1.x") is None
    assert await store.owned_jobs("slurm#front", "t1") == set()
    owner = await store.owner_of("slurm", "77")
    assert owner is not None and owner.lease.lease_id == plan.decision_id
    assert await store.held_amounts("slurm", "77") == {"tenant:t1": 5.0}
    assert await store.release_job("slurm", "77", NOW + 2)
    assert await store.counter_value(TAG, "tenant:t1", NOW + 2) == 0.0


async def test_any_string_is_a_key(store: QuotaStore) -> None:
    """A job id or lineage holding a lone surrogate (valid JSON, not UTF-8) is stored and found like any other."""
    lone = "job-\ud800"
    plan = make_plan(ops(f"ops:t1:{lone}", 10.0, 100.0))
    assert (await store.reserve(plan, NOW)).status is ReserveStatus.ADMITTED
    await store.complete(plan, upstream="ray", job_id=lone, response=RESPONSE, now=NOW)
    owner = await store.owner_of("ray", lone)
    assert owner is not None and owner.tenant_id == "t1"
    assert await store.owned_jobs("ray", "t1") == {lone}
    assert await store.counter_value(TAG, f"ops:t1:{lone}", NOW) == 10.0


async def test_shadow_overrun_admits_and_reports(store: QuotaStore) -> None:
    """During a grace period an overrun is debited anyway and reported as shadow."""
    await store.reserve(make_plan(held("tenant:t1", 90.0, 100.0, enforced=False)), NOW)
    result = await store.reserve(make_plan(held("tenant:t1", 20.0, 100.0, enforced=False)), NOW)
    assert (result.status, result.shadow) == (ReserveStatus.ADMITTED, ("tenant:t1",))
    assert await store.counter_value(TAG, "tenant:t1", NOW) == 110.0


async def test_enforced_refusal_still_reports_shadow(store: QuotaStore) -> None:
    """An enforced refusal also lists the unenforced counters that would have overrun."""
    plan = make_plan(held("tenant:t1", 20.0, 10.0, enforced=False), ops("ops:t1:a", 200.0, 100.0))
    result = await store.reserve(plan, NOW)
    assert (result.status, result.failing, result.shadow) == (ReserveStatus.DENIED, "ops:t1:a", ("tenant:t1",))
    assert await store.counter_value(TAG, "tenant:t1", NOW) == 0.0


@pytest.mark.parametrize("backend", ["redis", "cluster"], indirect=True)
async def test_completion_survives_a_server_that_lost_its_scripts(store: QuotaStore, backend: tuple[str, str]) -> None:
    """A completion sent while the server holds none of the gateway's scripts (restarted, SCRIPT FLUSH)
    still stores the answer and the owner: the script is loaded again and run."""
    assert isinstance(store, RedisQuotaStore)
    first = make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1")
    assert (await store.reserve(first, NOW)).status is ReserveStatus.ADMITTED
    await flush_scripts(backend[1], cluster=backend[0] == "cluster")
    await store.complete(first, upstream="slurm", job_id="42", response=RESPONSE, now=NOW + 1)
    owner = await store.owner_of("slurm", "42")
    assert owner is not None and owner.lease.lease_id == first.decision_id
    retry = await store.reserve(make_plan(held("tenant:t1", 10.0, 100.0), idem="key-1"), NOW + 2)
    assert (retry.status, retry.response) == (ReserveStatus.REPLAY, RESPONSE)


async def flush_scripts(url: str, *, cluster: bool) -> None:
    """SCRIPT FLUSH on every node of this test's own server (it holds no other caller's scripts)."""
    client: Redis | RedisCluster = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    try:
        if isinstance(client, RedisCluster):
            await client.execute_command("SCRIPT FLUSH", target_nodes=RedisCluster.ALL_NODES)
        else:
            await client.script_flush()
    finally:
        await client.aclose()
