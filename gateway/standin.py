"""A stand-in Slurm REST (slurmrestd v0.0.38) and Ray Jobs server for the demo and tests."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class StandinState:
    """What the stand-in has seen, so tests can assert on what reached the scheduler."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


def _meta() -> dict[str, Any]:
    return {
        "plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
        "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"},
    }


def standin_app(state: StandinState) -> web.Application:
    """Routes and bodies follow slurmrestd 22.05 and Ray 2.x as captured in schedulers.md."""

    @web.middleware
    async def remember(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        state.requests.append(
            {"method": request.method, "path": request.path_qs, "headers": dict(request.headers), "body": body}
        )
        response: web.StreamResponse = await handler(request)
        return response

    async def submit(request: web.Request) -> web.Response:
        try:
            body = json.loads(state.requests[-1]["body"] or b"{}")
        except ValueError:
            return web.json_response(
                {"meta": _meta(), "errors": [{"error": "Unable to parse query", "error_code": 9001}]}, status=400
            )
        job = body.get("job") or {}
        if not job.get("environment"):
            return web.json_response(
                {"meta": _meta(), "errors": [{"error": "environment must be set", "error_code": 2127}]}, status=400
            )
        job_id = next(state.ids)
        state.jobs[str(job_id)] = {
            "job_id": job_id,
            "job_state": "PENDING",
            "name": job.get("name", ""),
            "user_name": request.headers.get("X-SLURM-USER-NAME", ""),
            "time_limit": job.get("time_limit"),
        }
        return web.json_response(
            {"meta": _meta(), "errors": [], "job_id": job_id, "step_id": "BATCH", "job_submit_user_msg": ""}
        )

    async def job(request: web.Request) -> web.Response:
        found = state.jobs.get(request.match_info["job_id"])
        if found is None:
            return web.json_response(
                {"meta": _meta(), "errors": [{"error": "Invalid job id specified", "error_code": 2017}]}, status=500
            )
        if request.method == "DELETE":
            found["job_state"] = "CANCELLED"
            return web.json_response({"meta": _meta(), "errors": []})
        return web.json_response({"meta": _meta(), "errors": [], "jobs": [found]})

    async def jobs(request: web.Request) -> web.Response:
        return web.json_response({"meta": _meta(), "errors": [], "jobs": list(state.jobs.values())})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response(
            {"meta": _meta(), "errors": [], "pings": [{"hostname": "vm", "ping": "UP", "status": 0, "mode": "primary"}]}
        )

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("bytes", "1048576"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            part = chunk[: min(len(chunk), size - sent)]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
        return response

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "30")))
        return web.json_response({"late": True})

    async def ray_logs_tail(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for line in ("starting job", "step 1 loss=2.31", "step 2 loss=2.07"):
            await ws.send_str(line + "\n")
        async for msg in ws:
            await ws.send_str(f"echo:{msg.data}")
        return ws

    app = web.Application(middlewares=[remember])
    app.router.add_post("/slurm/{version}/job/submit", submit)
    app.router.add_route("*", "/slurm/{version}/job/{job_id}", job)
    app.router.add_get("/slurm/{version}/jobs", jobs)
    app.router.add_get("/slurm/{version}/ping", ping)
    app.router.add_get("/standin/big", big)
    app.router.add_get("/standin/hang", hang)
    app.router.add_get("/api/jobs/{job_id}/logs/tail", ray_logs_tail)
    return app
