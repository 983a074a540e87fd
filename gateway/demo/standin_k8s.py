"""A stand-in Kubernetes API server for batch/v1 Jobs, v1 Pods and the training CRDs, following the API reference.

The custom resources (KubeRay RayCluster and RayJob, Kubeflow PyTorchJob) are served as the
API server serves any CRD: namespaced create, list, get, delete, with the object's group,
version and kind taken from the path (the published CRDs' `spec.names`).
"""

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.demo.standin import StandinState, remembering

_JSON = "application/json"
# plural -> (group, kind, served versions), as the CRDs declare them.
_KINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "jobs": ("batch", "Job", ("v1",)),
    "pods": ("", "Pod", ("v1",)),
    "rayclusters": ("ray.io", "RayCluster", ("v1", "v1alpha1")),
    "rayjobs": ("ray.io", "RayJob", ("v1", "v1alpha1")),
    "pytorchjobs": ("kubeflow.org", "PyTorchJob", ("v1",)),
}


def _status(
    code: int, reason: str, message: str, group: str = "batch", kind: str = "jobs", **details: Any
) -> web.Response:
    """A `Status` object, as the API server sends for every failure (and for deletes)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "details": {"group": group, "kind": kind, **details},
        "code": code,
    }
    if code < 400:
        del body["message"], body["reason"]
    return web.json_response(body, status=code)


def k8s_app(state: StandinState) -> web.Application:
    """POST/GET/DELETE of namespaced Jobs, Pods and training CRDs, and their lists.

    Jobs are kept under "{ns}/{name}", Pods under "pods/{ns}/{name}", custom resources under
    "{plural}.{group}/{ns}/{name}".
    """

    remember = remembering(state)

    def kind_of(request: web.Request) -> tuple[str, str, str, str]:
        """(store key prefix, group, kind, plural) of the resource a path names."""
        plural = request.match_info["plural"]
        group, kind, _ = _KINDS[plural]
        prefix = "" if plural == "jobs" else f"{plural}/" if not group else f"{plural}.{group}/"
        return prefix, group, kind, plural

    async def create(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        prefix, group, kind, plural = kind_of(request)
        what = f"{plural}.{group}" if group else plural
        if request.content_type != _JSON:
            return _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: "
                           f"accepted media types include: {_JSON}")  # fmt: skip
        try:
            job = json.loads(state.requests[-1]["body"])
        except ValueError as exc:
            return _status(400, "BadRequest", f"error decoding from json: {exc}")
        metadata = job.setdefault("metadata", {})
        name = metadata.get("name") or (
            metadata["generateName"] + secrets.token_hex(3)[:5] if metadata.get("generateName") else None
        )
        if not name:
            return _status(422, "Invalid", f"{kind}.{group} \"\" is invalid: metadata.name: Required value: name or "
                           "generateName is required", group, plural, name="")  # fmt: skip
        if f"{prefix}{ns}/{name}" in state.jobs:
            return _status(409, "AlreadyExists", f'{what} "{name}" already exists', group, plural, name=name)
        metadata.update(
            name=name,
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(state.ids)),
            generation=1,
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        version = request.match_info["version"]
        job.update(apiVersion=f"{group}/{version}" if group else version, kind=kind, status={})
        state.jobs[f"{prefix}{ns}/{name}"] = job
        return web.json_response(job, status=201)

    async def listing(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        prefix, group, kind, _ = kind_of(request)
        items = [job for key, job in state.jobs.items() if key.startswith(f"{prefix}{ns}/")]
        version = f"{group}/{request.match_info['version']}" if group else request.match_info["version"]
        body = {"kind": f"{kind}List", "apiVersion": version, "metadata": {"resourceVersion": "1"}, "items": items}
        return web.json_response(body)

    async def item(request: web.Request) -> web.Response:
        prefix, group, _, plural = kind_of(request)
        key = f"{prefix}{request.match_info['ns']}/{request.match_info['name']}"
        found = state.jobs.get(key)
        if found is None:
            what = f"{plural}.{group}" if group else plural
            return _status(404, "NotFound", f'{what} "{request.match_info["name"]}" not found',
                           group, plural, name=request.match_info["name"])  # fmt: skip
        if request.method == "DELETE":
            del state.jobs[key]
            return _status(200, "", "", group, plural, name=found["metadata"]["name"], uid=found["metadata"]["uid"])
        return web.json_response(found)

    app = web.Application(middlewares=[remember])
    for plural, (group, _, versions) in _KINDS.items():
        for version in versions:
            root = f"/apis/{group}" if group else "/api"
            base = f"{root}/{{version:{version}}}/namespaces/{{ns}}/{{plural:{plural}}}"
            app.router.add_post(base, create)
            app.router.add_get(base, listing)
            app.router.add_route("GET", base + "/{name}", item)
            app.router.add_route("DELETE", base + "/{name}", item)
    return app
