"""Does a reservation cost more when many leases are live? Memory store and Redis, with 0 and N live leases.

Each row fills a fresh store with N live leases on the same held counters a submission
debits (far-future ends, so none expires), then times `reserve` of one more lease, many
times. The figure that matters is the ratio of a row to the same store's empty row, from
the same run: a store whose cost grows with live leases fails an operator once its cluster
is busy. Redis keeps lease ends in a sorted set (O(log n)); the memory store keeps a heap.

    python -m bench.lease_scale_bench [--leases 100000 1000000] [--reserves 2000]
"""

import argparse
import asyncio
import time
import uuid

from bench.quota_bench import NOW, _counter, _free_port, _start_redis
from gateway.adapters.quota import QuotaStore
from gateway.adapters.quota_memory import MemoryQuotaStore
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.core.leases import Plan, Share
from gateway.core.tiers import Tier

TPP = 15_832.0


def plan(end: float) -> Plan:
    """A Tier 2 tenant's submission: its allowance counter and its country's, as a real plan splits them."""
    counters = (
        _counter("tenant:t1", TPP, share=Share.HEADROOM),
        _counter("licensed:tenant:t1", TPP, share=Share.OVERFLOW),
        _counter("country:AE", TPP, share=Share.OVERFLOW),
    )
    return Plan("quota", "t1", uuid.uuid4().hex, None, "slurm", Tier.TWO, end, counters, "lpp", "lpp", ())


async def fill(store: QuotaStore, leases: int) -> None:
    """`leases` live leases on the plan's counters, ending far ahead."""
    batch = 32  # a Redis client's pool is bounded: keep the in-flight reservations under it
    for start in range(0, leases, batch):
        ends = range(start, min(leases, start + batch))
        await asyncio.gather(*(store.reserve(plan(NOW + 10**7 + i), NOW) for i in ends))


async def per_reserve_us(store: QuotaStore, reserves: int) -> float:
    """Microseconds per reservation, one at a time, the clock moving on so lazy expiry runs each time."""
    plans = [plan(NOW + 3600) for _ in range(reserves)]
    started = time.perf_counter()
    for i, p in enumerate(plans):
        await store.reserve(p, NOW + i * 0.001)
    return (time.perf_counter() - started) / reserves * 1e6


async def row(kind: str, leases: int, reserves: int, redis_url: str | None) -> float:
    store: QuotaStore
    if kind == "memory":
        store = MemoryQuotaStore()
    else:
        assert redis_url is not None
        store = RedisQuotaStore.from_url(redis_url, cluster=False, prefix=f"b{uuid.uuid4().hex[:8]}:", timeout_s=5)
    try:
        await fill(store, leases)
        return await per_reserve_us(store, reserves)
    finally:
        await store.close()


async def main(leases: list[int], reserves: int, redis_leases: list[int]) -> None:
    port = _free_port()
    redis = _start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        print(f"{'store':8} {'live leases':>12} {'us/reserve':>11} {'x empty':>8}")
        for kind, sizes in (("memory", leases), ("redis", redis_leases)):
            base = await row(kind, 0, reserves, url)
            print(f"{kind:8} {0:>12,} {base:>11.1f} {1.0:>8.2f}")
            for n in sizes:
                cost = await row(kind, n, reserves, url)
                print(f"{kind:8} {n:>12,} {cost:>11.1f} {cost / base:>8.2f}")
    finally:
        redis.kill()
        redis.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leases", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--redis-leases", type=int, nargs="*", default=[100_000])
    parser.add_argument("--reserves", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.leases, args.reserves, args.redis_leases))
