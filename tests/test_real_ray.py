"""The gateway in front of a real Ray 2.60 head (8 fake GPUs) and its Jobs REST API on loopback."""

import asyncio
import io
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.http.app import Server
from tests.harness import Idp, ledger_records
from tests.harness import call as gateway_call
from tests.peers_kit import held, peer_gateway, peer_registry
from tests.redis_server import free_port

SCRIPT = Path(__file__).parent / "peers" / "ray.sh"
VENV = Path(os.environ.get("EXPORTGATE_RAY_VENV", "/tmp/exportgate-peers/rayvenv"))
GCS_PORTS: dict[str, str] = {}  # dashboard URL -> its head's GCS port, for `ray status`


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
    GCS_PORTS[f"http://127.0.0.1:{env['DASH_PORT']}"] = env["RAY_GCS_PORT"]
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
    extra = "    scheduler_options: {cluster_gpus: {H100: 8}}"  # the head's 8 (fake) GPUs
    async with peer_gateway(tmp_path, "ray", ray, tenants=tenants, timeout_s=30, extra=extra) as running:
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
    assert await held(server, "acme-us") == 8 * 15832  # the cluster's GPUs, whatever the entrypoint asks
    status, again, replay_headers = await call(server, idp, "acme-us", "POST", "/api/jobs/", submission(sid))
    assert (status, again) == (200, body)  # real Ray would answer 500 to a duplicate submission_id
    assert replay_headers["X-Exportgate-Replayed"] == "true"
    assert replay_headers["X-Exportgate-Decision-Id"] == headers["X-Exportgate-Decision-Id"]
    assert await held(server, "acme-us") == 8 * 15832
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


HOG = """
import time, ray
ray.init()
@ray.remote(num_gpus=8)
def hog():
    time.sleep(120)
ref = hog.remote()
time.sleep(120)
"""


async def ray_status(ray: str) -> str:
    """`ray status` of the head behind dashboard `ray`: what Ray itself says is in use."""
    proc = await asyncio.create_subprocess_exec(
        str(VENV / "bin" / "ray"), "status", "--address", f"127.0.0.1:{GCS_PORTS[ray]}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode(errors="replace")


async def test_driver_claiming_gpus_beyond_its_entrypoint_is_priced_at_the_cluster(
    ray: str, gateway: tuple[Server, Idp]
) -> None:
    """An entrypoint asking for no GPU whose driver runs `@ray.remote(num_gpus=8)`: Ray gives it 8, the gateway 8."""
    server, idp = gateway
    sid = f"eg-{uuid.uuid4().hex[:12]}"
    body = submission(sid, entrypoint=f"python -c {shlex.quote(HOG)}", entrypoint_num_gpus=0, entrypoint_resources={})
    status, answer, _ = await call(server, idp, "acme-us", "POST", "/api/jobs/", body)
    assert status == 200, answer
    gateway_gpus = await held(server, "acme-us") / 15832
    report = ""
    for _ in range(60):  # the driver starts, then its task is scheduled
        report = await ray_status(ray)
        if "8.0/8.0 GPU" in report:
            break
        await asyncio.sleep(1)
    assert "8.0/8.0 GPU" in report, report + (await call(server, idp, "acme-us", "GET", f"/api/jobs/{sid}/logs"))[1]
    assert gateway_gpus == 8.0
    status, stopped, _ = await call(server, idp, "acme-us", "POST", f"/api/jobs/{sid}/stop")
    assert status == 200 and stopped == {"stopped": True}
    assert await held(server, "acme-us") == 0


async def test_job_past_its_walltime_is_stopped_through_ray(ray: str, tmp_path: Path) -> None:
    """Ray runs a job past its declared walltime; reconciliation records and sends a stop, and releases once STOPPED."""
    tenants = peer_registry("acme-us")
    extra = "    scheduler_options: {cluster_gpus: {H100: 8}}"
    config = "reconcile: {interval_s: 0, walltime_grace_s: 1}"
    async with peer_gateway(tmp_path, "ray", ray, tenants=tenants, timeout_s=30, extra=extra, config=config) as running:
        server, idp = running
        sid = f"eg-{uuid.uuid4().hex[:12]}"
        body = submission(sid, entrypoint="sleep 300", metadata={"time_limit_min": "0.05"})  # 3 s
        status, answer, _ = await call(server, idp, "acme-us", "POST", "/api/jobs/", body)
        assert status == 200, answer
        assert server.reconciler is not None
        rounds: list[dict[str, int]] = []
        for _ in range(120):  # the driver starts, outlives 3 s of walltime and 1 s of grace, is stopped, ends
            rounds.append(await server.reconciler.run_once())
            if rounds[-1] == {"released": 1}:
                break
            await asyncio.sleep(0.5)
        assert rounds[-1] == {"released": 1}, rounds
        status, job, _ = await call(server, idp, "acme-us", "GET", f"/api/jobs/{sid}")
        assert job["status"] == "STOPPED", job
        records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
        kinds = [r["kind"] for r in records if r.get("job_id") == sid and r["kind"] in ("walltime_stop", "release")]
        assert kinds == ["walltime_stop", "release"]  # stopped once, and released only once Ray said STOPPED
        stop = next(r for r in records if r["kind"] == "walltime_stop")
        assert stop["walltime_s"] == 3.0 and stop["overdue_s"] > 1.0
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


# -- the stock `ray` CLI through the gateway -------------------------------------------------------------------


@pytest.fixture
async def mounted(ray: str, tmp_path: Path) -> AsyncIterator[tuple[Server, Idp]]:
    """A gateway mounting the real Ray dashboard under /ray/, prefix stripped (the CLI's `--address .../ray`)."""
    tenants = peer_registry("acme-us", "nordlys-se")
    extra = "    prefix: /ray/\n    strip_prefix: true\n    scheduler_options: {cluster_gpus: {H100: 8}}"
    async with peer_gateway(tmp_path, "ray", ray, tenants=tenants, timeout_s=30, extra=extra) as running:
        yield running


async def ray_cli(address: str, token: str, *args: str, via_env: bool = False) -> str:
    """`ray job ARGS --address ADDRESS` with the tenant's bearer token (`--headers`, or RAY_JOB_HEADERS); its output.

    Run without blocking the event loop the gateway under test serves from.
    """
    headers = json.dumps({"Authorization": f"Bearer {token}"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{VENV / 'bin'}:{env.get('PATH', '')}"}
    command = [str(VENV / "bin" / "ray"), "job", args[0], "--address", address, *args[1:]]
    if via_env:
        env["RAY_JOB_HEADERS"] = headers
    else:
        command[5:5] = ["--headers", headers]  # after `--address ADDRESS`, before any `-- entrypoint`
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(180):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:  # timed out: end the CLI this test started
            process.kill()
            await process.wait()
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"{command[:6]}: exit {process.returncode}\n{text[-3000:]}"
    return text


def cli_submission(sid: str) -> list[str]:
    """`ray job submit` options for a 1-GPU job with the walltime the gateway prices."""
    return [
        "--submission-id", sid, "--no-wait", "--entrypoint-num-gpus", "1", "--entrypoint-num-cpus", "0",
        "--entrypoint-resources", json.dumps({"accelerator_type:H100": 1}),
        "--metadata-json", json.dumps({"time_limit_min": "10"}),
    ]  # fmt: skip


async def test_stock_ray_cli_through_a_prefix_mounted_gateway(
    ray: str, mounted: tuple[Server, Idp], tmp_path: Path
) -> None:
    """submit --working-dir, logs --follow, status, list (own jobs only) and stop with the stock CLI at .../ray."""
    server, idp = mounted
    address = f"http://127.0.0.1:{server.settings.listen_port}/ray"
    acme, nordlys = idp.token("acme-us"), idp.token("nordlys-se")
    secret = f"working-dir-says-{uuid.uuid4().hex}"
    workdir = tmp_path / "job"
    workdir.mkdir()
    (workdir / "data.txt").write_text(secret + "\n")
    (workdir / "payload.bin").write_bytes(os.urandom(3 * 1024 * 1024))  # a package of a few MB (over max_body_bytes)

    other = f"eg-other-{uuid.uuid4().hex[:8]}"
    status, body, _ = await call(server, idp, "nordlys-se", "POST", "/ray/api/jobs/", submission(other))
    assert status == 200 and body["submission_id"] == other, body

    sid = f"eg-cli-{uuid.uuid4().hex[:8]}"
    out = await ray_cli(address, acme, "submit", "--working-dir", str(workdir), *cli_submission(sid),
                        "--", "sh", "-c", "cat data.txt; sleep 2")  # fmt: skip
    assert sid in out, out
    status, job, _ = await call(server, idp, "acme-us", "GET", f"/ray/api/jobs/{sid}")
    package = job["runtime_env"]["working_dir"]
    assert status == 200 and package.startswith("gcs://_ray_pkg_"), job
    assert await held(server, "acme-us") >= 15832  # one H100 held while it runs

    logs = await ray_cli(address, acme, "logs", sid, "--follow")
    assert secret in logs, logs  # the job ran in the uploaded working directory
    status_out = await ray_cli(address, acme, "status", sid)
    assert f"Job '{sid}' succeeded" in status_out, status_out

    # The same directory again: the CLI's existence check passes (the tenant's own package), no upload.
    long_job = f"eg-cli-{uuid.uuid4().hex[:8]}"
    out = await ray_cli(address, acme, "submit", "--working-dir", str(workdir), *cli_submission(long_job),
                        "--", "sh", "-c", "cat data.txt; sleep 120")  # fmt: skip
    assert long_job in out, out
    records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
    checks = [r["code"] for r in records if r.get("route") == "ray.package.read"]
    # The first existence check is refused (not yet this tenant's: the CLI uploads), the second passes to Ray
    # (which may answer 404 once the first job has ended and it dropped the package: the CLI uploads again).
    assert checks == ["package_not_owned", None], checks
    listing = await ray_cli(address, acme, "list", via_env=True)
    assert sid in listing and long_job in listing and other not in listing, listing
    stopped = await ray_cli(address, acme, "stop", long_job)
    assert "stop" in stopped.lower(), stopped
    status, job, _ = await call(server, idp, "acme-us", "GET", f"/ray/api/jobs/{long_job}")
    assert status == 200 and job["status"] in ("STOPPED", "FAILED"), job

    # Another tenant: the package is not its to read, to run, or to overwrite.
    name = package.removeprefix("gcs://")
    status, refused, _ = await call(server, idp, "nordlys-se", "GET", f"/ray/api/packages/gcs/{name}")
    assert (status, refused["code"]) == (404, "package_not_owned"), refused
    theft = submission(f"eg-theft-{uuid.uuid4().hex[:8]}", runtime_env={"working_dir": package})
    status, refused, _ = await call(server, idp, "nordlys-se", "POST", "/ray/api/jobs/", theft)
    assert (status, refused["code"]) == (404, "package_not_owned"), refused
    theft = submission(f"eg-theft-{uuid.uuid4().hex[:8]}", runtime_env={"py_modules": [package]})
    status, refused, _ = await call(server, idp, "nordlys-se", "POST", "/ray/api/jobs/", theft)
    assert (status, refused["code"]) == (404, "package_not_owned"), refused
    url = f"http://127.0.0.1:{server.settings.listen_port}/ray/api/packages/gcs/{name}"
    async with (
        aiohttp.ClientSession() as client,
        client.put(url, data=b"PK\x05\x06" + bytes(18), headers={"Authorization": f"Bearer {nordlys}"}) as resp,
    ):
        refused = await resp.json(content_type=None)
    assert (resp.status, refused["code"]) == (409, "package_conflict"), refused
    async with aiohttp.ClientSession() as client, client.get(f"{ray}/api/jobs/") as resp:
        everything = await resp.json()  # straight from Ray: no theft reached it
    assert not [j for j in everything if j["submission_id"].startswith("eg-theft-")]


async def test_same_package_bytes_from_two_tenants(ray: str, mounted: tuple[Server, Idp]) -> None:
    """Two tenants may upload the very same bytes under a name and both use it; other bytes under it are refused."""
    server, idp = mounted
    name = f"_ray_pkg_{uuid.uuid4().hex}.zip"
    path = f"/ray/api/packages/gcs/{name}"
    content = zip_of({"main.py": "print('shared')\n"})
    assert (await call(server, idp, "nordlys-se", "GET", path))[1]["code"] == "package_not_owned"
    assert (await put(server, idp, "acme-us", path, content))[0] == 200
    assert (await call(server, idp, "acme-us", "GET", path))[0] == 200  # Ray holds it, and it is acme's
    assert (await call(server, idp, "nordlys-se", "GET", path))[1]["code"] == "package_not_owned"
    assert (await put(server, idp, "nordlys-se", path, content))[0] == 200  # the same bytes
    assert (await call(server, idp, "nordlys-se", "GET", path))[0] == 200
    status, refused = await put(server, idp, "nordlys-se", path, zip_of({"main.py": "print('other')\n"}))
    assert (status, refused["code"]) == (409, "package_conflict")
    assert (await call(server, idp, "acme-us", "GET", path))[0] == 200  # acme's package is untouched
    sid = f"eg-pkg-{uuid.uuid4().hex[:8]}"
    job = submission(sid, entrypoint="python main.py", runtime_env={"working_dir": f"gcs://{name}"})
    status, body, _ = await call(server, idp, "nordlys-se", "POST", "/ray/api/jobs/", job)
    assert status == 200 and body["submission_id"] == sid, body
    logs: Any = ""
    for _ in range(120):  # the job runs the shared package's code
        status, logs, _ = await call(server, idp, "nordlys-se", "GET", f"/ray/api/jobs/{sid}/logs")
        if status == 200 and "shared" in logs.get("logs", ""):
            break
        await asyncio.sleep(0.5)
    assert "shared" in logs["logs"], logs


def zip_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


async def put(server: Server, idp: Idp, sub: str, path: str, data: bytes) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{server.settings.listen_port}{path}"
    async with (
        aiohttp.ClientSession() as client,
        client.put(url, data=data, headers={"Authorization": f"Bearer {idp.token(sub)}"}) as resp,
    ):
        raw = await resp.read()
    return resp.status, json.loads(raw) if raw and resp.content_type.endswith("json") else raw


async def test_cluster_capacity_read_from_ray_itself(ray: str, tmp_path: Path) -> None:
    """No `cluster_gpus`: the gateway reads the head's 8 H100 from Ray and prices a job asking none at them."""
    tenants = peer_registry("acme-us")
    extra = "    scheduler_options: {capacity_refresh_s: 1}"
    async with peer_gateway(tmp_path, "ray", ray, tenants=tenants, timeout_s=30, extra=extra) as running:
        server, idp = running
        sid = f"eg-{uuid.uuid4().hex[:12]}"
        body = submission(sid, entrypoint="sleep 120", entrypoint_num_gpus=0, entrypoint_resources={})
        status, answer, _ = await call(server, idp, "acme-us", "POST", "/api/jobs/", body)
        assert status == 200 and answer["submission_id"] == sid, answer
        assert await held(server, "acme-us") == 8 * 15832  # the 8 H100 Ray lists, not the 0 the entrypoint asks
        records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
        (admitted,) = [r for r in records if r.get("route") == "ray.jobs.submit"]
        assert admitted["decision"] == "allow" and admitted["cost"]["gpus"] == 8, admitted
        status, stopped, _ = await call(server, idp, "acme-us", "POST", f"/api/jobs/{sid}/stop")
        assert status == 200 and stopped == {"stopped": True}
        assert await held(server, "acme-us") == 0


async def test_two_jobs_of_one_tenant_hold_the_cluster_once(ray: str, gateway: tuple[Server, Idp]) -> None:
    """Two live jobs of one tenant on real Ray share one lease: 8 x H100 held, not 16; stopping both frees it."""
    server, idp = gateway
    assert server.store is not None
    ids = [f"eg-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    for sid in ids:
        status, body, _ = await call(server, idp, "acme-us", "POST", "/api/jobs/", submission(sid))
        assert status == 200 and body["submission_id"] == sid, body
    assert await held(server, "acme-us") == 8 * 15832
    owners = [await server.store.owner_of("ray", sid) for sid in ids]
    assert owners[0] is not None and owners[1] is not None
    assert owners[0].lease.lease_id == owners[1].lease.lease_id
    status, stopped, headers = await call(server, idp, "acme-us", "POST", f"/api/jobs/{ids[0]}/stop")
    assert (status, stopped) == (200, {"stopped": True})
    assert await held(server, "acme-us") == 8 * 15832  # the other job still runs on the cluster
    status, stopped, _ = await call(server, idp, "acme-us", "POST", f"/api/jobs/{ids[1]}/stop")
    assert (status, stopped) == (200, {"stopped": True})
    assert await held(server, "acme-us") == 0
    records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
    (held_back,) = [r for r in records if r["kind"] == "release" and r["decision_id"] == headers[
        "X-Exportgate-Decision-Id"]]  # fmt: skip
    assert (held_back["released"], held_back["held_for"]) == (False, [ids[1]])
