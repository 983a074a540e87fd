"""A real gateway, a stand-in scheduler and an IdP key pair, all on loopback free ports."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config.settings import Settings, load_settings
from gateway.demo.standin import StandinState, standin_app
from gateway.http.app import Server
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


SLURM_HEADERS = """
    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{file: {token}}}
"""


class Clock:
    """A gateway clock that starts at real time and moves only when a test moves it.

    It starts on a whole second: the gateway turns `now` into a datetime (microseconds) for
    the core, and a whole second survives that round trip exactly.
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Idp:
    """An identity provider's RSA signing key and its JWKS document."""

    def __init__(self, kid: str = "k1", clock: Callable[[], float] = time.time) -> None:
        self.kid = kid
        self.clock = clock
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return {"keys": [jwk]}

    def token(self, sub: str, **claims: Any) -> str:
        now = int(self.clock())
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
    scheduler: str = "slurm",
    headers: str | None = None,
    admin_tokens_file: Path | None = None,
    ledger_options: str = "",
    limits: str = "max_body_bytes: 65536",
    shutdown: str = "drain_s: 0",
) -> Path:
    """gateway.yaml for one upstream; `headers` (YAML at the upstream's indent) replaces Slurm's.

    `ledger_options` (flow-mapping entries, e.g. "stall_after_s: 1") join the `ledger:` section.
    """
    (workdir / "jwks.json").exists() or (workdir / "jwks.json").write_text("{}")
    path = workdir / "gateway.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {free_port()}}}
admin: {{host: 127.0.0.1, port: {free_port()}{f", tokens_file: {admin_tokens_file}" if admin_tokens_file else ""}}}
instance_id: test-gw
policy:
  pack: {POLICIES / "ai-diffusion-2025"}
  registry: {workdir / "tenants.yaml"}
ledger: {{dir: {ledger_dir or workdir / "ledger"}{", " + ledger_options if ledger_options else ""}}}
trusted_proxies: ["10.0.0.0/8"]
limits: {{{limits}}}
shutdown: {{{shutdown}}}
reload: {{interval_s: 0.1}}
auth:
  issuers:
    - issuer: "{ISSUER}"
      audiences: ["{AUDIENCE}"]
      algorithms: [RS256]
      jwks_file: {workdir / "jwks.json"}
upstreams:
  - name: {scheduler}
    url: {upstream_url}
    scheduler: {scheduler}
    timeout_s: {timeout_s}
    connect_timeout_s: 1
{SLURM_HEADERS.format(token=workdir / "slurm.token") if headers is None else headers}
{upstream_extra}
{extra}
""")
    (workdir / "slurm.token").write_text("gateway-held-slurm-token\n")
    if not (workdir / "tenants.yaml").exists():
        (workdir / "tenants.yaml").write_text((POLICIES / "tenants.example.yaml").read_text())
    return path


async def start_standin(
    state: StandinState, app: Callable[[StandinState], web.Application] = standin_app
) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app(state), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def run_stack(
    workdir: Path,
    *,
    clock: Callable[[], float] = time.time,
    registry: str | None = None,
    standin: Callable[[StandinState], web.Application] = standin_app,
    **config: Any,
) -> AsyncIterator[Stack]:
    """Start stand-in and gateway; yield; stop both.

    `clock` drives the gateway and the IdP's token times; `registry` (YAML text) replaces
    the example tenant registry; `standin` builds the scheduler stand-in's app.
    """
    idp = Idp(clock=clock)
    (workdir / "jwks.json").write_text(json.dumps(idp.jwks()))
    if registry is not None:
        (workdir / "tenants.yaml").write_text(registry)
    state = StandinState()
    runner, url = await start_standin(state, standin)
    settings = load_settings(write_config(workdir, config.pop("upstream_url", url), **config), env={})
    server = Server(settings, env={}, clock=clock)
    await server.start()
    try:
        yield Stack(server, settings, state, idp, workdir)
    finally:
        await server.stop()
        await runner.cleanup()


Reply = tuple[int, Any, dict[str, str]]


async def call(
    stack: Stack,
    method: str,
    path: str,
    sub: str | None,
    *,
    payload: object = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request as `sub` (no token when None), `payload` sent as JSON or `data` as is.

    Returns the status, the body (parsed when it is JSON, else text) and the headers.
    """
    sent = stack.auth(sub) if sub else {}
    sent.update(headers or {})
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, stack.url + path, json=payload, data=data, headers=sent) as resp,
    ):
        raw = await resp.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return resp.status, body, dict(resp.headers)


def ledger_records(stack: Stack) -> list[dict[str, Any]]:
    """Every committed ledger record of the stack's instance, in order."""
    lines: list[dict[str, Any]] = []
    for segment in sorted((stack.settings.ledger.dir / "test-gw").glob("*.jsonl")):
        lines.extend(json.loads(line) for line in segment.read_text().splitlines())
    return lines


async def wait_for_record(stack: Stack, kind: str, timeout_s: float = 2.0, **match: Any) -> dict[str, Any]:
    """The first `kind` record whose fields equal `match`, once its (non-waiting) group commit lands."""
    deadline = time.monotonic() + timeout_s
    while True:
        for record in ledger_records(stack):
            if record.get("kind") == kind and all(record.get(k) == v for k, v in match.items()):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind} record with {match}")
        await asyncio.sleep(0.01)


def tenant(tenant_id: str, countries: str, extra: str = "", *, slurm_user: str | None = None) -> str:
    """One verified tenant as registry YAML; `countries` is "location/headquarters/parent".

    It runs Slurm jobs as `slurm_user` (its own id unless given) and owns the Kubernetes
    namespace named after it.
    """
    location, headquarters, parent = countries.split("/")
    return f"""
  - id: {tenant_id}
    identities: [{{issuer: "{ISSUER}", subject: {tenant_id}}}]
    location: {location}
    headquarters: {headquarters}
    parent_headquarters: {parent}
    kyc: {{status: verified, verified_at: 2025-01-01, expires_at: 2035-01-01}}
    upstream_identity: {{slurm_user: {slurm_user or tenant_id}, k8s_namespace: {tenant_id}}}{extra}"""


# One H100-hour is 3.56e18 training ops: it takes 1e26 - 1e18 over 1e26, and not 1e26 - 1e19.
_NEAR_1E26 = "\n    declared_training_ops: {llama-x: 9.9999999e+25}"
_BELOW_1E26 = "\n    declared_training_ops: {llama-x: 9.999999e+25}"

# Tenants for quota tests: Tier 1 and Tier 2, a small cap override, an affiliate group, tenants
# near the training threshold with and without a licence, and a Tier 3 subsidiary.
_E2E = [
    tenant("us-one", "US/US/US", _NEAR_1E26),  # Tier 1: never counted
    tenant("us-two", "US/US/US"),
    tenant("capped-ae", "AE/AE/AE", "\n    tpp_cap: 31664  # 2 x H100"),
    tenant("falcon-ae", "AE/AE/AE", "\n    parent_entity: falcon-group"),
    tenant("falcon-sg", "SG/SG/AE", "\n    parent_entity: falcon-group"),
    tenant("below-ae", "AE/AE/AE", _BELOW_1E26),
    tenant("cross-ae", "AE/AE/AE", _NEAR_1E26),
    tenant(
        "licensed-ae",
        "AE/AE/AE",
        _NEAR_1E26 + "\n    licences: [{id: D-1001, lifts: [training_threshold], lineage: llama-x}]",
    ),
    tenant(
        "mislicensed-ae",
        "AE/AE/AE",
        _NEAR_1E26 + "\n    licences: [{id: D-1002, lifts: [training_threshold], lineage: llama-z}]",
    ),
    tenant("fjord-se-cn", "SE/SE/CN"),
]
E2E_TENANTS = "tenants:" + "".join(_E2E) + "\n"
