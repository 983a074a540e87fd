"""Envoy's ext_authz HTTP service protocol, spoken with aiohttp exactly as Envoy speaks it.

Envoy (`http_service.path_prefix: /v1/envoy`) sends the original method, the prefix followed by
the original path and query, `Content-Length: 0` and the headers its `allowed_headers` let
through. A 200 allows: the headers named in `allowed_upstream_headers` are copied onto the
upstream request and `x-envoy-auth-headers-to-remove` names the client headers to drop. Any other
status is the client's answer, with its headers and body.
"""

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.decision_table import decision_url, table_config
from tests.harness import JOB, SUBMIT, Stack, call, ledger_records, running_stack, slurm_job, wait_for_record

PING = "/slurm/v0.0.38/ping"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, extra=table_config()) as s:
        yield s


async def check(stack: Stack, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    """One check request as Envoy's HTTP ext_authz client sends it."""
    sent = {"Content-Length": "0", "x-envoy-expected-rq-timeout-ms": "200", **headers}
    url = URL(decision_url(stack) + "/v1/envoy" + path, encoded=True)
    async with aiohttp.ClientSession() as client, client.request(method, url, headers=sent) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_allow_names_the_headers_envoy_sets_and_removes(stack: Stack) -> None:
    """200 with tenant, tier, decision id and the gateway's Slurm credentials; the client's own ones are removed."""
    client = {
        **stack.auth("acme-us"),
        "Cookie": "session=1",
        "X-SLURM-USER-NAME": "root",
        "Impersonate-User": "admin",
        "X-Forwarded-For": "203.0.113.7",
        "Accept": "application/json",
    }
    status, body, headers = await check(stack, "GET", PING + "?x=1", client)
    assert (status, body) == (200, b"")
    assert headers["X-Exportgate-Tenant"] == "acme-us" and headers["X-Exportgate-Tier"] == "1"
    assert headers["X-SLURM-USER-NAME"] == "acme"
    assert headers["X-SLURM-USER-TOKEN"] == "gateway-held-slurm-token"
    removed = headers["x-envoy-auth-headers-to-remove"].split(", ")
    assert removed == ["authorization", "cookie", "impersonate-user"]  # set ones are overwritten, XFF is Envoy's
    record = await wait_for_record(stack, "access", decision_id=headers["X-Exportgate-Decision-Id"])
    assert (record["entry"], record["path"], record["method"]) == ("envoy_http", PING, "GET")
    assert record["client_ip"] == "203.0.113.7"  # Envoy's X-Forwarded-For: the client it saw
    assert stack.standin.requests == []  # Envoy forwards; the gateway only decided


async def test_denial_is_the_clients_answer(stack: Stack) -> None:
    """A refusal is passed to the client as is: real status, problem+json body, its headers."""
    status, body, headers = await check(stack, "GET", PING, stack.auth("harbour-hk"))
    assert status == 451
    assert headers["Content-Type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["code"] == "tier3_embargoed" and problem["decision_id"] == headers["X-Exportgate-Decision-Id"]
    assert "X-SLURM-USER-TOKEN" not in headers and "X-Exportgate-Tenant" not in headers
    status, _, headers = await check(stack, "GET", PING, {})
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="exportgate"'
    status, _, headers = await check(stack, "PATCH", PING, stack.auth("acme-us"))
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


async def test_submission_is_refused_route_needs_proxy(stack: Stack) -> None:
    """Without `with_request_body` Envoy sends no body: a submission must go to the full proxy."""
    status, body, headers = await check(stack, "POST", SUBMIT, stack.auth("acme-us"))
    assert status == 403 and b'"route_needs_proxy"' in body
    record = next(r for r in ledger_records(stack) if r["decision_id"] == headers["X-Exportgate-Decision-Id"])
    assert (record["entry"], record["route_kind"], record["code"]) == ("envoy_http", "submit", "route_needs_proxy")
    assert await call(stack, "POST", SUBMIT, "acme-us", payload=JOB) and stack.standin.jobs  # the proxy takes it


async def test_a_buffered_submission_is_priced_reserved_and_placed(stack: Stack) -> None:
    """With `with_request_body` Envoy sends the client's body: the submission is priced, its lease held under a
    placeholder until reconciliation adopts the job (tests/test_front_submit.py), and Envoy is told to forward."""
    raw = json.dumps(slurm_job("h100:2")).encode()
    sent = {**stack.auth("acme-us"), "Content-Type": "application/json"}
    url = URL(decision_url(stack) + "/v1/envoy" + SUBMIT, encoded=True)
    async with aiohttp.ClientSession() as client, client.post(url, data=raw, headers=sent) as resp:
        assert resp.status == 200, await resp.text()
        decision_id = resp.headers["X-Exportgate-Decision-Id"]
        assert resp.headers["X-SLURM-USER-NAME"] == "acme"
    record = next(r for r in ledger_records(stack) if r["decision_id"] == decision_id and r["kind"] == "decision")
    assert (record["entry"], record["decision"], record["job"]["parts"][0]["gpus"]) == ("envoy_http", "allow", 2)
    placed = await wait_for_record(stack, "settle", decision_id=decision_id)
    assert (placed["upstream"], placed["settled"]) == ("slurm#front", False)
    assert stack.standin.requests == []  # Envoy forwards it, not the gateway
    too_big = io.BytesIO(b"{" + b" " * (1 << 20) + b"}")
    async with aiohttp.ClientSession() as client, client.post(url, data=too_big, headers=sent) as resp:
        assert (resp.status, (await resp.json())["code"]) == (413, "body_too_large")
    partial = {**sent, "x-envoy-auth-partial-body": "true"}
    async with aiohttp.ClientSession() as client, client.post(url, data=raw, headers=partial) as resp:
        assert (resp.status, (await resp.json())["code"]) == (413, "body_too_large")


async def test_other_paths_on_the_listener_are_404(stack: Stack) -> None:
    """Only /v1/nginx and /v1/envoy/... are served; nothing is decided or recorded for anything else."""
    async with aiohttp.ClientSession() as client, client.get(decision_url(stack) + "/slurm/v0.0.38/ping") as resp:
        assert resp.status == 404 and resp.headers["Content-Type"] == "application/problem+json"
    status, body, _ = await check(stack, "GET", "", stack.auth("acme-us"))  # /v1/envoy with no original path
    assert status == 404 and b"route_not_allowed" in body
    async with aiohttp.ClientSession() as client, client.get(decision_url(stack) + "/v1/nginx") as resp:
        assert resp.status == 400 and (await resp.json())["code"] == "request_malformed"
    assert [r for r in ledger_records(stack) if r.get("kind") in ("decision", "access")] == []


async def test_an_nginx_original_method_that_is_no_method_is_malformed(stack: Stack) -> None:
    """X-Original-Method is header text: one that is not an HTTP token never reaches routing or the ledger."""
    headers = {**stack.auth("acme-us"), "X-Original-URI": "/slurm/v0.0.38/ping", "X-Original-Method": "GET\tX=1 " * 20}
    async with aiohttp.ClientSession() as client, client.get(decision_url(stack) + "/v1/nginx", headers=headers) as r:
        assert r.status == 400 and (await r.json())["code"] == "request_malformed"
    assert [r for r in ledger_records(stack) if r.get("kind") in ("decision", "access")] == []
