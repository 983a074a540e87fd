"""The custom resources GPU tenants train with: KubeRay RayCluster and RayJob, Kubeflow PyTorchJob.

Their routes, their job ids and which of their patches change what they hold. What they hold
is read in kubernetes_training.py. Any other custom resource matches no route.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway.core.routes import Route, RouteKind, RouteMatch
from gateway.schedulers.kubernetes_patch import merge_touches, op_touches


@dataclass(frozen=True, slots=True)
class Crd:
    """One custom resource: its kind, API group, plural, served versions and where it is suspended."""

    kind: str
    group: str
    plural: str
    versions: tuple[str, ...]
    suspend: tuple[str, ...]  # the spec path whose `true` suspends the whole object

    @property
    def resource(self) -> str:
        """`plural.group`, as kubectl names a resource; the middle segment of its job ids."""
        return f"{self.plural}.{self.group}"

    def collection(self, version: str) -> str:
        return f"/apis/{self.group}/{version}/namespaces/{{ns}}/{self.plural}"


RAYCLUSTER = Crd("RayCluster", "ray.io", "rayclusters", ("v1", "v1alpha1"), ("suspend",))
RAYJOB = Crd("RayJob", "ray.io", "rayjobs", ("v1", "v1alpha1"), ("suspend",))
PYTORCHJOB = Crd("PyTorchJob", "kubeflow.org", "pytorchjobs", ("v1",), ("runPolicy", "suspend"))
CRDS = (RAYCLUSTER, RAYJOB, PYTORCHJOB)


def _routes() -> tuple[Route, ...]:
    out: list[Route] = []
    discovery: list[str] = []
    for crd in CRDS:
        for version in crd.versions:
            base, name = crd.collection(version), f"k8s.{crd.plural}.{version}"
            item = base + "/{name}"
            out += [
                Route.of(f"{name}.create", ("POST",), base, RouteKind.SUBMIT),
                Route.of(f"{name}.list", ("GET",), base, RouteKind.LIST),
                Route.of(f"{name}.read", ("GET",), item, RouteKind.READ),
                Route.of(f"{name}.status", ("GET",), item + "/status", RouteKind.READ),
                Route.of(f"{name}.delete", ("DELETE",), item, RouteKind.CANCEL),
                Route.of(f"{name}.patch", ("PATCH",), item, RouteKind.UPDATE),
                Route.of(f"{name}.replace", ("PUT",), item, RouteKind.UPDATE),
            ]
            if f"/apis/{crd.group}/{version}" not in discovery:
                discovery.append(f"/apis/{crd.group}/{version}")
    out += [Route.of(f"k8s.apis.{path[6:]}", ("GET",), path, RouteKind.PLAIN_READ) for path in discovery]
    return tuple(out)


CRD_ROUTES = _routes()
_COLLECTIONS = {crd.collection(v): (crd, v) for crd in CRDS for v in crd.versions}


def crd_of(match: RouteMatch) -> tuple[Crd, str] | None:
    """The custom resource and version a matched route is about, or None for Jobs, Pods and the rest."""
    pattern = match.route.pattern
    base = pattern.split("/{name}", 1)[0]
    return _COLLECTIONS.get(base)


def object_id(match: RouteMatch, namespace: str, name: str) -> str:
    """A Job's or Pod's id is `<ns>/<name>`; a custom resource's is `<ns>/<plural>.<group>/<name>`.

    Distinct ids keep a RayCluster and a Job of the same name from sharing one lease, so
    deleting one can never release what the other holds.
    """
    found = crd_of(match)
    return f"{namespace}/{found[0].resource}/{name}" if found else f"{namespace}/{name}"


def crd_merge_touches(crd: Crd, patch: Mapping[str, Any]) -> str | None:
    """What a merge or apply patch changes that may change what the object holds, or None.

    Every spec field of these kinds feeds its pods (groups, replicas, templates, autoscaling,
    deadlines, deletion), so any spec change counts, except suspending it.
    """
    return merge_touches(patch, crd.suspend, lambda key: True)


def crd_op_touches(crd: Crd, op: Any) -> str | None:
    """What a JSON-patch operation changes under spec (but suspending), or None."""
    return op_touches(op, crd.suspend, lambda tokens: "spec." + ".".join(tokens[1:3]))


_BY_RESOURCE = {crd.resource: crd for crd in CRDS}
# Terminal conditions of a Kubeflow training job: its pods have stopped (and hold no GPU).
_TRAINING_OVER = ("Succeeded", "Failed")


def crd_status_path(job_id: str) -> str | None:
    """Where a custom resource's id (`<ns>/<plural>.<group>/<name>`) is read, at its first served version."""
    parts = job_id.split("/")
    crd = _BY_RESOURCE.get(parts[1]) if len(parts) == 3 else None
    if crd is None or not parts[0] or not parts[2]:
        return None
    return crd.collection(crd.versions[0]).replace("{ns}", quote(parts[0], safe="")) + "/" + quote(parts[2], safe="")


def crd_over(status: int, doc: Any) -> bool | None:
    """Whether a custom resource's answer says it holds nothing any more; None when it is not one's answer.

    Deleted (the API server's NotFound `Status` naming one of these resources): over. A PyTorchJob
    with a `Succeeded` or `Failed` condition `"True"`: over. A RayCluster lives until deleted, and a
    RayJob's cluster may outlive the job (`shutdownAfterJobFinishes` false, or its TTL not yet
    passed): both are held while the object exists.
    """
    if not isinstance(doc, Mapping):
        return None
    if doc.get("kind") == "Status" and status == 404 and doc.get("reason") == "NotFound":
        details = doc.get("details")
        if isinstance(details, Mapping) and f"{details.get('kind')}.{details.get('group')}" in _BY_RESOURCE:
            return True
        return None
    if status != 200 or doc.get("kind") not in {crd.kind for crd in CRDS}:
        return None
    if doc["kind"] != PYTORCHJOB.kind:
        return False
    state = doc.get("status")
    conditions = state.get("conditions") if isinstance(state, Mapping) else None
    over = [c for c in conditions if isinstance(c, Mapping)] if isinstance(conditions, list) else []
    return any(c.get("type") in _TRAINING_OVER and c.get("status") == "True" for c in over)
