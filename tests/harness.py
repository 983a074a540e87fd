"""A real gateway, a stand-in scheduler and an IdP key pair, all on loopback free ports."""

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.settings import Settings, load_settings
from gateway.core.ledger import GENESIS, link_problem
from gateway.demo.standin import StandinState, standin_app
from gateway.http.app import Server
from tests.redis_server import free_port

ISSUER = "https://idp.example.com"
AUDIENCE = "exportgate"
POLICIES = BUNDLED_POLICIES  # the pack and registry shipped in the package (gateway/policies)
H100 = 15832.0  # TPP of one H100 (gpus.yaml)
SUBMIT = "/slurm/v0.0.38/job/submit"
JOB_PATH = "/slurm/v0.0.38/job/{}"
JOB = {
    "job": {"name": "t", "partition": "gpu", "time_limit": 60, "gpus": "h100:1", "environment": {"PATH": "/usr/bin"}},
    "script": "#!/bin/bash\ntrue",
}

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


# A Ray upstream priced by its entrypoints' own resources, for tests about routes rather than pricing.
RAY_ENTRYPOINT = "    scheduler_options: {pricing: entrypoint}"


def upstream_yaml(
    url: str,
    *,
    scheduler: str = "slurm",
    name: str | None = None,
    timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    headers: str = "",
    extra: str = "",
) -> str:
    """One entry of `upstreams:`; `headers` and `extra` are YAML at the entry's indent (4 spaces)."""
    lines = [f"  - name: {name or scheduler}", f"    url: {url}", f"    scheduler: {scheduler}"]
    lines += [f"    timeout_s: {timeout_s}"] if timeout_s is not None else []
    lines += [f"    connect_timeout_s: {connect_timeout_s}"] if connect_timeout_s is not None else []
    return "\n".join(lines) + "\n" + headers + "\n" + extra + "\n"


def gateway_yaml(
    workdir: Path,
    *,
    upstreams: str,
    listen_port: int | None = None,
    admin_port: int | None = None,
    admin_tokens_file: Path | None = None,
    instance_id: str = "test-gw",
    pack: Path | None = POLICIES / "ai-diffusion-2025",
    registry: Path | None = None,
    ledger_dir: Path | None = None,
    ledger_options: str = "",
    signing_key_file: Path | None = None,
    anchor_dir: Path | None = None,
    quota: str | None = None,
    trusted_proxies: str | None = None,
    limits: str | None = None,
    shutdown: str | None = "drain_s: 0",
    reload: str | None = None,
    extra: str = "",
) -> str:
    """The one gateway.yaml builder: JWKS, registry and ledger under `workdir` unless named.

    `upstreams` is the YAML list (see upstream_yaml); `ledger_options`, `quota`, `limits`,
    `shutdown` and `reload` are flow-mapping entries (e.g. "stall_after_s: 1"); a section left
    None is not written; `extra` is appended as top-level YAML.
    """
    admin = f"host: 127.0.0.1, port: {admin_port or free_port()}"
    admin += f", tokens_file: {admin_tokens_file}" if admin_tokens_file else ""
    policy = f"pack: {pack}, " if pack else ""
    ledger = [f"dir: {ledger_dir or workdir / 'ledger'}", ledger_options]
    ledger += [f"signing_key_file: {signing_key_file}"] if signing_key_file else []
    ledger += [f"anchor_dir: {anchor_dir}"] if anchor_dir else []
    sections = {"quota": quota, "limits": limits, "shutdown": shutdown, "reload": reload}
    optional = "".join(f"{key}: {{{value}}}\n" for key, value in sections.items() if value is not None)
    return f"""
listen: {{host: 127.0.0.1, port: {listen_port or free_port()}}}
admin: {{{admin}}}
instance_id: {instance_id}
policy: {{{policy}registry: {registry or workdir / "tenants.yaml"}}}
ledger: {{{", ".join(part for part in ledger if part)}}}
{f"trusted_proxies: {trusted_proxies}" if trusted_proxies else ""}
{optional}auth:
  issuers:
    - issuer: "{ISSUER}"
      audiences: ["{AUDIENCE}"]
      algorithms: [RS256]
      jwks_file: {workdir / "jwks.json"}
upstreams:
{upstreams}
{extra}
"""


def write_config(
    workdir: Path,
    upstream_url: str,
    *,
    upstream_extra: str = SLURM_ROUTES,
    timeout_s: float = 2.0,
    scheduler: str = "slurm",
    headers: str | None = None,
    limits: str = "max_body_bytes: 65536",
    **options: Any,
) -> Path:
    """A stack's gateway.yaml (see gateway_yaml) with one upstream, and the files it names.

    `headers` (YAML at the upstream's indent) replaces Slurm's; `options` go to gateway_yaml.
    """
    (workdir / "jwks.json").exists() or (workdir / "jwks.json").write_text("{}")
    upstream = upstream_yaml(
        upstream_url,
        scheduler=scheduler,
        timeout_s=timeout_s,
        connect_timeout_s=1,
        headers=SLURM_HEADERS.format(token=workdir / "slurm.token") if headers is None else headers,
        extra=upstream_extra,
    )
    options = {"trusted_proxies": '["10.0.0.0/8"]', "reload": "interval_s: 0.1", **options}
    path = workdir / "gateway.yaml"
    path.write_text(gateway_yaml(workdir, upstreams=upstream, limits=limits, **options))
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


@asynccontextmanager
async def running_stack(
    workdir: Path,
    *,
    clock: Callable[[], float] = time.time,
    registry: str | None = None,
    standin: Callable[[StandinState], web.Application] = standin_app,
    **config: Any,
) -> AsyncIterator[Stack]:
    """Start stand-in and gateway; yield the Stack; stop both (`async with running_stack(...) as stack`).

    `clock` drives the gateway and the IdP's token times; `registry` (YAML text) replaces
    the example tenant registry; `standin` builds the scheduler stand-in's app.
    """
    idp = Idp(clock=clock)
    (workdir / "jwks.json").write_text(json.dumps(idp.jwks()))
    if registry is not None:
        (workdir / "tenants.yaml").write_text(registry)
    state = StandinState()
    runner, url = await start_standin(state, standin)
    try:  # a config that does not load or a gateway that does not start must not leave the stand-in listening
        settings = load_settings(write_config(workdir, config.pop("upstream_url", url), **config), env={})
        server = Server(settings, env={}, clock=clock)
        await server.start()
        try:
            yield Stack(server, settings, state, idp, workdir)
        finally:
            await server.stop()
    finally:
        await runner.cleanup()


Reply = tuple[int, Any, dict[str, str]]


async def call(
    target: "Stack | str",
    method: str,
    path: str,
    sub: str | None = None,
    *,
    payload: object = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    admin_token: str | None = None,
    admin: bool = False,
) -> Reply:
    """The one request helper: `method path` as `sub` (no token when None), `payload` as JSON or `data` as is.

    `target` is a Stack or the base URL of a gateway run otherwise. With `admin` (or an
    `admin_token`, sent as the bearer token) a Stack's admin listener is asked.
    Returns the status, the body (parsed when it is JSON, else text) and the headers.
    """
    if isinstance(target, str):
        assert sub is None, "a token for `sub` needs the Stack's IdP"
        base, sent = target, {}
    else:
        base = target.admin_url if admin or admin_token else target.url
        sent = target.auth(sub) if sub else {}
    sent.update({"Authorization": f"Bearer {admin_token}"} if admin_token else {})
    sent.update(headers or {})
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, base + path, json=payload, data=data, headers=sent) as resp,
    ):
        raw = await resp.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return resp.status, body, dict(resp.headers)


async def metrics(stack: Stack) -> str:
    """The admin listener's /metrics text."""
    _, text, _ = await call(stack, "GET", "/metrics", admin=True)
    return str(text)


async def wait_for_metric(stack: Stack, line: str, within_s: float = 3.0) -> str:
    """The admin /metrics text once it contains `line`."""
    scraped: list[str] = []

    async def shows() -> bool:
        scraped.append(await metrics(stack))
        return line in scraped[-1]

    await wait_until(shows, within_s, every=0.05, message=f"/metrics never showed {line}")
    return scraped[-1]


def ledger_records(
    source: "Stack | Path", instance: str | None = None, *, committed_only: bool = False
) -> list[dict[str, Any]]:
    """The one ledger reader: every record, in order, of a Stack's instance, of `instance` under the
    ledger root `source`, or of the one segment file `source`.

    With `committed_only` a last line without its newline (a torn tail) is left out.
    """
    if isinstance(source, Stack):
        segments = sorted((source.settings.ledger.dir / source.settings.instance_id).glob("*.jsonl"))
    elif instance is not None:
        segments = sorted((source / instance).glob("*.jsonl"))
    else:
        segments = [source]
    records: list[dict[str, Any]] = []
    for segment in segments:
        lines = segment.read_bytes().splitlines(keepends=True)
        records.extend(json.loads(line) for line in lines if not committed_only or line.endswith(b"\n"))
    return records


def chain_problems(records: list[dict[str, Any]]) -> list[str]:
    """Each broken link of one instance's hash chain, as "seq N: problem"."""
    problems = []
    prev_seq, prev_hash = 0, GENESIS
    for record in records:
        problem = link_problem(record, prev_hash, prev_seq)
        if problem:
            problems.append(f"seq {record.get('seq')}: {problem}")
        prev_seq, prev_hash = record["seq"], record["hash"]
    return problems


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], within_s: float = 5.0, *, every: float = 0.01, message: str = ""
) -> None:
    """Poll `predicate` (plain or async) until it is true; fail after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(message or f"not true within {within_s} s")
        await asyncio.sleep(every)


async def wait_for_record(stack: Stack, kind: str, timeout_s: float = 2.0, **match: Any) -> dict[str, Any]:
    """The first `kind` record whose fields equal `match`, once its (non-waiting) group commit lands."""
    found: list[dict[str, Any]] = []

    def landed() -> bool:
        found.extend(
            r
            for r in ledger_records(stack, committed_only=True)  # polled while the writer may be mid-line
            if r.get("kind") == kind and all(r.get(k) == v for k, v in match.items())
        )
        return bool(found)

    await wait_until(landed, timeout_s, message=f"no {kind} record with {match}")
    return found[0]


async def held(stack: Stack, tag: str, key: str) -> float:
    """A counter's value in the gateway's own store, at the gateway's time."""
    store = stack.server.store
    assert store is not None
    return await store.counter_value(tag, key, stack.server.clock())


def slurm_job(
    gpus: str = "h100:1",
    *,
    name: str = "t",
    time_limit: int | None = 60,
    lineage: str | None = None,
    partition: str | None = "gpu",
    env: bool = True,
    params: str | None = None,
) -> Any:
    """A v0.0.38 submission body asking for `gpus`, declaring `lineage` and the model's `params` (parameter count,
    as text: "1e24") when given; without `env` the stand-in rejects it."""
    spec: dict[str, Any] = {"name": name} | ({"partition": partition} if partition else {})
    if time_limit is not None:
        spec["time_limit"] = time_limit
    spec["gpus"] = gpus
    if env:
        spec["environment"] = ({"PATH": "/usr/bin"} | ({"EXPORTGATE_LINEAGE": lineage} if lineage else {})
                               | ({"EXPORTGATE_PARAMS": params} if params else {}))  # fmt: skip
    return {"job": spec, "script": "#!/bin/bash\ntrue"}


def ray_job(submission_id: str | None = "train-1", minutes: str | None = "60") -> Any:
    """A Ray job submission asking for two H100s."""
    body: dict[str, Any] = {
        "entrypoint": "python train.py",
        "entrypoint_num_gpus": 2,
        "entrypoint_resources": {"accelerator_type:H100": 2},
        "runtime_env": {"env_vars": {"K": "V"}},
        "metadata": {"user": "alice"} | ({"time_limit_min": minutes} if minutes else {}),
    }
    if submission_id is not None:
        body["submission_id"] = submission_id
    return body


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
