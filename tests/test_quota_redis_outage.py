"""A Redis outage fails reservations closed within the client timeout, and the store recovers."""

import asyncio
import signal
import time
import uuid

import pytest

from gateway.adapters.quota import BackendUnavailable
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.core.codes import Code
from gateway.core.leases import Counter, CounterKind, Plan, ReserveStatus
from gateway.core.policy import RuleId
from gateway.core.tiers import Tier
from tests.redis_server import RedisProcess

NOW = 1_800_000_000.0


def job() -> Plan:
    counter = Counter("tenant:t1", 10.0, 100.0, CounterKind.HELD, Code.QUOTA_TENANT_TPP, RuleId.TENANT_CAP, True)
    return Plan("FR", "t1", uuid.uuid4().hex, None, "slurm", Tier.TWO, NOW + 60, (counter,), "lpp", "lpp", ())


async def test_killed_redis_fails_fast_then_recovers(fresh_redis: RedisProcess) -> None:
    """With Redis killed, reserve raises BackendUnavailable in under a second; after a restart it works."""
    store = RedisQuotaStore.from_url(fresh_redis.url, cluster=False, timeout_s=0.25)
    try:
        assert (await store.reserve(job(), NOW)).status is ReserveStatus.ADMITTED
        fresh_redis.kill()
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await store.reserve(job(), NOW)
        assert time.monotonic() - started < 1.0
        with pytest.raises(BackendUnavailable):
            await store.owner_of("slurm", "1")
        fresh_redis.start()
        # The restarted server lost its scripts and data (counters are rebuilt from the ledger).
        assert (await store.reserve(job(), NOW)).status is ReserveStatus.ADMITTED
        assert await store.counter_value("FR", "tenant:t1", NOW) == 10.0
    finally:
        await store.close()


async def test_hung_redis_times_out_within_client_timeout(fresh_redis: RedisProcess) -> None:
    """A Redis that accepts but never answers fails the reservation after the socket timeout."""
    store = RedisQuotaStore.from_url(fresh_redis.url, cluster=False, timeout_s=0.25)
    proc = fresh_redis.proc
    assert proc is not None
    try:
        assert (await store.reserve(job(), NOW)).status is ReserveStatus.ADMITTED
        proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await store.reserve(job(), NOW)
        assert time.monotonic() - started < 1.0
    finally:
        proc.send_signal(signal.SIGCONT)
    try:
        await asyncio.sleep(0.05)
        assert (await store.reserve(job(), NOW)).status is ReserveStatus.ADMITTED
    finally:
        await store.close()
