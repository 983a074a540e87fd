"""A stand-in Slurm REST (slurmrestd v0.0.38) and Ray Jobs server for the demo and tests."""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class StandinState:
    """What the stand-in has seen, so tests can assert on what reached the scheduler."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    ray_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How long a Slurm job named "slow-me" keeps its submission waiting (past a test's timeout).
    slow_s: float = 5.0
    # Slurm job id -> (status, body) its status request answers instead (a broken or odd scheduler).
    status_answers: dict[str, tuple[int, bytes]] = field(default_factory=dict)


def _meta() -> dict[str, Any]:
    return {
        "plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
        "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5}, "release": "22.05.8"},
    }


def _slurm_error(status: int, code: int, message: str) -> web.Response:
    return web.json_response({"meta": _meta(), "errors": [{"error_code": code, "error": message}]}, status=status)


def remembering(state: StandinState) -> Any:
    """A middleware keeping each request (method, path, headers, body) in `state.requests`, for tests to read."""

    @web.middleware
    async def remember(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        state.requests.append(
            {"method": request.method, "path": request.path_qs, "headers": dict(request.headers), "body": body}
        )
        response: web.StreamResponse = await handler(request)
        return response

    return remember


def standin_app(state: StandinState) -> web.Application:
    """Routes and bodies follow slurmrestd 22.05 and Ray 2.x as they answer (tests/test_real_*.py run the real ones).

    Slurm jobs named "reject-me" fail as slurmrestd answers an impossible request (500 with
    an errors array, after recording a FAILED job); "slow-me" answers after `state.slow_s`.
    """

    remember = remembering(state)

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
        name = job.get("name", "")
        state.jobs[str(job_id)] = {
            "job_id": job_id,
            "job_state": "FAILED" if name == "reject-me" else "PENDING",
            "name": name,
            "user_name": request.headers.get("X-SLURM-USER-NAME", ""),
            "time_limit": job.get("time_limit"),
            "array": job.get("array"),
            "tres_per_job": f"gres/gpu:{job['gpus']}" if isinstance(job.get("gpus"), str | int) else None,
        }
        if name == "reject-me":
            return _slurm_error(500, 2014, "Requested node configuration is not available")
        if name == "slow-me":
            await asyncio.sleep(state.slow_s)
        return web.json_response(
            {"meta": _meta(), "errors": [], "job_id": job_id, "step_id": "BATCH", "job_submit_user_msg": ""}
        )

    async def job(request: web.Request) -> web.Response:
        base, _, task = request.match_info["job_id"].partition("_")  # "12_3": task 3 of array job 12
        found = state.jobs.get(base)
        if found is None or (task and not found.get("array")):
            return _slurm_error(500, 2017, "Invalid job id specified")
        if request.method == "DELETE":
            if task:
                found.setdefault("cancelled_tasks", []).append(task)
            else:
                found["job_state"] = "CANCELLED"
            return web.json_response({"meta": _meta(), "errors": []})
        if request.method == "POST":  # update: slurmrestd answers with empty errors
            update = json.loads(state.requests[-1]["body"] or b"{}")
            found.update({k: v for k, v in (update.get("job", update) or {}).items() if k in ("name", "time_limit")})
            return web.json_response({"meta": _meta(), "errors": []})
        if base in state.status_answers:
            status, body = state.status_answers[base]
            return web.Response(status=status, body=body, content_type="text/html")
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

    async def ray_submit(request: web.Request) -> web.Response:
        try:
            body = json.loads(state.requests[-1]["body"] or b"{}")
        except ValueError:
            return web.Response(status=400, text="Failed to parse request body as JSON")
        submission_id = body.get("submission_id") or f"raysubmit_{secrets.token_hex(8)}"
        if submission_id in state.ray_jobs:
            # Ray answers a duplicate id with a Python traceback as plain text.
            return web.Response(
                status=500,
                text="Traceback (most recent call last):\n  ...\nValueError: Job with submission_id "
                f"{submission_id} already exists. Please use a different submission_id.\n",
            )
        state.ray_jobs[submission_id] = {
            "type": "SUBMISSION",
            "job_id": None,
            "submission_id": submission_id,
            "driver_info": None,
            "status": "PENDING",
            "entrypoint": body.get("entrypoint", ""),
            "message": "Job has not started yet.",
            "error_type": None,
            "start_time": int(time.time() * 1000),
            "end_time": None,
            "metadata": body.get("metadata") or {},
            "runtime_env": body.get("runtime_env") or {},
            "driver_agent_http_address": None,
            "driver_node_id": None,
            "driver_exit_code": None,
        }
        return web.json_response({"job_id": submission_id, "submission_id": submission_id})

    async def ray_list(request: web.Request) -> web.Response:
        return web.json_response(list(state.ray_jobs.values()))

    async def ray_job(request: web.Request) -> web.Response:
        found = state.ray_jobs.get(request.match_info["job_id"])
        if found is None:
            return web.Response(status=404, text=f"Job {request.match_info['job_id']} does not exist")
        if request.method == "DELETE":
            if found["status"] in ("PENDING", "RUNNING"):
                return web.Response(status=400, text="Attempted to delete a job that is not in a terminal state.")
            del state.ray_jobs[found["submission_id"]]
            return web.json_response({"deleted": True})
        return web.json_response(found)

    async def ray_stop(request: web.Request) -> web.Response:
        found = state.ray_jobs.get(request.match_info["job_id"])
        if found is None:
            return web.Response(status=404, text=f"Job {request.match_info['job_id']} does not exist")
        stopped = found["status"] in ("PENDING", "RUNNING")
        if stopped:
            found.update(status="STOPPED", end_time=int(time.time() * 1000), message="Job was intentionally stopped.")
        return web.json_response({"stopped": stopped})

    app = web.Application(middlewares=[remember])
    app.router.add_post("/slurm/{version}/job/submit", submit)
    app.router.add_route("*", "/slurm/{version}/job/{job_id}", job)
    app.router.add_get("/slurm/{version}/jobs", jobs)
    app.router.add_get("/slurm/{version}/ping", ping)
    app.router.add_get("/standin/big", big)
    app.router.add_get("/standin/hang", hang)
    app.router.add_get("/api/jobs/{job_id}/logs/tail", ray_logs_tail)
    app.router.add_post("/api/jobs/", ray_submit)
    app.router.add_get("/api/jobs/", ray_list)
    app.router.add_route("GET", "/api/jobs/{job_id}", ray_job)
    app.router.add_route("DELETE", "/api/jobs/{job_id}", ray_job)
    app.router.add_post("/api/jobs/{job_id}/stop", ray_stop)
    return app
