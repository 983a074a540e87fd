"""Ray Jobs REST API (dashboard): routes, submission extraction, listings."""

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from gateway.core.jobs import IDEMPOTENCY_KEY, JobPart, JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.pricing import CANDIDATE_SEPARATOR
from gateway.core.routes import Route, RouteKind, RouteMatch
from gateway.schedulers.base import (
    MAX_COUNT,
    LiveJob,
    dump_json,
    key_name,
    load_object,
    mapping,
    media_type,
    parameters,
    shown,
    status_ok,
    text,
    try_json,
)
from gateway.schedulers.live import ray_live_jobs
from gateway.schedulers.ray_capacity import EMPTY, NODES_PATH, RayCapacity
from gateway.schedulers.status import JobView, ray_finished, ray_view


@dataclass(frozen=True, slots=True)
class RayOptions:
    """Where Ray submissions carry what Ray itself has no field for (walltime, lineage), and how they are priced.

    A Ray job's driver may start tasks and actors that claim any GPU of its cluster, whatever
    its entrypoint asked for; so `pricing: cluster` (the default) prices every job at the
    cluster's GPUs: `cluster_gpus` (model -> count) when set, else what Ray lists (its live nodes,
    read every `capacity_refresh_s`; the most seen per model since start). `pricing: entrypoint`
    prices only the entrypoint's own resources, and is right only for clusters that confine drivers.
    """

    walltime_metadata_key: str = "time_limit_min"
    default_walltime_s: float | None = None
    default_gpu_model: str | None = None
    lineage_key: str = "model_lineage"
    purpose_key: str = "purpose"
    pricing: str = "cluster"
    cluster_gpus: Mapping[str, int] = field(default_factory=dict)
    capacity_refresh_s: float = 60.0
    params_key: str = "model_params"  # the model's parameter count the job declares (beside its lineage)


# Code packages the CLI uploads for `--working-dir` / `py_modules` (GET: does it exist; PUT: upload).
# They change no job (plain reads for admission); the gateway keeps them to the tenant that uploaded them.
PACKAGE_READ = Route.of("ray.package.read", ("GET",), "/api/packages/gcs/{package_name}", RouteKind.PLAIN_READ)
PACKAGE_UPLOAD = Route.of("ray.package.upload", ("PUT",), "/api/packages/gcs/{package_name}", RouteKind.PLAIN_READ)
PACKAGE_ROUTES = (PACKAGE_READ, PACKAGE_UPLOAD)

ROUTES = (
    Route.of("ray.jobs.submit", ("POST",), "/api/jobs/", RouteKind.SUBMIT),
    Route.of("ray.jobs.list", ("GET",), "/api/jobs/", RouteKind.LIST),
    Route.of("ray.job.read", ("GET",), "/api/jobs/{job_id}", RouteKind.READ),
    Route.of("ray.job.delete", ("DELETE",), "/api/jobs/{job_id}", RouteKind.CANCEL),
    Route.of("ray.job.stop", ("POST",), "/api/jobs/{job_id}/stop", RouteKind.CANCEL),
    Route.of("ray.job.logs", ("GET",), "/api/jobs/{job_id}/logs", RouteKind.READ),
    Route.of("ray.job.tail", ("GET",), "/api/jobs/{job_id}/logs/tail", RouteKind.READ, websocket=True),
    Route.of("ray.version", ("GET",), "/api/version", RouteKind.PLAIN_READ),
    *PACKAGE_ROUTES,
)

# What Ray writes as a package name: `_ray_pkg_<hash>.zip`, or a wheel's own file name.
_PACKAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
# runtime_env fields whose URIs Ray fetches as packages (a str, or a list of them).
PACKAGE_FIELDS = ("working_dir", "py_modules", "java_jars")
GCS = "gcs://"

_ACCELERATOR = "accelerator_type:"
# Statuses with which Ray's dashboard refuses a submission it did not start. A 500 may come
# after the job was created (or be a duplicate id of a running job): not definitive.
_DEFINITIVE = frozenset({400, 401, 403, 404, 405, 409, 413, 415, 422})


def _gpu_number(value: Any, field: str) -> int:
    """A Ray resource amount as whole GPUs held: fractions round up (0.5 holds one GPU)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobSpecInvalid(field, f"must be a number, not {shown(value)}")
    if not math.isfinite(value) or value < 0:
        raise JobSpecInvalid(field, "must be a non-negative number")
    if value > MAX_COUNT:
        raise JobSpecInvalid(field, f"{value} GPUs is beyond any real allocation")
    return math.ceil(value)


def _walltime_s(value: Any, field: str) -> float:
    """Minutes from a metadata string ("120", "90.5") as seconds."""
    try:
        minutes = float(value) if isinstance(value, str) else math.nan
    except ValueError:
        minutes = math.nan
    if not math.isfinite(minutes) or minutes <= 0:
        raise JobSpecInvalid(field, f"must be a positive number of minutes, not {shown(value)}")
    return minutes * 60.0


@dataclass(frozen=True, slots=True)
class RayAdapter:
    """The Ray dashboard's dialect; job ids are submission ids."""

    options: RayOptions
    # The newest capacity snapshot read from Ray (the adapters layer keeps it fresh); unused with cluster_gpus.
    capacity: Callable[[], RayCapacity] = lambda: EMPTY
    name: ClassVar[str] = "ray"

    @property
    def default_gpu_model(self) -> str | None:
        return self.options.default_gpu_model

    def routes(self) -> tuple[Route, ...]:
        return ROUTES

    def parse_submission(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec:
        media_type(content_type)  # the dashboard parses any body as JSON; only refuse odd charsets
        doc = load_object(content_encoding, body)
        for key in doc:
            if "gpu" in key.lower() and key != "entrypoint_num_gpus":
                raise JobSpecInvalid(key_name(key), "unrecognised field that may hold GPUs")
        gpus = 0
        if doc.get("entrypoint_num_gpus") is not None:
            gpus = _gpu_number(doc["entrypoint_num_gpus"], "entrypoint_num_gpus")
        models: list[str] = []
        for key, value in mapping(doc.get("entrypoint_resources"), "entrypoint_resources").items():
            where = f"entrypoint_resources.{key_name(key)}"
            if key.startswith(_ACCELERATOR):
                amount = _gpu_number(value, where)
                model = key[len(_ACCELERATOR) :]
                if not model:
                    raise JobSpecInvalid(where, "names no accelerator type")
                models.append(model)
                gpus = max(gpus, amount)
            elif "gpu" in key.lower():
                raise JobSpecInvalid(where, "unrecognised resource that may hold GPUs")
        metadata = mapping(doc.get("metadata"), "metadata")
        key = self.options.walltime_metadata_key
        if metadata.get(key) is not None:
            walltime = _walltime_s(metadata[key], f"metadata.{key}")
        elif self.options.default_walltime_s is not None:
            walltime = self.options.default_walltime_s
        else:
            raise JobSpecInvalid(f"metadata.{key}", "no walltime: set it in the job's metadata (minutes)")
        for key in ("submission_id", "job_id"):  # the job id Ray echoes back: the ownership key
            value = doc.get(key)
            if value is not None and not (isinstance(value, str) and IDEMPOTENCY_KEY.match(value)):
                raise JobSpecInvalid(key, "must be 1 to 128 of A-Z a-z 0-9 . _ : -")
        label = CANDIDATE_SEPARATOR.join(sorted(models)) if models else None
        params_key = self.options.params_key
        parts: tuple[JobPart, ...] = (JobPart(gpus, label, 1),) if gpus else ()
        if self.options.pricing == "cluster":
            parts = self.cluster_parts()
        return JobSpec(
            parts=parts,
            walltime_s=walltime,
            purpose=text(metadata.get(self.options.purpose_key)),
            lineage=text(metadata.get(self.options.lineage_key)),
            name=text(doc.get("submission_id")) or text(doc.get("job_id")),
            idempotency_key=text(doc.get("submission_id")),
            packages=runtime_packages(doc),
            parameters=parameters(metadata.get(params_key), f"metadata.{key_name(params_key)}"),
        )

    def cluster_gpus(self) -> dict[str, int]:
        """The GPUs per model a job of this cluster may hold: `cluster_gpus` when configured, else the most
        Ray has listed per model since start (GPUs of no accelerator type at `default_gpu_model`)."""
        if self.options.cluster_gpus:
            return dict(self.options.cluster_gpus)
        capacity = self.capacity()
        if not capacity.loaded:
            raise JobSpecInvalid(
                "entrypoint_num_gpus",
                f"the Ray cluster's GPU capacity is unknown: the dashboard's node list (GET {NODES_PATH.split('?')[0]})"
                " has not been read; set scheduler_options.cluster_gpus or let the gateway reach the dashboard",
            )
        out: dict[str, int] = {}
        for model, n in capacity.peak.items():
            label = model if model is not None else self.options.default_gpu_model
            if label is None:
                raise JobSpecInvalid(
                    "entrypoint_num_gpus",
                    f"{n} GPUs of the Ray cluster have no accelerator_type resource: "
                    "set scheduler_options.default_gpu_model (their model) or cluster_gpus",
                )
            out[label] = out.get(label, 0) + n
        return out

    def cluster_parts(self) -> tuple[JobPart, ...]:
        return tuple(JobPart(n, model, 1) for model, n in sorted(self.cluster_gpus().items()) if n > 0)

    def parse_update(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec | None:
        raise JobUpdateNotAllowed("Ray jobs cannot be updated")

    def job_id_from_response(self, match: RouteMatch, status: int, body: bytes) -> str | None:
        doc = try_json(body)
        if not status_ok(status) or not isinstance(doc, dict):
            return None
        return text(doc.get("submission_id")) or text(doc.get("job_id"))

    def job_id_of(self, match: RouteMatch) -> str | None:
        return match.job_id

    def definitive_rejection(self, status: int, body: bytes) -> bool:
        return status in _DEFINITIVE

    def filter_listing(self, match: RouteMatch, body: bytes, owned: Callable[[str], bool]) -> bytes:
        doc = try_json(body)
        if not isinstance(doc, list):
            return b"[]"
        return dump_json([job for job in doc if _owned(job, owned)])

    def status_path(self, job_id: str) -> str | None:
        return f"/api/jobs/{quote(job_id, safe='')}"

    def finished(self, status: int, body: bytes) -> bool | None:
        return ray_finished(status, body)

    def job_view(self, status: int, body: bytes) -> JobView:
        return ray_view(status, body, self.options.walltime_metadata_key)

    def cancel_target(self, raw_path: str) -> str:
        return raw_path  # stop and delete take no options

    def cancel_request(self, job_id: str) -> tuple[str, str] | None:
        return "POST", f"/api/jobs/{quote(job_id, safe='')}/stop"

    def walltime_stop(self, job_id: str) -> tuple[str, str] | None:
        """Ray has no time limit of its own: the gateway stops a job that outlives the walltime it declared."""
        return "POST", f"/api/jobs/{quote(job_id, safe='')}/stop"

    def shares_cluster_lease(self) -> bool:
        """Priced at the cluster, every job of a tenant may claim the same GPUs: its live jobs hold the cluster once."""
        return self.options.pricing == "cluster"

    def refusal(self, code: str, status: int, title: str, detail: str, decision_id: str) -> tuple[str, bytes] | None:
        return None

    def live_jobs_path(self) -> str | None:
        return "/api/jobs/"

    def live_gpu_jobs(self, status: int, body: bytes, user: str | None) -> tuple[LiveJob, ...] | None:
        return ray_live_jobs(status, body)  # Ray names no users: every job of the cluster


def _owned(job: Any, owned: Callable[[str], bool]) -> bool:
    # Only the submission id: a tenant chooses it, so matching Ray's internal job id as
    # well would let one tenant claim another's job by naming a submission after it.
    submission_id = text(job.get("submission_id")) if isinstance(job, Mapping) else None
    return submission_id is not None and owned(submission_id)


def package_uri(match: RouteMatch) -> str | None:
    """`gcs://<name>` of a package route, or None when the name is not one Ray makes."""
    name = match.params.get("package_name", "")
    return GCS + name if _PACKAGE_NAME.match(name) else None


def package_uris(content_encoding: str | None, body: bytes) -> tuple[str, ...]:
    """Every GCS package a submission's runtime_env names (`working_dir`, `py_modules`, `java_jars`).

    Raises JobSpecInvalid for a URI that says `gcs:` in another spelling (case, spaces, no `//`,
    a name Ray does not make): Ray may read it as a package, so it is refused rather than let by.
    """
    return runtime_packages(load_object(content_encoding, body))


def runtime_packages(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """`package_uris` of a submission already read."""
    runtime_env = mapping(doc.get("runtime_env"), "runtime_env")
    found: list[str] = []
    for key in PACKAGE_FIELDS:
        value = runtime_env.get(key)
        values = value if isinstance(value, list) else [value]
        for i, item in enumerate(values):
            if not isinstance(item, str) or not item.strip().lower().startswith("gcs:"):
                continue
            where = f"runtime_env.{key}" + (f"[{i}]" if isinstance(value, list) else "")
            name = item[len(GCS) :] if item.startswith(GCS) else ""
            if not _PACKAGE_NAME.match(name):
                raise JobSpecInvalid(where, f"{shown(item)} is not a package URI of the form gcs://<name>")
            if item not in found:
                found.append(item)
    return tuple(found)
