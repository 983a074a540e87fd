"""Reading a scheduler's job listing for its live GPU jobs: what the sweep for jobs the gateway never admitted asks.

Slurm lists every user's jobs to any user, so only records whose `user_name` is the identity
asked about are kept; a record naming no user is nobody's (never flagged). A record is live
while pending or running (a completing one is ending) and a GPU job when a TRES or GRES field
names GPUs (`gres:gpu:h100:2`, `gres/gpu=2`, `gpu:h100:1(IDX:0)`; shards and MPS share GPUs).
Without accounting of `gres/gpu`, slurmctld's `tres_req_str` does not show them: the `tres_per_*`
requests and the allocated `gres_detail` do. Ray drivers may use any GPU of their cluster, so
every pending or running Ray job is a GPU job.
"""

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from gateway.schedulers.base import LiveJob, text, try_json
from gateway.schedulers.status import RAY_ACTIVE, SLURM_FINISHED, SLURM_PENDING, slurm_states

# Base states of a Slurm record that holds (or waits for) resources and is not on its way out.
SLURM_LIVE = SLURM_PENDING | {"RUNNING", "SUSPENDED", "CONFIGURING", "RESIZING", "SIGNALING", "STOPPED"}
SLURM_ENDING = SLURM_FINISHED | {"COMPLETING", "STAGE_OUT"}
# Fields of a v0.0.36..v0.0.42 job record that name GRES/TRES requested or allocated.
SLURM_GPU_FIELDS = (
    "tres_per_job", "tres_per_node", "tres_per_socket", "tres_per_task", "tres_req_str", "tres_alloc_str",
    "gres_detail", "gres",
)  # fmt: skip
GPU_GRES = frozenset({"gpu", "shard", "mps"})


def slurm_id(value: Any) -> str | None:
    """A positive job id: a number, a digit string or a v0.0.40+ {set, number} struct; 0 and unset are None."""
    if isinstance(value, dict):
        value = value.get("number") if value.get("set", True) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,19}", value):
        return value
    return None


def names_gpus(value: Any) -> bool:
    """Whether a TRES/GRES value (a comma-separated string, or a list of them) asks for or holds GPUs."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            continue
        for entry in item.split(","):
            spec = re.sub(r"\(.*$", "", entry.strip())  # gres_detail's "(IDX:0-1)"
            spec = re.sub(r"^gres[:/]", "", spec, flags=re.IGNORECASE)
            fields = re.split(r"[:=]", spec)
            if fields[0].lower() not in GPU_GRES:
                continue
            if len(fields) > 1 and fields[-1].isdigit() and int(fields[-1]) == 0:
                continue  # "gres/gpu=0": asks for none
            return True
    return False


def slurm_live_gpu_jobs(
    status: int, body: bytes, user: str | None, cancel: Callable[[str], tuple[str, str]]
) -> tuple[LiveJob, ...] | None:
    """`GET /slurm/vX/jobs`: the live GPU jobs of Slurm user `user`, by the id their submission returned.

    An array task's record maps to its `array_job_id` and a heterogeneous component's to its
    `het_job_id`, whose cancel ends them all; None when the answer is not a job listing.
    """
    doc = try_json(body)
    jobs = doc.get("jobs") if status == 200 and isinstance(doc, dict) else None
    if not isinstance(jobs, list):
        return None
    if user is None:
        return ()
    found: dict[str, list[str]] = {}
    for record in jobs:
        if not isinstance(record, dict) or record.get("user_name") != user:
            continue
        states = slurm_states(record)
        if not states & SLURM_LIVE or states & SLURM_ENDING:
            continue
        if not any(names_gpus(record.get(key)) for key in SLURM_GPU_FIELDS):
            continue
        own = slurm_id(record.get("job_id"))
        parent = slurm_id(record.get("het_job_id")) or slurm_id(record.get("array_job_id")) or own
        if parent is None:
            continue
        ids = found.setdefault(parent, [])
        if own is not None and own not in ids:
            ids.append(own)
    return tuple(LiveJob(job_id, tuple(records), cancel(job_id)) for job_id, records in found.items())


def ray_live_jobs(status: int, body: bytes) -> tuple[LiveJob, ...] | None:
    """`GET /api/jobs/`: every pending or running job, by submission id (stopped through the Jobs API).

    A driver started outside the Jobs API (`ray.init()` on a login node; type DRIVER, no
    submission id) is listed by Ray's job id and cannot be stopped through the API.
    """
    doc = try_json(body)
    if status != 200 or not isinstance(doc, list):
        return None
    found: dict[str, LiveJob] = {}
    for job in doc:
        if not isinstance(job, dict) or job.get("status") not in RAY_ACTIVE:
            continue
        submission_id = text(job.get("submission_id"))
        driver_id = text(job.get("job_id"))
        if submission_id is not None:
            stop = ("POST", f"/api/jobs/{quote(submission_id, safe='')}/stop")
            found.setdefault(submission_id, LiveJob(submission_id, (submission_id,), stop))
        elif driver_id is not None:
            found.setdefault(driver_id, LiveJob(driver_id, (driver_id,), None))
    return tuple(found.values())
