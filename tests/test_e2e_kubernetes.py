"""End to end on Kubernetes batch/v1 Jobs: Status refusals, quotas, forwarding and ownership."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.leases import QUOTA_SLOT
from gateway.demo.standin_k8s import k8s_app
from tests.harness import E2E_TENANTS, Stack, call, running_stack, wait_for_record

H100 = 15832.0
JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"


def k8s_job(name: str = "train-7b", gpus: int = 1, parallelism: int = 1, deadline: int | None = 3600) -> Any:
    """A batch/v1 Job as kubectl sends it, pinned to H100 nodes."""
    spec: dict[str, Any] = {
        "parallelism": parallelism,
        "completions": parallelism,
        "template": {
            "spec": {
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "containers": [{"name": "t", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": gpus}}}],
                "restartPolicy": "Never",
            }
        },
    }
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    async with running_stack(
        tmp_path, registry=E2E_TENANTS, standin=k8s_app, scheduler="kubernetes", headers=headers, upstream_extra=""
    ) as s:
        yield s


async def held(stack: Stack, tag: str, key: str) -> float:
    store = stack.server.store
    assert store is not None
    return await store.counter_value(tag, key, stack.server.clock())


PROTOBUF = {"Content-Type": "application/vnd.kubernetes.protobuf"}
REFUSALS = [
    ("tier3-parent", "fjord-se-cn", k8s_job(), None, 451, "tier3_embargoed", "Forbidden"),
    ("over-tenant-cap", "capped-ae", k8s_job(gpus=3), None, 429, "quota_tenant_tpp", "TooManyRequests"),
    ("protobuf-body", "us-one", b"k8s\x00\n\x0f\n\x08batch/v1\x12\x03Job", PROTOBUF, 400, "job_spec_invalid",
     "BadRequest"),
    ("no-deadline", "us-one", k8s_job(deadline=None), None, 400, "job_spec_invalid", "BadRequest"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "sub", "body", "headers", "status", "code", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
async def test_refusals_are_kubernetes_status_objects(
    stack: Stack,
    case: str,
    sub: str,
    body: Any,
    headers: dict[str, str] | None,
    status: int,
    code: str,
    reason: str,
) -> None:
    """A refused Job comes back as a Status carrying the exportgate code and decision id, and is never forwarded."""
    path = JOBS.format(ns=sub)
    if isinstance(body, bytes):
        got, doc, sent = await call(stack, "POST", path, sub, data=body, headers=headers)
    else:
        got, doc, sent = await call(stack, "POST", path, sub, payload=body)
    assert got == status and sent["Content-Type"] == "application/json"
    assert (doc["kind"], doc["apiVersion"], doc["status"], doc["code"], doc["reason"]) == (
        "Status", "v1", "Failure", status, reason
    )  # fmt: skip
    decision_id = sent["X-Exportgate-Decision-Id"]
    causes = {c["field"]: c for c in doc["details"]["causes"]}
    assert causes["exportgate.code"]["reason"] == code
    assert causes["exportgate.decision_id"]["message"] == decision_id
    assert code in doc["message"] and decision_id in doc["message"]
    assert stack.standin.requests == []


async def test_allowed_job_is_forwarded_and_owned(stack: Stack) -> None:
    """An allowed Job is created upstream, held at its price, visible only to its owner, and freed by its deletion."""
    status, created, headers = await call(stack, "POST", JOBS.format(ns="us-one"), "us-one", payload=k8s_job(gpus=2,
                                          parallelism=2))  # fmt: skip
    assert status == 201 and created["kind"] == "Job" and created["metadata"]["uid"]
    assert created["metadata"]["namespace"] == "us-one"
    assert stack.standin.requests[-1]["headers"]["Authorization"] == "Bearer gateway-held-slurm-token"
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 4 * H100
    item = JOBS.format(ns="us-one") + "/train-7b"

    status, doc, _ = await call(stack, "GET", item, "us-one")
    assert status == 200 and doc["metadata"]["uid"] == created["metadata"]["uid"]
    seen = len(stack.standin.requests)
    for method in ("GET", "DELETE"):
        status, doc, _ = await call(stack, method, item, "us-two")
        assert (status, doc["kind"], doc["reason"]) == (404, "Status", "NotFound")
        assert doc["details"]["causes"][0]["reason"] == "route_not_allowed"  # not even its namespace
    status, doc, _ = await call(stack, "GET", JOBS.format(ns="us-one"), "us-two")
    assert (status, doc["details"]["causes"][0]["reason"]) == (404, "route_not_allowed")
    assert len(stack.standin.requests) == seen

    listings = {}
    for sub in ("us-one", "us-two"):
        status, doc, _ = await call(stack, "GET", JOBS.format(ns=sub), sub)
        assert status == 200 and doc["kind"] == "JobList"
        listings[sub] = [i["metadata"]["name"] for i in doc["items"]]
    assert listings == {"us-one": ["train-7b"], "us-two": []}

    status, doc, headers = await call(stack, "DELETE", item, "us-one")
    assert (status, doc["kind"], doc["status"]) == (200, "Status", "Success")
    released = await wait_for_record(stack, "release", decision_id=headers["X-Exportgate-Decision-Id"])
    assert (released["job_id"], released["released"]) == ("us-one/train-7b", True)
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 0.0


async def test_already_exists_is_refunded(stack: Stack) -> None:
    """The API server's 409 AlreadyExists is a definitive rejection: the second Job's capacity is refunded."""
    path = JOBS.format(ns="us-one")
    assert (await call(stack, "POST", path, "us-one", payload=k8s_job()))[0] == 201
    status, doc, headers = await call(stack, "POST", path, "us-one", payload=k8s_job())
    assert (status, doc["kind"], doc["reason"]) == (409, "Status", "AlreadyExists")
    await wait_for_record(stack, "refund", decision_id=headers["X-Exportgate-Decision-Id"], refunded=True)
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == H100


async def test_a_tenant_cannot_use_another_tenants_namespace(stack: Stack) -> None:
    """The namespace in the path must be the tenant's own `k8s_namespace`; other namespaces never reach the API."""
    seen = len(stack.standin.requests)
    status, doc, _ = await call(stack, "POST", JOBS.format(ns="us-two"), "us-one", payload=k8s_job())
    assert (status, doc["kind"], doc["code"]) == (404, "Status", 404)
    assert doc["details"]["causes"][0]["reason"] == "route_not_allowed"
    assert "ns 'us-two'" in doc["message"]
    assert len(stack.standin.requests) == seen
