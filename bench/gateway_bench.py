"""Job submissions per second through one gateway (memory store) against the same requests sent to the stand-in."""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.demo.standin import StandinState, standin_app

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
ISSUER = "https://idp.example.com"
SUBMIT = "/slurm/v0.0.38/job/submit"
JOB = {
    "job": {"name": "b", "partition": "gpu", "time_limit": 60, "gpus": "h100:1", "environment": {"PATH": "/usr/bin"}},
    "script": "#!/bin/bash\ntrue",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def _config(workdir: Path, port: int, admin: int, upstream: str, jwks: dict[str, object]) -> Path:
    (workdir / "jwks.json").write_text(json.dumps(jwks))
    path = workdir / "gateway.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {port}}}
admin: {{host: 127.0.0.1, port: {admin}}}
instance_id: bench
policy: {{pack: {POLICIES / "ai-diffusion-2025"}, registry: {POLICIES / "tenants.example.yaml"}}}
ledger: {{dir: {workdir / "ledger"}}}
quota: {{store: memory}}
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


def _wait(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit("a benchmark process exited early")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):  # HTTPError too: /readyz is 503 until ready
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


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
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "alg": "RS256", "use": "sig"})
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "exportgate", "sub": "acme-us", "iat": now, "exp": now + 3600}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"})
    standin_port, port, admin = _free_port(), _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    with tempfile.TemporaryDirectory(prefix="exportgate-bench-") as tmp:
        config = _config(Path(tmp), port, admin, f"http://127.0.0.1:{standin_port}", {"keys": [jwk]})
        procs = [
            subprocess.Popen([sys.executable, "-m", "bench.gateway_bench", "--standin", str(standin_port)], cwd=ROOT),
            subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                cwd=ROOT,
                env=env,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            _wait(f"http://127.0.0.1:{standin_port}/slurm/v0.0.38/ping", procs)
            _wait(f"http://127.0.0.1:{admin}/readyz", procs)
            print(f"one gateway process (memory store, ledger fsync on {tmp}), stand-in in its own process")
            gateway, standin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{standin_port}"
            asyncio.run(_measure(gateway, standin, token, args.requests, args.concurrency))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)


if __name__ == "__main__":
    main()
