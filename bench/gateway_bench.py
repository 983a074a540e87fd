"""Job submissions per second through one gateway (memory store) against the same requests sent to the stand-in."""

import argparse
import asyncio
import signal
import time

import aiohttp
from aiohttp import web

from bench.stack import running
from gateway.demo.standin import StandinState, standin_app

SUBMIT = "/slurm/v0.0.38/job/submit"
JOB = {
    "job": {"name": "b", "partition": "gpu", "time_limit": 60, "gpus": "h100:1", "environment": {"PATH": "/usr/bin"}},
    "script": "#!/bin/bash\ntrue",
}


def _serve_standin(port: int) -> None:
    """The stand-in scheduler in this process until SIGTERM (run as `--standin PORT`)."""

    async def run() -> None:
        runner = web.AppRunner(standin_app(StandinState()), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())


async def _rate(url: str, headers: dict[str, str], requests: int, concurrency: int) -> float:
    """Submissions per second with `concurrency` in flight on keep-alive connections; all must be 200."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        remaining = 0

        async def lane() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.post(url + SUBMIT, json=JOB, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise SystemExit(f"{url}: HTTP {resp.status}")

        remaining = 5 * concurrency  # warm-up: connections open, token verified and cached
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        remaining = requests
        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


async def _measure(gateway: str, standin: str, token: str, requests: int, concurrencies: list[int]) -> None:
    header = ("in flight", "direct/s", "gateway/s", "ratio gw/direct")
    print("  ".join(f"{h:>16}" for h in header))
    for concurrency in concurrencies:
        direct = await _rate(standin, {"X-SLURM-USER-NAME": "acme"}, requests, concurrency)
        through = await _rate(gateway, {"Authorization": f"Bearer {token}"}, requests, concurrency)
        row = (str(concurrency), f"{direct:.0f}", f"{through:.0f}", f"{through / direct:.2f}")
        print("  ".join(f"{cell:>16}" for cell in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="submissions per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="submissions in flight")
    parser.add_argument("--standin", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.standin is not None:
        _serve_standin(args.standin)
        return
    with running() as stack:
        print(f"one gateway process (memory store, ledger fsync on {stack.ledger_dir}), stand-in in its own process")
        asyncio.run(_measure(stack.gateway, stack.standin, stack.token, args.requests, args.concurrency))


if __name__ == "__main__":
    main()
