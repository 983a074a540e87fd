"""A real gateway, a stand-in scheduler and an IdP key pair, all on loopback free ports."""

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config.settings import Settings, load_settings
from gateway.http.app import Server
from gateway.standin import StandinState, standin_app
from tests.redis_server import free_port

ISSUER = "https://idp.example.com"
AUDIENCE = "exportgate"
POLICIES = Path(__file__).resolve().parent.parent / "policies"

SLURM_ROUTES = """
    routes:
      - {name: big, methods: [GET], path: "/standin/big", kind: plain_read}
      - {name: hang, methods: [GET], path: "/standin/hang", kind: plain_read}
      - {name: tail, methods: [GET], path: "/api/jobs/{job_id}/logs/tail", kind: plain_read, websocket: true}
"""


class Idp:
    """An identity provider's RSA signing key and its JWKS document."""

    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return {"keys": [jwk]}

    def token(self, sub: str, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


@dataclass
class Stack:
    """The running parts of one end-to-end test."""

    server: Server
    settings: Settings
    standin: StandinState
    idp: Idp
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.admin_port}"

    def auth(self, sub: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.idp.token(sub, **claims)}"}


def write_config(
    workdir: Path,
    upstream_url: str,
    *,
    extra: str = "",
    ledger_dir: Path | None = None,
    upstream_extra: str = SLURM_ROUTES,
    timeout_s: float = 2.0,
) -> Path:
    (workdir / "jwks.json").exists() or (workdir / "jwks.json").write_text("{}")
    path = workdir / "gateway.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {free_port()}}}
admin: {{host: 127.0.0.1, port: {free_port()}}}
instance_id: test-gw
policy:
  pack: {POLICIES / "ai-diffusion-2025"}
  registry: {workdir / "tenants.yaml"}
ledger: {{dir: {ledger_dir or workdir / "ledger"}}}
trusted_proxies: ["10.0.0.0/8"]
limits: {{max_body_bytes: 65536}}
reload: {{interval_s: 0.1}}
auth:
  issuers:
    - issuer: "{ISSUER}"
      audiences: ["{AUDIENCE}"]
      algorithms: [RS256]
      jwks_file: {workdir / "jwks.json"}
upstreams:
  - name: slurm
    url: {upstream_url}
    scheduler: slurm
    timeout_s: {timeout_s}
    connect_timeout_s: 1
    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{file: {workdir / "slurm.token"}}}
{upstream_extra}
{extra}
""")
    (workdir / "slurm.token").write_text("gateway-held-slurm-token\n")
    if not (workdir / "tenants.yaml").exists():
        (workdir / "tenants.yaml").write_text((POLICIES / "tenants.example.yaml").read_text())
    return path


async def start_standin(state: StandinState) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(standin_app(state), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def run_stack(workdir: Path, **config: Any) -> AsyncIterator[Stack]:
    """Start stand-in and gateway; yield; stop both."""
    idp = Idp()
    (workdir / "jwks.json").write_text(json.dumps(idp.jwks()))
    state = StandinState()
    runner, url = await start_standin(state)
    settings = load_settings(write_config(workdir, config.pop("upstream_url", url), **config), env={})
    server = Server(settings, env={})
    await server.start()
    try:
        yield Stack(server, settings, state, idp, workdir)
    finally:
        await server.stop()
        await runner.cleanup()
