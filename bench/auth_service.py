"""What an operator would build instead of exportgate: an nginx `auth_request` target (aiohttp + uvloop).

`python -m bench.auth_service PORT JWKS_FILE REGISTRY TIERS ISSUER`: `GET /verify` checks the
request's RS256 bearer token against the JWKS key loaded once at start (the key is cached; every
token is verified), maps its subject to a registered tenant and that tenant to a country tier
(the worst of location, headquarters and parent headquarters; KYC that is not verified, or
expired, counts as Tier 3), and answers 200 with the tenant's Slurm user in `X-Slurm-User`, 401 for a
missing or bad token, 403 for an unknown or Tier 3 tenant.
No quota, no pricing, no ledger: the access decision only.
"""

import asyncio
import importlib
import json
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import jwt
import yaml
from aiohttp import web


@dataclass(frozen=True, slots=True)
class Tenant:
    tier: int
    slurm_user: str


def _countries(entries: list[Any]) -> set[str]:
    return {e["country"] if isinstance(e, dict) else str(e) for e in entries}


def load_tenants(registry: Path, tiers: Path) -> dict[str, Tenant]:
    """Subject -> tenant, from the registry and the pack's tiers file (dated entries taken as members)."""
    t = yaml.safe_load(tiers.read_text())
    tier1, tier3, aliases = _countries(t["tier1"]), _countries(t["tier3"]), t.get("aliases") or {}

    def tier(country: str | None) -> int:
        country = aliases.get(country, country)
        return 1 if country in tier1 else 3 if country in tier3 or country is None else 2

    out: dict[str, Tenant] = {}
    for entry in yaml.safe_load(registry.read_text())["tenants"]:
        places = [entry.get(k) for k in ("location", "headquarters", "parent_headquarters")]
        user = (entry.get("upstream_identity") or {}).get("slurm_user", "")
        kyc = entry.get("kyc") or {}
        expires = kyc.get("expires_at")
        verified = kyc.get("status") == "verified" and (expires is None or date.today() < expires)
        for identity in entry["identities"]:
            out[identity["subject"]] = Tenant(max(tier(p) for p in places) if verified else 3, user)
    return out


def auth_app(jwks: Path, tenants: dict[str, Tenant], issuer: str) -> web.Application:
    key = jwt.PyJWK(json.loads(jwks.read_text())["keys"][0]).key  # the cached key

    async def verify(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return web.Response(status=401)
        try:
            claims = jwt.decode(token, key, algorithms=["RS256"], audience="exportgate", issuer=issuer)
        except jwt.InvalidTokenError:
            return web.Response(status=401)
        tenant = tenants.get(str(claims.get("sub")))
        if tenant is None or tenant.tier == 3 or not tenant.slurm_user:
            return web.Response(status=403)
        return web.Response(status=200, headers={"X-Slurm-User": tenant.slurm_user, "X-Tier": str(tenant.tier)})

    app = web.Application()
    app.router.add_get("/verify", verify)
    return app


def main() -> None:
    port, jwks, registry, tiers, issuer = sys.argv[1:6]
    uvloop = importlib.import_module("uvloop")  # a bench-only dependency; imported by name so mypy needs no stubs
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = auth_app(Path(jwks), load_tenants(Path(registry), Path(tiers)), issuer)
    web.run_app(app, host="127.0.0.1", port=int(port), access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
