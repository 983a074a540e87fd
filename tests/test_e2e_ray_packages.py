"""Ray code packages through the gateway (stand-in scheduler): size limit, prefix mounting, submissions naming them.

The real Ray head (tests/test_real_ray.py) covers uploads, sharing and conflicts end to end; these check what
happens before anything reaches the scheduler.
"""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import E2E_TENANTS, RAY_ENTRYPOINT, Stack, call, ray_job, running_stack

PACKAGE = "/ray/api/packages/gcs/_ray_pkg_0a1b2c.zip"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    extra = RAY_ENTRYPOINT + "\n    prefix: /ray/\n    strip_prefix: true"
    async with running_stack(
        tmp_path, registry=E2E_TENANTS, scheduler="ray", headers=headers, upstream_extra=extra,
        limits="max_body_bytes: 1000, max_package_bytes: 4000",
    ) as s:  # fmt: skip
        yield s


def forwarded(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.standin.requests if r["path"].startswith("/api/packages/")]


async def test_package_upload_has_its_own_size_limit(stack: Stack) -> None:
    """An upload over max_body_bytes but within max_package_bytes goes upstream whole, prefix stripped."""
    status, _, _ = await call(stack, "PUT", PACKAGE, "us-one", data=b"z" * 3000)
    assert status == 404  # the stand-in has no package routes: its own answer, passed on
    (sent,) = forwarded(stack)
    assert (sent["method"], sent["path"], len(sent["body"])) == ("PUT", "/api/packages/gcs/_ray_pkg_0a1b2c.zip", 3000)
    # An upload the scheduler did not accept makes nothing the tenant's.
    status, body, _ = await call(stack, "GET", PACKAGE, "us-one")
    assert (status, body["code"]) == (404, "package_not_owned")
    assert len(forwarded(stack)) == 1


async def test_package_upload_over_its_limit_is_413(stack: Stack) -> None:
    status, body, headers = await call(stack, "PUT", PACKAGE, "us-one", data=b"z" * 5000)
    assert (status, body["code"]) == (413, "body_too_large")
    assert "4000 bytes" in body["detail"] and headers.get("Connection") == "close"
    assert forwarded(stack) == []


@pytest.mark.parametrize(
    ("runtime_env", "status", "code"),
    [
        ({"working_dir": "gcs://_ray_pkg_0a1b2c.zip"}, 404, "package_not_owned"),
        ({"py_modules": ["s3://bucket/m.zip", "gcs://_ray_pkg_0a1b2c.zip"]}, 404, "package_not_owned"),
        ({"working_dir": "GCS://_ray_pkg_0a1b2c.zip"}, 400, "job_spec_invalid"),
    ],
    ids=["working-dir", "py-modules", "other-spelling"],
)
async def test_submission_naming_a_package_not_uploaded_is_refused(
    stack: Stack, runtime_env: dict[str, Any], status: int, code: str
) -> None:
    """A submission may run only packages its tenant uploaded: refused before anything is reserved or forwarded."""
    job = ray_job() | {"runtime_env": runtime_env}
    got, body, _ = await call(stack, "POST", "/ray/api/jobs/", "us-one", payload=job)
    assert (got, body["code"]) == (status, code), body
    assert not [r for r in stack.standin.requests if r["method"] == "POST"]


async def test_prefix_mounted_submission_reaches_the_scheduler_unprefixed(stack: Stack) -> None:
    status, body, _ = await call(stack, "POST", "/ray/api/jobs/", "us-one", payload=ray_job())
    assert status == 200, body
    assert [r["path"] for r in stack.standin.requests if r["method"] == "POST"] == ["/api/jobs/"]
    status, body, _ = await call(stack, "GET", "/ray/api/jobs/train-1", "us-one")
    assert status == 200 and stack.standin.requests[-1]["path"] == "/api/jobs/train-1"
