"""Reservations per second through the quota Lua script, against a plain INCRBY round trip."""

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.core.codes import Code
from gateway.core.leases import Counter, CounterKind, Plan, Share
from gateway.core.policy import RuleId
from gateway.core.tiers import Tier

NOW = 1_800_000_000.0
TPP = 8 * 15_832.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found")
    workdir = tempfile.mkdtemp(prefix="exportgate-bench-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def _counter(key: str, amount: float, kind: CounterKind = CounterKind.HELD, share: Share = Share.FIXED) -> Counter:
    return Counter(key, amount, 1e30, kind, Code.QUOTA_TENANT_TPP, RuleId.TENANT_CAP, True, share=share)


def one_counter_plan() -> Plan:
    """A Tier 2 tenant at the LPP allowance."""
    counters = (_counter("tenant:t1", TPP),)
    return Plan("SG", "t1", uuid.uuid4().hex, None, "slurm", Tier.TWO, NOW + 7200, counters, "lpp", "lpp", ())


def six_counter_plan() -> Plan:
    """A licensed Tier 2 tenant training, with a budget: every counter kind at once."""
    cumulative = CounterKind.CUMULATIVE
    counters = (
        _counter("tenant:t1", TPP, share=Share.HEADROOM),
        _counter("licensed:tenant:t1", TPP, share=Share.OVERFLOW),
        _counter("country:SG", TPP, share=Share.OVERFLOW),
        _counter("ops:t1:llama", 1e21, cumulative),
        _counter("ops:t1:*", 1e21, cumulative),
        _counter("budget:t1:2027-01", TPP * 2, cumulative),
    )
    return Plan("SG", "t1", uuid.uuid4().hex, uuid.uuid4().hex, "slurm", Tier.TWO, NOW + 7200, counters, "l", "lpp", ())


async def _rate(op: Callable[[], Awaitable[object]], requests: int, concurrency: int) -> float:
    """Operations per second with `concurrency` in flight."""
    remaining = requests

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await op()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


async def run(url: str, requests: int, concurrencies: list[int]) -> None:
    store = RedisQuotaStore.from_url(url, cluster=False, timeout_s=5.0, prefix=f"bench{uuid.uuid4().hex[:6]}:")
    plain = Redis.from_url(url, socket_timeout=5.0)
    try:
        await store.reserve(six_counter_plan(), NOW)  # load the script, open a connection
        header = ("in flight", "INCRBY/s", "reserve(1)/s", "reserve(6)/s", "ratio 1/INCRBY", "ratio 6/INCRBY")
        print("  ".join(f"{h:>14}" for h in header))
        for concurrency in concurrencies:
            incr = await _rate(lambda: plain.incrby("bench:incr", 1), requests, concurrency)
            one = await _rate(lambda: store.reserve(one_counter_plan(), NOW), requests, concurrency)
            six = await _rate(lambda: store.reserve(six_counter_plan(), NOW), requests, concurrency)
            row = (
                f"{concurrency}",
                f"{incr:.0f}",
                f"{one:.0f}",
                f"{six:.0f}",
                f"{one / incr:.2f}",
                f"{six / incr:.2f}",
            )
            print("  ".join(f"{cell:>14}" for cell in row))
        stats = await plain.info("commandstats")
        for command in ("incrby", "evalsha"):
            usec = stats.get(f"cmdstat_{command}", {}).get("usec_per_call")
            print(f"redis-server time per {command.upper()}: {usec} us (all runs; EVALSHA mixes 1 and 6 counters)")
    finally:
        await store.close()
        await plain.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000, help="operations per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="operations in flight")
    args = parser.parse_args()
    port = _free_port()
    proc = _start_redis(port)
    try:
        asyncio.run(run(f"redis://127.0.0.1:{port}/0", args.requests, args.concurrency))
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    main()
