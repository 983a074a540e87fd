"""Slurm job descriptions' GPUs: keys read as slurmrestd reads them, every GPU field multiplied out and merged."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.jobs import JobSpecInvalid
from gateway.schedulers.base import bounded, key_name
from gateway.schedulers.slurm_facts import EMPTY, SlurmFacts
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
        "exclusive",
        "shared",
        "oversubscribe",
        "cpus_per_task",
    }
)
# Values of `exclusive` / `shared` that leave the node shared (v0.0.36..v0.0.38 take sbatch's
# --exclusive words, v0.0.39+ the JOB_EXCLUSIVE / JOB_SHARED flags). "user" and "mcs" keep the node
# for one user's (one tenant's) jobs, each priced itself; anything else (true, "exclusive", "none",
# "topo", an unknown word) is priced as whole nodes.
_SHARED_WORDS = frozenset({"false", "oversubscribe", "user", "mcs"})


@dataclass(frozen=True, slots=True)
class Cluster:
    """What pricing may know about a job's partitions: the scheduler's facts and the operator's overrides."""

    facts: SlurmFacts = EMPTY
    exclusive_partitions: frozenset[str] = frozenset()
    node_gpus: Mapping[str, GpuCounts] = field(default_factory=dict)  # partition -> GPUs of its largest node
    node_counts: Mapping[str, int] = field(default_factory=dict)  # partition -> nodes

    def gpus_per_node(self, partition: str) -> GpuCounts | None:
        return self.node_gpus.get(partition) or self.facts.node_gpus(partition)

    def node_count(self, partition: str) -> int | None:
        return self.node_counts.get(partition) or self.facts.node_count(partition)

    def exclusive(self, partition: str) -> bool:
        known = self.facts.partitions.get(partition)
        return partition in self.exclusive_partitions or (known is not None and known.exclusive is True)


def _words(value: Any) -> list[str] | None:
    """A string or list of strings, lower-cased; None for anything else."""
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(i, str) for i in items):
        return None
    return [i.strip().lower() for i in items]


def whole_node(job: Mapping[str, Any]) -> bool:
    """Whether the job's own fields ask for whole nodes (`exclusive`, `shared`, `oversubscribe: false`)."""
    if "exclusive" in job:
        value = job["exclusive"]
        words = _words(value)
        if value is not False and not (words and all(w in _SHARED_WORDS for w in words)):
            return True
    if "shared" in job:
        words = _words(job["shared"])
        if not (words and all(w in _SHARED_WORDS - {"false"} for w in words)):
            return True
    # v0.0.39+ read oversubscribe as a flag whose false is JOB_SHARED_NONE (exclusive).
    return "oversubscribe" in job and job["oversubscribe"] in (False, 0, "false", "0", "no")


def _partitions(job: Mapping[str, Any], cluster: Cluster) -> list[str] | None:
    """The partitions a job may run in; None when it names none and the default one is unknown."""
    raw = job.get("partition")
    names = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else []
    if names:
        return names
    default = cluster.facts.default_partition()
    return [default] if default else None


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


def _span(job: Mapping[str, Any], explicit: int | None, parts: list[str] | None, cluster: Cluster, where: str) -> int:
    """The most nodes a job may span: its node count (range max) when given, else one node per task
    (Slurm never gives a node no task), at most the partition's node count when that is known."""
    if explicit is not None:
        return explicit
    tasks = number_struct(job["tasks"], f"{where}.tasks") if "tasks" in job else None
    span = max(1, tasks or 1)
    if span > 1 and parts:
        caps = [cluster.node_count(p) for p in parts]
        if all(c is not None for c in caps):
            span = min(span, max(c for c in caps if c is not None))
    return span


def _whole_nodes(parts: list[str] | None, cluster: Cluster, where: str) -> GpuCounts:
    """The GPUs of one whole node of the job's partitions (the largest); refused when unknown."""
    if parts is None:
        raise JobSpecInvalid(
            f"{where}.partition", "whole nodes are asked for, and the cluster's default partition is not known yet"
        )
    out: GpuCounts = {}
    for p in parts:
        per = cluster.gpus_per_node(p)
        if per is None:
            raise JobSpecInvalid(
                f"{where}.partition",
                f"whole nodes are asked for, and the GPUs per node of partition {p[:64]!r} are not known "
                "(no slurmrestd facts yet, and no scheduler_options.partition_node_gpus)",
            )
        for label, n in per.items():
            out[label] = max(out.get(label, 0), n)
    return out


def job_gpus(job: Mapping[str, Any], where: str, cluster: Cluster | None = None) -> GpuCounts:
    """GPUs one copy of one job component holds, multiplied out over nodes, tasks, sockets, whole nodes."""
    cluster = cluster or Cluster()
    explicit: int | None = None
    for key in ("nodes", "minimum_nodes", "maximum_nodes"):
        value = job.get(key)
        if value is not None and not isinstance(value, bool):  # v0.0.38 minimum_nodes is a flag
            explicit = max(explicit or 1, node_max(value, f"{where}.{key}"))
    if "required_nodes" in job:
        explicit = max(explicit or 1, host_count(job["required_nodes"], f"{where}.required_nodes"))
    nodes = explicit or 1
    parts = _partitions(job, cluster)
    exclusive_partition = any(cluster.exclusive(p) for p in parts or ())
    if parts is None and cluster.exclusive_partitions:
        raise JobSpecInvalid(
            f"{where}.partition", "no partition is named and the default one is not known yet (it may be exclusive)"
        )
    span = _span(job, explicit, parts, cluster, where)
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
            factor = span
        elif per == "task":
            factor = tasks()
        elif per == "socket":
            if sockets is None:
                raise JobSpecInvalid(f"{where}.{key}", "needs sockets_per_node to count GPUs")
            factor = sockets * span
        else:
            factor = 1
        totals.append({label: bounded(n * factor, f"{where}.{key}") for label, n in counts.items()})
    for key in _TASKS_PER_GPU:
        if key in job:
            per_gpu = number_struct(job[key], f"{where}.{key}")
            if not per_gpu:
                raise JobSpecInvalid(f"{where}.{key}", "must be at least 1")
            totals.append({None: -(-tasks() // per_gpu)})
    if whole_node(job) or exclusive_partition:
        per_node = _whole_nodes(parts, cluster, where)
        per_total = sum(per_node.values())
        asked = sum(_merge(totals).values())
        spans = max(span, -(-asked // per_total)) if per_total else span
        totals.append({label: bounded(n * spans, f"{where}.partition") for label, n in per_node.items()})
    return _merge(totals)
