"""End to end on the Ray Jobs API: submission_id as idempotency key, listings, stop and ownership."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.leases import QUOTA_SLOT
from tests.harness import (
    E2E_TENANTS,
    H100,
    RAY_ENTRYPOINT,
    Stack,
    call,
    held,
    ray_job,
    running_stack,
    wait_for_record,
)

SUBMIT = "/api/jobs/"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    async with running_stack(
        tmp_path, registry=E2E_TENANTS, scheduler="ray", headers=headers, upstream_extra=RAY_ENTRYPOINT
    ) as s:
        yield s


def submissions(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.standin.requests if r["method"] == "POST" and r["path"] == SUBMIT]


async def test_retry_with_same_submission_id_is_replayed(stack: Stack) -> None:
    """Ray's submission_id is the idempotency key: a retry is answered from the first attempt, not forwarded."""
    first = await call(stack, "POST", SUBMIT, "us-one", payload=ray_job())
    again = await call(stack, "POST", SUBMIT, "us-one", payload=ray_job())
    assert first[0] == again[0] == 200
    assert first[1] == again[1] == {"job_id": "train-1", "submission_id": "train-1"}
    assert again[2]["X-Exportgate-Decision-Id"] == first[2]["X-Exportgate-Decision-Id"]
    assert again[2]["X-Exportgate-Replayed"] == "true"
    assert len(submissions(stack)) == 1
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 2 * H100


async def test_same_submission_id_from_another_tenant_is_not_theirs(stack: Stack) -> None:
    """Another tenant reusing a submission_id gets Ray's duplicate error, held as ambiguous, and owns nothing."""
    assert (await call(stack, "POST", SUBMIT, "us-one", payload=ray_job()))[0] == 200
    status, body, headers = await call(stack, "POST", SUBMIT, "us-two", payload=ray_job())
    assert status == 500 and "already exists" in body and "X-Exportgate-Replayed" not in headers
    settled = await wait_for_record(stack, "settle", decision_id=headers["X-Exportgate-Decision-Id"])
    assert (settled["job_id"], settled["settled"]) == (None, False)
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 2 * H100  # when in doubt, hold
    status, body, _ = await call(stack, "GET", SUBMIT + "train-1", "us-two")
    assert (status, body["code"]) == (404, "job_not_owned")


async def test_listing_is_filtered_and_stop_releases(stack: Stack) -> None:
    """The job list (a JSON array) shows only the caller's jobs; stopping a job gives its capacity back."""
    assert (await call(stack, "POST", SUBMIT, "us-one", payload=ray_job("mine")))[0] == 200
    assert (await call(stack, "POST", SUBMIT, "us-two", payload=ray_job("theirs")))[0] == 200
    for sub, expected in (("us-one", ["mine"]), ("us-two", ["theirs"]), ("capped-ae", [])):
        status, body, _ = await call(stack, "GET", SUBMIT, sub)
        assert status == 200 and [j["submission_id"] for j in body] == expected
    status, body, headers = await call(stack, "POST", SUBMIT + "mine/stop", "us-one")
    assert (status, body) == (200, {"stopped": True})
    await wait_for_record(stack, "release", decision_id=headers["X-Exportgate-Decision-Id"], released=True)
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 0.0
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 2 * H100


async def test_submission_without_walltime_is_job_spec_invalid(stack: Stack) -> None:
    """Ray has no walltime field: without the metadata key (and no default) the job cannot be priced."""
    status, body, headers = await call(stack, "POST", SUBMIT, "us-one", payload=ray_job(minutes=None))
    assert (status, body["code"]) == (400, "job_spec_invalid")
    assert headers["Content-Type"] == "application/problem+json" and "time_limit_min" in body["detail"]
    assert stack.standin.requests == []
