"""Slurm job descriptions' GPUs: keys read as slurmrestd reads them, every GPU field multiplied out and merged."""

from collections.abc import Callable, Mapping
from typing import Any

from gateway.core.jobs import JobSpecInvalid
from gateway.schedulers.base import bounded, key_name
from gateway.schedulers.slurm_fields import GpuCounts, gpu_spec, gres_spec, host_count, node_max, number_struct

# slurmrestd lower-cases job keys (v0.0.38) and accepts sbatch's aliases for some.
_ALIASES = {
    "ntasks": "tasks",
    "ntasks_per_node": "tasks_per_node",
    "ntasks_per_socket": "tasks_per_socket",
    "ntasks_per_core": "tasks_per_core",
    "nodelist": "required_nodes",
    "node_list": "required_nodes",
    "job_name": "name",
}
# field -> (parser, multiplier): what each GPU-bearing field implies for one copy of a job.
GPU_FIELDS: dict[str, tuple[Callable[[Any, str], GpuCounts], str]] = {
    "gpus": (gpu_spec, "job"),
    "gpus_per_node": (gpu_spec, "node"),
    "gpus_per_task": (gpu_spec, "task"),
    "gpus_per_socket": (gpu_spec, "socket"),
    "gres": (gres_spec, "node"),
    "tres_per_job": (gres_spec, "job"),
    "tres_per_node": (gres_spec, "node"),
    "tres_per_task": (gres_spec, "task"),
    "tres_per_socket": (gres_spec, "socket"),
}
# Keys naming GPUs that hold none themselves (binding, frequency, per-GPU ratios).
_BENIGN = frozenset(
    {
        "cpus_per_gpu",
        "memory_per_gpu",
        "mem_per_gpu",
        "gpu_binding",
        "gpu_frequency",
        "gres_flags",
        "cpus_per_tres",
        "memory_per_tres",
        "mem_per_tres",
        "tres_bind",
        "tres_freq",
    }
)
# Tasks per GPU: with a task count and no GPU field, Slurm derives ceil(tasks / N) GPUs.
_TASKS_PER_GPU = ("ntasks_per_gpu", "ntasks_per_tres")
_NODE_KEYS = ("nodes", "minimum_nodes", "maximum_nodes", "required_nodes")
_TASK_KEYS = ("tasks", "tasks_per_node", "tasks_per_socket", "tasks_per_core")
# Keys that change what a job holds or for how long: an update naming any of them has to be priced.
RESOURCE_KEYS = frozenset(
    {
        *GPU_FIELDS,
        *_NODE_KEYS,
        *_TASK_KEYS,
        *_TASKS_PER_GPU,
        "sockets_per_node",
        "time_limit",
        "array",
        "partition",
    }
)


def normalise(job: Any, where: str) -> dict[str, Any]:
    """Job keys as slurmrestd reads them: lower case, sbatch aliases folded, nulls dropped."""
    if not isinstance(job, dict):
        raise JobSpecInvalid(where, "a job description must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in job.items():
        name = key.lower()
        name = _ALIASES.get(name, name)
        if name in out:
            raise JobSpecInvalid(f"{where}.{key_name(key)}", "given twice (directly or through an alias)")
        if value is not None:
            out[name] = value
    for name in out:
        gpuish = any(word in name for word in ("gpu", "gres", "tres"))
        if gpuish and name not in GPU_FIELDS and name not in _BENIGN and name not in _TASKS_PER_GPU:
            raise JobSpecInvalid(f"{where}.{key_name(name)}", "unrecognised field that may hold GPUs")
    return out


def _merge(totals: list[GpuCounts]) -> GpuCounts:
    """Combine what several GPU fields imply, never below any one of them.

    One type (or none) across fields: the largest total. Several types: the largest count
    of each type separately, which over-counts rather than guess how Slurm combines them.
    """
    present = [t for t in totals if t]
    labels = {label for t in present for label in t if label is not None}
    if len(labels) <= 1:
        biggest = max((sum(t.values()) for t in present), default=0)
        return {next(iter(labels), None): biggest} if biggest else {}
    merged: GpuCounts = {}
    for t in present:
        for label, n in t.items():
            merged[label] = max(merged.get(label, 0), n)
    return merged


def job_gpus(job: Mapping[str, Any], where: str) -> GpuCounts:
    """GPUs one copy of one job component holds, multiplied out over nodes, tasks, sockets."""
    nodes = 1
    for key in ("nodes", "minimum_nodes", "maximum_nodes"):
        value = job.get(key)
        if value is not None and not isinstance(value, bool):  # v0.0.38 minimum_nodes is a flag
            nodes = max(nodes, node_max(value, f"{where}.{key}"))
    if "required_nodes" in job:
        nodes = max(nodes, host_count(job["required_nodes"], f"{where}.required_nodes"))
    sockets = number_struct(job["sockets_per_node"], f"{where}.sockets_per_node") if "sockets_per_node" in job else None

    def tasks() -> int:
        found = [nodes]
        if "tasks" in job:
            found.append(number_struct(job["tasks"], f"{where}.tasks") or 0)
        if "tasks_per_node" in job:
            found.append((number_struct(job["tasks_per_node"], f"{where}.tasks_per_node") or 0) * nodes)
        if "tasks_per_socket" in job:
            if sockets is None and "tasks" not in job:
                raise JobSpecInvalid(f"{where}.tasks_per_socket", "needs sockets_per_node or tasks to bound GPUs")
            per = number_struct(job["tasks_per_socket"], f"{where}.tasks_per_socket") or 0
            found.append(per * (sockets or 0) * nodes)
        if "tasks_per_core" in job and "tasks" not in job:
            raise JobSpecInvalid(f"{where}.tasks_per_core", "needs tasks to bound GPUs per task")
        return max(found)

    totals: list[GpuCounts] = []
    for key, (parse, per) in GPU_FIELDS.items():
        if key not in job:
            continue
        counts = parse(job[key], f"{where}.{key}")
        if per == "node":
            factor = nodes
        elif per == "task":
            factor = tasks()
        elif per == "socket":
            if sockets is None:
                raise JobSpecInvalid(f"{where}.{key}", "needs sockets_per_node to count GPUs")
            factor = sockets * nodes
        else:
            factor = 1
        totals.append({label: bounded(n * factor, f"{where}.{key}") for label, n in counts.items()})
    for key in _TASKS_PER_GPU:
        if key in job:
            per_gpu = number_struct(job[key], f"{where}.{key}")
            if not per_gpu:
                raise JobSpecInvalid(f"{where}.{key}", "must be at least 1")
            totals.append({None: -(-tasks() // per_gpu)})
    return _merge(totals)
