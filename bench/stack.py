"""One gateway process (memory store) and a stand-in scheduler in its own process, on loopback, for benchmarks."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "gateway" / "policies"  # the bundled pack and registry (package data)
ISSUER = "https://idp.example.com"


@dataclass(frozen=True, slots=True)
class BenchStack:
    """Where the gateway and the stand-in listen, and a token the gateway accepts (tenant acme-us)."""

    gateway: str
    standin: str
    token: str
    ledger_dir: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def _token() -> tuple[str, dict[str, object]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "bench", "alg": "RS256", "use": "sig"})
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "exportgate", "sub": "acme-us", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "bench"}), {"keys": [jwk]}


@contextlib.contextmanager
def running() -> Iterator[BenchStack]:
    """Start the stand-in (`python -m bench.gateway_bench --standin PORT`) and the gateway; stop both after."""
    token, jwks = _token()
    standin_port, port, admin = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    with tempfile.TemporaryDirectory(prefix="exportgate-bench-") as tmp:
        config = _config(Path(tmp), port, admin, f"http://127.0.0.1:{standin_port}", jwks)
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
            yield BenchStack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{standin_port}", token, tmp)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
