"""The gateway in front of a real Ray 2.60 head (8 fake GPUs) and its Jobs REST API on loopback."""

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.http.app import Server
from tests.harness import Idp
from tests.harness import call as gateway_call
from tests.peers_kit import held, peer_gateway, peer_registry
from tests.redis_server import free_port

SCRIPT = Path(__file__).parent / "peers" / "ray.sh"
VENV = Path(os.environ.get("EXPORTGATE_RAY_VENV", "/tmp/exportgate-peers/rayvenv"))


@pytest.fixture(scope="module")
def ray() -> Iterator[str]:
    """A real Ray head with the Jobs API, installed into its own venv on first use."""
    base = Path(tempfile.mkdtemp(prefix="eg-ray-"))
    env = {
        **os.environ,
        "BASE": str(base),
        "VENV": str(VENV),
        "RAYTMP": str(base / "t"),
        "DASH_PORT": str(free_port()),
        "RAY_GCS_PORT": str(free_port()),
        "RAY_EXTRA_ARGS": " ".join(
            f"--{flag}={free_port()}"
            for flag in ("ray-client-server-port", "dashboard-agent-listen-port", "metrics-export-port")
        ),
    }
    if not (VENV / "bin" / "ray").exists():
        installed = subprocess.run(
            ["bash", str(SCRIPT), "install"], env=env, capture_output=True, text=True, timeout=900
        )
        assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"http://127.0.0.1:{env['DASH_PORT']}"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def gateway(ray: str, tmp_path: Path) -> AsyncIterator[tuple[Server, Idp]]:
    """A gateway whose upstream is the real Ray dashboard."""
    tenants = peer_registry("acme-us", "nordlys-se")
    async with peer_gateway(tmp_path, "ray", ray, tenants=tenants, timeout_s=30) as running:
        yield running


def submission(submission_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "entrypoint": "echo hello-from-ray; sleep 30",
        "submission_id": submission_id,
        "entrypoint_num_gpus": 2,
        "entrypoint_num_cpus": 0,
        "entrypoint_resources": {"accelerator_type:H100": 2},
        "metadata": {"time_limit_min": "10"},
        **extra,
    }


async def call(
    server: Server, idp: Idp, sub: str, method: str, path: str, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    """`method path` as tenant `sub` through the gateway `server`, whose tokens `idp` signs."""
    url, token = f"http://127.0.0.1:{server.settings.listen_port}", {"Authorization": f"Bearer {idp.token(sub)}"}
    reply = await gateway_call(url, method, path, payload=body, headers=token)
    return reply


async def test_ray_job_lifecycle_through_the_gateway(ray: str, gateway: tuple[Server, Idp]) -> None:
    """Submit, replay, owner-only reads, filtered listing, WebSocket log tail and stop against real Ray."""
    server, idp = gateway
    sid = f"eg-{uuid.uuid4().hex[:12]}"
    status, body, headers = await call(server, idp, "acme-us", "POST", "/api/jobs/", submission(sid))
    assert status == 200 and body["submission_id"] == sid, body
    assert await held(server, "acme-us") == 2 * 15832
    status, again, replay_headers = await call(server, idp, "acme-us", "POST", "/api/jobs/", submission(sid))
    assert (status, again) == (200, body)  # real Ray would answer 500 to a duplicate submission_id
    assert replay_headers["X-Exportgate-Replayed"] == "true"
    assert replay_headers["X-Exportgate-Decision-Id"] == headers["X-Exportgate-Decision-Id"]
    assert await held(server, "acme-us") == 2 * 15832
    status, job, _ = await call(server, idp, "acme-us", "GET", f"/api/jobs/{sid}")
    assert status == 200 and job["submission_id"] == sid and job["status"] in ("PENDING", "RUNNING")
    status, refused, _ = await call(server, idp, "nordlys-se", "GET", f"/api/jobs/{sid}")
    assert (status, refused["code"]) == (404, "job_not_owned")
    status, listing, _ = await call(server, idp, "nordlys-se", "GET", "/api/jobs/")
    assert status == 200 and all(j["submission_id"] != sid for j in listing)
    status, listing, _ = await call(server, idp, "acme-us", "GET", "/api/jobs/")
    assert status == 200 and sid in [j["submission_id"] for j in listing]
    url = f"http://127.0.0.1:{server.settings.listen_port}/api/jobs/{sid}/logs/tail"
    async with (
        aiohttp.ClientSession() as client,
        client.ws_connect(url, headers={"Authorization": f"Bearer {idp.token('acme-us')}"}) as ws,
    ):
        text = ""
        while "hello-from-ray" not in text:
            msg = await ws.receive(timeout=30)
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            text += msg.data
    status, stopped, _ = await call(server, idp, "acme-us", "POST", f"/api/jobs/{sid}/stop")
    assert status == 200 and stopped == {"stopped": True}
    assert await held(server, "acme-us") == 0


async def test_ray_job_without_walltime_is_refused(ray: str, gateway: tuple[Server, Idp]) -> None:
    """A Ray submission that names no walltime cannot be priced and never reaches Ray."""
    server, idp = gateway
    sid = f"eg-{uuid.uuid4().hex[:12]}"
    status, body, _ = await call(server, idp, "acme-us", "POST", "/api/jobs/", submission(sid, metadata={}))
    assert (status, body["code"]) == (400, "job_spec_invalid")
    async with aiohttp.ClientSession() as client, client.get(f"{ray}/api/jobs/") as resp:
        everything = await resp.json()  # straight from Ray, unfiltered
    assert sid not in [j["submission_id"] for j in everything]
