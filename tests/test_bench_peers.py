"""The peers benchmark compares like with like: its auth_request peer admits and refuses the tenants the
gateway admits and refuses on tier and KYC, and its wrk requests are the bytes the paced client sends.

No timing is asserted here; the benchmark itself is `python -m bench.peers_bench` (not part of the suite).
"""

import json
from datetime import date

from bench.auth_service import load_tenants
from bench.peers_bench import JOB, REFUSED_TENANT, TENANT, requests_for
from bench.peers_load import Request, wrk_script
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.iso import ISO_3166_ALPHA2
from gateway.core.tenants import KycStatus
from gateway.core.tiers import Tier, resolve_tier
from tests.harness import POLICIES

PACK = POLICIES / "ai-diffusion-2025"
REGISTRY = POLICIES / "tenants.example.yaml"


def _gateway_refuses(today: date) -> dict[str, bool]:
    """Per subject: refused by the gateway on tier (Tier 3 or a country not recorded) or on KYC."""
    tiers = load_pack(PACK).tiers
    out = {}
    for tenant in load_registry(REGISTRY).tenants.values():
        tier, unknown = resolve_tier(tenant.countries(), tiers, ISO_3166_ALPHA2, today)
        kyc_ok = tenant.kyc.status is KycStatus.VERIFIED and (
            tenant.kyc.expires_at is None or today < tenant.kyc.expires_at
        )
        for identity in tenant.identities:
            out[identity.subject] = bool(unknown) or tier is Tier.THREE or not kyc_ok
    return out


def test_auth_service_refuses_what_the_gateway_refuses() -> None:
    mine = load_tenants(REGISTRY, PACK / "tiers.yaml")
    expected = _gateway_refuses(date.today())
    assert mine.keys() == expected.keys()
    assert {s: t.tier == 3 for s, t in mine.items()} == expected
    assert mine[TENANT].tier == 1 and mine[TENANT].slurm_user == "acme"  # the benchmark's admitted tenant
    assert expected[REFUSED_TENANT]  # ...and its refused one


def test_wrk_script_carries_the_request() -> None:
    body = json.dumps(JOB, separators=(",", ":"))
    req = Request("POST", "/slurm/v0.0.38/job/submit", "tok.en.sig", body)
    script = wrk_script(req)
    assert "wrk.method = [====[POST]====]" in script
    assert 'wrk.headers["Authorization"] = [====[Bearer tok.en.sig]====]' in script
    assert f"wrk.body = [====[{body}]====]" in script
    raw = req.raw("127.0.0.1:1")
    assert raw.endswith(b"\r\n\r\n" + body.encode()) and f"Content-Length: {len(body)}".encode() in raw


def test_refusal_expectations() -> None:
    tokens = {TENANT: "a", REFUSED_TENANT: "b"}
    peers = (("nginx-direct", 200), ("bare-proxy", 200), ("nginx-auth", 451), ("nginx-exportgate", 451))
    for peer, status in (*peers, ("exportgate-mem", 451)):
        req, expected = requests_for(peer, "http://x", tokens, "7")["refuse"]
        assert (req.token, expected) == ("b", status)
    assert requests_for("exportgate-mem", "http://x", tokens, "7")["job"][0].path == "/slurm/v0.0.38/job/7"
