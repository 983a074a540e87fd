"""Exact quotas under contention: four processes racing for the last capacity admit exactly what fits."""

import asyncio
import multiprocessing
import uuid
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier

import pytest

from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.core.codes import Code
from gateway.core.leases import Counter, CounterKind, Plan, ReserveStatus, Share
from gateway.core.policy import RuleId
from gateway.core.tiers import Tier
from tests.redis_cluster import RedisClusterProcesses, start_cluster
from tests.redis_server import RedisProcess

NOW = 1_800_000_000.0
PROCESSES = 4
PER_PROCESS = 100
JOB_TPP = 8 * 15_832.0  # eight H100s
LPP = 26_900_000.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcesses]:
    """A three-master Redis Cluster for this module."""
    nodes = start_cluster()
    yield nodes
    nodes.stop()


def _held(key: str, amount: float, cap: float | None, share: Share = Share.FIXED) -> Counter:
    code = Code.QUOTA_COUNTRY_TPP if key.startswith("country:") else Code.QUOTA_TENANT_TPP
    return Counter(key, amount, cap, CounterKind.HELD, code, RuleId.TENANT_CAP, True, share=share)


def tenant_plan(tag: str, tenant: str, amount: float, cap: float) -> Plan:
    """One tenant at the LPP cap: a single held counter."""
    counters = (_held(f"tenant:{tenant}", amount, cap),)
    return Plan(tag, tenant, uuid.uuid4().hex, None, "slurm", Tier.TWO, NOW + 3600, counters, "lpp", "lpp", ())


def country_plan(tag: str, tenant: str, amount: float, cap: float) -> Plan:
    """A licensed tenant with no allowance left: every TPP spills onto its licence and the country."""
    counters = (
        _held(f"tenant:{tenant}", amount, 0.0, Share.HEADROOM),
        _held(f"licensed:tenant:{tenant}", amount, None, Share.OVERFLOW),
        _held(f"country:{tag}", amount, cap, Share.OVERFLOW),
    )
    return Plan(tag, tenant, uuid.uuid4().hex, None, "slurm", Tier.TWO, NOW + 3600, counters, "licence:L", "lpp", ())


async def _fire(url: str, cluster: bool, prefix: str, scenario: str, tenant: str, cap: float, barrier: Barrier) -> int:
    build = tenant_plan if scenario == "tenant" else country_plan
    # A generous timeout: a timed-out script may still have run, which would blur the count.
    store = RedisQuotaStore.from_url(url, cluster=cluster, timeout_s=5.0, prefix=prefix)
    try:
        await store.reserve(build("AE", f"warmup-{tenant}", 0.0, 0.0), NOW)  # connect, load the script
        await asyncio.to_thread(barrier.wait)
        results = await asyncio.gather(
            *(store.reserve(build("AE", tenant, JOB_TPP, cap), NOW) for _ in range(PER_PROCESS))
        )
        return sum(r.status is ReserveStatus.ADMITTED for r in results)
    finally:
        await store.close()


def _worker(
    url: str,
    cluster: bool,
    prefix: str,
    scenario: str,
    tenant: str,
    cap: float,
    barrier: Barrier,
    out: "multiprocessing.Queue[int]",
) -> None:
    out.put(asyncio.run(_fire(url, cluster, prefix, scenario, tenant, cap, barrier)))


def race(url: str, cluster: bool, prefix: str, scenario: str, cap: float) -> int:
    """Run the processes together and return how many reservations they admitted in total."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    out: multiprocessing.Queue[int] = ctx.Queue()
    tenants = ["t1"] * PROCESSES if scenario == "tenant" else [f"t{i}" for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_worker, args=(url, cluster, prefix, scenario, tenant, cap, barrier, out))
        for tenant in tenants
    ]
    for proc in procs:
        proc.start()
    try:
        counts = [out.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
    assert all(proc.exitcode == 0 for proc in procs)
    return sum(counts)


async def test_tenant_last_capacity_on_redis(redis_server: RedisProcess) -> None:
    """400 racing submissions for one tenant's last capacity admit exactly floor(left / job)."""
    prefix = f"race{uuid.uuid4().hex[:8]}:"
    fits = 37
    left = fits * JOB_TPP + JOB_TPP / 2
    store = RedisQuotaStore.from_url(redis_server.url, cluster=False, prefix=prefix)
    try:
        await store.reserve(tenant_plan("AE", "t1", LPP - left, LPP), NOW)
        admitted = await asyncio.to_thread(race, redis_server.url, False, prefix, "tenant", LPP)
        assert admitted == fits
        assert await store.counter_value("AE", "tenant:t1", NOW) == LPP - left + fits * JOB_TPP
    finally:
        await store.close()


async def test_country_last_capacity_on_cluster(cluster: RedisClusterProcesses) -> None:
    """Four licensed tenants racing for one country's last allocation on a Cluster get exactly what fits."""
    prefix = f"race{uuid.uuid4().hex[:8]}:"
    fits = 53
    cap = 790_000_000.0
    left = fits * JOB_TPP + 1000.0
    store = RedisQuotaStore.from_url(cluster.url, cluster=True, prefix=prefix)
    try:
        await store.reserve(country_plan("AE", "filler", cap - left, cap), NOW)
        admitted = await asyncio.to_thread(race, cluster.url, True, prefix, "country", cap)
        assert admitted == fits
        assert await store.counter_value("AE", "country:AE", NOW) == cap - left + fits * JOB_TPP
        licensed = [await store.counter_value("AE", f"licensed:tenant:t{i}", NOW) for i in range(PROCESSES)]
        assert sum(licensed) == fits * JOB_TPP
    finally:
        await store.close()
