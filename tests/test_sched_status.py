"""Each adapter's status path and its reading of job-status answers in the schedulers' real shapes."""

import json
from typing import Any

import pytest

from gateway.config.located import Problem, load_text
from gateway.config.schedulers import load_scheduler_options
from gateway.core.jobs import JobPart
from gateway.schedulers import (
    GenericAdapter,
    GenericOptions,
    KubernetesAdapter,
    KubernetesOptions,
    RayAdapter,
    RayOptions,
    SchedulerAdapter,
    SlurmAdapter,
    SlurmOptions,
)
from gateway.schedulers.base import JobView

SLURM = SlurmAdapter(SlurmOptions())
RAY = RayAdapter(RayOptions())
K8S = KubernetesAdapter(KubernetesOptions())
GENERIC = GenericAdapter(
    GenericOptions(
        submit_path="/v1/jobs", gpus_field="gpus", job_path="/v1/jobs/{job_id}", state_field="job.state",
        finished_states=("done", "failed"), default_walltime_s=3600,
    )
)  # fmt: skip
GENERIC_NO_STATE = GenericAdapter(
    GenericOptions(submit_path="/v1/jobs", gpus_field="gpus", job_path="/v1/jobs/{job_id}", default_walltime_s=60)
)

META = {
    "plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
    "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"},
}


def slurm_job(state: Any, job_id: int = 7, **extra: Any) -> dict[str, Any]:
    """One job record of `GET /slurm/v0.0.38/job/{id}`."""
    return {
        "job_id": job_id, "user_name": "alice", "account": "team-a", "job_state": state, "state_reason": "None",
        "time_limit": 60, "tres_per_job": "gres:gpu:h100:1", "gres_detail": ["gpu:h100:1(IDX:0)"],
        "submit_time": 1767225600, "start_time": 1767225601, "end_time": 1767229201, **extra,
    }  # fmt: skip


def slurm(*jobs: dict[str, Any]) -> bytes:
    return json.dumps({"meta": META, "errors": [], "jobs": list(jobs)}).encode()


def slurm_error(code: int, message: str) -> bytes:
    return json.dumps({"meta": META, "errors": [{"error_code": code, "error": message}]}).encode()


def ray(status: str) -> bytes:
    """`GET /api/jobs/{id}` as the Ray 2.x dashboard answers it."""
    return json.dumps({
        "type": "SUBMISSION", "job_id": "02000000", "submission_id": "train-1", "driver_info": None,
        "status": status, "entrypoint": "python train.py", "message": "Job finished successfully.",
        "error_type": None, "start_time": 1767225600000, "end_time": 1767229200000,
        "metadata": {"time_limit_min": "60"}, "runtime_env": {}, "driver_exit_code": 0,
    }).encode()  # fmt: skip


def k8s_job(*conditions: tuple[str, str], status: bool = True) -> bytes:
    """A batch/v1 Job as `GET /apis/batch/v1/namespaces/{ns}/jobs/{name}` returns it."""
    doc: dict[str, Any] = {
        "kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"name": "train-7b", "namespace": "team-a", "uid": "0b7d1c8e-0000-4000-8000-000000000001"},
        "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 6, "template": {"spec": {"containers": []}}},
    }  # fmt: skip
    if status:
        doc["status"] = {
            "startTime": "2026-01-01T00:00:00Z", "active": 0 if conditions else 1, "ready": 0,
            "conditions": [
                {"type": t, "status": s, "lastProbeTime": "2026-01-01T01:00:00Z",
                 "lastTransitionTime": "2026-01-01T01:00:00Z", "reason": "Reason", "message": "m"}
                for t, s in conditions
            ],
        }  # fmt: skip
    return json.dumps(doc).encode()


K8S_NOT_FOUND = json.dumps({
    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
    "message": 'jobs.batch "train-7b" not found', "reason": "NotFound",
    "details": {"name": "train-7b", "group": "batch", "kind": "jobs"}, "code": 404,
}).encode()  # fmt: skip

PATHS = [
    ("slurm", SLURM, "42", "/slurm/v0.0.38/job/42"),
    ("slurm-v0.0.40", SlurmAdapter(SlurmOptions(status_version="v0.0.40")), "42", "/slurm/v0.0.40/job/42"),
    ("slurm-not-numeric", SLURM, "42/../x", None),
    ("ray", RAY, "raysubmit_a1", "/api/jobs/raysubmit_a1"),
    ("ray-quoted", RAY, "a/b?c", "/api/jobs/a%2Fb%3Fc"),
    ("k8s-job", K8S, "team-a/train-7b", "/apis/batch/v1/namespaces/team-a/jobs/train-7b"),
    ("k8s-no-namespace", K8S, "train-7b", None),
    ("generic", GENERIC, "j 1", "/v1/jobs/j%201"),
    ("generic-without-state-field", GENERIC_NO_STATE, "j1", None),
]


@pytest.mark.parametrize(("adapter", "job_id", "path"), [p[1:] for p in PATHS], ids=[p[0] for p in PATHS])
def test_status_path(adapter: SchedulerAdapter, job_id: str, path: str | None) -> None:
    """Each adapter names the GET path reporting a job's state, or None when it cannot ask safely."""
    assert adapter.status_path(job_id) == path


FINISHED = [
    # Slurm v0.0.38: one state string per record.
    ("slurm-completed", SLURM, 200, slurm(slurm_job("COMPLETED")), True),
    ("slurm-cancelled", SLURM, 200, slurm(slurm_job("CANCELLED")), True),
    ("slurm-failed", SLURM, 200, slurm(slurm_job("FAILED")), True),
    ("slurm-timeout", SLURM, 200, slurm(slurm_job("TIMEOUT")), True),
    ("slurm-node-fail", SLURM, 200, slurm(slurm_job("NODE_FAIL")), True),
    ("slurm-preempted", SLURM, 200, slurm(slurm_job("PREEMPTED")), True),
    ("slurm-oom", SLURM, 200, slurm(slurm_job("OUT_OF_MEMORY")), True),
    ("slurm-deadline", SLURM, 200, slurm(slurm_job("DEADLINE")), True),
    ("slurm-boot-fail", SLURM, 200, slurm(slurm_job("BOOT_FAIL")), True),
    ("slurm-pending", SLURM, 200, slurm(slurm_job("PENDING")), False),
    ("slurm-running", SLURM, 200, slurm(slurm_job("RUNNING")), False),
    ("slurm-completing", SLURM, 200, slurm(slurm_job("COMPLETING")), False),
    ("slurm-suspended", SLURM, 200, slurm(slurm_job("SUSPENDED")), False),
    ("slurm-unknown-state", SLURM, 200, slurm(slurm_job("SOMETHING_NEW")), None),
    ("slurm-no-state", SLURM, 200, slurm({"job_id": 7}), None),
    # v0.0.40 and later: the base state and its flags as a list.
    ("slurm-v40-completed", SLURM, 200, slurm(slurm_job(["COMPLETED"])), True),
    ("slurm-v40-requeued-flag", SLURM, 200, slurm(slurm_job(["PENDING", "REQUEUED"])), False),
    ("slurm-v40-cancelled-completing", SLURM, 200, slurm(slurm_job(["CANCELLED", "COMPLETING"])), False),
    # Array tasks and het components: over only when every record is.
    ("slurm-array-all-over", SLURM, 200, slurm(slurm_job("COMPLETED"), slurm_job("FAILED", 8)), True),
    ("slurm-array-one-running", SLURM, 200, slurm(slurm_job("COMPLETED"), slurm_job("RUNNING", 8)), False),
    ("slurm-array-one-unreadable", SLURM, 200, slurm(slurm_job("COMPLETED"), slurm_job(None, 8)), None),
    ("slurm-no-records", SLURM, 200, slurm(), None),
    # slurmctld purged the record (MinJobAge after the end): the job is over.
    ("slurm-purged-2017", SLURM, 500, slurm_error(2017, "Invalid job id specified"), True),
    ("slurm-permission-denied", SLURM, 500, slurm_error(2002, "Access/permission denied"), None),
    ("slurm-401-plain", SLURM, 401, b"Authentication failure", None),
    ("slurm-not-json", SLURM, 200, b"<html>proxy error</html>", None),
    ("slurm-502-gateway", SLURM, 502, b"Bad Gateway", None),
    # Ray
    ("ray-succeeded", RAY, 200, ray("SUCCEEDED"), True),
    ("ray-failed", RAY, 200, ray("FAILED"), True),
    ("ray-stopped", RAY, 200, ray("STOPPED"), True),
    ("ray-pending", RAY, 200, ray("PENDING"), False),
    ("ray-running", RAY, 200, ray("RUNNING"), False),
    ("ray-unknown-status", RAY, 200, ray("PAUSED"), None),
    ("ray-gone", RAY, 404, b"Job train-1 does not exist", True),
    ("ray-other-404", RAY, 404, b"404: Not Found", None),
    ("ray-500", RAY, 500, b"Traceback (most recent call last):\n", None),
    ("ray-not-json", RAY, 200, b"RUNNING", None),
    # Kubernetes Jobs
    ("k8s-complete", K8S, 200, k8s_job(("SuccessCriteriaMet", "True"), ("Complete", "True")), True),
    ("k8s-failed", K8S, 200, k8s_job(("FailureTarget", "True"), ("Failed", "True")), True),
    ("k8s-failure-target-only", K8S, 200, k8s_job(("FailureTarget", "True")), False),
    ("k8s-suspended", K8S, 200, k8s_job(("Suspended", "True")), False),
    ("k8s-complete-false", K8S, 200, k8s_job(("Complete", "False")), False),
    ("k8s-running", K8S, 200, k8s_job(), False),
    ("k8s-no-status-yet", K8S, 200, k8s_job(status=False), False),
    ("k8s-404-may-be-a-pod", K8S, 404, K8S_NOT_FOUND, None),
    ("k8s-not-a-job", K8S, 200, json.dumps({"kind": "Pod", "status": {"phase": "Succeeded"}}).encode(), None),
    ("k8s-not-json", K8S, 200, b"\x0a\x0bk8s protobuf", None),
    # Generic
    ("generic-done", GENERIC, 200, b'{"job": {"state": "done"}}', True),
    ("generic-running", GENERIC, 200, b'{"job": {"state": "running"}}', False),
    ("generic-no-state", GENERIC, 200, b'{"job": {}}', None),
    ("generic-404", GENERIC, 404, b'{"job": {"state": "done"}}', None),
    ("generic-unconfigured", GENERIC_NO_STATE, 200, b'{"job": {"state": "done"}}', None),
]


@pytest.mark.parametrize(
    ("adapter", "status", "body", "expected"), [f[1:] for f in FINISHED], ids=[f[0] for f in FINISHED]
)
def test_finished(adapter: SchedulerAdapter, status: int, body: bytes, expected: bool | None) -> None:
    """True only when the scheduler says the job is over; None (hold) whenever the answer is unsure."""
    assert adapter.finished(status, body) is expected


def test_options_loaders() -> None:
    """Slurm's status version and the generic state field load; a bad version or lone field is located."""
    problems: list[Problem] = []
    slurm = load_scheduler_options("slurm", load_text("status_version: v0.0.41\n", "gateway.yaml"), problems)
    assert isinstance(slurm, SlurmOptions) and slurm.status_version == "v0.0.41"
    generic = load_scheduler_options(
        "generic",
        load_text(
            "submit_path: /v1/jobs\njob_path: /v1/jobs/{job_id}\ngpus_field: gpus\ndefault_walltime_s: 60\n"
            "state_field: job.state\nfinished_states: [done]\n", "gateway.yaml",
        ),
        problems,
    )  # fmt: skip
    assert problems == []
    assert isinstance(generic, GenericOptions) and (generic.state_field, generic.finished_states) == (
        "job.state",
        ("done",),
    )
    assert load_scheduler_options("slurm", load_text("status_version: v9\n", "gateway.yaml"), problems) is None
    text = "submit_path: /v1/jobs\ngpus_field: gpus\ndefault_walltime_s: 60\nstate_field: state\n"
    assert load_scheduler_options("generic", load_text(text, "gateway.yaml"), problems) is None
    assert [str(p).split(": ", 1)[1] for p in problems] == [
        "status_version: 'v9' is not one of v0.0.36, v0.0.37, v0.0.38, v0.0.39, v0.0.40, v0.0.41, v0.0.42",
        "state_field: needs finished_states (the states of a job that is over)",
    ]


def _slurm_doc(*records: dict[str, Any]) -> bytes:
    return json.dumps({"meta": {}, "errors": [], "jobs": list(records)}).encode()


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        # v0.0.38: plain numbers; a pending job's start_time is slurmctld's estimate, not a start.
        ([{"job_state": "PENDING", "time_limit": 90, "start_time": 1_900_000_000}], JobView(False, True, 5400.0)),
        ([{"job_state": "RUNNING", "time_limit": 10, "start_time": 1_800_000_000}],
         JobView(False, False, 600.0, 1_800_000_000.0, None, True)),
        # What slurmctld allocated: typed and untyped GPUs of every running record, added up.
        ([{"job_state": "RUNNING", "time_limit": 10, "start_time": 1_800_000_000,
           "tres_alloc_str": "cpu=16,mem=8000M,node=2,billing=16,gres/gpu=8,gres/gpu:h100=8"}],
         JobView(False, False, 600.0, 1_800_000_000.0, (JobPart(8, "h100"),), True)),
        ([{"job_state": "RUNNING", "time_limit": 10, "start_time": 1_800_000_000, "tres_alloc_str": "cpu=1,gres/gpu=3"},
          {"job_state": "RUNNING", "time_limit": 10, "start_time": 1_800_000_000,
           "tres_alloc_str": "cpu=1,gres/gpu=2,gres/gpu:h100=1"}],
         JobView(False, False, 600.0, 1_800_000_000.0, (JobPart(1, "h100"), JobPart(4, None)), True)),
        # Without GPU accounting the TRES string names no GPUs; the per-node GRES detail does (as captured
        # from slurmrestd 22.05 for a job `scontrol update TresPerNode=gres:gpu:h100:3` moved to 3 GPUs).
        ([{"job_state": "RUNNING", "time_limit": 5, "start_time": 1_795_971_176,
           "tres_alloc_str": "cpu=1,node=1,billing=1", "gres_detail": ["gpu:h100:3(IDX:0-2)"]}],
         JobView(False, False, 300.0, 1_795_971_176.0, (JobPart(3, "h100"),), True)),
        ([{"job_state": "RUNNING", "time_limit": 5, "start_time": 1_795_971_176, "tres_alloc_str": "cpu=2,node=2",
           "gres_detail": ["gpu:2(IDX:0,2)", "gpu:h100:1(IDX:1),mps:100(0)"]}],
         JobView(False, False, 300.0, 1_795_971_176.0, (JobPart(1, "h100"), JobPart(2, None)), True)),
        # v0.0.40+: state lists and {set, infinite, number} structs; an infinite limit is unknown.
        ([{"job_state": ["RUNNING"], "time_limit": {"set": True, "infinite": False, "number": 5},
           "start_time": {"set": True, "infinite": False, "number": 1_800_000_100}}],
         JobView(False, False, 300.0, 1_800_000_100.0, None, True)),
        ([{"job_state": ["RUNNING"], "time_limit": {"set": False, "infinite": True, "number": 0},
           "start_time": {"set": True, "number": 1_800_000_100}}],
         JobView(False, False, None, 1_800_000_100.0, None, True)),
        # An array: one task running, one pending -> alive, not pending; the longest limit, the earliest start.
        ([{"job_state": "RUNNING", "time_limit": 10, "start_time": 1_800_000_200},
          {"job_state": "PENDING", "time_limit": 20, "start_time": 0}], JobView(False, False, 1200.0, 1_800_000_200.0)),
        ([{"job_state": "COMPLETED", "time_limit": 10}], JobView(True)),
    ],
    ids=["pending", "running", "allocated", "allocated-two-records", "gres-detail", "gres-detail-two-nodes",
         "v40-running", "v40-infinite", "array-mixed",
         "completed"],
)  # fmt: skip
def test_slurm_job_view(records: list[dict[str, Any]], expected: JobView) -> None:
    """What reconciliation holds a Slurm job's lease for: state, time limit (minutes) and start."""
    assert SLURM.job_view(200, _slurm_doc(*records)) == expected


def test_ray_job_view_reads_the_declared_walltime_and_the_driver_start() -> None:
    """Ray's job answer: status, start_time in milliseconds, and the walltime the metadata declared in minutes."""
    running = {"status": "RUNNING", "start_time": 1_800_000_000_500, "metadata": {"time_limit_min": "1.5"}}
    assert RAY.job_view(200, json.dumps(running).encode()) == JobView(False, False, 90.0, 1_800_000_000.5)
    pending = running | {"status": "PENDING"}
    assert RAY.job_view(200, json.dumps(pending).encode()) == JobView(False, True, 90.0, None)
    undeclared = running | {"metadata": {"time_limit_min": "soon"}}
    assert RAY.job_view(200, json.dumps(undeclared).encode()).walltime_s is None
    assert RAY.job_view(200, json.dumps(running | {"status": "STOPPED"}).encode()) == JobView(True)
    assert RAY.walltime_stop("raysubmit_1/x") == ("POST", "/api/jobs/raysubmit_1%2Fx/stop")
    assert SLURM.walltime_stop("12") is None and K8S.walltime_stop("ns/j") is None


def test_a_state_list_holding_an_object_is_unknown_not_an_error() -> None:
    """A v0.0.40-shaped state list with an object in it (a misbehaving server) reads as unknown: held, not a crash."""
    body = json.dumps({"jobs": [{"job_state": [{"a": 1}]}]}).encode()
    assert SLURM.finished(200, body) is None
    assert SLURM.job_view(200, body).over is None
