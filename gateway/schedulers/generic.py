"""A generic JSON job API described by configuration: paths, and dot paths to job fields."""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from gateway.core.jobs import JobPart, JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import Route, RouteKind, RouteMatch
from gateway.schedulers.base import (
    MAX_COUNT,
    LiveJob,
    bounded,
    count,
    dump_json,
    load_object,
    media_type,
    parameters,
    shown,
    status_ok,
    text,
    try_json,
)
from gateway.schedulers.status import JobView

WALLTIME_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_MISSING = object()


@dataclass(frozen=True, slots=True)
class GenericOptions:
    """Where a JSON job API keeps things. Paths are route patterns (`{job_id}` names the job);
    fields are dot paths into the submission (`resources.gpus`, `tasks.0.gpus`)."""

    submit_path: str
    gpus_field: str
    job_id_field: str = "id"
    job_path: str | None = None
    list_path: str | None = None
    cancel_path: str | None = None
    plain_read_paths: tuple[str, ...] = ()
    model_field: str | None = None
    walltime_field: str | None = None
    walltime_unit: str = "s"
    default_walltime_s: float | None = None
    concurrency_field: str | None = None
    lineage_field: str | None = None
    purpose_field: str | None = None
    name_field: str | None = None
    list_items_field: str | None = None
    list_id_field: str | None = None
    default_gpu_model: str | None = None
    state_field: str | None = None
    finished_states: tuple[str, ...] = ()
    params_field: str | None = None  # the model's parameter count the job declares (beside its lineage)
    _routes: tuple[Route, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.walltime_unit not in WALLTIME_UNITS:
            raise ValueError(f"walltime_unit must be one of {', '.join(WALLTIME_UNITS)}")
        for path in (self.job_path, self.cancel_path):
            if path is not None and "{job_id}" not in path:
                raise ValueError(f"{path!r} must contain {{job_id}}")
        routes = [Route.of("generic.submit", ("POST",), self.submit_path, RouteKind.SUBMIT)]
        if self.list_path:
            routes.append(Route.of("generic.list", ("GET",), self.list_path, RouteKind.LIST))
        if self.cancel_path:
            routes.append(Route.of("generic.cancel", ("POST",), self.cancel_path, RouteKind.CANCEL))
        if self.job_path:
            routes.append(Route.of("generic.read", ("GET",), self.job_path, RouteKind.READ))
            routes.append(Route.of("generic.delete", ("DELETE",), self.job_path, RouteKind.CANCEL))
        for i, path in enumerate(self.plain_read_paths):
            routes.append(Route.of(f"generic.plain.{i}", ("GET",), path, RouteKind.PLAIN_READ))
        object.__setattr__(self, "_routes", tuple(routes))


def lookup(doc: Any, dotted: str) -> Any:
    """The value at a dot path (`a.b.0.c`), or _MISSING; list indexes are digit segments."""
    node = doc
    for segment in dotted.split("."):
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            return _MISSING
    return node


def _present(doc: Any, dotted: str | None) -> Any:
    if dotted is None:
        return None
    value = lookup(doc, dotted)
    return None if value is _MISSING else value


@dataclass(frozen=True, slots=True)
class GenericAdapter:
    """A configured JSON API; refusals use problem+json."""

    options: GenericOptions
    name: ClassVar[str] = "generic"

    @property
    def default_gpu_model(self) -> str | None:
        return self.options.default_gpu_model

    def routes(self) -> tuple[Route, ...]:
        return self.options._routes

    def parse_submission(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec:
        kind = media_type(content_type)
        if kind is not None and kind != "application/json" and not kind.endswith("+json"):
            raise JobSpecInvalid("content-type", f"{kind} is not accepted; send application/json")
        doc = load_object(content_encoding, body)
        opts = self.options
        raw_gpus = _present(doc, opts.gpus_field)
        gpus = 0 if raw_gpus is None else count(raw_gpus, opts.gpus_field)
        raw_copies = _present(doc, opts.concurrency_field)
        copies = 1 if raw_copies is None else count(raw_copies, opts.concurrency_field or "")
        bounded(gpus * copies, opts.gpus_field)
        model = _present(doc, opts.model_field)
        if model is not None and not isinstance(model, str):
            raise JobSpecInvalid(opts.model_field or "model", "must be a string")
        raw_wall = _present(doc, opts.walltime_field)
        if raw_wall is not None:
            walltime = _walltime(raw_wall, opts.walltime_field or "walltime") * WALLTIME_UNITS[opts.walltime_unit]
        elif opts.default_walltime_s is not None:
            walltime = opts.default_walltime_s
        else:
            raise JobSpecInvalid(opts.walltime_field or "walltime", "the submission sets no walltime")
        return JobSpec(
            parts=(JobPart(gpus, text(model), copies),) if gpus and copies else (),
            walltime_s=walltime,
            purpose=text(_present(doc, opts.purpose_field)),
            lineage=text(_present(doc, opts.lineage_field)),
            name=text(_present(doc, opts.name_field)),
            parameters=parameters(_present(doc, opts.params_field), opts.params_field or "params"),
        )

    def parse_update(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec | None:
        raise JobUpdateNotAllowed("this scheduler has no priced update route")

    def job_id_from_response(self, match: RouteMatch, status: int, body: bytes) -> str | None:
        doc = try_json(body)
        if not status_ok(status):
            return None
        return _id_text(lookup(doc, self.options.job_id_field))

    def job_id_of(self, match: RouteMatch) -> str | None:
        return match.job_id

    def definitive_rejection(self, status: int, body: bytes) -> bool:
        return 400 <= status < 500

    def filter_listing(self, match: RouteMatch, body: bytes, owned: Callable[[str], bool]) -> bytes:
        doc = try_json(body)
        opts = self.options
        id_field = opts.list_id_field or opts.job_id_field

        def keep(items: Any) -> list[Any]:
            if not isinstance(items, list):
                return []
            kept = []
            for item in items:
                job_id = _id_text(lookup(item, id_field))
                if job_id is not None and owned(job_id):
                    kept.append(item)
            return kept

        if opts.list_items_field is None:
            return dump_json(keep(doc))
        if not isinstance(doc, dict):
            return dump_json({})
        # Rebuild only the path to the item list; siblings along it are kept as they are.
        *parents, last = opts.list_items_field.split(".")
        node: Any = doc
        for segment in parents:
            node = node.get(segment) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[last] = keep(node.get(last))
        else:
            return dump_json({})
        return dump_json(doc)

    def status_path(self, job_id: str) -> str | None:
        """`job_path` for the job, when a `state_field` says where its state is."""
        opts = self.options
        if opts.job_path is None or opts.state_field is None:
            return None
        return opts.job_path.replace("{job_id}", quote(job_id, safe=""))

    def finished(self, status: int, body: bytes) -> bool | None:
        """True when `state_field` holds one of `finished_states`; any other string is a live job."""
        state = lookup(try_json(body), self.options.state_field) if self.options.state_field else _MISSING
        if status != 200 or not isinstance(state, str):
            return None
        return state in self.options.finished_states

    def job_view(self, status: int, body: bytes) -> JobView:
        return JobView(self.finished(status, body))

    def cancel_target(self, raw_path: str) -> str:
        return raw_path

    def cancel_request(self, job_id: str) -> tuple[str, str] | None:
        return None  # a generic API's allocations are not read back

    def walltime_stop(self, job_id: str) -> tuple[str, str] | None:
        return None  # a generic API's own limits apply; the gateway cannot know how to stop its jobs

    def shares_cluster_lease(self) -> bool:
        return False  # each job is priced at what it asks for

    def refusal(self, code: str, status: int, title: str, detail: str, decision_id: str) -> tuple[str, bytes] | None:
        return None

    def live_jobs_path(self) -> str | None:
        return None  # a generic API's listing names neither users nor states the gateway can read

    def live_gpu_jobs(self, status: int, body: bytes, user: str | None) -> tuple[LiveJob, ...] | None:
        return None


def _walltime(value: Any, field: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise JobSpecInvalid(field, f"cannot read walltime {shown(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobSpecInvalid(field, "must be a number")
    if not math.isfinite(value) or value <= 0 or value > MAX_COUNT * 3600:
        raise JobSpecInvalid(field, "must be a positive, finite walltime")
    return float(value)


def _id_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is _MISSING:
        return None
    if isinstance(value, int):
        return str(value)
    return text(value)
