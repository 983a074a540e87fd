"""A gateway in front of a real scheduler started by tests/peers/*.sh: its tenants, config and server."""

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.config.settings import load_settings
from gateway.core.leases import QUOTA_SLOT
from gateway.http.app import Server
from tests.harness import POLICIES, Idp, gateway_yaml, tenant, upstream_yaml

# Tenants of the real-peer tests (countries as "location/headquarters/parent"); on Slurm all run as root.
PEER_TENANTS = {"acme-us": "US/US/US", "nordlys-se": "SE/SE/SE", "fjord-se-cn": "SE/SE/CN"}


def peer_registry(*tenant_ids: str) -> str:
    """Registry YAML with the named PEER_TENANTS, verified."""
    return "tenants:" + "".join(tenant(t, PEER_TENANTS[t], slurm_user="root") for t in tenant_ids) + "\n"


@asynccontextmanager
async def peer_gateway(
    workdir: Path,
    scheduler: str,
    url: str,
    *,
    tenants: str,
    timeout_s: float,
    headers: str = "",
    extra: str = "",
    config: str = "",
    clock: Callable[[], float] = time.time,
    pack: Path | None = None,
) -> AsyncIterator[tuple[Server, Idp]]:
    """Run a gateway whose one upstream is the real `scheduler` at `url`; yield it and the IdP its tokens trust.

    `tenants` is the registry YAML, `headers` the upstream's `headers:` block and `extra` more of
    its keys (both at the upstream's indent), `config` top-level YAML, `pack` the policy pack (default: the
    bundled one); JWKS, registry, config and ledger live under `workdir`.
    """
    idp = Idp()
    (workdir / "jwks.json").write_text(json.dumps(idp.jwks()))
    (workdir / "tenants.yaml").write_text(tenants)
    upstream = upstream_yaml(f'"{url}"', scheduler=scheduler, timeout_s=timeout_s, headers=headers, extra=extra)
    pack = pack or POLICIES / "ai-diffusion-2025"
    text = gateway_yaml(
        workdir, instance_id=f"real-{scheduler}", shutdown=None, upstreams=upstream, extra=config, pack=pack
    )
    (workdir / "gateway.yaml").write_text(text)
    server = Server(load_settings(workdir / "gateway.yaml", env={}), env={}, clock=clock)
    await server.start()
    try:
        yield server, idp
    finally:
        await server.stop()


async def held(server: Server, tenant_id: str) -> float:
    """The TPP a US tenant holds now."""
    assert server.store is not None
    return await server.store.counter_value(QUOTA_SLOT, f"tenant:{tenant_id}", server.clock())
