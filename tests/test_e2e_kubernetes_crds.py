"""End to end on KubeRay RayJobs/RayClusters and Kubeflow PyTorchJobs: priced, capped, owned, released."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.core.leases import QUOTA_SLOT
from gateway.demo.standin_k8s import k8s_app
from tests.harness import E2E_TENANTS, Clock, Stack, call, running_stack, wait_for_record

H100 = 15832.0
RAYJOBS = "/apis/ray.io/v1/namespaces/{ns}/rayjobs"
RAYCLUSTERS = "/apis/ray.io/v1/namespaces/{ns}/rayclusters"
PYTORCHJOBS = "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs"
PINNED = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def pod(gpus: int) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": gpus} if gpus else {"cpu": "1"}
    return {
        "spec": {"nodeSelector": PINNED, "containers": [{"name": "c", "image": "i", "resources": {"limits": limits}}]}
    }


def ray_job(name: str = "train", head: int = 0, worker: int = 1, most: int = 2) -> Any:
    """A RayJob whose cluster is deleted when the job ends: head + worker GPUs x maxReplicas."""
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name}, "spec": {
        "entrypoint": "python train.py", "shutdownAfterJobFinishes": True, "activeDeadlineSeconds": 3600,
        "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {}, "template": pod(head)}, "workerGroupSpecs": [
            {"groupName": "gpu", "replicas": 1, "minReplicas": 1, "maxReplicas": most, "template": pod(worker)}]},
    }}  # fmt: skip


def pytorch_job(name: str = "ddp", workers: int = 1) -> Any:
    """A PyTorchJob: Master 1 x 1 GPU + Worker `workers` x 1 GPU."""
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name}, "spec": {
        "runPolicy": {"activeDeadlineSeconds": 7200},
        "pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": pod(1)},
                                "Worker": {"replicas": workers, "template": pod(1)}},
    }}  # fmt: skip


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


async def held(stack: Stack, key: str) -> float:
    store = stack.server.store
    assert store is not None
    return await store.counter_value(QUOTA_SLOT, key, stack.server.clock())


def cause(doc: Any) -> str:
    assert doc["kind"] == "Status"
    return str(doc["details"]["causes"][0]["reason"])


async def test_ray_job_is_priced_owned_and_released(stack: Stack) -> None:
    """A RayJob holds 1 head GPU + 1 GPU x maxReplicas 2 = 3 H100 until its owner deletes it; nobody else sees it."""
    path = RAYJOBS.format(ns="us-one")
    status, created, _ = await call(stack, "POST", path, "us-one", payload=ray_job(head=1))
    assert (status, created["kind"], created["apiVersion"]) == (201, "RayJob", "ray.io/v1")
    assert created["metadata"]["namespace"] == "us-one"
    assert stack.standin.requests[-1]["headers"]["Authorization"] == "Bearer gateway-held-slurm-token"
    assert await held(stack, "tenant:us-one") == 3 * H100
    item = path + "/train"

    status, doc, _ = await call(stack, "GET", item, "us-one")
    assert status == 200 and doc["metadata"]["uid"] == created["metadata"]["uid"]
    seen = len(stack.standin.requests)
    for method in ("GET", "DELETE"):
        status, doc, _ = await call(stack, method, item, "us-two")
        assert (status, cause(doc)) == (404, "route_not_allowed")  # not its namespace
    assert len(stack.standin.requests) == seen

    status, doc, _ = await call(stack, "GET", path, "us-one")
    assert (status, doc["kind"], [i["metadata"]["name"] for i in doc["items"]]) == (200, "RayJobList", ["train"])
    status, doc, headers = await call(stack, "DELETE", item, "us-one")
    assert (status, doc["status"]) == (200, "Success")
    released = await wait_for_record(stack, "release", decision_id=headers["X-Exportgate-Decision-Id"])
    assert (released["job_id"], released["released"]) == ("us-one/rayjobs.ray.io/train", True)
    assert await held(stack, "tenant:us-one") == 0.0
    assert stack.standin.jobs == {}


async def test_objects_the_tenant_did_not_submit_are_not_its_own(stack: Stack) -> None:
    """A RayCluster made in the tenant's namespace outside the gateway, or a Job of the same name, is not owned."""
    assert (await call(stack, "POST", "/apis/batch/v1/namespaces/us-one/jobs", "us-one", payload={
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "shared"},
        "spec": {"activeDeadlineSeconds": 60, "template": pod(0)}}))[0] == 201  # fmt: skip
    stack.standin.jobs["rayclusters.ray.io/us-one/shared"] = {"metadata": {"name": "shared", "namespace": "us-one"}}
    seen = len(stack.standin.requests)
    for method in ("GET", "DELETE"):
        status, doc, _ = await call(stack, method, RAYCLUSTERS.format(ns="us-one") + "/shared", "us-one")
        assert (status, cause(doc)) == (404, "job_not_owned")
    assert len(stack.standin.requests) == seen
    status, doc, _ = await call(stack, "GET", RAYCLUSTERS.format(ns="us-one"), "us-one")
    assert (status, doc["kind"], doc["items"]) == (200, "RayClusterList", [])


async def test_pytorch_jobs_stop_at_the_tenant_cap(stack: Stack) -> None:
    """capped-ae may hold 2 H100: Master 1 + Worker 1 fits; 1 + 2 is refused; so is any more once it is full."""
    path = PYTORCHJOBS.format(ns="capped-ae")
    status, doc, _ = await call(stack, "POST", path, "capped-ae", payload=pytorch_job("big", workers=2))
    assert (status, doc["reason"], cause(doc)) == (429, "TooManyRequests", "quota_tenant_tpp")
    assert stack.standin.requests == []
    status, doc, _ = await call(stack, "POST", path, "capped-ae", payload=pytorch_job("fits"))
    assert (status, doc["kind"]) == (201, "PyTorchJob")
    assert await held(stack, "tenant:capped-ae") == 2 * H100
    status, doc, _ = await call(stack, "POST", RAYJOBS.format(ns="capped-ae"), "capped-ae", payload=ray_job(most=1))
    assert (status, cause(doc)) == (429, "quota_tenant_tpp")
    assert len(stack.standin.requests) == 1


async def test_unpriceable_objects_are_refused_before_the_api_server(stack: Stack) -> None:
    """A RayJob on an existing cluster, a scaling patch and other custom resources never reach the API server."""
    spec = {"entrypoint": "python x.py", "clusterSelector": {"ray.io/cluster": "someone-elses"}}
    selector = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "x"}, "spec": spec}
    status, doc, _ = await call(stack, "POST", RAYJOBS.format(ns="us-one"), "us-one", payload=selector)
    assert (status, cause(doc)) == (400, "job_spec_invalid")
    assert "spec.clusterSelector" in doc["message"]
    assert (await call(stack, "POST", RAYJOBS.format(ns="us-one"), "us-one", payload=ray_job()))[0] == 201
    seen = len(stack.standin.requests)
    scale = b'{"spec": {"rayClusterSpec": {"workerGroupSpecs": [{"groupName": "gpu", "maxReplicas": 64}]}}}'
    status, doc, _ = await call(stack, "PATCH", RAYJOBS.format(ns="us-one") + "/train", "us-one", data=scale,
                                headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
    assert (status, doc["reason"], cause(doc)) == (403, "Forbidden", "job_update_not_allowed")
    status, doc, _ = await call(stack, "POST", "/apis/ray.io/v1/namespaces/us-one/rayservices", "us-one",
                                payload={"kind": "RayService"})  # fmt: skip
    assert (status, cause(doc)) == (404, "route_not_allowed")
    assert len(stack.standin.requests) == seen


async def test_reconciliation_holds_them_while_they_live_and_releases_them_after(tmp_path: Path) -> None:
    """Past its deadline a running PyTorchJob stays held; Succeeded, it is released; a RayCluster deleted around the
    gateway (kubectl) is released once the API server says NotFound."""
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    clock = Clock()
    async with running_stack(
        tmp_path, clock=clock, registry=E2E_TENANTS, standin=k8s_app, scheduler="kubernetes", headers=headers,
        upstream_extra="    scheduler_options: {default_walltime_s: 3600}",
    ) as stack:  # fmt: skip
        assert stack.server.reconciler is not None
        status, _, _ = await call(stack, "POST", PYTORCHJOBS.format(ns="us-one"), "us-one", payload=pytorch_job())
        assert status == 201
        cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "dev"}, "spec": {
            "headGroupSpec": {"rayStartParams": {}, "template": pod(1)}, "workerGroupSpecs": []}}  # fmt: skip
        status, _, _ = await call(stack, "POST", RAYCLUSTERS.format(ns="us-one"), "us-one", payload=cluster)
        assert status == 201
        assert await held(stack, "tenant:us-one") == 3 * H100
        clock.advance(7200 - 60)  # a round just before the PyTorchJob's deadline ends its lease
        assert await stack.server.reconciler.run_once() == {"running": 2}
        clock.advance(600)
        assert await held(stack, "tenant:us-one") == 3 * H100  # both still exist: both held
        job = stack.standin.jobs["pytorchjobs.kubeflow.org/us-one/ddp"]
        job["status"] = {"conditions": [{"type": "Succeeded", "status": "True"}]}
        del stack.standin.jobs["rayclusters.ray.io/us-one/dev"]  # kubectl delete raycluster dev
        assert await stack.server.reconciler.run_once() == {"released": 2}
        assert await held(stack, "tenant:us-one") == 0.0
