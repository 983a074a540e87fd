"""End to end over loopback: real keys, real HTTP, the stand-in scheduler behind the gateway."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import JOB, SUBMIT, Stack, call, ledger_records, running_stack
from tests.redis_server import free_port


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


async def test_allowed_submission_reaches_scheduler_with_gateway_headers(stack: Stack) -> None:
    """A verified Tier 1 tenant's submission is forwarded with the gateway's identity and credentials."""
    status, body, headers = await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
    assert status == 200 and body["job_id"] == 1
    seen = stack.standin.requests[-1]["headers"]
    assert seen["X-Exportgate-Tenant"] == "acme-us"
    assert seen["X-Exportgate-Tier"] == "1"
    assert seen["X-Exportgate-Decision-Id"] == headers["X-Exportgate-Decision-Id"]
    assert seen["X-SLURM-USER-NAME"] == "acme"
    assert seen["X-SLURM-USER-TOKEN"] == "gateway-held-slurm-token"
    assert "Authorization" not in seen
    assert seen["X-Forwarded-For"] == "127.0.0.1"


REFUSALS = [
    ("no-token", None, 401, "auth_missing"),
    ("unmapped-subject", "nobody-registered", 403, "tenant_unknown"),
    ("tier3-parent", "fjord-se-cn", 451, "tier3_embargoed"),
    ("hong-kong", "harbour-hk", 451, "tier3_embargoed"),
    ("kyc-pending", "selva-br", 403, "kyc_not_verified"),
    ("kyc-rejected", "refused-mx", 403, "kyc_not_verified"),
    ("kyc-lapsed", "lapsed-in", 403, "kyc_expired"),
    ("missing-hq-country", "unplaced", 403, "tenant_country_unknown"),
]


@pytest.mark.parametrize(("case", "sub", "status", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refusals_are_problem_json_and_never_forwarded(
    stack: Stack, case: str, sub: str | None, status: int, code: str
) -> None:
    """Each refusal has its status, a stable code and decision id, and nothing reaches the scheduler."""
    got, body, headers = await call(stack, "POST", SUBMIT, sub, payload=JOB)
    assert (got, body["code"]) == (status, code)
    assert headers["Content-Type"] == "application/problem+json"
    assert body["decision_id"] == headers["X-Exportgate-Decision-Id"]
    assert stack.standin.requests == []
    records = ledger_records(stack)
    assert records[-1]["decision_id"] == body["decision_id"]
    assert records[-1]["decision"] == "deny" and records[-1]["code"] == code


async def test_garbage_token_is_401(stack: Stack) -> None:
    """A malformed bearer token is auth_invalid, not a server error."""
    got, body, _ = await call(stack, "POST", SUBMIT, None, payload=JOB, headers={"Authorization": "Bearer not.a.jwt"})
    assert (got, body["code"]) == (401, "auth_invalid")


async def test_unlisted_route_is_404(stack: Stack) -> None:
    """Default deny: a route no table lists is route_not_allowed."""
    status, body, _ = await call(stack, "GET", "/slurmdb/v0.0.38/accounts", "acme-us")
    assert (status, body["code"]) == (404, "route_not_allowed")
    assert stack.standin.requests == []


async def raw_request(stack: Stack, request_line: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes exactly as written (no client-side path normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.listen_port)
    writer.write(
        f"{request_line}\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(data.split(b" ", 2)[1]), data


TRICKS = [
    "POST /slurm/v0.0.38/job/../job/submit HTTP/1.1",
    "POST /slurm/v0.0.38/./job/submit HTTP/1.1",
    "POST //slurm/v0.0.38/job/submit HTTP/1.1",
    "POST /slurm/v0.0.38/job/%73ubmit HTTP/1.1",
    "POST /slurm/v0.0.38/job%2Fsubmit HTTP/1.1",
    "POST /slurm/v0.0.38/jobs/..%2Fjob/submit HTTP/1.1",
    "POST /slurm/v0.0.38/job/submit/ HTTP/1.1",
    "POST http://evil/slurm/v0.0.38/job/submit HTTP/1.1",
]


@pytest.mark.parametrize(
    "line",
    TRICKS,
    ids=[
        "dotdot",
        "dot",
        "double-slash",
        "percent-encoded",
        "encoded-slash",
        "encoded-dotdot",
        "trailing-slash",
        "absolute-form",
    ],
)
async def test_path_tricks_never_reach_a_job_route(stack: Stack, line: str) -> None:
    """A path that normalises into the submit route (or differs from its normal form) is refused."""
    status, data = await raw_request(stack, line, stack.idp.token("acme-us"), json.dumps(JOB).encode())
    assert status in (400, 404), data
    assert stack.standin.requests == []


async def test_large_response_is_streamed_intact(stack: Stack) -> None:
    """A 32 MiB response body passes through chunk by chunk, byte for byte."""
    size = 32 * 1024 * 1024
    received = 0
    chunks = 0
    async with (
        aiohttp.ClientSession() as client,
        client.get(f"{stack.url}/standin/big?bytes={size}", headers=stack.auth("acme-us")) as resp,
    ):
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(1 << 16):
            received += len(chunk)
            chunks += 1
    assert received == size
    assert chunks > 1


async def test_oversized_submission_is_413(stack: Stack) -> None:
    """An inspected body over the configured limit is body_too_large and is not forwarded."""
    big = dict(JOB, script="#" * 70_000)
    got, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=big)
    assert (got, body["code"]) == (413, "body_too_large")
    assert stack.standin.requests == []


async def test_websocket_read_route_is_proxied_after_auth(stack: Stack) -> None:
    """An allowed read route that upgrades is proxied as a WebSocket, both ways."""
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(
            stack.url + "/api/jobs/raysubmit_1/logs/tail", headers=stack.auth("acme-us")
        ) as ws:
            lines = [(await ws.receive_str()) for _ in range(3)]
            await ws.send_str("ping")
            echo = await ws.receive_str()
        assert lines[0] == "starting job\n" and echo == "echo:ping"
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(stack.url + "/api/jobs/raysubmit_1/logs/tail")
        assert info.value.status == 401


async def test_spoofed_headers_never_reach_upstream(stack: Stack) -> None:
    """Client identity and credential headers are stripped; the gateway's own replace them."""
    spoof = {
        "X-Exportgate-Tenant": "someone-else",
        "X-Exportgate-Tier": "1",
        "Cookie": "session=stolen",
        "X-SLURM-USER-NAME": "root",
        "X-SLURM-USER-TOKEN": "forged",
        "X-Ray-Authorization": "Bearer x",
        "Impersonate-User": "admin",
        "Impersonate-Group": "system:masters",
        "X-Forwarded-For": "1.2.3.4",
        "Connection": "close, X-Custom-Hop",
        "X-Custom-Hop": "drop-me",
        "Proxy-Authorization": "Basic eA==",
    }
    status, _, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=JOB, headers=spoof)
    assert status == 200
    seen = {k.lower(): v for k, v in stack.standin.requests[-1]["headers"].items()}
    assert seen["x-exportgate-tenant"] == "acme-us"
    assert seen["x-slurm-user-name"] == "acme"
    assert seen["x-slurm-user-token"] == "gateway-held-slurm-token"
    for name in (
        "cookie",
        "x-ray-authorization",
        "impersonate-user",
        "impersonate-group",
        "authorization",
        "x-custom-hop",
        "proxy-authorization",
    ):
        assert name not in seen, name
    assert seen["x-forwarded-for"] == "127.0.0.1"  # an untrusted peer's chain is not kept
    decisions = [r for r in ledger_records(stack) if r["kind"] == "decision"]
    assert decisions[-1]["client_ip"] == "127.0.0.1"


async def test_upstream_down_is_502(tmp_path: Path) -> None:
    """A scheduler that refuses connections yields upstream_unreachable."""
    async with running_stack(tmp_path, upstream_url=f"http://127.0.0.1:{free_port()}") as stack:
        status, body, _ = await call(stack, "GET", "/slurm/v0.0.38/ping", "acme-us")
        assert (status, body["code"]) == (502, "upstream_unreachable")


async def test_upstream_hanging_is_504(tmp_path: Path) -> None:
    """A scheduler that does not answer within the timeout yields upstream_timeout."""
    timeout_s = 0.3
    async with running_stack(tmp_path, timeout_s=timeout_s) as stack:
        # The stand-in answers (and so lets the stack stop) soon after the gateway has given up on it.
        status, body, _ = await call(stack, "GET", f"/standin/hang?seconds={3 * timeout_s}", "acme-us")
        assert (status, body["code"]) == (504, "upstream_timeout")


async def test_tenant_without_the_upstream_identity_is_refused(tmp_path: Path) -> None:
    """A tenant with no slurm_user mapping is refused rather than run under the gateway's identity."""
    registry = (
        "tenants:\n"
        "  - {id: bare-us, identities: [{issuer: 'https://idp.example.com', subject: bare-us}], location: US,\n"
        "     headquarters: US, parent_headquarters: US,\n"
        "     kyc: {status: verified, verified_at: 2025-01-01, expires_at: 2035-01-01}}\n"
    )
    async with running_stack(tmp_path, registry=registry) as stack:
        status, body, _ = await call(stack, "POST", SUBMIT, "bare-us", payload=JOB)
        assert (status, body["code"]) == (403, "tenant_unknown")
        assert "slurm_user" in body["detail"]
        assert stack.standin.requests == []
