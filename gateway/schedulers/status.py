"""Reading a scheduler's job-status answer: True (the job is over), False (it lives) or None (unknown: hold)."""

import math
import re
from collections.abc import Iterable
from typing import Any

from gateway.core.jobs import JobPart
from gateway.schedulers.base import JobView, try_json

__all__ = ["JobView", "combine", "kubernetes_finished", "ray_finished", "ray_view", "slurm_finished", "slurm_view"]

# Base states after which a Slurm job holds nothing (slurm/slurm.h, JOB_COMPLETE and later).
SLURM_FINISHED = frozenset(
    {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "DEADLINE", "BOOT_FAIL"}
)
# States and flags of a job that holds, or may again hold, resources; any of them wins.
SLURM_ACTIVE = frozenset(
    {
        "PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
        "RESIZING", "STAGE_OUT", "SIGNALING", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD", "POWER_UP_NODE",
    }
)  # fmt: skip
SLURM_INVALID_JOB_ID = 2017  # ESLURM_INVALID_JOB_ID: slurmctld has no record of the job
RAY_FINISHED = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
RAY_ACTIVE = frozenset({"PENDING", "RUNNING"})
KUBERNETES_FINISHED = ("Complete", "Failed")
SLURM_PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "POWER_UP_NODE"})


def _slurm_number(value: Any) -> float | None:
    """A v0.0.36..v0.0.39 plain number or a v0.0.40+ {set, infinite, number} struct; None when unset or infinite."""
    if isinstance(value, dict):
        if value.get("infinite") is True or value.get("set") is False:
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def slurm_states(job: Any) -> set[str]:
    """A record's state names, upper case: v0.0.36..v0.0.39 give one string, v0.0.40+ the base state and flags.

    Anything else in the list (an object from a misbehaving server) is skipped, never hashed.
    """
    state = job.get("job_state") if isinstance(job, dict) else None
    states = [state] if isinstance(state, str) else state if isinstance(state, list) else []
    return {s.upper() for s in states if isinstance(s, str)}


def combine(verdicts: Iterable[bool | None]) -> bool | None:
    """A job of several records (array tasks, het components) is over only when every record is."""
    found = list(verdicts)
    if not found or False in found:
        return False if found else None
    return None if None in found else True


def _slurm_record(job: Any) -> bool | None:
    # v0.0.36..v0.0.39 give one string; v0.0.40 and later a list of the base state and flags.
    names = slurm_states(job)
    if names & SLURM_ACTIVE:
        return False
    return True if names & SLURM_FINISHED else None


def slurm_finished(status: int, body: bytes) -> bool | None:
    """`GET /slurm/vX/job/{id}`: every record in a finished state, or slurmctld no longer knows the id.

    slurmctld keeps a job's record until MinJobAge after it ends and never drops a pending or
    running job, so "Invalid job id" (2017) for a job the gateway saw created means it is over.
    """
    doc = try_json(body)
    if not isinstance(doc, dict):
        return None
    if status in (404, 500):
        errors = doc.get("errors")
        codes = (
            {e.get("error_code", e.get("error_number")) for e in errors if isinstance(e, dict)}
            if isinstance(errors, list)
            else set()
        )
        return True if SLURM_INVALID_JOB_ID in codes else None
    jobs = doc.get("jobs")
    if status != 200 or not isinstance(jobs, list):
        return None
    return combine(_slurm_record(j) for j in jobs)


def slurm_view(status: int, body: bytes) -> JobView:
    """`slurm_finished`, with the records' longest time limit and earliest start of a running record."""
    over = slurm_finished(status, body)
    doc = try_json(body)
    jobs = doc.get("jobs") if isinstance(doc, dict) and status == 200 else None
    if over is not False or not isinstance(jobs, list):
        return JobView(over)
    records = [j for j in jobs if isinstance(j, dict)]
    names = [slurm_states(j) for j in records]
    pending = bool(names) and all(n & SLURM_PENDING for n in names)
    limits = [_slurm_number(j.get("time_limit")) for j in records]
    walltime = None if not limits or None in limits else max(m for m in limits if m is not None) * 60.0
    starts = [
        t for j, n in zip(records, names, strict=True)
        if not n & SLURM_PENDING and (t := _slurm_number(j.get("start_time"))) is not None and t > 0
    ]  # fmt: skip
    running = [j for j, n in zip(records, names, strict=True) if n & {"RUNNING", "SUSPENDED", "COMPLETING"}]
    held = [record_gpus(j) for j in running]
    readable = held and None not in held
    allocated = merge_parts(p for parts in held if parts is not None for p in parts) if readable else None
    settled = bool(names) and not any(n & SLURM_PENDING for n in names)
    started = min(starts) if starts and not pending else None
    return JobView(False, pending, walltime, started, allocated, settled)


def record_gpus(job: dict[str, Any]) -> tuple[JobPart, ...] | None:
    """The GPUs slurmctld allocated to one running record: its TRES when accounting names GPUs, else its GRES detail.

    Without `AccountingStorageTRES=gres/gpu` the TRES string names no GPUs at all; `gres_detail`
    (one entry per node, `gpu:h100:3(IDX:0-2)`) always does. None when neither can be read.
    """
    tres = job.get("tres_alloc_str")
    if isinstance(tres, str) and "gres/gpu" in tres:
        return tres_gpus(tres)
    detail = job.get("gres_detail")
    if not isinstance(detail, list) or not all(isinstance(d, str) for d in detail):
        return None
    found = [JobPart(int(m.group(2)), m.group(1), 1) for entry in detail for m in _GRES_GPU.finditer(entry)]
    return merge_parts(found)


# One GPU entry of a node's GRES detail: `gpu:h100:3(IDX:0-2)` or `gpu:3(IDX:0,2-3)`, among others (`mps:...`).
_GRES_GPU = re.compile(r"(?:^|,)gpu(?::([A-Za-z0-9_.-]+))?:([0-9]+)\(")


def tres_gpus(tres: Any) -> tuple[JobPart, ...] | None:
    """GPUs in a TRES string (`cpu=8,node=2,gres/gpu=8,gres/gpu:h100=8`) by model; None when unreadable or absent."""
    if not isinstance(tres, str) or not tres:
        return None
    total, typed = 0, dict[str, int]()
    for item in tres.split(","):
        name, _, count = item.partition("=")
        if not count.isdigit():
            continue
        if name == "gres/gpu":
            total = int(count)
        elif name.startswith("gres/gpu:"):
            typed[name[len("gres/gpu:") :]] = typed.get(name[len("gres/gpu:") :], 0) + int(count)
    parts = [JobPart(n, model, 1) for model, n in sorted(typed.items()) if n > 0]
    untyped = total - sum(typed.values())
    if untyped > 0:
        parts.append(JobPart(untyped, None, 1))
    return tuple(parts)


def merge_parts(parts: Iterable[JobPart]) -> tuple[JobPart, ...]:
    """Parts of one model added up, models in name order (no model last)."""
    counts: dict[str | None, int] = {}
    for part in parts:
        counts[part.model] = counts.get(part.model, 0) + part.gpus * part.concurrency
    return tuple(JobPart(n, model, 1) for model, n in sorted(counts.items(), key=lambda i: (i[0] is None, i[0] or "")))


def ray_finished(status: int, body: bytes) -> bool | None:
    """`GET /api/jobs/{id}`: a terminal status, or the dashboard's own "does not exist" 404.

    The dashboard answers 404 with `Job <id> does not exist` only when neither the GCS nor
    its job table knows the id; a submission the gateway saw accepted is then gone (deleted
    after it ended, or the cluster restarted and took its drivers with it).
    """
    if status == 404:
        return True if body.startswith(b"Job ") and body.rstrip().endswith(b"does not exist") else None
    doc = try_json(body)
    if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
        return None
    if doc["status"] in RAY_FINISHED:
        return True
    return False if doc["status"] in RAY_ACTIVE else None


def kubernetes_finished(status: int, body: bytes) -> bool | None:
    """`GET .../jobs/{name}`: a Complete or Failed condition with status "True".

    A 404 stays unknown: Pods share the `{ns}/{name}` id space with Jobs, so the Job path
    finding nothing does not show that the workload the id names has ended.
    """
    doc = try_json(body)
    if status != 200 or not isinstance(doc, dict) or doc.get("kind", "Job") != "Job":
        return None
    state = doc.get("status")
    if not isinstance(state, dict):
        return False if isinstance(doc.get("spec"), dict) else None  # created, not yet seen by the controller
    conditions = state.get("conditions") or []
    if not isinstance(conditions, list):
        return None
    for condition in conditions:
        if (
            isinstance(condition, dict)
            and condition.get("type") in KUBERNETES_FINISHED
            and condition.get("status") == "True"
        ):
            return True
    return False


def ray_view(status: int, body: bytes, walltime_key: str) -> JobView:
    """`ray_finished`, with the walltime the submission's metadata declared and the driver's start time."""
    over = ray_finished(status, body)
    doc = try_json(body)
    if over is not False or not isinstance(doc, dict):
        return JobView(over)
    metadata = doc.get("metadata")
    raw = metadata.get(walltime_key) if isinstance(metadata, dict) else None
    try:
        minutes = float(raw) if isinstance(raw, str) else math.nan
    except ValueError:
        minutes = math.nan
    walltime = minutes * 60.0 if math.isfinite(minutes) and minutes > 0 else None
    start = doc.get("start_time")  # milliseconds since the epoch, once the driver started
    started = start / 1000.0 if isinstance(start, int) and not isinstance(start, bool) and start > 0 else None
    pending = doc.get("status") == "PENDING"
    return JobView(False, pending, walltime, None if pending else started)
