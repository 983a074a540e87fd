"""Reading schedulers' job listings for live GPU jobs (the sweep for jobs the gateway never admitted)."""

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.schedulers import (
    GenericAdapter,
    GenericOptions,
    KubernetesAdapter,
    KubernetesOptions,
    RayAdapter,
    RayOptions,
    SlurmAdapter,
    SlurmOptions,
)
from gateway.schedulers.base import LiveJob
from gateway.schedulers.live import names_gpus

SLURM = SlurmAdapter(SlurmOptions())
RAY = RayAdapter(RayOptions(cluster_gpus={"H100": 8}))
# Captured from slurmrestd 22.05 (v0.0.38) on the two-node test cluster (tests/peers/slurm.sh), without
# GPU accounting: sbatch as root of --gpus=h100:2 (1), --gres=gpu:h100:1 (2), --gpus-per-node=1 (3),
# --gpus-per-task=1 (4), no GPUs then scancel (5, COMPLETING), --array=0-2 --gpus=1 (6: tasks 11, 12, 6),
# --hold (7), a heterogeneous job (8+0, 8+1 as 8 and 9), --gpus=h100:8 pending (10), a held array
# --array=0-3 --gpus-per-node=h100:2 (13, one pending record), and --uid=nobody --gpus=1 (14).
JOBS = (Path(__file__).parent / "data" / "slurm" / "jobs-v0.0.38.json").read_bytes()


def delete(job_id: str) -> tuple[str, str]:
    return "DELETE", f"/slurm/v0.0.38/job/{job_id}"


def test_slurm_paths() -> None:
    """The listing is GET /slurm/{status_version}/jobs."""
    assert SLURM.live_jobs_path() == "/slurm/v0.0.38/jobs"
    assert SlurmAdapter(SlurmOptions(status_version="v0.0.40")).live_jobs_path() == "/slurm/v0.0.40/jobs"


def test_slurm_real_listing_as_root() -> None:
    """Every live GPU job of root, by the id its submission returned: array tasks and het components map to
    their parent; the job without GPUs, the completing one and the other user's job are left out."""
    jobs = SLURM.live_gpu_jobs(200, JOBS, "root")
    assert jobs == (
        LiveJob("1", ("1",), delete("1")),
        LiveJob("2", ("2",), delete("2")),
        LiveJob("3", ("3",), delete("3")),
        LiveJob("4", ("4",), delete("4")),
        LiveJob("6", ("11", "12", "6"), delete("6")),
        LiveJob("7", ("7",), delete("7")),
        LiveJob("8", ("8", "9"), delete("8")),
        LiveJob("10", ("10",), delete("10")),
        LiveJob("13", ("13",), delete("13")),
    )


def test_slurm_real_listing_keeps_only_the_identity_asked_about() -> None:
    """Slurm lists every user's jobs to anyone: only the identity's own are kept; no identity, none."""
    assert SLURM.live_gpu_jobs(200, JOBS, "nobody") == (LiveJob("14", ("14",), delete("14")),)
    assert SLURM.live_gpu_jobs(200, JOBS, "alice") == ()
    assert SLURM.live_gpu_jobs(200, JOBS, None) == ()


def record(**fields: Any) -> dict[str, Any]:
    return {"job_id": 40, "user_name": "alice", "job_state": "RUNNING", "array_job_id": 0, "het_job_id": 0} | fields


def listing(*records: Any) -> bytes:
    return json.dumps({"meta": {}, "errors": [], "jobs": list(records)}).encode()


@pytest.mark.parametrize(
    "fields, flagged",
    [
        ({"tres_req_str": "cpu=8,mem=64G,node=1,billing=8,gres/gpu=2"}, True),  # with GPU accounting
        ({"tres_alloc_str": "cpu=8,node=1,gres/gpu:h100=8"}, True),
        ({"tres_per_socket": "gres:gpu:1"}, True),
        ({"gres_detail": ["gpu:h100:4(IDX:0-3)"]}, True),
        ({"tres_per_node": "gres:shard:2"}, True),  # shares of a GPU
        ({"tres_per_node": "gres/gpu:h100:1"}, True),  # v0.0.40+ spelling
        ({"tres_per_job": "gres:gpu:0"}, False),
        ({"tres_req_str": "cpu=8,mem=64G,node=1,billing=8,gres/gpumem=0"}, False),
        ({"tres_per_node": "gres:nic:1", "tres_req_str": "cpu=1"}, False),
        ({"tres_per_job": "gres:gpu:1", "job_state": "COMPLETING"}, False),
        ({"tres_per_job": "gres:gpu:1", "job_state": "CANCELLED"}, False),
        ({"tres_per_job": "gres:gpu:1", "job_state": "SUSPENDED"}, True),
        ({"tres_per_job": "gres:gpu:1", "job_state": "REQUEUE_HOLD"}, True),
        ({"tres_per_job": "gres:gpu:1", "job_state": ["PENDING"]}, True),  # v0.0.40+: a list of state and flags
        ({"tres_per_job": "gres:gpu:1", "job_state": ["CANCELLED", "COMPLETING"]}, False),
        ({"tres_per_job": "gres:gpu:1", "job_state": None}, False),
        ({"tres_per_job": "gres:gpu:1", "user_name": None}, False),  # whose it is cannot be told
        ({"tres_per_job": "gres:gpu:1", "user_name": "mallory"}, False),
    ],
)
def test_slurm_gpu_and_live_records(fields: dict[str, Any], flagged: bool) -> None:
    """A record counts when it is pending or running, of the identity, and a TRES/GRES field names GPUs."""
    jobs = SLURM.live_gpu_jobs(200, listing(record(**fields)), "alice")
    assert jobs == ((LiveJob("40", ("40",), delete("40")),) if flagged else ())


def test_slurm_v0040_ids() -> None:
    """v0.0.40+ writes ids as {set, number}: an array task still maps to its array job."""
    task = record(job_id={"set": True, "number": 41}, array_job_id={"set": True, "number": 40},
                  het_job_id={"set": False, "number": 0}, tres_per_job="gres/gpu:1")  # fmt: skip
    assert SLURM.live_gpu_jobs(200, listing(task), "alice") == (LiveJob("40", ("41",), delete("40")),)


@pytest.mark.parametrize(
    "status, body",
    [(200, b"not json"), (200, b'{"jobs": {}}'), (500, listing()), (200, b"[]")],
    ids=["text", "jobs-object", "500", "list"],
)
def test_slurm_unreadable_listing(status: int, body: bytes) -> None:
    """An answer that is not a job listing is unreadable (None), never an empty list of jobs."""
    assert SLURM.live_gpu_jobs(status, body, "alice") is None


# Ray 2.x GET /api/jobs/: submission jobs (JobDetails of type SUBMISSION), then drivers started outside
# the Jobs API (type DRIVER, no submission id).
RAY_LISTING = [
    {"type": "SUBMISSION", "job_id": "02000000", "submission_id": "raysubmit_run", "status": "RUNNING",
     "entrypoint": "python train.py", "metadata": {}, "driver_info": {"id": "02000000"}},
    {"type": "SUBMISSION", "job_id": None, "submission_id": "eg-pending/1", "status": "PENDING",
     "entrypoint": "python train.py", "metadata": {}, "driver_info": None},
    {"type": "SUBMISSION", "job_id": "01000000", "submission_id": "raysubmit_done", "status": "SUCCEEDED"},
    {"type": "SUBMISSION", "job_id": "03000000", "submission_id": "raysubmit_stopped", "status": "STOPPED"},
    {"type": "DRIVER", "job_id": "04000000", "submission_id": None, "status": "RUNNING",
     "entrypoint": "python -c 'import ray; ray.init()'", "driver_info": {"id": "04000000"}},
    {"type": "DRIVER", "job_id": "05000000", "submission_id": None, "status": "SUCCEEDED"},
]  # fmt: skip


def test_ray_every_live_job() -> None:
    """Every pending or running Ray job is a GPU job (a driver may use any GPU of the cluster), by submission
    id and stopped through the Jobs API; a driver started outside it is listed by its job id, uncancellable."""
    assert RAY.live_jobs_path() == "/api/jobs/"
    jobs = RAY.live_gpu_jobs(200, json.dumps(RAY_LISTING).encode(), None)
    assert jobs == (
        LiveJob("raysubmit_run", ("raysubmit_run",), ("POST", "/api/jobs/raysubmit_run/stop")),
        LiveJob("eg-pending/1", ("eg-pending/1",), ("POST", "/api/jobs/eg-pending%2F1/stop")),
        LiveJob("04000000", ("04000000",), None),
    )
    assert RAY.live_gpu_jobs(200, json.dumps(RAY_LISTING).encode(), "alice") == jobs  # Ray names no users


@pytest.mark.parametrize("status, body", [(200, b"{}"), (200, b"oops"), (503, b"[]")], ids=["object", "text", "503"])
def test_ray_unreadable_listing(status: int, body: bytes) -> None:
    assert RAY.live_gpu_jobs(status, body, None) is None


def test_kubernetes_and_generic_cannot_list() -> None:
    """Adapters that cannot tell whose a workload is list nothing to sweep."""
    generic = GenericAdapter(GenericOptions(submit_path="/v1/jobs", gpus_field="gpus", default_walltime_s=60))
    for adapter in (KubernetesAdapter(KubernetesOptions()), generic):
        assert adapter.live_jobs_path() is None
        assert adapter.live_gpu_jobs(200, b"{}", "alice") is None


@pytest.mark.parametrize(
    "value, gpus",
    [
        ("gres:gpu:h100:2", True),
        ("gres/gpu=2", True),
        ("cpu=1,gres/gpu:a100=1", True),
        (["gpu:h100:1(IDX:2)"], True),
        ("gres:mps:100", True),
        ("GRES/GPU=1", True),
        ("gres:gpu:h100:0", False),
        ("gres/gpumem=80G", False),
        ("cpu=1,mem=4000M,node=1,billing=1", False),
        ("", False),
        (None, False),
        (3, False),
    ],
)
def test_names_gpus(value: Any, gpus: bool) -> None:
    assert names_gpus(value) is gpus
