"""The operator API: admin tokens by role, lease lookup and release, each change in the ledger first."""

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.core.leases import QUOTA_SLOT
from tests.harness import JOB, SUBMIT, Stack, call, held, ledger_records, running_stack

READ_TOKEN, OPERATE_TOKEN = "read-token-for-tests-0123456789", "operate-token-for-tests-0123456789"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    tokens = tmp_path / "admin-tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{name: auditor, role: read, sha256: {hashlib.sha256(READ_TOKEN.encode()).hexdigest()}}}\n"
        f"  - {{name: oncall, role: operate, sha256: {hashlib.sha256(OPERATE_TOKEN.encode()).hexdigest()}}}\n"
    )
    async with running_stack(tmp_path, admin_tokens_file=tokens) as s:
        yield s


@pytest.mark.parametrize(
    ("method", "suffix", "token", "status", "code"),
    [
        ("GET", "", None, 401, "auth_missing"),
        ("GET", "", "not-a-token", 401, "auth_invalid"),
        ("POST", "/release", READ_TOKEN, 403, "role_insufficient"),
    ],
    ids=["no-token", "unknown-token", "read-role-cannot-release"],
)
async def test_admin_tokens_are_checked(
    stack: Stack, method: str, suffix: str, token: str | None, status: int, code: str
) -> None:
    """The operator API answers only tokens in the tokens file, and changes only for the operate role (or above)."""
    got, body, _ = await call(stack, method, f"/admin/v1/jobs/slurm/1{suffix}", admin_token=token, admin=True)
    assert (got, body["code"]) == (status, code)


async def test_operator_release_frees_capacity_and_is_recorded(stack: Stack) -> None:
    """An operator looks a job up, releases it, and the ledger names the operator before and after."""
    assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[0] == 200
    assert await held(stack, QUOTA_SLOT, "tenant:acme-us") == 15832
    status, body, _ = await call(stack, "GET", "/admin/v1/jobs/slurm/1", admin_token=READ_TOKEN, admin=True)
    assert status == 200 and body["tenant"] == "acme-us"
    status, body, _ = await call(stack, "POST", "/admin/v1/jobs/slurm/1/release", admin_token=OPERATE_TOKEN, admin=True)
    assert (status, body["released"]) == (200, True)
    assert await held(stack, QUOTA_SLOT, "tenant:acme-us") == 0
    status, body, _ = await call(stack, "GET", "/admin/v1/jobs/slurm/999", admin_token=READ_TOKEN, admin=True)
    assert (status, body["code"]) == (404, "job_not_owned")
    records = [r for r in ledger_records(stack) if r.get("operator")]
    assert [(r["kind"], r["operator"]) for r in records] == [("admin_release", "oncall"), ("release", "oncall")]
    assert records[1]["released"] is True
