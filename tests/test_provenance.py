"""Where a price came from: each scheduler's submission fields named with their values, defaults said as such."""

import json
from typing import Any

import pytest

from gateway.core.routes import match_route
from gateway.schedulers import KubernetesAdapter, KubernetesOptions, RayAdapter, RayOptions, SlurmAdapter, SlurmOptions
from gateway.schedulers.base import SchedulerAdapter
from gateway.schedulers.generic import GenericAdapter
from gateway.schedulers.provenance import body_sources
from tests.harness import ray_job, slurm_job
from tests.test_sched_generic import OPTIONS as GENERIC_OPTIONS
from tests.test_sched_generic import SUBMISSION as GENERIC_JOB
from tests.test_sched_kubernetes import TRAIN_JOB

SLURM = SlurmAdapter(SlurmOptions(default_gpu_model="h100"))
SLURM_WITH_DEFAULTS = SlurmAdapter(SlurmOptions(default_gpu_model="h100", default_time_limit_min=30))
K8S = KubernetesAdapter(KubernetesOptions())
RAY = RayAdapter(RayOptions(pricing="entrypoint"))
GENERIC = GenericAdapter(GENERIC_OPTIONS)

_SLURM_ARRAY = slurm_job("gpu:2", lineage="llama-x") | {}
_SLURM_ARRAY["job"] = _SLURM_ARRAY["job"] | {"array": "0-9%2", "comment": "purpose=inference"}
_SLURM_DEFAULTS = slurm_job("gpu:1", time_limit=None)

# (case, adapter, method, path, body, sources expected among the answer's (quantity, field, value))
CASES: list[tuple[str, SchedulerAdapter, str, str, Any, set[tuple[str, str | None, Any]]]] = [
    ("slurm", SLURM, "POST", "/slurm/v0.0.38/job/submit", _SLURM_ARRAY, {
        ("gpus", "job.gpus", "gpu:2"), ("walltime", "job.time_limit", 60), ("concurrency", "job.array", "0-9%2"),
        ("lineage", "job.environment.EXPORTGATE_LINEAGE", "llama-x"), ("purpose", "job.comment", "purpose=inference"),
        ("model", None, "h100")}),
    ("slurm-default-walltime", SLURM_WITH_DEFAULTS, "POST", "/slurm/v0.0.38/job/submit", _SLURM_DEFAULTS, {
        ("gpus", "job.gpus", "gpu:1"), ("walltime", "job.partition", "gpu")}),
    ("kubernetes", K8S, "POST", "/apis/batch/v1/namespaces/team-a/jobs", TRAIN_JOB, {
        ("gpus", "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu", "8"),
        ("model", "spec.template.spec.nodeSelector.nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),
        ("concurrency", "spec.parallelism", 4), ("walltime", "spec.activeDeadlineSeconds", 7200),
        ("lineage", "metadata.labels.exportgate.io/model-lineage", "acme-7b")}),
    ("ray", RAY, "POST", "/api/jobs/", ray_job(), {
        ("gpus", "entrypoint_num_gpus", 2), ("model", "entrypoint_resources.accelerator_type:H100", 2),
        ("walltime", "metadata.time_limit_min", "60")}),
    ("generic", GENERIC, "POST", "/v1/jobs", GENERIC_JOB, {
        ("gpus", "resources.gpus", 8), ("model", "resources.gpu_type", "H100")}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "adapter", "method", "path", "body", "expected"), CASES, ids=[c[0] for c in CASES])
def test_sources_name_the_fields_priced_from(
    case: str, adapter: SchedulerAdapter, method: str, path: str, body: Any, expected: set[tuple[str, Any, Any]]
) -> None:
    """The adapter prices the body; the sources name the fields it read (and the defaults it used) with values."""
    match = match_route(adapter.routes(), method, path)
    assert match is not None
    spec = adapter.parse_submission(match, "application/json", None, json.dumps(body).encode())
    found = {(s.quantity, s.field, s.value) for s in body_sources(adapter, body, spec)}
    assert expected <= found, found - expected
    assert spec.total_gpus > 0
