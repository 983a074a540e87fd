"""Kubernetes API (batch/v1 Jobs, v1 Pods, RayCluster/RayJob/PyTorchJob): routes, job extraction, updates, Status."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

from gateway.core.jobs import JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import Route, RouteKind, RouteMatch
from gateway.schedulers.base import (
    LiveJob,
    decode_content,
    dump_json,
    key_name,
    load_json,
    load_object,
    media_type,
    query_pairs,
    status_ok,
    try_json,
)
from gateway.schedulers.kubernetes_crds import (
    CRD_ROUTES,
    crd_merge_touches,
    crd_of,
    crd_op_touches,
    crd_over,
    crd_status_path,
    object_id,
)
from gateway.schedulers.kubernetes_patch import merge_touches, op_touches
from gateway.schedulers.kubernetes_pods import job_spec
from gateway.schedulers.kubernetes_training import training_spec
from gateway.schedulers.status import JobView, kubernetes_finished


@dataclass(frozen=True, slots=True)
class KubernetesOptions:
    """Defaults and label names for pricing Jobs and Pods."""

    default_gpu_model: str | None = None
    default_walltime_s: float | None = None
    lineage_label: str = "exportgate.io/model-lineage"
    purpose_label: str = "exportgate.io/purpose"
    params_label: str = "exportgate.io/model-params"  # the model's parameter count (label or annotation)


_JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
_PODS = "/api/v1/namespaces/{ns}/pods"

ROUTES = (
    Route.of("k8s.jobs.create", ("POST",), _JOBS, RouteKind.SUBMIT),
    Route.of("k8s.jobs.list", ("GET",), _JOBS, RouteKind.LIST),
    Route.of("k8s.job.read", ("GET",), _JOBS + "/{name}", RouteKind.READ),
    Route.of("k8s.job.status", ("GET",), _JOBS + "/{name}/status", RouteKind.READ),
    Route.of("k8s.job.delete", ("DELETE",), _JOBS + "/{name}", RouteKind.CANCEL),
    Route.of("k8s.job.patch", ("PATCH",), _JOBS + "/{name}", RouteKind.UPDATE),
    Route.of("k8s.job.replace", ("PUT",), _JOBS + "/{name}", RouteKind.UPDATE),
    Route.of("k8s.pods.create", ("POST",), _PODS, RouteKind.SUBMIT),
    Route.of("k8s.pods.list", ("GET",), _PODS, RouteKind.LIST),
    Route.of("k8s.pod.read", ("GET",), _PODS + "/{name}", RouteKind.READ),
    Route.of("k8s.pod.log", ("GET",), _PODS + "/{name}/log", RouteKind.READ),
    Route.of("k8s.pod.delete", ("DELETE",), _PODS + "/{name}", RouteKind.CANCEL),
    Route.of("k8s.pod.patch", ("PATCH",), _PODS + "/{name}", RouteKind.UPDATE),
    Route.of("k8s.pod.replace", ("PUT",), _PODS + "/{name}", RouteKind.UPDATE),
    Route.of("k8s.version", ("GET",), "/version", RouteKind.PLAIN_READ),
    Route.of("k8s.healthz", ("GET",), "/healthz", RouteKind.PLAIN_READ),
    Route.of("k8s.api", ("GET",), "/api", RouteKind.PLAIN_READ),
    Route.of("k8s.api.v1", ("GET",), "/api/v1", RouteKind.PLAIN_READ),
    Route.of("k8s.apis", ("GET",), "/apis", RouteKind.PLAIN_READ),
    Route.of("k8s.apis.batch", ("GET",), "/apis/batch/v1", RouteKind.PLAIN_READ),
    *CRD_ROUTES,
)

_JSON = "application/json"
_MERGE_PATCHES = (
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",  # server-side apply; accepted only when the body is JSON
)
_JSON_PATCH = "application/json-patch+json"
# Job spec fields whose change alters what the Job holds: pods at once, pod shape, deadline,
# and resuming a suspended Job (its deadline timer restarts).
_RESOURCE_FIELDS = ("parallelism", "template", "activeDeadlineSeconds", "suspend")
_SUSPEND = ("suspend",)  # the spec path whose `true` suspends a Job
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _is_pods(match: RouteMatch) -> bool:
    return match.route.pattern.startswith(_PODS)


def _reason(status: int) -> str:
    if status in _REASONS:
        return _REASONS[status]
    if 400 <= status < 500:
        return "Forbidden" if status == 451 else "BadRequest"
    return "ServiceUnavailable" if status >= 502 else "InternalError"


@dataclass(frozen=True, slots=True)
class KubernetesAdapter:
    """The Kubernetes API's dialect; job ids are "{ns}/{name}", or "{ns}/{plural}.{group}/{name}" for CRDs."""

    options: KubernetesOptions
    name: ClassVar[str] = "kubernetes"

    @property
    def default_gpu_model(self) -> str | None:
        return self.options.default_gpu_model

    def routes(self) -> tuple[Route, ...]:
        return ROUTES

    def _spec(self, doc: Mapping[str, Any], match: RouteMatch) -> JobSpec:
        crd = crd_of(match)
        if crd is not None:
            return training_spec(
                doc,
                *crd,
                default_walltime_s=self.options.default_walltime_s,
                lineage_label=self.options.lineage_label,
                purpose_label=self.options.purpose_label,
                params_label=self.options.params_label,
            )
        return job_spec(
            doc,
            is_pod=_is_pods(match),
            default_walltime_s=self.options.default_walltime_s,
            lineage_label=self.options.lineage_label,
            purpose_label=self.options.purpose_label,
            params_label=self.options.params_label,
        )

    def parse_submission(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec:
        _require(content_type, (_JSON,))
        return self._spec(load_object(content_encoding, body), match)

    def parse_update(
        self, match: RouteMatch, content_type: str | None, content_encoding: str | None, body: bytes
    ) -> JobSpec | None:
        if "PUT" in match.route.methods:
            _require(content_type, (_JSON,))
            doc = load_object(content_encoding, body)
            if _is_pods(match):
                return None  # a pod's containers and resources are immutable
            return self._spec(doc, match)  # a full replacement: price the new object
        kind = _require(content_type, (*_MERGE_PATCHES, _JSON_PATCH))
        value = load_json(decode_content(content_encoding, body))
        if _is_pods(match):
            return None
        crd = crd_of(match)
        if kind == _JSON_PATCH:
            if not isinstance(value, list):
                raise JobSpecInvalid("body", "a JSON patch must be a list of operations")
            touched = [crd_op_touches(crd[0], op) if crd else _op_touches(op) for op in value]
            reason = next((t for t in touched if t), None)
        else:
            if not isinstance(value, dict):
                raise JobSpecInvalid("body", "a merge patch must be a JSON object")
            reason = crd_merge_touches(crd[0], value) if crd else _merge_touches(value)
        if reason is None:
            return None
        # A patch merges into an object whose current pod templates we cannot see (maps merge,
        # strategic lists merge by name), so the new total cannot be priced from it alone.
        what = crd[0].kind if crd else "Job"
        raise JobUpdateNotAllowed(f"the patch changes {reason}; replace the whole {what} with PUT instead")

    def job_id_from_response(self, match: RouteMatch, status: int, body: bytes) -> str | None:
        doc = try_json(body)
        if not status_ok(status) or not isinstance(doc, dict):
            return None
        metadata = doc.get("metadata")
        if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
            return None
        namespace = metadata.get("namespace")
        ns = namespace if isinstance(namespace, str) and namespace else match.params.get("ns")
        return object_id(match, ns, metadata["name"]) if ns else None

    def job_id_of(self, match: RouteMatch) -> str | None:
        ns, name = match.params.get("ns"), match.params.get("name")
        return object_id(match, ns, name) if ns and name else None

    def definitive_rejection(self, status: int, body: bytes) -> bool:
        doc = try_json(body)
        return 400 <= status < 500 and isinstance(doc, dict) and doc.get("kind") == "Status"

    def filter_listing(self, match: RouteMatch, body: bytes, owned: Callable[[str], bool]) -> bytes:
        doc = try_json(body)
        if not isinstance(doc, dict):
            return dump_json({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": []})
        ns = match.params.get("ns", "")

        def keep(obj: Any) -> bool:
            metadata = obj.get("metadata") if isinstance(obj, dict) else None
            if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
                return False
            namespace = metadata.get("namespace") or ns
            return owned(object_id(match, namespace, metadata["name"]))

        if doc.get("kind") == "Table":  # kubectl get asks for server-side tables
            rows = doc.get("rows")
            kept = rows if isinstance(rows, list) else []
            doc["rows"] = [r for r in kept if isinstance(r, dict) and keep(r.get("object"))]
        else:
            items = doc.get("items")
            doc["items"] = [i for i in items if keep(i)] if isinstance(items, list) else []
        return dump_json(doc)

    def status_path(self, job_id: str) -> str | None:
        """The Job's path; a Pod's id (same `{ns}/{name}` form) finds no Job there and stays held.

        A custom resource's id (`{ns}/{plural}.{group}/{name}`) is read at its own path.
        """
        ns, _, name = job_id.partition("/")
        if "/" in name:
            return crd_status_path(job_id)
        if not ns or not name:
            return None
        return _JOBS.replace("{ns}", quote(ns, safe="")) + "/" + quote(name, safe="")

    def finished(self, status: int, body: bytes) -> bool | None:
        return kubernetes_finished(status, body)

    def job_view(self, status: int, body: bytes) -> JobView:
        over = crd_over(status, try_json(body))
        return JobView(kubernetes_finished(status, body) if over is None else over)

    def cancel_target(self, raw_path: str) -> str:
        """Deletes take the workload's pods with them, and really delete.

        A batch/v1 Job deleted through the API without `propagationPolicy` orphans its pods (kubectl
        asks for Background itself): the gateway asks for Background then. `Orphan`,
        `orphanDependents=true` and `dryRun` would leave the pods running, or the object in place,
        while the gateway gave the capacity back: refused.
        """
        _, pairs = query_pairs(raw_path)
        names = [name for name, _ in pairs]
        for name, value in pairs:
            if (
                (name == "propagationPolicy" and value not in ("Background", "Foreground"))
                or (name == "orphanDependents" and value != "false")
                or name == "dryRun"
            ):
                why = "a delete through the gateway must delete the workload and its pods: propagationPolicy "
                raise JobSpecInvalid(f"query.{key_name(name)}", why + "Background or Foreground, no dryRun")
        if "propagationPolicy" in names:
            return raw_path
        return raw_path + ("&" if "?" in raw_path else "?") + "propagationPolicy=Background"

    def cancel_request(self, job_id: str) -> tuple[str, str] | None:
        return None  # reconciliation reads no Pod allocations, so it never needs to cancel

    def walltime_stop(self, job_id: str) -> tuple[str, str] | None:
        return None  # a Job's activeDeadlineSeconds is enforced by its controller

    def shares_cluster_lease(self) -> bool:
        return False  # a pod holds the GPUs it requests

    def live_jobs_path(self) -> str | None:
        return None  # namespaces' workloads are not swept for jobs the gateway never admitted

    def live_gpu_jobs(self, status: int, body: bytes, user: str | None) -> tuple[LiveJob, ...] | None:
        return None

    def refusal(self, code: str, status: int, title: str, detail: str, decision_id: str) -> tuple[str, bytes] | None:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"exportgate: {title}: {detail} (code {code}, decision {decision_id})",
            "reason": _reason(status),
            "details": {
                "causes": [
                    {"reason": code, "message": detail, "field": "exportgate.code"},
                    {"reason": "DecisionId", "message": decision_id, "field": "exportgate.decision_id"},
                ],
            },
            "code": status,
        }
        return _JSON, dump_json(body)


def _require(content_type: str | None, accepted: tuple[str, ...]) -> str:
    kind = media_type(content_type)
    if kind not in accepted:
        raise JobSpecInvalid(
            "body", f"content type {kind or '(none)'} is not accepted here; send {' or '.join(accepted)}"
        )
    return kind


def _merge_touches(patch: Mapping[str, Any]) -> str | None:
    """What resource field a merge or apply patch sets, or None if it sets none."""
    return merge_touches(patch, _SUSPEND, lambda key: key in _RESOURCE_FIELDS)


def _op_touches(op: Any) -> str | None:
    """What resource field a JSON-patch operation changes, or None if it changes none."""
    return op_touches(op, _SUSPEND, lambda tokens: f"spec.{tokens[1]}" if tokens[1] in _RESOURCE_FIELDS else None)
