"""HTTP conventions a client library relies on: bearer challenges, 403 for a wrong role, 405 with Allow."""

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.harness import E2E_TENANTS, Stack, call, ledger_records, running_stack

READ_TOKEN = "read-token-for-conventions-0123456789"
SUBMIT = "/slurm/v0.0.38/job/submit"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    tokens = tmp_path / "admin-tokens.yaml"
    digest = hashlib.sha256(READ_TOKEN.encode()).hexdigest()
    tokens.write_text(f"tokens:\n  - {{name: auditor, role: read, sha256: {digest}}}\n")
    async with running_stack(tmp_path, registry=E2E_TENANTS, admin_tokens_file=tokens) as s:
        yield s


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="exportgate"'),
        ("Bearer not.a.jwt", 'Bearer realm="exportgate", error="invalid_token", error_description="'),
        ("Basic dXNlcjpwYXNz", 'Bearer realm="exportgate", error="invalid_token", error_description="'),
    ],
    ids=["no-token", "malformed-token", "other-scheme"],
)
async def test_401_carries_a_bearer_challenge(stack: Stack, authorization: str | None, challenge: str) -> None:
    """Every 401 names the Bearer scheme (RFC 6750); a bad token says error="invalid_token"."""
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, got = await call(stack, "GET", "/slurm/v0.0.38/ping", None, headers=headers)
    assert status == 401 and body["code"] in ("auth_missing", "auth_invalid")
    assert got["WWW-Authenticate"].startswith(challenge)
    assert got["WWW-Authenticate"].endswith('"')


async def test_admin_token_with_the_wrong_role_gets_403(stack: Stack) -> None:
    """A valid read token asking for a write gets 403 role_insufficient with an insufficient_scope challenge."""
    status, body, headers = await call(stack, "POST", "/admin/v1/jobs/slurm/1/release", admin_token=READ_TOKEN)
    assert (status, body["code"]) == (403, "role_insufficient")
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", SUBMIT, "DELETE, GET, HEAD, POST"),
        ("PUT", "/slurm/v0.0.38/ping", "GET, HEAD"),
        ("PATCH", "/slurm/v0.0.38/jobs", "GET, HEAD"),
    ],
    ids=["put-on-submit", "put-on-ping", "patch-on-listing"],
)
async def test_known_route_with_another_method_gets_405_with_allow(
    stack: Stack, method: str, path: str, allow: str
) -> None:
    """A path a route knows, asked with a method it does not allow, gets 405 method_not_allowed and Allow."""
    status, body, headers = await call(stack, method, path, "us-two")
    assert (status, body["code"]) == (405, "method_not_allowed")
    assert headers["Allow"] == allow
    assert headers["Content-Type"] == "application/problem+json"
    assert not stack.standin.requests, "a refused request reached the scheduler"
    refusal = [r for r in ledger_records(stack) if r.get("decision_id") == body["decision_id"]]
    assert refusal and [r["code"] for r in refusal[0]["reasons"]] == ["method_not_allowed"]


async def test_unknown_path_still_gets_404_route_not_allowed(stack: Stack) -> None:
    """A path no route knows, whatever the method, stays 404 route_not_allowed (no Allow to offer)."""
    status, body, headers = await call(stack, "GET", "/no/such/route", "us-two")
    assert (status, body["code"]) == (404, "route_not_allowed")
    assert "Allow" not in headers


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "allow"),
    [
        ("GET", "/admin/v1/nothing-here", 404, "route_not_allowed", None),
        ("GET", "/favicon.ico", 404, "route_not_allowed", None),
        ("POST", "/metrics", 405, "method_not_allowed", "GET, HEAD"),
        ("GET", "/admin/v1/jobs/slurm/1/release", 405, "method_not_allowed", "POST"),
    ],
    ids=["unknown-admin-path", "unknown-root-path", "post-metrics", "get-release"],
)
async def test_admin_listener_answers_problem_json(
    stack: Stack, method: str, path: str, status: int, code: str, allow: str | None
) -> None:
    """Unknown admin paths and wrong methods answer problem+json with a stable code, not aiohttp's text."""
    got, body, headers = await call(stack, method, path, admin_token=READ_TOKEN)
    assert got == status
    assert headers["Content-Type"] == "application/problem+json"
    assert body["code"] == code
    assert headers.get("Allow") == allow


async def test_answers_do_not_name_the_python_and_aiohttp_versions(stack: Stack) -> None:
    """Refusals, admin answers and forwarded answers say `Server: exportgate`, naming no software versions."""
    status, _, headers = await call(stack, "GET", "/slurm/v0.0.38/ping", None)
    assert status == 401 and headers["Server"] == "exportgate"
    status, _, headers = await call(stack, "GET", "/healthz", None, admin=True)
    assert status == 200 and headers["Server"] == "exportgate"
    status, _, headers = await call(stack, "GET", "/slurm/v0.0.38/ping", "us-two")
    assert status == 200 and headers["Server"] == "exportgate"  # the stand-in's own aiohttp header is replaced
