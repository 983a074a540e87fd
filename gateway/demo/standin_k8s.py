"""A stand-in Kubernetes API server for batch/v1 Jobs, following the API reference's shapes."""

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.demo.standin import StandinState, remembering

_JSON = "application/json"


def _status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    """A `Status` object, as the API server sends for every failure (and for deletes)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "details": {"group": "batch", "kind": "jobs", **details},
        "code": code,
    }
    if code < 400:
        del body["message"], body["reason"]
    return web.json_response(body, status=code)


def k8s_app(state: StandinState) -> web.Application:
    """POST/GET/DELETE of namespaced Jobs and the JobList; jobs are kept under "{ns}/{name}"."""

    remember = remembering(state)

    async def create(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
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
            return _status(422, "Invalid", "Job.batch \"\" is invalid: metadata.name: Required value: name or "
                           "generateName is required", name="")  # fmt: skip
        if f"{ns}/{name}" in state.jobs:
            return _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists', name=name)
        metadata.update(
            name=name,
            namespace=ns,
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(state.ids)),
            generation=1,
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        job.update(apiVersion="batch/v1", kind="Job", status={})
        state.jobs[f"{ns}/{name}"] = job
        return web.json_response(job, status=201)

    async def listing(request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        items = [job for key, job in state.jobs.items() if key.startswith(f"{ns}/")]
        body = {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {"resourceVersion": "1"}, "items": items}
        return web.json_response(body)

    async def item(request: web.Request) -> web.Response:
        key = f"{request.match_info['ns']}/{request.match_info['name']}"
        found = state.jobs.get(key)
        if found is None:
            return _status(404, "NotFound", f'jobs.batch "{request.match_info["name"]}" not found',
                           name=request.match_info["name"])  # fmt: skip
        if request.method == "DELETE":
            del state.jobs[key]
            return _status(200, "", "", name=found["metadata"]["name"], uid=found["metadata"]["uid"])
        return web.json_response(found)

    app = web.Application(middlewares=[remember])
    app.router.add_post("/apis/batch/v1/namespaces/{ns}/jobs", create)
    app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs", listing)
    app.router.add_route("GET", "/apis/batch/v1/namespaces/{ns}/jobs/{name}", item)
    app.router.add_route("DELETE", "/apis/batch/v1/namespaces/{ns}/jobs/{name}", item)
    return app
