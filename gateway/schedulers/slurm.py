"""The Slurm REST dialect (slurmrestd v0.0.36..v0.0.42): its routes, submissions, updates, job ids, listings."""

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gateway.core.jobs import JobPart, JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import Route, RouteKind, RouteMatch
from gateway.schedulers.base import (
    LiveJob,
    bounded,
    dump_json,
    key_name,
    load_object,
    media_type,
    parameters,
    query_pairs,
    status_ok,
    text,
    try_json,
)
from gateway.schedulers.live import slurm_id, slurm_live_gpu_jobs
from gateway.schedulers.slurm_facts import EMPTY, SlurmFacts
from gateway.schedulers.slurm_fields import (
    array_concurrency,
    comment_tags,
    environment,
    environment_value,
    time_limit_s,
)
from gateway.schedulers.slurm_gpus import GPU_FIELDS, RESOURCE_KEYS, Cluster, job_gpus, normalise
from gateway.schedulers.status import JobView, slurm_finished, slurm_view

VERSIONS = ("v0.0.36", "v0.0.37", "v0.0.38", "v0.0.39", "v0.0.40", "v0.0.41", "v0.0.42")


@dataclass(frozen=True, slots=True)
class SlurmOptions:
    """How to price Slurm jobs that leave things to the cluster.

    `partition_time_limits` (minutes) applies when a job's time limit is absent or
    infinite; `default_time_limit_min` covers jobs naming no partition or one not listed.

    The cluster's nodes and partitions are fetched from slurmrestd (`facts_version`, every
    `facts_refresh_s`) as the Slurm user `facts_user`; `exclusive_partitions` (OverSubscribe=EXCLUSIVE,
    which v0.0.36..v0.0.38 do not report), `partition_node_gpus` (GPUs of the partition's largest
    node, e.g. "h100:8") and `partition_nodes` (its node count) override what slurmrestd says.
    """

    partition_time_limits: Mapping[str, int] = field(default_factory=dict)
    default_time_limit_min: int | None = None
    default_gpu_model: str | None = None
    lineage_env: str = "EXPORTGATE_LINEAGE"
    purpose_env: str = "EXPORTGATE_PURPOSE"
    status_version: str = "v0.0.38"
    facts_user: str | None = None
    facts_version: str | None = None  # None: status_version
    facts_refresh_s: float = 60.0
    exclusive_partitions: frozenset[str] = frozenset()
    partition_node_gpus: Mapping[str, Mapping[str | None, int]] = field(default_factory=dict)
    partition_nodes: Mapping[str, int] = field(default_factory=dict)
    params_env: str = "EXPORTGATE_PARAMS"  # the model's parameter count the job declares (beside its lineage)


def _route(name: str, methods: tuple[str, ...], tail: str, kind: RouteKind) -> Route:
    """A route whose `{version}` segment only matches the versions slurmrestd serves."""
    route = Route.of(name, methods, "/slurm/{version}" + tail, kind)
    versions = "|".join(re.escape(v) for v in VERSIONS)
    regex = route.regex.pattern.replace("(?P<version>[^/]+)", f"(?P<version>{versions})", 1)
    return dataclasses.replace(route, regex=re.compile(regex))


ROUTES = (
    _route("slurm.job.submit", ("POST",), "/job/submit", RouteKind.SUBMIT),
    _route("slurm.job.read", ("GET",), "/job/{job_id}", RouteKind.READ),
    _route("slurm.job.update", ("POST",), "/job/{job_id}", RouteKind.UPDATE),
    _route("slurm.job.cancel", ("DELETE",), "/job/{job_id}", RouteKind.CANCEL),
    _route("slurm.jobs", ("GET",), "/jobs", RouteKind.LIST),
    _route("slurm.jobs.slash", ("GET",), "/jobs/", RouteKind.LIST),
    _route("slurm.ping", ("GET",), "/ping", RouteKind.PLAIN_READ),
    _route("slurm.diag", ("GET",), "/diag", RouteKind.PLAIN_READ),
    _route("slurm.partitions", ("GET",), "/partitions", RouteKind.PLAIN_READ),
    _route("slurm.nodes", ("GET",), "/nodes", RouteKind.PLAIN_READ),
)


@dataclass(frozen=True, slots=True)
class _Component:
    parts: tuple[JobPart, ...]
    walltime_s: float | None
    lineage: str | None
    purpose: str | None
    name: str | None
    parameters: float | None = None


@dataclass(frozen=True, slots=True)
class SlurmAdapter:
    """slurmrestd's dialect; refusals use problem+json (Slurm clients have no better one)."""

    options: SlurmOptions
    # The newest facts snapshot (the adapters layer keeps it fresh); pricing reads it once per request.
    facts: Callable[[], SlurmFacts] = lambda: EMPTY
    name: ClassVar[str] = "slurm"

    def cluster(self) -> Cluster:
        """The facts snapshot of this moment with the operator's overrides."""
        o = self.options
        return Cluster(
            self.facts(),
            o.exclusive_partitions,
            {k: dict(v) for k, v in o.partition_node_gpus.items()},
            o.partition_nodes,
        )

    @property
    def default_gpu_model(self) -> str | None:
        return self.options.default_gpu_model

    def routes(self) -> tuple[Route, ...]:
        return ROUTES

    def _partition_limit_s(self, partition: Any) -> float | None:
        limits = self.options.partition_time_limits
        default = self.options.default_time_limit_min
        names = [p.strip() for p in partition.split(",") if p.strip()] if isinstance(partition, str) else []
        if not names:
            return default * 60.0 if default else None
        found: list[int] = []
        for name in names:
            minutes = limits.get(name, default)
            if not minutes:
                return None
            found.append(minutes)
        return max(found) * 60.0  # a job may run in any partition it names

    def _component(self, raw: Any, where: str, cluster: Cluster, *, partition_default: bool) -> _Component:
        job = normalise(raw, where)
        copies = array_concurrency(job["array"], f"{where}.array") if "array" in job else 1
        parts = tuple(JobPart(n, label, copies) for label, n in job_gpus(job, where, cluster).items())
        walltime = time_limit_s(job.get("time_limit"), f"{where}.time_limit")
        if walltime is None and partition_default:
            walltime = self._partition_limit_s(job.get("partition"))
        env = environment(job.get("environment"))
        tags = comment_tags(job.get("comment"))
        params_env = self.options.params_env
        declared = environment_value(job.get("environment"), params_env)
        if declared is not None:
            params = parameters(declared, f"{where}.environment.{params_env}")
        else:
            params = parameters(tags.get("params"), f"{where}.comment")  # exportgate:params=N
        return _Component(
            parts=parts,
            walltime_s=walltime,
            lineage=text(env.get(self.options.lineage_env)) or tags.get("lineage"),
            purpose=text(env.get(self.options.purpose_env)) or tags.get("purpose"),
            name=text(job.get("name")),
            parameters=params,
        )

    def parse_submission(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec:
        _json_only(content_type)
        doc = load_object(content_encoding, body)
        if "job" in doc and "jobs" in doc:
            raise JobSpecInvalid("body", "give either job or jobs, not both")
        raw = doc.get("job", doc.get("jobs"))
        if raw is None:
            raise JobSpecInvalid("job", "the submission holds no job description")
        raws = raw if isinstance(raw, list) else [raw]
        if not raws:
            raise JobSpecInvalid("jobs", "a heterogeneous job needs at least one component")
        key = "job" if "job" in doc else "jobs"
        cluster = self.cluster()
        components = [
            self._component(r, f"{key}[{i}]" if isinstance(raw, list) else key, cluster, partition_default=True)
            for i, r in enumerate(raws)
        ]
        walltimes = [c.walltime_s for c in components]
        if any(w is None for w in walltimes):
            raise JobSpecInvalid("time_limit", "no time limit, and no limit is configured for the job's partition")
        parts = tuple(p for c in components for p in c.parts)
        bounded(sum(p.gpus * p.concurrency for p in parts), "gpus")
        # A purpose can exempt the whole job from the training count, so it is the job's only
        # when every component declares the same one; one undeclared component leaves it unset.
        purposes = {c.purpose for c in components}
        return JobSpec(
            parts=parts,
            walltime_s=max(w for w in walltimes if w is not None),
            purpose=purposes.pop() if len(purposes) == 1 else None,
            lineage=next((c.lineage for c in components if c.lineage), None),
            name=next((c.name for c in components if c.name), None),
            # The components run one model: the largest count any of them declares is the job's.
            parameters=max((c.parameters for c in components if c.parameters is not None), default=None),
        )

    def parse_update(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec | None:
        _json_only(content_type)
        doc = load_object(content_encoding, body)
        if "jobs" in doc:
            raise JobUpdateNotAllowed("a heterogeneous job update cannot be priced")
        raw = doc["job"] if set(doc) == {"job"} else doc
        job = normalise(raw, "job")
        if not RESOURCE_KEYS & set(job):
            return None
        # Only a complete restatement can be priced: the job's current values are unknown.
        missing = []
        if not any(k in job for k in GPU_FIELDS):
            missing.append("a GPU field")
        if time_limit_s(job.get("time_limit")) is None:
            missing.append("a finite time_limit")
        pers = {GPU_FIELDS[k][1] for k in job if k in GPU_FIELDS}
        if pers & {"node", "socket", "task"} and not ({"nodes", "maximum_nodes"} & set(job)):
            missing.append("nodes")
        if "task" in pers and not ({"tasks", "tasks_per_node"} & set(job)):
            missing.append("tasks")
        if "socket" in pers and "sockets_per_node" not in job:
            missing.append("sockets_per_node")
        if missing:
            raise JobUpdateNotAllowed(
                f"the update changes resources but lacks {', '.join(missing)} to price the new total"
            )
        c = self._component(raw, "job", self.cluster(), partition_default=False)
        return JobSpec(c.parts, c.walltime_s, c.purpose, c.lineage, c.name, parameters=c.parameters)

    def job_id_from_response(self, match: RouteMatch, status: int, body: bytes) -> str | None:
        doc = try_json(body)
        if not status_ok(status) or not isinstance(doc, dict):
            return None
        result = doc.get("result")
        for value in (doc.get("job_id"), result.get("job_id") if isinstance(result, dict) else None):
            job_id = slurm_id(value)
            if job_id is not None:
                return job_id
        return None

    def job_id_of(self, match: RouteMatch) -> str | None:
        raw = match.job_id
        if raw is None:
            return None
        found = re.fullmatch(r"([0-9]+)(?:[_+].*)?", raw)  # array task 12_3, het component 12+1
        return found[1] if found else raw

    def parent_job_id(self, job_id: str, status: int, body: bytes) -> str | None:
        """The array (or heterogeneous) job that job `job_id` is a task (component) of, per slurmctld's
        answer to `status_path(job_id)`; None when it is a job of its own or the answer does not say."""
        doc = try_json(body)
        jobs = doc.get("jobs") if status_ok(status) and isinstance(doc, dict) else None
        for record in jobs if isinstance(jobs, list) else []:
            if not isinstance(record, dict) or slurm_id(record.get("job_id")) != job_id:
                continue
            for key in ("array_job_id", "het_job_id"):
                parent = slurm_id(record.get(key))
                if parent is not None and parent != job_id:
                    return parent
            return None
        return None

    def definitive_rejection(self, status: int, body: bytes) -> bool:
        if 400 <= status < 500:
            return True
        if status != 500:
            return False
        doc = try_json(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        return isinstance(errors, list) and any(_slurm_error(e) for e in errors)

    def filter_listing(self, match: RouteMatch, body: bytes, owned: Callable[[str], bool]) -> bytes:
        doc = try_json(body)
        if not isinstance(doc, dict):
            return dump_json({"jobs": []})
        jobs = doc.get("jobs")
        doc["jobs"] = [j for j in jobs if _owned_job(j, owned)] if isinstance(jobs, list) else []
        return dump_json(doc)

    def status_path(self, job_id: str) -> str | None:
        return f"/slurm/{self.options.status_version}/job/{job_id}" if re.fullmatch(r"[0-9]+", job_id) else None

    def finished(self, status: int, body: bytes) -> bool | None:
        return slurm_finished(status, body)

    def job_view(self, status: int, body: bytes) -> JobView:
        return slurm_view(status, body)

    def cancel_target(self, raw_path: str) -> str:
        """A cancel kills the job: `signal` only as KILL (any other signal leaves it running), no `flags`."""
        _, pairs = query_pairs(raw_path)
        for name, value in pairs:
            if name == "signal" and value.upper().removeprefix("SIG") in ("KILL", "9"):
                continue
            raise JobSpecInvalid(
                f"query.{key_name(name)}", "a cancel through the gateway must end the job: send no signal or flags"
            )
        return raw_path

    def cancel_request(self, job_id: str) -> tuple[str, str] | None:
        path = self.status_path(job_id)
        return None if path is None else ("DELETE", path)

    def walltime_stop(self, job_id: str) -> tuple[str, str] | None:
        return None  # slurmctld ends a job at its time limit itself

    def shares_cluster_lease(self) -> bool:
        return False  # a job holds the GPUs it is allocated

    def refusal(self, code: str, status: int, title: str, detail: str, decision_id: str) -> tuple[str, bytes] | None:
        return None

    def live_jobs_path(self) -> str | None:
        return f"/slurm/{self.options.status_version}/jobs"

    def live_gpu_jobs(self, status: int, body: bytes, user: str | None) -> tuple[LiveJob, ...] | None:
        version = self.options.status_version
        return slurm_live_gpu_jobs(status, body, user, lambda job_id: ("DELETE", f"/slurm/{version}/job/{job_id}"))


def _json_only(content_type: str | None) -> None:
    kind = media_type(content_type)
    if kind is not None and kind != "application/json":
        raise JobSpecInvalid("content-type", f"{kind} is not accepted; send application/json")


def _slurm_error(error: Any) -> bool:
    """An error object as slurmrestd writes it: a numeric error_code or error_number."""
    if not isinstance(error, dict):
        return False
    codes = (error.get("error_code"), error.get("error_number"))
    return any(isinstance(c, int) and not isinstance(c, bool) for c in codes)


def _owned_job(job: Any, owned: Callable[[str], bool]) -> bool:
    if not isinstance(job, dict):
        return False
    ids = (slurm_id(job.get(k)) for k in ("job_id", "array_job_id", "het_job_id"))
    return any(i is not None and owned(i) for i in ids)
