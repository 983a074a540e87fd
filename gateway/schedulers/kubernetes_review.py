"""AdmissionReview v1 (`admission.k8s.io/v1`) as the API server sends it to a validating webhook, and the answer.

The review's object is the object the API server is about to store: defaulted, mutated, and (in a
validating webhook) already named and given its uid, `generateName` included (the API server
generates the name and uid before it calls validating webhooks, and with RetryGenerateName calls
them again, with a new name and uid, for each attempt). So an admitted object is identified by
namespace, name and uid: `<ns>/<resource>/<name>/<uid>`, where `<resource>` is `jobs.batch`,
`pods` or the custom resource's `<plural>.<group>`. Reconciliation reads it back at its own path
and keeps its lease only while an object of that uid is there.

A create or update is priced as the Kubernetes adapter prices a POST or PUT of the same object to
the same API path (`api_route`), so the proxy and the webhook read one object one way.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.jobs import JobSpecInvalid
from gateway.schedulers.base import mapping, try_json
from gateway.schedulers.kubernetes_crds import CRDS, crd_over
from gateway.schedulers.kubernetes_pods import no_gpu_sharing, pod_gpus
from gateway.schedulers.status import kubernetes_finished

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
# A DNS subdomain (object names) or label (namespaces): what the API server accepts, so never a path trick.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
# The resources the adapter prices, by `<plural>.<group>` ("pods": the core group), with the version read back.
READ_VERSIONS: dict[str, str] = {"jobs.batch": "v1", "pods": "v1", **{c.resource: c.versions[0] for c in CRDS}}
_KINDS: dict[tuple[str, str], str] = {  # (group, kind) -> resource
    ("batch", "Job"): "jobs.batch",
    ("", "Pod"): "pods",
    **{(c.group, c.kind): c.resource for c in CRDS},
}
_POD_OVER = ("Succeeded", "Failed")


class ReviewInvalid(ValueError):
    """The body is not an AdmissionReview v1 request the gateway can read; `field` names where."""

    def __init__(self, field: str, detail: str, uid: str | None = None) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail
        self.uid = uid  # the request's uid when it could be read: the answer can still name it


@dataclass(frozen=True, slots=True)
class Resource:
    """A group, version and resource (plural) as the review names them; the core group is ""."""

    group: str
    version: str
    resource: str

    @property
    def key(self) -> str:
        """`<plural>.<group>` (`pods` for the core group): the middle of an admitted object's id."""
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def collection(self, namespace: str) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{base}/namespaces/{namespace}/{self.resource}"


@dataclass(frozen=True, slots=True)
class Review:
    """The parts of an AdmissionRequest the gateway decides on."""

    uid: str
    operation: str
    resource: Resource
    sub_resource: str
    namespace: str
    name: str
    username: str
    obj: Mapping[str, Any] | None
    old: Mapping[str, Any] | None
    dry_run: bool

    @property
    def object_uid(self) -> str:
        """The uid the API server gave the object (set before validating admission); "" when absent."""
        meta = self.obj.get("metadata") if self.obj is not None else None
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        return uid if isinstance(uid, str) and _UID.match(uid) else ""

    def api_route(self) -> tuple[str, str] | None:
        """(method, path) of the same change made through the API: POST to the collection, PUT to the item."""
        path = self.resource.collection(self.namespace)
        if self.operation == "CREATE":
            return "POST", path
        if self.operation == "UPDATE":
            return "PUT", f"{path}/{self.name}"
        return None

    def item_path(self) -> str:
        return f"{self.resource.collection(self.namespace)}/{self.name}"


def _text(value: Any, field: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise ReviewInvalid(field, "must be a non-empty string" if required else "must be a string")
    return value


MAX_USERNAME = 1024  # a service account's name is at most about 330 characters; reaches ledger and logs


def _bounded(value: str, field: str) -> str:
    if len(value) > MAX_USERNAME or not value.isprintable():
        raise ReviewInvalid(field, f"must be printable and at most {MAX_USERNAME} characters")
    return value


def _object(value: Any, field: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ReviewInvalid(field, "must be a JSON object")
    return value


def parse_review(doc: Any) -> Review:
    """An AdmissionReview v1 request; raises ReviewInvalid (with the request's uid when it was readable)."""
    if not isinstance(doc, dict):
        raise ReviewInvalid("body", "must be a JSON object")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
        raise ReviewInvalid("apiVersion", f"must be {API_VERSION} {KIND} (admissionReviewVersions: [v1])")
    request = doc.get("request")
    if not isinstance(request, dict):
        raise ReviewInvalid("request", "required")
    uid = _text(request.get("uid"), "request.uid")
    try:
        return _request(request, uid)
    except ReviewInvalid as exc:
        raise ReviewInvalid(exc.field, exc.detail, uid) from None


def _request(request: Mapping[str, Any], uid: str) -> Review:
    operation = _text(request.get("operation"), "request.operation")
    if operation not in OPERATIONS:
        raise ReviewInvalid("request.operation", f"must be one of {', '.join(OPERATIONS)}")
    raw = request.get("resource")
    if not isinstance(raw, dict):
        raise ReviewInvalid("request.resource", "required")
    resource = Resource(
        _text(raw.get("group"), "request.resource.group", required=False),
        _text(raw.get("version"), "request.resource.version"),
        _text(raw.get("resource"), "request.resource.resource"),
    )
    namespace = _text(request.get("namespace"), "request.namespace", required=False)
    obj = _object(request.get("object"), "request.object")
    old = _object(request.get("oldObject"), "request.oldObject")
    name = _text(request.get("name"), "request.name", required=False)
    meta = obj.get("metadata") if obj is not None else None
    if not name and isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
        name = meta["name"]  # a create's request.name is empty when the API server generated the name
    for field, value in (("request.namespace", namespace), ("request.name", name)):
        if value and not _NAME.match(value):
            raise ReviewInvalid(field, "is not a Kubernetes object name")
    user = request.get("userInfo")
    if not isinstance(user, dict):
        raise ReviewInvalid("request.userInfo", "required")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise ReviewInvalid("request.dryRun", "must be true or false")
    return Review(
        uid=uid,
        operation=operation,
        resource=resource,
        sub_resource=_text(request.get("subResource"), "request.subResource", required=False),
        namespace=namespace,
        name=name,
        username=_bounded(
            _text(user.get("username"), "request.userInfo.username", required=False), "request.userInfo.username"
        ),
        obj=obj,
        old=old,
        dry_run=dry_run,
    )


def admitted_id(resource: str, namespace: str, name: str, uid: str) -> str:
    """The id an admitted object's lease is owned under: `<ns>/<resource>/<name>/<uid>`."""
    return f"{namespace}/{resource}/{name}/{uid}"


def read_path(job_id: str) -> tuple[str, str] | None:
    """(path to GET, uid) of an admitted object's id; None for an id not in that form."""
    parts = job_id.split("/")
    if len(parts) != 4 or parts[1] not in READ_VERSIONS or not all(_NAME.match(p) for p in (parts[0], parts[2])):
        return None
    namespace, resource, name, uid = parts
    plural, _, group = resource.partition(".")
    return Resource(group, READ_VERSIONS[resource], plural).collection(namespace) + f"/{name}", uid


@dataclass(frozen=True, slots=True)
class Seen:
    """What a read of an admitted object's path showed: its object (uid matches) and whether it is over,
    no object of that uid (`absent`), or nothing certain (both None/False: hold)."""

    over: bool | None
    absent: bool = False


def seen(resource: str, uid: str, status: int, body: bytes) -> Seen:
    """Read an answer to `read_path`: NotFound or another object under the name is `absent`."""
    doc = try_json(body)
    if not isinstance(doc, dict):
        return Seen(None)
    if status == 404 and doc.get("kind") == "Status" and doc.get("reason") == "NotFound":
        return Seen(None, absent=True)
    meta = doc.get("metadata")
    if status != 200 or not isinstance(meta, dict) or not isinstance(meta.get("uid"), str):
        return Seen(None)
    if meta["uid"] != uid:
        return Seen(None, absent=True)  # deleted and made again under the name, or never ours (a failed create)
    if resource == "jobs.batch":
        return Seen(kubernetes_finished(status, body))
    if resource == "pods":
        state = doc.get("status")
        phase = state.get("phase") if isinstance(state, dict) else None
        return Seen(phase in _POD_OVER if isinstance(phase, str) else False)
    return Seen(crd_over(status, doc))


@dataclass(frozen=True, slots=True)
class OwnerRef:
    """An object's controller: the priced resource it is, its API version, name and uid."""

    resource: str
    version: str
    name: str
    uid: str


def controller_of(obj: Mapping[str, Any] | None) -> OwnerRef | None:
    """The object's controlling owner when it is a kind the adapter prices, else None."""
    meta = obj.get("metadata") if obj is not None else None
    refs = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    for ref in refs if isinstance(refs, list) else []:
        if not isinstance(ref, dict) or ref.get("controller") is not True:
            continue
        api, kind, name, uid = (ref.get(k) for k in ("apiVersion", "kind", "name", "uid"))
        if not all(isinstance(v, str) and v for v in (api, kind, name, uid)):
            return None
        assert isinstance(api, str) and isinstance(kind, str) and isinstance(name, str) and isinstance(uid, str)
        group, _, version = api.rpartition("/")
        resource = _KINDS.get((group, kind))
        if resource is None or not _NAME.match(name) or not _UID.match(uid):
            return None
        return OwnerRef(resource, version, name, uid)
    return None


def owner_path(namespace: str, ref: OwnerRef) -> str:
    plural, _, group = ref.resource.partition(".")
    return Resource(group, ref.version, plural).collection(namespace) + f"/{ref.name}"


def proxy_id(namespace: str, ref: OwnerRef) -> str:
    """The id the proxy owns the same object under (the adapter's `object_id`): `<ns>/<name>` for Jobs."""
    if ref.resource in ("jobs.batch", "pods"):
        return f"{namespace}/{ref.name}"
    return f"{namespace}/{ref.resource}/{ref.name}"


def gpu_free_pod(obj: Mapping[str, Any] | None) -> bool:
    """Whether a Pod holds no GPU, read as the adapter reads Pods; False when it cannot be read so."""
    if obj is None:
        return False
    try:
        no_gpu_sharing(mapping(obj.get("metadata"), "metadata"), "metadata")
        return pod_gpus(mapping(obj.get("spec"), "spec"), "spec") == 0
    except JobSpecInvalid:
        return False


def spec_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[str, Any]:
    """The top-level spec fields an update changes, as a merge patch (a removed field is None)."""
    before = old.get("spec") if old is not None else None
    after = new.get("spec") if new is not None else None
    before = before if isinstance(before, dict) else {}
    after = after if isinstance(after, dict) else {}
    return {k: after.get(k) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}


def resumes(crd_suspend: tuple[str, ...], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether an update takes the object out of suspension (its deadline starts again)."""

    def suspended(doc: Mapping[str, Any] | None) -> bool:
        value: Any = doc.get("spec") if doc is not None else None
        for key in crd_suspend:
            value = value.get(key) if isinstance(value, dict) else None
        return value is True

    return suspended(old) and not suspended(new)


def suspend_path(resource: str) -> tuple[str, ...]:
    """Where a priced resource's spec says it is suspended (Jobs, RayClusters, RayJobs: `suspend`)."""
    for crd in CRDS:
        if crd.resource == resource:
            return crd.suspend
    return ("suspend",)


def answer(uid: str, allowed: bool, *, status: Mapping[str, Any] | None = None, warnings: tuple[str, ...] = (),
           audit: Mapping[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """The AdmissionReview the webhook answers with (`status` is a metav1.Status, for a refusal)."""
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if status is not None:
        response["status"] = dict(status)
    if warnings:
        response["warnings"] = list(warnings)
    if audit:
        response["auditAnnotations"] = dict(audit)
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
