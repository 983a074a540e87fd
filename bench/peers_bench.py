"""exportgate against its peers, one run, one upstream: nginx direct, a bare aiohttp+uvloop proxy,
nginx + auth_request to a small JWT service, nginx + auth_request to exportgate's decision listener
(the configuration `exportgate nginx-config` writes), exportgate (memory store) and exportgate (Redis).

The upstream is nginx answering Slurm-shaped bodies (`return 200`, a new job id per submission).
Each peer is loaded with wrk (32 connections, Lua scripts carrying real tokens and real Slurm
submission bodies) and with a fixed-rate client at 1,000 requests/s. The system under test runs
alone on CPU 0; the upstream, Redis, wrk and this script run on CPU 1.

`python -m bench.peers_bench [--seconds 10] [--scenarios read job submit refuse paced-read paced-submit]`
Prints one table and writes bench/results/peers-<time>.json.
"""

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.peers_load import Request, Result, paced, run_wrk
from bench.peers_nginx import auth_request_conf, exportgate_conf, upstream_conf
from bench.stack import ISSUER, POLICIES, ROOT, free_port
from gateway.cli.nginx_config import default_targets, render
from gateway.config.settings import load_settings

SUT_CPU, LOAD_CPU = 0, 1
SLURM = "/slurm/v0.0.38"
TENANT, REFUSED_TENANT = "acme-us", "harbour-hk"  # Tier 1 (US, no cap); Tier 3 (HK counts as CN): 451
# tests/harness.py slurm_job(): one H100 for an hour, with the environment slurmrestd requires.
JOB = {
    "job": {
        "name": "bench",
        "partition": "gpu",
        "time_limit": 60,
        "gpus": "h100:1",
        "environment": {"PATH": "/usr/bin"},
    },
    "script": "#!/bin/bash\ntrue",
}
PEERS = ("nginx-direct", "bare-proxy", "nginx-auth", "nginx-exportgate", "exportgate-mem", "exportgate-redis")
BARE, AUTH, NGINX_EG = "bare-proxy", "nginx-auth", "nginx-exportgate"
SCENARIOS = ("read", "job", "submit", "refuse", "paced-read", "paced-submit")
RESULTS = ROOT / "bench" / "results"


# ---------------------------------------------------------------- tools


def _apt_install(binary: str, package: str) -> None:
    if shutil.which(binary):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SystemExit(f"{binary} is required: install it (e.g. 'sudo apt-get install {package}')")
    print(f"installing {package} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, stdout=subprocess.DEVNULL)
    if not shutil.which(binary):
        raise SystemExit(f"{binary} is still missing after 'apt-get install {package}'")


def ensure_tools() -> None:
    """nginx, wrk, redis-server (apt, as root) and uvloop (pip, into this interpreter's environment)."""
    for binary, package in (("nginx", "nginx"), ("wrk", "wrk"), ("redis-server", "redis-server")):
        _apt_install(binary, package)
    if not shutil.which("taskset"):
        raise SystemExit("taskset is required (package util-linux)")
    if importlib.util.find_spec("uvloop") is None:
        print("installing uvloop (pip)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "uvloop"], check=True)
        importlib.invalidate_caches()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("two CPUs are needed: the system under test on CPU 0, the load on CPU 1")


# ---------------------------------------------------------------- processes


class Processes:
    """Children started pinned to a CPU, stopped in reverse order; their output goes to files in `logs`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cpu: int | str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs.append((name, proc))

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"{name} exited ({proc.returncode}):\n{tail}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_http(url: str, procs: Processes, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check()
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # up: it answered (a 401 from a peer that wants a token)
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def _wait_redis(port: int, procs: Processes) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        procs.check()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise SystemExit(f"redis-server on port {port} did not start")


def _nginx(procs: Processes, name: str, cpu: int | str, prefix: Path, conf: str) -> None:
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(conf)
    procs.start(name, cpu, ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf")])


def _gateway_yaml(
    workdir: Path, name: str, port: int, admin: int, upstream: str, quota: str, decision: int | None = None
) -> Path:
    path = workdir / f"{name}.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
{f"decision: {{host: 127.0.0.1, port: {decision}}}" if decision else ""}
instance_id: {name}
policy: {{pack: {POLICIES / "ai-diffusion-2025"}, registry: {POLICIES / "tenants.example.yaml"}}}
ledger: {{dir: {workdir / name / "ledger"}}}
quota: {{{quota}}}
shutdown: {{drain_s: 0}}
auth:
  issuers: [{{issuer: "{ISSUER}", audiences: [exportgate], algorithms: [RS256], jwks_file: {workdir / "jwks.json"}}}]
upstreams:
  - name: slurm
    url: {upstream}
    scheduler: slurm
    headers: {{X-SLURM-USER-NAME: {{from_tenant: slurm_user}}}}
""")
    return path


def _nginx_exportgate_conf(gateway_yaml: Path, port: int) -> str:
    """`exportgate nginx-config` for that gateway.yaml, listening on `port`."""
    settings = load_settings(gateway_yaml, env={})
    return render(settings, default_targets(settings, f"127.0.0.1:{port} backlog=4096"))


def _keys(workdir: Path) -> dict[str, str]:
    """A fresh RS256 key in `workdir/jwks.json`; a token for the admitted and for the refused tenant."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "alg": "RS256", "use": "sig"})
    (workdir / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    tokens = {}
    for sub in (TENANT, REFUSED_TENANT):
        claims = {"iss": ISSUER, "aud": "exportgate", "sub": sub, "iat": now, "exp": now + 7200}
        tokens[sub] = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
    return tokens


@contextlib.contextmanager
def peers(workdir: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """Start the upstream, Redis and every peer; yield (peer -> base URL, tenant -> token)."""
    procs = Processes(workdir)
    tokens = _keys(workdir)
    upstream_port = free_port()
    ports = {name: free_port() for name in PEERS}
    upstream = f"http://127.0.0.1:{upstream_port}"
    try:
        _nginx(procs, "upstream", LOAD_CPU, workdir / "upstream", upstream_conf(workdir / "upstream", upstream_port))
        # The upstream measured directly: the same configuration, a second instance, on the SUT's CPU.
        direct = ports["nginx-direct"]
        _nginx(procs, "nginx-direct", SUT_CPU, workdir / "direct", upstream_conf(workdir / "direct", direct))
        procs.start("bare-proxy", SUT_CPU, [sys.executable, "-m", "bench.bare_proxy", str(ports[BARE]), upstream])
        auth_port = free_port()
        tiers = POLICIES / "ai-diffusion-2025" / "tiers.yaml"
        registry = POLICIES / "tenants.example.yaml"
        auth_cmd = [sys.executable, "-m", "bench.auth_service", str(auth_port), str(workdir / "jwks.json")]
        procs.start("auth-service", SUT_CPU, [*auth_cmd, str(registry), str(tiers), ISSUER])
        conf = auth_request_conf(workdir / "auth", ports[AUTH], upstream_port, auth_port)
        _nginx(procs, "nginx-auth", SUT_CPU, workdir / "auth", conf)
        redis_port = free_port()
        redis = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        procs.start("redis", LOAD_CPU, [*redis, "--dir", str(workdir)])
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
        admins = {}
        decision = free_port()  # exportgate-mem's decision listener, which nginx-exportgate asks
        for name, quota in (
            ("exportgate-mem", "store: memory"),
            ("exportgate-redis", f"store: redis, redis_url: 'redis://127.0.0.1:{redis_port}/0'"),
        ):
            admins[name] = free_port()
            asked = decision if name == "exportgate-mem" else None
            config = _gateway_yaml(workdir, name, ports[name], admins[name], upstream, quota, asked)
            procs.start(name, SUT_CPU, [sys.executable, "-m", "gateway", "serve", "--config", str(config)], env=env)
            if asked is not None:  # jobs go to this gateway's proxy, everything else through auth_request to it
                site = _nginx_exportgate_conf(config, ports[NGINX_EG])
                _nginx(procs, NGINX_EG, SUT_CPU, workdir / "nginx-eg", exportgate_conf(workdir / "nginx-eg", site))
        _wait_http(upstream + f"{SLURM}/ping", procs)
        _wait_redis(redis_port, procs)
        _wait_http(f"http://127.0.0.1:{auth_port}/verify", procs)
        for name in PEERS:
            _wait_http(f"http://127.0.0.1:{ports[name]}{SLURM}/ping", procs)
        for admin in admins.values():
            _wait_http(f"http://127.0.0.1:{admin}/readyz", procs)
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}, tokens
        procs.check()
    finally:
        procs.stop()


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    what: str
    paced: bool


SCENARIO_INFO = {
    "read": Scenario("read", f"GET {SLURM}/ping (plain read)", False),
    "job": Scenario("job", f"GET {SLURM}/job/ID of a job the tenant owns", False),
    "submit": Scenario("submit", f"POST {SLURM}/job/submit, 1 x H100 for 60 min (Tier 1, no cap)", False),
    "refuse": Scenario(
        "refuse", f"POST {SLURM}/job/submit by a Tier 3 tenant (451; the pass-throughs forward it)", False
    ),
    "paced-read": Scenario("paced-read", "plain reads at a fixed 1,000 requests/s", True),
    "paced-submit": Scenario("paced-submit", "submissions at a fixed 1,000 requests/s", True),
}


def _submit_once(base: str, token: str) -> str:
    """Submit one job through `base` as the tenant; its job id (for the job-read scenario)."""
    request = urllib.request.Request(
        base + f"{SLURM}/job/submit",
        data=json.dumps(JOB).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return str(json.loads(resp.read())["job_id"])


def requests_for(peer: str, base: str, tokens: dict[str, str], job_id: str) -> dict[str, tuple[Request, int]]:
    """Scenario -> (request, the status a correct answer has) for `peer`."""
    body = json.dumps(JOB, separators=(",", ":"))
    refused = 451 if peer not in ("nginx-direct", BARE) else 200
    read = Request("GET", f"{SLURM}/ping", tokens[TENANT])
    submit = Request("POST", f"{SLURM}/job/submit", tokens[TENANT], body)
    return {
        "read": (read, 200),
        "job": (Request("GET", f"{SLURM}/job/{job_id}", tokens[TENANT]), 200),
        "submit": (submit, 200),
        "refuse": (Request("POST", f"{SLURM}/job/submit", tokens[REFUSED_TENANT], body), refused),
        "paced-read": (read, 200),
        "paced-submit": (submit, 200),
    }


@dataclass(slots=True)
class Row:
    scenario: str
    peer: str
    expected_status: int
    result: Result
    vs_bare: float | None = None
    vs_auth: float | None = None

    @property
    def unexpected(self) -> int:
        return self.result.count(self.expected_status)


def measure(args: argparse.Namespace, workdir: Path) -> list[Row]:
    uvloop = importlib.import_module("uvloop")
    rows: list[Row] = []
    with peers(workdir) as (bases, tokens):
        jobs = {peer: _submit_once(bases[peer], tokens[TENANT]) for peer in args.peers}
        plan = {peer: requests_for(peer, bases[peer], tokens, jobs[peer]) for peer in args.peers}
        for scenario in args.scenarios:
            info = SCENARIO_INFO[scenario]
            print(f"{scenario}: {info.what}", flush=True)
            for peer in args.peers:
                req, expected = plan[peer][scenario]
                if info.paced:
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        run = runner.run(paced(bases[peer], req, rate=args.rate, seconds=args.seconds))
                else:
                    if args.warmup > 0:
                        run_wrk(
                            bases[peer], req, workdir, seconds=args.warmup, connections=args.connections, cpu=LOAD_CPU
                        )
                    run = run_wrk(
                        bases[peer], req, workdir, seconds=args.seconds, connections=args.connections, cpu=LOAD_CPU
                    )
                rows.append(Row(scenario, peer, expected, run))
                print(f"  {peer:<17} {run.rate:9.0f}/s  p99 {run.p99_ms:7.2f} ms  {run.statuses}", flush=True)
    _ratios(rows)
    return rows


def _ratios(rows: list[Row]) -> None:
    """Saturation rows: requests/s over the baseline's; paced rows: p99 over the baseline's (same scenario)."""
    by = {(r.scenario, r.peer): r for r in rows}
    for row in rows:
        paced_row = SCENARIO_INFO[row.scenario].paced
        for base, attr in ((BARE, "vs_bare"), (AUTH, "vs_auth")):
            ref = by.get((row.scenario, base))
            if ref is None:
                continue
            num, den = (row.result.p99_ms, ref.result.p99_ms) if paced_row else (row.result.rate, ref.result.rate)
            setattr(row, attr, num / den if den else None)


def table(rows: list[Row], rate: float) -> str:
    head = ("scenario", "path", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "vs bare", "vs auth_req", "non-2xx", "wrong")
    widths = (12, 17, 8, 8, 8, 9, 8, 11, 8, 6)
    out = ["  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))]
    for r in rows:
        res = r.result
        non_2xx = sum(n for code, n in res.statuses.items() if not code.startswith("2"))
        cells = (
            r.scenario,
            r.peer,
            f"{res.rate:.0f}" + ("*" if SCENARIO_INFO[r.scenario].paced and res.rate < 0.95 * rate else ""),
            f"{res.p50_ms:.2f}",
            f"{res.p99_ms:.2f}",
            f"{res.p999_ms:.2f}",
            "-" if r.vs_bare is None else f"{r.vs_bare:.2f}",
            "-" if r.vs_auth is None else f"{r.vs_auth:.2f}",
            str(non_2xx),
            f"{r.unexpected}" + (" !" if r.unexpected > 0.01 * max(res.requests, 1) else ""),
        )
        out.append(
            "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )
    return "\n".join(out)


def _versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"

    uvloop = importlib.import_module("uvloop")
    return {
        "nginx": first_line(["nginx", "-v"]),
        "wrk": first_line(["wrk", "--version"]),
        "redis": first_line(["redis-server", "--version"]),
        "python": platform.python_version(),
        "uvloop": str(getattr(uvloop, "__version__", "?")),
        "kernel": platform.release(),
        "cpus": str(os.cpu_count()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario and peer")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="wrk warm-up seconds before each measurement (0: none)"
    )
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of the paced scenarios")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS), help="measure only these (all start)")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON result file (default bench/results/peers-<time>.json)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop every child process
    ensure_tools()
    os.sched_setaffinity(0, {LOAD_CPU})  # this script and the paced client stay off the SUT's CPU
    started = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="exportgate-peers-") as tmp:
        print(f"peers on CPU {SUT_CPU}; upstream nginx, redis, wrk on CPU {LOAD_CPU}; {args.seconds:g} s per row")
        rows = measure(args, Path(tmp))
    print()
    print(table(rows, args.rate))
    print(
        "vs bare / vs auth_req: requests/s ratio (paced rows: p99 latency ratio) to that peer, same scenario, same run"
    )
    print("non-2xx: answers that were not 2xx (socket errors included); wrong: answers other than the expected status")
    print("*: a paced row that fell behind the fixed rate: the peer saturated, its latency is mostly queueing")
    out = args.out or RESULTS / f"peers-{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started": started,
        "settings": {k: (list(v) if isinstance(v, list) else str(v)) for k, v in vars(args).items()},
        "versions": _versions(),
        "scenarios": {k: v.what for k, v in SCENARIO_INFO.items() if k in args.scenarios},
        "rows": [asdict(r) | {"rate": r.result.rate, "unexpected": r.unexpected} for r in rows],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if any(r.unexpected > 0.01 * max(r.result.requests, 1) for r in rows):
        raise SystemExit("some rows are more than 1% wrong answers (marked !): their figures do not measure that path")


if __name__ == "__main__":
    main()
