"""The gateway in front of a real slurmctld + slurmrestd 22.05 (8 fake H100s) on loopback."""

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.http.app import Server
from tests.harness import Idp
from tests.harness import call as gateway_call
from tests.peers_kit import held, peer_gateway, peer_registry
from tests.redis_server import free_port

SCRIPT = Path(__file__).parent / "peers" / "slurm.sh"
API = "/slurm/v0.0.38"


def _ensure_installed() -> None:
    if shutil.which("slurmctld") and shutil.which("slurmrestd"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("Slurm is required: install slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin munge")
    subprocess.run(["bash", str(SCRIPT), "install"], check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, Any]]:
    """A real Slurm cluster with slurmrestd, in its own directory and on free ports."""
    _ensure_installed()
    base = Path(tempfile.mkdtemp(prefix="eg-slurm-"))
    base.chmod(0o755)  # munged runs as the munge user and must reach its socket directory
    env = {
        **os.environ,
        "BASE": str(base),
        "REST_PORT": str(free_port()),
        "CTLD_PORT": str(free_port()),
        "SLURMD_PORT": str(free_port()),
    }
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        jobs = base / "jobs"
        jobs.mkdir(exist_ok=True)
        jobs.chmod(0o1777)
        yield {"base": base, "url": f"http://127.0.0.1:{env['REST_PORT']}", "jobs": jobs}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def gateway(slurm: dict[str, Any], tmp_path: Path) -> AsyncIterator[tuple[Server, Idp]]:
    """A gateway whose upstream is the real slurmrestd, minting Slurm JWTs with the cluster key."""
    key = slurm["base"] / "state" / "jwt_hs256.key"
    headers = f"""    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{from_tenant: slurm_user, slurm_jwt_key_file: {key}, lifespan_s: 300}}
"""
    tenants = peer_registry("acme-us", "nordlys-se", "fjord-se-cn")
    async with peer_gateway(tmp_path, "slurm", slurm["url"], tenants=tenants, timeout_s=20, headers=headers) as running:
        yield running


def job(
    slurm: dict[str, Any], gpus: int, name: str = "eg-real", script: str = "#!/bin/bash\nsleep 30"
) -> dict[str, Any]:
    return {
        "job": {
            "name": name,
            "partition": "gpu",
            "time_limit": 10,
            "tasks": 1,
            "gpus": f"h100:{gpus}",
            "current_working_directory": str(slurm["jobs"]),
            "standard_output": f"{slurm['jobs']}/%j.out",
            "environment": {"PATH": "/usr/bin:/bin"},
        },
        "script": script,
    }


async def call(server: Server, idp: Idp, sub: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """`method path` as tenant `sub` through the gateway `server`, whose tokens `idp` signs."""
    url, token = f"http://127.0.0.1:{server.settings.listen_port}", {"Authorization": f"Bearer {idp.token(sub)}"}
    reply = await gateway_call(url, method, path, payload=body, headers=token)
    return reply[:2]


async def test_submit_read_list_cancel_against_real_slurmrestd(
    slurm: dict[str, Any], gateway: tuple[Server, Idp]
) -> None:
    """A 2-GPU job is admitted, created by slurmrestd, readable only by its owner, and released on cancel."""
    server, idp = gateway
    status, body = await call(server, idp, "acme-us", "POST", f"{API}/job/submit", job(slurm, 2))
    assert status == 200, body
    job_id = body["job_id"]
    assert isinstance(job_id, int) and body["errors"] == []
    assert await held(server, "acme-us") == 2 * 15832
    status, body = await call(server, idp, "acme-us", "GET", f"{API}/job/{job_id}")
    assert status == 200 and body["jobs"][0]["job_id"] == job_id
    assert body["jobs"][0]["job_state"] in ("PENDING", "RUNNING", "CONFIGURING")
    status, body = await call(server, idp, "nordlys-se", "GET", f"{API}/job/{job_id}")
    assert (status, body["code"]) == (404, "job_not_owned")
    status, body = await call(server, idp, "nordlys-se", "GET", f"{API}/jobs")
    assert status == 200 and all(j["job_id"] != job_id for j in body["jobs"])
    status, body = await call(server, idp, "acme-us", "GET", f"{API}/jobs")
    assert status == 200 and [j["job_id"] for j in body["jobs"]] == [job_id]
    status, body = await call(server, idp, "acme-us", "DELETE", f"{API}/job/{job_id}")
    assert status == 200, body
    assert await held(server, "acme-us") == 0
    for _ in range(20):  # slurmctld marks the job cancelled shortly after
        status, body = await call(server, idp, "acme-us", "GET", f"{API}/job/{job_id}")
        if body["jobs"][0]["job_state"] == "CANCELLED":
            break
        await asyncio.sleep(0.25)
    assert body["jobs"][0]["job_state"] == "CANCELLED"


async def test_slurm_rejection_is_refunded(slurm: dict[str, Any], gateway: tuple[Server, Idp]) -> None:
    """slurmrestd's HTTP 500 with an errors array (16 GPUs on an 8-GPU node) is definitive: the lease is refunded."""
    server, idp = gateway
    status, body = await call(server, idp, "acme-us", "POST", f"{API}/job/submit", job(slurm, 16, "too-big"))
    assert status == 500 and body["errors"], body
    assert await held(server, "acme-us") == 0


async def test_tier3_parent_never_reaches_slurm(slurm: dict[str, Any], gateway: tuple[Server, Idp]) -> None:
    """A tenant with a Tier 3 parent is refused 451 and slurmrestd sees no job."""
    server, idp = gateway
    status, body = await call(server, idp, "fjord-se-cn", "POST", f"{API}/job/submit", job(slurm, 1, "fjord"))
    assert (status, body["code"]) == (451, "tier3_embargoed")
    status, body = await call(server, idp, "acme-us", "GET", f"{API}/jobs")
    assert all(j["name"] != "fjord" for j in body["jobs"])


async def test_finished_job_is_released_by_reconciliation(slurm: dict[str, Any], gateway: tuple[Server, Idp]) -> None:
    """A 1-GPU job that exits at once reaches COMPLETED; a reconcile round then gives its TPP back."""
    server, idp = gateway
    status, body = await call(
        server, idp, "acme-us", "POST", f"{API}/job/submit", job(slurm, 1, "quick", "#!/bin/bash\ntrue")
    )
    assert status == 200, body
    assert await held(server, "acme-us") == 15832
    assert server.reconciler is not None
    results: dict[str, int] = {}
    for _ in range(80):  # scheduling, running and completing take a few seconds
        results = await server.reconciler.run_once()
        if results.get("released"):
            break
        await asyncio.sleep(0.25)
    assert results == {"released": 1}
    assert await held(server, "acme-us") == 0
