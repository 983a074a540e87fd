"""Does exportgate scale with workers, and does its memory stay flat under steady load?

Two measurements, each in one run against one nginx upstream (`return 200`, Slurm-shaped bodies):

- `workers`: exportgate on Redis with `--workers 1`, then `--workers 2`, both free to use both
  CPUs (the upstream nginx, Redis and wrk share them: this machine has no third core), loaded by wrk
  with reads and with submissions. Reports requests/s and the 2-worker / 1-worker ratio. The bare
  aiohttp+uvloop proxy is measured the same way with one process as the ceiling of one Python
  process on this stack.
- `soak`: exportgate (memory store, then Redis) at a fixed request rate for `--soak-seconds`,
  the resident memory of its whole process tree sampled every few seconds. Plain reads and job
  reads add no state, so their RSS must stay flat; submissions add one live lease each, so the
  growth per live lease is reported instead.

`python -m bench.scaling_bench [--mode workers soak] [--seconds 10] [--soak-seconds 600] [--rate 1000]`
Prints its tables and writes bench/results/scaling-<time>.json.
"""

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.peers_bench import (
    JOB,
    RESULTS,
    SLURM,
    TENANT,
    Processes,
    _gateway_yaml,
    _keys,
    _nginx,
    _submit_once,
    _wait_http,
    _wait_redis,
    ensure_tools,
)
from bench.peers_load import Request, Result, paced, run_wrk
from bench.peers_nginx import upstream_conf
from bench.stack import free_port

ALL_CPUS = "0,1"
SOAK_SAMPLE_S = 5.0


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, in KiB (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        todo.extend(int(c) for c in children)
    return total


@dataclass(slots=True)
class Stack:
    procs: Processes
    workdir: Path
    upstream: str
    redis_url: str
    tokens: dict[str, str]


def _stack(workdir: Path) -> Stack:
    procs = Processes(workdir)
    tokens = _keys(workdir)
    upstream_port = free_port()
    _nginx(procs, "upstream", ALL_CPUS, workdir / "upstream", upstream_conf(workdir / "upstream", upstream_port))
    redis_port = free_port()
    redis = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs.start("redis", ALL_CPUS, [*redis, "--dir", str(workdir)])
    upstream = f"http://127.0.0.1:{upstream_port}"
    _wait_http(upstream + f"{SLURM}/ping", procs)
    _wait_redis(redis_port, procs)
    return Stack(procs, workdir, upstream, f"redis://127.0.0.1:{redis_port}/0", tokens)


def _start_gateway(stack: Stack, name: str, quota: str, workers: int) -> tuple[str, int]:
    """Start an exportgate (`workers` processes) on both CPUs; its base URL and the supervisor's pid."""
    port, admin = free_port(), free_port()
    while port in range(admin, admin + workers):
        admin = free_port()
    config = _gateway_yaml(stack.workdir, name, port, admin, stack.upstream, quota)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--workers", str(workers)]
    stack.procs.start(name, ALL_CPUS, cmd, env=env)
    base = f"http://127.0.0.1:{port}"
    _wait_http(base + f"{SLURM}/ping", stack.procs)
    for i in range(workers):
        _wait_http(f"http://127.0.0.1:{admin + i}/readyz", stack.procs)
    return base, stack.procs.procs[-1][1].pid


def _stop_last(stack: Stack) -> None:
    _, proc = stack.procs.procs.pop()
    proc.terminate()
    proc.wait(60)


# ---------------------------------------------------------------- workers


@dataclass(slots=True)
class WorkersRow:
    scenario: str
    peer: str
    result: Result
    vs_one: float | None = None


def workers(args: argparse.Namespace, stack: Stack) -> list[WorkersRow]:
    rows: list[WorkersRow] = []
    body = json.dumps(JOB, separators=(",", ":"))
    read = Request("GET", f"{SLURM}/ping", stack.tokens[TENANT])
    submit = Request("POST", f"{SLURM}/job/submit", stack.tokens[TENANT], body)
    redis = f"store: redis, redis_url: '{stack.redis_url}'"
    for count in (1, 2):
        name = f"exportgate-redis-{count}w"
        base, _ = _start_gateway(stack, name, redis, count)
        _submit_once(base, stack.tokens[TENANT])
        for scenario, req in (("read", read), ("submit", submit)):
            run_wrk(base, req, stack.workdir, seconds=args.warmup, connections=args.connections, cpu=ALL_CPUS)
            result = run_wrk(base, req, stack.workdir, seconds=args.seconds, connections=args.connections, cpu=ALL_CPUS)
            rows.append(WorkersRow(scenario, name, result))
            print(f"  {scenario:<7} {name:<20} {result.rate:9.0f}/s  p99 {result.p99_ms:7.2f} ms {result.statuses}")
        _stop_last(stack)
    by = {(r.scenario, r.peer): r for r in rows}
    for row in rows:
        one = by.get((row.scenario, "exportgate-redis-1w"))
        row.vs_one = row.result.rate / one.result.rate if one and one.result.rate else None
    return rows


# ---------------------------------------------------------------- soak


@dataclass(slots=True)
class SoakRow:
    peer: str
    scenario: str
    result: Result
    rss_kib: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, KiB)

    def summary(self) -> dict[str, float]:
        samples = [kib for _, kib in self.rss_kib]
        if not samples:
            return {}
        # After the first minute (warm-up: caches, allocator arenas), what remains is growth.
        settled = [kib for t, kib in self.rss_kib if t >= min(60.0, self.rss_kib[-1][0] / 2)] or samples
        return {
            "start_mib": samples[0] / 1024,
            "settled_mib": settled[0] / 1024,
            "end_mib": samples[-1] / 1024,
            "max_mib": max(samples) / 1024,
            "growth_after_settling_pct": 100.0 * (samples[-1] - settled[0]) / settled[0],
        }


async def _sampled(pid: int, run: "asyncio.Task[Result]", into: list[tuple[float, int]]) -> Result:
    started = time.monotonic()
    while not run.done():
        into.append((time.monotonic() - started, _tree_rss_kib(pid)))
        await asyncio.wait({run}, timeout=SOAK_SAMPLE_S)
    into.append((time.monotonic() - started, _tree_rss_kib(pid)))
    return run.result()


async def _soaked(base: str, pid: int, req: Request, args: argparse.Namespace, into: list[tuple[float, int]]) -> Result:
    task = asyncio.create_task(paced(base, req, rate=args.rate, seconds=args.soak_seconds))
    return await _sampled(pid, task, into)


def soak(args: argparse.Namespace, stack: Stack) -> list[SoakRow]:
    uvloop = importlib.import_module("uvloop")
    rows: list[SoakRow] = []
    body = json.dumps(JOB, separators=(",", ":"))
    for name, quota in (
        ("exportgate-mem", "store: memory"),
        ("exportgate-redis", f"store: redis, redis_url: '{stack.redis_url}'"),
    ):
        base, pid = _start_gateway(stack, name, quota, 1)
        job = _submit_once(base, stack.tokens[TENANT])
        scenarios = {
            "read": Request("GET", f"{SLURM}/ping", stack.tokens[TENANT]),
            "job": Request("GET", f"{SLURM}/job/{job}", stack.tokens[TENANT]),
            "submit": Request("POST", f"{SLURM}/job/submit", stack.tokens[TENANT], body),
        }
        for scenario in args.soak_scenarios:
            row = SoakRow(name, scenario, Result(0, 0, 0, 0, 0))

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                row.result = runner.run(_soaked(base, pid, scenarios[scenario], args, row.rss_kib))
            rows.append(row)
            s = row.summary()
            print(
                f"  {scenario:<7} {name:<17} {row.result.rate:7.0f}/s p99 {row.result.p99_ms:6.2f} ms  RSS "
                f"{s['start_mib']:.1f} -> settled {s['settled_mib']:.1f} -> end {s['end_mib']:.1f} MiB "
                f"({s['growth_after_settling_pct']:+.1f}% after settling) {row.result.statuses}",
                flush=True,
            )
        _stop_last(stack)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", nargs="+", choices=("workers", "soak"), default=["workers", "soak"])
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk seconds per workers row")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up seconds before each workers row")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="seconds of each paced soak row")
    parser.add_argument("--soak-scenarios", nargs="+", choices=("read", "job", "submit"), default=["read", "submit"])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the soak")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ensure_tools()
    started = time.strftime("%Y%m%d-%H%M%S")
    doc: dict[str, object] = {"started": started, "settings": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="exportgate-scaling-") as tmp:
        stack = _stack(Path(tmp))
        try:
            if "workers" in args.mode:
                print("workers: exportgate on Redis, 1 then 2 worker processes, both CPUs shared with the load")
                rows = workers(args, stack)
                for r in rows:
                    print(f"  {r.scenario:<7} {r.peer:<20} {r.result.rate:9.0f}/s  vs 1 worker {r.vs_one or 0:.2f}x")
                doc["workers"] = [asdict(r) for r in rows]
            if "soak" in args.mode:
                print(f"soak: {args.rate:g} requests/s for {args.soak_seconds:g} s, RSS of the process tree")
                soaked = soak(args, stack)
                doc["soak"] = [{**asdict(r), "summary": r.summary()} for r in soaked]
        finally:
            stack.procs.stop()
    out = args.out or RESULTS / f"scaling-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
