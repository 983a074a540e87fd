"""Honest clients' latency through one gateway while N slowloris sockets trickle request heads, against none."""

import argparse
import asyncio
import contextlib
import statistics
import time

import aiohttp

from bench.stack import running

PING = "/slurm/v0.0.38/ping"


async def _latencies(url: str, token: str, count: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as client:
        for _ in range(count):
            started = time.perf_counter()
            async with client.get(url + PING, headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"HTTP {resp.status}")
            out.append(time.perf_counter() - started)
    return out


async def _attack(port: int, sockets: int, stop: asyncio.Event) -> None:
    """Open `sockets` connections and trickle a request head into each, a byte every 0.2 s, until `stop`."""
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(sockets)]
    line = b"GET /slurm/v0.0.38/ping HTTP/1.1\r\nX-Slow: " + b"a" * 64
    for i in range(len(line)):
        for _, writer in conns:
            with contextlib.suppress(ConnectionError):
                writer.write(line[i : i + 1])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)
        if stop.is_set():
            break
    for _, writer in conns:
        writer.close()


def _row(name: str, values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"{name:>24}  p50 {q[49] * 1000:7.2f} ms  p99 {q[98] * 1000:7.2f} ms"


async def _measure(port: int, token: str, sockets: int, requests: int) -> None:
    url = f"http://127.0.0.1:{port}"
    await _latencies(url, token, 50)  # warm-up: token verified and cached
    baseline = await _latencies(url, token, requests)
    stop = asyncio.Event()
    attack = asyncio.create_task(_attack(port, sockets, stop))
    await asyncio.sleep(1.0)
    attacked = await _latencies(url, token, requests)
    stop.set()
    await attack
    print(_row("no attackers", baseline))
    print(_row(f"{sockets} slowloris sockets", attacked))
    ratio = statistics.quantiles(attacked, n=100)[98] / statistics.quantiles(baseline, n=100)[98]
    print(f"{'p99 ratio attacked/none':>24}  {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with running() as stack:
        print(f"one gateway process (default limits: head_timeout_s 10), {args.requests} sequential GETs each")
        asyncio.run(_measure(int(stack.gateway.rsplit(":", 1)[1]), stack.token, args.sockets, args.requests))


if __name__ == "__main__":
    main()
