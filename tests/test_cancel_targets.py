"""A cancel through the gateway must end the job's work, since the gateway gives its capacity back when it succeeds.

Slurm's DELETE takes a `signal` (SIGUSR1 only signals the job); a batch/v1 Job deleted through the
API without `propagationPolicy` orphans its pods; `dryRun` deletes nothing. Such cancels would free
capacity while GPUs stay in use: they are refused, or made to delete (`propagationPolicy=Background`).
"""

from pathlib import Path

import pytest

from gateway.core.jobs import JobSpecInvalid
from gateway.core.leases import QUOTA_SLOT
from gateway.demo.standin_k8s import k8s_app
from gateway.schedulers import KubernetesAdapter, KubernetesOptions, SlurmAdapter, SlurmOptions
from tests.harness import E2E_TENANTS, H100, SUBMIT, call, held, running_stack, slurm_job

SLURM = SlurmAdapter(SlurmOptions())
K8S = KubernetesAdapter(KubernetesOptions())
JOB = "/slurm/v0.0.38/job/7"
K8S_JOB = "/apis/batch/v1/namespaces/us-one/jobs/train"


@pytest.mark.parametrize("query", ["", "?signal=KILL", "?signal=SIGKILL", "?signal=9", "?signal=sigkill"])
def test_slurm_cancels_that_kill_pass(query: str) -> None:
    assert SLURM.cancel_target(JOB + query) == JOB + query


@pytest.mark.parametrize(
    "query", ["?signal=SIGUSR1", "?signal=TERM", "?signal=", "?flags=BATCH_JOB", "?signal=KILL&x=1"]
)
def test_slurm_cancels_that_leave_the_job_running_are_refused(query: str) -> None:
    with pytest.raises(JobSpecInvalid, match="must end the job"):
        SLURM.cancel_target(JOB + query)


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        (K8S_JOB, K8S_JOB + "?propagationPolicy=Background"),
        (K8S_JOB + "?gracePeriodSeconds=0", K8S_JOB + "?gracePeriodSeconds=0&propagationPolicy=Background"),
        (K8S_JOB + "?propagationPolicy=Foreground", K8S_JOB + "?propagationPolicy=Foreground"),
        (K8S_JOB + "?orphanDependents=false", K8S_JOB + "?orphanDependents=false&propagationPolicy=Background"),
    ],
)
def test_kubernetes_deletes_take_the_pods_with_them(path: str, forwarded: str) -> None:
    assert K8S.cancel_target(path) == forwarded


@pytest.mark.parametrize(
    "query", ["?propagationPolicy=Orphan", "?propagationPolicy=orphan", "?orphanDependents=true", "?dryRun=All"]
)
def test_kubernetes_deletes_that_orphan_or_pretend_are_refused(query: str) -> None:
    with pytest.raises(JobSpecInvalid, match="must delete the workload"):
        K8S.cancel_target(K8S_JOB + query)


async def test_a_slurm_signal_is_refused_and_the_job_stays_held(tmp_path: Path) -> None:
    """DELETE ...?signal=SIGUSR1 never reaches slurmrestd and releases nothing; a plain cancel then does."""
    async with running_stack(tmp_path, registry=E2E_TENANTS) as stack:
        assert (await call(stack, "POST", SUBMIT, "us-two", payload=slurm_job()))[0] == 200
        status, body, _ = await call(stack, "DELETE", "/slurm/v0.0.38/job/1?signal=SIGUSR1", "us-two")
        assert (status, body["code"]) == (400, "job_spec_invalid")
        assert [r for r in stack.standin.requests if r["method"] == "DELETE"] == []
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == H100
        assert (await call(stack, "DELETE", "/slurm/v0.0.38/job/1", "us-two"))[0] == 200
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 0.0


async def test_a_kubernetes_job_delete_takes_its_pods_and_orphaning_is_refused(tmp_path: Path) -> None:
    """The API server is asked to delete the Job's pods too; `propagationPolicy=Orphan` is refused before it."""
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    async with running_stack(
        tmp_path, registry=E2E_TENANTS, standin=k8s_app, scheduler="kubernetes", headers=headers, upstream_extra=""
    ) as stack:
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"}, "spec": {
            "activeDeadlineSeconds": 600, "template": {"spec": {"nodeSelector": {
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}  # fmt: skip
        assert (await call(stack, "POST", "/apis/batch/v1/namespaces/us-one/jobs", "us-one", payload=job))[0] == 201
        status, body, _ = await call(stack, "DELETE", K8S_JOB + "?propagationPolicy=Orphan", "us-one")
        assert (status, body["kind"], body["details"]["causes"][0]["reason"]) == (400, "Status", "job_spec_invalid")
        assert await held(stack, QUOTA_SLOT, "tenant:us-one") == H100
        assert (await call(stack, "DELETE", K8S_JOB, "us-one"))[0] == 200
        deletes = [r["path"] for r in stack.standin.requests if r["method"] == "DELETE"]
        assert deletes == [K8S_JOB + "?propagationPolicy=Background"]
        assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 0.0
