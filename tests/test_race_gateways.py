"""Exact quotas across gateway processes: hundreds of racing submissions through four gateways sharing one Redis."""

import asyncio
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.core.leases import QUOTA_SLOT
from gateway.demo.standin import StandinState, standin_app
from tests.harness import ISSUER, POLICIES, Idp, gateway_yaml, upstream_yaml
from tests.processes import GatewayProcess, free_ports, wait_ready
from tests.redis_server import RedisProcess, free_port

GATEWAYS = 4
RACERS = 300
H100_TPP = 15_832.0  # the `h100` alias resolves to H100-SXM (policies/ai-diffusion-2025/gpus.yaml)
SUBMIT = "/slurm/v0.0.38/job/submit"

SOLO = "solo-sg"  # Tier 2, no licence: a plain tenant cap
SOLO_CAP_GPUS = 40
SOLO_HELD_GPUS = 3  # submitted before the race

DUNES = [f"dune-ae-{i}" for i in range(1, 5)]  # Tier 2, all headquartered in AE, each licensed
DUNE_ALLOWANCE_GPUS = 1  # each one's tpp_cap: capacity within it draws on no country cap
COUNTRY_CAP_GPUS = 20  # AE's allocation in the test pack
DUNE_HELD_GPUS = 2  # submitted by DUNES[0] before the race: one in its allowance, one on AE


def job(gpus: int) -> dict[str, object]:
    """A Slurm v0.0.38 submission of `gpus` H100s for an hour."""
    return {
        "job": {
            "name": "r",
            "partition": "gpu",
            "time_limit": 60,
            "gpus": f"h100:{gpus}",
            "environment": {"PATH": "/usr/bin"},
        },
        "script": "#!/bin/bash\ntrue",
    }


def registry_yaml() -> str:
    """One capped tenant in Singapore and four licensed tenants headquartered in the UAE."""
    kyc = "{status: verified, verified_at: 2025-01-01, expires_at: 2035-01-01}"
    out = ["tenants:"]
    tenants = [(SOLO, "SG", SOLO_CAP_GPUS, "")] + [
        (t, "AE", DUNE_ALLOWANCE_GPUS, f"\n    licences: [{{id: L-{t}, lifts: [tenant_cap]}}]") for t in DUNES
    ]
    for tenant, cc, gpus, licences in tenants:
        out.append(f"""  - id: {tenant}
    display_name: {tenant}
    identities: [{{issuer: "{ISSUER}", subject: {tenant}}}]
    location: {cc}
    headquarters: {cc}
    parent_headquarters: {cc}
    kyc: {kyc}
    tpp_cap: {gpus * H100_TPP}{licences}
    upstream_identity: {{slurm_user: {tenant}}}""")
    return "\n".join(out) + "\n"


def race_pack(workdir: Path) -> Path:
    """A copy of the bundled pack whose AE allocation is COUNTRY_CAP_GPUS H100s."""
    pack = workdir / "pack"
    shutil.copytree(POLICIES / "ai-diffusion-2025", pack)
    caps = pack / "caps.yaml"
    text = caps.read_text()
    assert text.count("  overrides: {}\n") == 1
    caps.write_text(text.replace("  overrides: {}\n", f"  overrides: {{AE: {COUNTRY_CAP_GPUS * H100_TPP}}}\n"))
    return pack


def race_config(workdir: Path, *, port: int, admin_port: int, instance: str, redis_url: str, prefix: str,
                 upstream: str) -> str:  # fmt: skip
    headers = "    headers:\n      X-SLURM-USER-NAME: {from_tenant: slurm_user}"
    upstreams = upstream_yaml(upstream, timeout_s=30, headers=headers)
    # A generous store timeout: a timed-out script may still have run, which would blur the count.
    quota = f'store: redis, redis_url: "{redis_url}", timeout_ms: 5000, prefix: "{prefix}"'
    # A short grace: a stop that waits on an in-flight request is cut after 2 s (the gateway's own stop deadline
    # is then 12 s, well inside the harness's 40 s), so a slow machine cannot turn teardown into a failure.
    return gateway_yaml(workdir, listen_port=port, admin_port=admin_port, instance_id=instance, pack=workdir / "pack",
                        quota=quota, reload="interval_s: 5", upstreams=upstreams,
                        shutdown="drain_s: 0, grace_s: 2")  # fmt: skip


class StandinThread:
    """The stand-in scheduler on its own event loop in a thread, so the test reads what it received."""

    def __init__(self) -> None:
        self.state = StandinState()
        self.url = f"http://127.0.0.1:{free_port()}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="standin", daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("stand-in did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(standin_app(self.state), access_log=None)
        self._loop.run_until_complete(runner.setup())
        port = int(self.url.rsplit(":", 1)[1])
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def submissions(self, tenants: list[str]) -> int:
        """How many jobs the stand-in created for these tenants' Slurm users."""
        return sum(1 for j in list(self.state.jobs.values()) if j["user_name"] in tenants)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class Fleet:
    """Four gateways sharing one Redis (one `--workers 4` supervisor, or four processes) and one stand-in."""

    mode: str
    urls: list[str]
    instances: list[str]
    standin: StandinThread
    idp: Idp
    redis_url: str
    prefix: str
    workdir: Path


def start_gateways(mode: str, workdir: Path, redis_url: str, prefix: str, upstream: str) -> tuple[
        list[GatewayProcess], list[str], list[str], list[str]]:  # fmt: skip
    """Start the gateways; return the processes, proxy URLs, admin URLs and instance ids."""
    if mode == "workers":
        port, admin = free_port(), free_ports(GATEWAYS)
        config = workdir / "gateway.yaml"
        config.write_text(race_config(workdir, port=port, admin_port=admin, instance="race", redis_url=redis_url,
                                       prefix=prefix, upstream=upstream))  # fmt: skip
        procs = [GatewayProcess.start(["--config", str(config), "--workers", str(GATEWAYS)], workdir / "serve.log")]
        admins = [f"http://127.0.0.1:{admin + i}" for i in range(GATEWAYS)]
        return procs, [f"http://127.0.0.1:{port}"], admins, [f"race-w{i}" for i in range(GATEWAYS)]
    procs, urls, admins, instances = [], [], [], []
    for i in range(GATEWAYS):
        port, admin = free_port(), free_port()
        config = workdir / f"gateway-{i}.yaml"
        config.write_text(race_config(workdir, port=port, admin_port=admin, instance=f"race-gw{i}",
                                       redis_url=redis_url, prefix=prefix, upstream=upstream))  # fmt: skip
        procs.append(GatewayProcess.start(["--config", str(config)], workdir / f"serve-{i}.log"))
        urls.append(f"http://127.0.0.1:{port}")
        admins.append(f"http://127.0.0.1:{admin}")
        instances.append(f"race-gw{i}")
    return procs, urls, admins, instances


@pytest.fixture(scope="module", params=["workers", "processes"])
def fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          redis_server: RedisProcess) -> Iterator[Fleet]:  # fmt: skip
    """Four gateway processes in front of one stand-in, sharing the session's Redis under their own prefix."""
    mode: str = request.param
    workdir = tmp_path_factory.mktemp(f"race-{mode}")
    idp = Idp()
    (workdir / "jwks.json").write_text(json.dumps(idp.jwks()))
    (workdir / "tenants.yaml").write_text(registry_yaml())
    race_pack(workdir)
    prefix = f"race-{mode}-{time.monotonic_ns()}:"
    standin = StandinThread()
    procs: list[GatewayProcess] = []
    try:
        procs, urls, admins, instances = start_gateways(mode, workdir, redis_server.url, prefix, standin.url)
        wait_ready(admins, procs)
        yield Fleet(mode, urls, instances, standin, idp, redis_server.url, prefix, workdir)
    finally:
        codes = [p.stop() for p in procs]
        standin.stop()
    assert codes == [0] * len(procs), "\n".join(p.output() for p in procs)
    assert not any(p.group_alive() for p in procs)


async def submit(session: aiohttp.ClientSession, url: str, token: str, gpus: int) -> tuple[int, str | None]:
    """POST one submission; return the status and the refusal code (None when admitted)."""
    async with session.post(url + SUBMIT, json=job(gpus), headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json(content_type=None)
        return resp.status, (body.get("code") if resp.status != 200 else None)


async def race(fleet: Fleet, tenants: list[str]) -> Counter[tuple[int, str | None]]:
    """RACERS one-GPU submissions at once, tenants taking turns, spread over every gateway and connection."""
    tokens = [fleet.idp.token(t) for t in tenants]
    # A connection per request, so SO_REUSEPORT spreads them over the workers too.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        n, m = len(tokens), len(fleet.urls)
        results = await asyncio.gather(
            *(submit(session, fleet.urls[(i // n) % m], tokens[i % n], 1) for i in range(RACERS))
        )
    return Counter(results)


async def held(fleet: Fleet, tag: str, key: str) -> float:
    """A counter's value in the shared Redis, in H100s."""
    store = RedisQuotaStore.from_url(fleet.redis_url, cluster=False, prefix=fleet.prefix, timeout_s=5)
    try:
        return await store.counter_value(tag, key, time.time()) / H100_TPP
    finally:
        await store.close()


def deciders(fleet: Fleet, tenants: list[str]) -> dict[str, Counter[str]]:
    """Decision records (allow, deny) per instance, that is per ledger chain, for these tenants."""
    out = {}
    for instance in fleet.instances:
        seen: Counter[str] = Counter()
        for segment in (fleet.workdir / "ledger" / instance).glob("*.jsonl"):
            for line in segment.read_text().splitlines():
                record = json.loads(line)
                if record.get("kind") == "decision" and record.get("tenant") in tenants:
                    seen[record["decision"]] += 1
        out[instance] = seen
    return out


def assert_spread(fleet: Fleet, tenants: list[str], allowed: int) -> None:
    """Every decision is in some instance's ledger, and several instances (all, for separate processes) decided."""
    per_instance = deciders(fleet, tenants)
    total = sum(per_instance.values(), Counter[str]())
    assert total == {"allow": allowed, "deny": 1 + RACERS - allowed}, per_instance
    # Separate processes get requests round-robin; a supervisor's workers get whatever the kernel
    # hands them (which instance wins the admissions is up to the scheduler, so it is not asserted).
    deciding = sum(sum(seen.values()) > 0 for seen in per_instance.values())
    assert deciding >= (2 if fleet.mode == "workers" else GATEWAYS), per_instance


async def test_one_tenants_last_capacity(fleet: Fleet) -> None:
    """Across four gateways exactly the submissions that fit under a tenant's cap are admitted and forwarded."""
    async with aiohttp.ClientSession() as session:
        assert await submit(session, fleet.urls[0], fleet.idp.token(SOLO), SOLO_HELD_GPUS) == (200, None)
    fits = SOLO_CAP_GPUS - SOLO_HELD_GPUS
    results = await race(fleet, [SOLO])
    assert results == {(200, None): fits, (429, "quota_tenant_tpp"): RACERS - fits}
    assert fleet.standin.submissions([SOLO]) == 1 + fits
    assert await held(fleet, QUOTA_SLOT, f"tenant:{SOLO}") == SOLO_CAP_GPUS
    assert_spread(fleet, [SOLO], 1 + fits)


async def test_one_countrys_last_allocation(fleet: Fleet) -> None:
    """Licensed tenants of one country racing through four gateways get exactly its allowances and allocation."""
    async with aiohttp.ClientSession() as session:
        assert await submit(session, fleet.urls[-1], fleet.idp.token(DUNES[0]), DUNE_HELD_GPUS) == (200, None)
    # Each other tenant's own allowance, plus what the country has left after the one spilled GPU.
    fits = (len(DUNES) - 1) * DUNE_ALLOWANCE_GPUS + COUNTRY_CAP_GPUS - (DUNE_HELD_GPUS - DUNE_ALLOWANCE_GPUS)
    results = await race(fleet, DUNES)
    assert results == {(200, None): fits, (429, "quota_country_tpp"): RACERS - fits}
    assert fleet.standin.submissions(DUNES) == 1 + fits
    assert await held(fleet, QUOTA_SLOT, "country:AE") == COUNTRY_CAP_GPUS
    assert_spread(fleet, DUNES, 1 + fits)
