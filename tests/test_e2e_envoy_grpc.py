"""Envoy ext_authz over gRPC against the running gateway: a real gRPC client, the gateway's own decision core.

The gateway runs as in every end-to-end test (tests/harness.py) with `envoy_grpc:` configured; the
client sends CheckRequests as Envoy builds them, with tokens signed by the harness's IdP key.
"""

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.demo.standin import StandinState
from tests.envoy_kit import OK, PERMISSION_DENIED, UNAUTHENTICATED, check, check_raw, check_request
from tests.harness import (
    E2E_TENANTS,
    JOB_PATH,
    SUBMIT,
    Idp,
    Stack,
    call,
    ledger_records,
    running_stack,
    slurm_job,
    start_standin,
    wait_for_record,
    write_config,
)
from tests.processes import GatewayProcess, wait_ready
from tests.redis_server import free_port

PING = "/slurm/v0.0.38/ping"


def envoy_grpc_yaml(port: int) -> str:
    return f"envoy_grpc: {{host: 127.0.0.1, port: {port}}}\n"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, extra=envoy_grpc_yaml(free_port())) as running:
        yield running


def grpc_port(stack: Stack) -> int:
    assert stack.settings.envoy_grpc is not None
    return stack.settings.envoy_grpc.port


async def test_an_allowed_read_gets_the_headers_to_add_upstream(stack: Stack) -> None:
    """OK, with the gateway-held scheduler credentials, tenant, tier and decision id set upstream and the
    client's token removed; the access is recorded with entry envoy_grpc."""
    sent = {**stack.auth("acme-us"), "X-SLURM-USER-NAME": "root"}
    result = await check(grpc_port(stack), check_request("GET", PING + "?x=1", sent, source="198.51.100.4"))
    assert result.rpc_code == OK
    decision_id = result.headers["x-exportgate-decision-id"]
    assert result.headers["x-slurm-user-token"] == "gateway-held-slurm-token"
    assert result.headers["x-slurm-user-name"] == "acme"  # the registry's slurm_user, not the client's "root"
    assert (result.headers["x-exportgate-tenant"], result.headers["x-exportgate-tier"]) == ("acme-us", "1")
    assert "authorization" in result.removed
    assert "x-slurm-user-name" not in result.removed  # overwritten, not removed after being set
    assert result.client_headers == {"x-exportgate-decision-id": decision_id}
    record = await wait_for_record(stack, "access", decision_id=decision_id)
    assert (record["entry"], record["tenant"], record["client_ip"]) == ("envoy_grpc", "acme-us", "198.51.100.4")
    assert record["path"] == PING


async def test_no_token_is_an_unauthenticated_401(stack: Stack) -> None:
    result = await check(grpc_port(stack), check_request("GET", PING))
    assert (result.rpc_code, result.status) == (UNAUTHENTICATED, 401)
    assert result.headers["content-type"] == "application/problem+json"
    assert result.headers["www-authenticate"].startswith('Bearer realm="exportgate"')
    assert result.body["code"] == "auth_missing"
    record = next(r for r in ledger_records(stack) if r.get("decision_id") == result.body["decision_id"])
    assert (record["kind"], record["entry"], record["code"]) == ("decision", "envoy_grpc", "auth_missing")


async def test_a_tier3_tenant_is_refused_451(stack: Stack) -> None:
    result = await check(grpc_port(stack), check_request("GET", PING, stack.auth("fjord-se-cn")))
    assert (result.rpc_code, result.status, result.body["code"]) == (PERMISSION_DENIED, 451, "tier3_embargoed")
    assert result.body["citation"]
    record = next(r for r in ledger_records(stack) if r.get("decision_id") == result.body["decision_id"])
    assert (record["entry"], record["decision"], record["tenant"]) == ("envoy_grpc", "deny", "fjord-se-cn")


async def test_an_unknown_route_is_refused_404(stack: Stack) -> None:
    result = await check(grpc_port(stack), check_request("GET", "/slurm/v0.0.38/secrets", stack.auth("acme-us")))
    assert (result.status, result.body["code"]) == (404, "route_not_allowed")


async def test_a_malformed_check_is_denied_and_the_gateway_keeps_serving(stack: Stack) -> None:
    port = grpc_port(stack)
    result = await check_raw(port, b"\x0a\x05garbage")
    assert (result.rpc_code, result.status, result.body["code"]) == (PERMISSION_DENIED, 400, "request_malformed")
    assert (await check(port, check_request("GET", PING, stack.auth("acme-us")))).allowed


async def test_job_reads_follow_ownership_and_job_changes_need_the_proxy(stack: Stack) -> None:
    """A job submitted through the full proxy is readable by its owner through Envoy, not by another
    tenant; a submission Envoy sends without its body and a cancel are refused route_needs_proxy (the gateway
    must price the body, or see the answer). Submissions with their body: tests/test_front_submit.py."""
    status, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=slurm_job())
    assert status == 200, body
    job = JOB_PATH.format(body["job_id"])
    port = grpc_port(stack)
    assert (await check(port, check_request("GET", job, stack.auth("acme-us")))).allowed
    other = await check(port, check_request("GET", job, stack.auth("nordlys-se")))
    assert (other.status, other.body["code"]) == (404, "job_not_owned")
    unbuffered = check_request("POST", SUBMIT, stack.auth("acme-us"))
    unbuffered.attributes.request.http.size = 27  # a sized body Envoy did not buffer (no with_request_body)
    unbuffered = await check(port, unbuffered)
    assert (unbuffered.status, unbuffered.body["code"]) == (403, "route_needs_proxy")
    cancelled = await check(port, check_request("DELETE", job, stack.auth("acme-us")))
    assert cancelled.body["code"] == "route_needs_proxy"
    assert len(stack.standin.jobs) == 1  # nothing but the proxy's submission reached the scheduler


async def test_the_served_gateway_answers_checks_through_its_drain(tmp_path: Path) -> None:
    """`exportgate serve` (uvloop) serves Check on its own port, still answers during the SIGTERM drain, and
    exits 0 within drain + grace with the Checks' access records in its ledger."""
    idp = Idp()
    (tmp_path / "jwks.json").write_text(json.dumps(idp.jwks()))
    (tmp_path / "tenants.yaml").write_text(E2E_TENANTS)
    runner, upstream = await start_standin(StandinState())
    port, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path, upstream, admin_port=admin_port, shutdown="drain_s: 1.0, grace_s: 2.0", extra=envoy_grpc_yaml(port)
    )
    gateway = GatewayProcess.start(["--config", str(config)], tmp_path / "gateway.log")
    token = {"Authorization": f"Bearer {idp.token('us-two')}"}
    try:
        await asyncio.to_thread(wait_ready, [f"http://127.0.0.1:{admin_port}"], [gateway])
        before = await check(port, check_request("GET", PING, token))
        signalled = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        during = await check(port, check_request("GET", PING, token))
        code = await asyncio.to_thread(gateway.proc.wait, 15)
        elapsed = time.monotonic() - signalled
    finally:
        gateway.stop(timeout=1)
        await runner.cleanup()
    assert code == 0, gateway.output()
    assert before.allowed and during.allowed
    assert 1.0 <= elapsed < 1.0 + 2.0 + 3.0, f"exit took {elapsed:.1f} s"
    assert "envoy ext_authz gRPC listening on 127.0.0.1:" in gateway.output()
    ids = {before.headers["x-exportgate-decision-id"], during.headers["x-exportgate-decision-id"]}
    recorded = [r for r in ledger_records(tmp_path / "ledger", "test-gw") if r.get("decision_id") in ids]
    assert sorted(r["entry"] for r in recorded) == ["envoy_grpc", "envoy_grpc"]
