"""The gateway in front of a real slurmctld + slurmrestd 22.05 on loopback: two slurmd nodes (g1, g2),
each with 8 fake H100s; partitions `gpu` (default) and `excl` (OverSubscribe=EXCLUSIVE)."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config.bundled import BUNDLED_POLICIES
from gateway.http.app import Server
from gateway.schedulers.slurm_fields import host_count
from tests.envoy_kit import check, check_request
from tests.harness import Clock, Idp, ledger_records, tenant, wait_until
from tests.harness import call as gateway_call
from tests.peers_kit import held, peer_gateway, peer_registry
from tests.redis_server import free_port

SCRIPT = Path(__file__).parent / "peers" / "slurm.sh"
API = "/slurm/v0.0.38"
H100_TPP = 15832


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
        "SLURM_CONF": str(base / "etc" / "slurm.conf"),
        "REST_PORT": str(free_port()),
        "CTLD_PORT": str(free_port()),
        "SLURMD_PORT": str(free_port()),
        "SLURMD_PORT2": str(free_port()),
    }
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        jobs = base / "jobs"
        jobs.mkdir(exist_ok=True)
        jobs.chmod(0o1777)
        yield {"base": base, "url": f"http://127.0.0.1:{env['REST_PORT']}", "jobs": jobs, "conf": env["SLURM_CONF"]}
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
    scheduler_options: {{facts_user: root, exclusive_partitions: [excl]}}
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
    """slurmrestd's HTTP 500 with an errors array (16 GPUs for one task on 8-GPU nodes) is definitive: refunded."""
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


def scontrol(slurm: dict[str, Any], *args: str) -> str:
    env = {**os.environ, "SLURM_CONF": slurm["conf"]}
    done = subprocess.run(["scontrol", *args], env=env, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def allocated_gpus(slurm: dict[str, Any], job_id: int) -> int | None:
    """The GPUs slurmctld allocated to a running job (`scontrol show job -d`); None while it has none yet.

    TRES `gres/gpu=N` when accounting tracks GPUs, else the per-node `GRES=gpu:h100:N(IDX:..)` lines
    times the hosts each names.
    """
    shown = scontrol(slurm, "show", "job", "-d", str(job_id))
    if "JobState=RUNNING" not in shown:
        return None
    tres = re.search(r"\bTRES=\S*gres/gpu=([0-9]+)", shown)
    if tres:
        return int(tres[1])
    total = 0
    for nodes, gres in re.findall(r"^\s+Nodes=(\S+) .*?\bGRES=(\S+)", shown, re.M):
        per = sum(int(n) for n in re.findall(r"gpu(?::[A-Za-z0-9_]+)?:([0-9]+)\(IDX", gres))
        total += per * host_count(nodes, "Nodes")
    return total


async def running_gpus(slurm: dict[str, Any], job_id: int) -> int:
    found: list[int] = []

    def started() -> bool:
        n = allocated_gpus(slurm, job_id)
        found.extend([] if n is None else [n])
        return n is not None

    await wait_until(started, 60, every=0.5, message=f"job {job_id} did not start")
    return found[-1]


def shaped(slurm: dict[str, Any], name: str, **fields: Any) -> dict[str, Any]:
    """A job without the usual `tasks: 1, gpus: ...`: only the resource fields given."""
    body = job(slurm, 1, name)
    del body["job"]["tasks"], body["job"]["gpus"]
    body["job"].update(fields)
    return body


async def held_equals_allocated(slurm: dict[str, Any], gateway: tuple[Server, Idp], body: dict[str, Any]) -> int:
    """Submit through the gateway; assert the TPP it holds is what slurmctld allocated; cancel. The GPU count."""
    server, idp = gateway
    status, answer = await call(server, idp, "acme-us", "POST", f"{API}/job/submit", body)
    assert status == 200, answer
    job_id = answer["job_id"]
    try:
        gpus = await running_gpus(slurm, job_id)
        assert await held(server, "acme-us") == gpus * H100_TPP, (job_id, gpus, await held(server, "acme-us"))
    finally:
        status, answer = await call(server, idp, "acme-us", "DELETE", f"{API}/job/{job_id}")
        assert status == 200, answer
    assert await held(server, "acme-us") == 0
    return gpus


@pytest.mark.parametrize(
    "fields, gpus",
    [
        ({"tasks": 1, "exclusive": "exclusive"}, 8),  # no GPU field: the whole node
        ({"tasks": 1, "exclusive": "exclusive", "gres": "gpu:h100:1"}, 8),
        ({"tasks": 2, "tasks_per_node": 1, "gres": "gpu:h100:4"}, 8),  # 2 nodes x 4
        ({"tasks": 2, "cpus_per_task": 8, "gres": "gpu:h100:4"}, 8),  # 8-CPU nodes: one task each
        ({"tasks": 1, "partition": "excl", "gpus": "h100:1"}, 8),  # OverSubscribe=EXCLUSIVE
        ({"tasks": 1, "gpus": "h100:2"}, 2),  # needs no facts: as before
        ({"exclusive": "exclusive", "gpus": "h100:9"}, 16),  # no task count: 9 GPUs need 2 whole nodes
        ({"tasks": 2, "exclusive": "exclusive", "gres": "gpu:h100:1", "tasks_per_node": 1}, 16),
    ],
    ids=[
        "exclusive",
        "exclusive-gres1",
        "tasks-per-node",
        "cpus-per-task",
        "exclusive-partition",
        "plain",
        "exclusive-9-gpus",
        "exclusive-2-tasks",
    ],
)
async def test_gateway_holds_what_slurm_allocates(
    slurm: dict[str, Any], gateway: tuple[Server, Idp], fields: dict[str, Any], gpus: int
) -> None:
    """The gateway's held count equals the GPUs `scontrol show job -d` reports for the running job."""
    assert await held_equals_allocated(slurm, gateway, shaped(slurm, "alloc", **fields)) == gpus


async def test_array_task_by_its_own_id(slurm: dict[str, Any], gateway: tuple[Server, Idp]) -> None:
    """Array task 0 of job A runs as its own job id: its owner reads and cancels it by it; others cannot."""
    server, idp = gateway
    body = job(slurm, 1, "array")
    body["job"]["array"] = "0-1"
    status, answer = await call(server, idp, "acme-us", "POST", f"{API}/job/submit", body)
    assert status == 200, answer
    array_id = answer["job_id"]
    assert await held(server, "acme-us") == 2 * H100_TPP
    task: list[int] = []

    def task_started() -> bool:
        shown = scontrol(slurm, "show", "job", str(array_id))
        task[:] = [int(j) for j, t in re.findall(r"JobId=([0-9]+) ArrayJobId=[0-9]+ ArrayTaskId=([0-9]+)", shown)
                   if t == "0"]  # fmt: skip
        return bool(task) and task[0] != array_id

    await wait_until(task_started, 60, every=0.5, message="array task 0 got no job id of its own")
    own = task[0]
    status, answer = await call(server, idp, "nordlys-se", "GET", f"{API}/job/{own}")
    assert (status, answer["code"]) == (404, "job_not_owned")
    status, answer = await call(server, idp, "nordlys-se", "DELETE", f"{API}/job/{own}")
    assert (status, answer["code"]) == (404, "job_not_owned")
    status, answer = await call(server, idp, "acme-us", "GET", f"{API}/job/{own}")
    assert status == 200, answer
    assert [(j["job_id"], j["array_job_id"], j["array_task_id"]) for j in answer["jobs"]] == [(own, array_id, 0)]
    # The owner's cancel reaches slurmrestd, whose v0.0.38 kills with KILL_FULL_JOB: a task's own id is
    # refused there ("Invalid job id specified"), in Slurm's dialect, not by the gateway.
    status, answer = await call(server, idp, "acme-us", "DELETE", f"{API}/job/{own}")
    assert status == 500 and [e["error_number"] for e in answer["errors"]] == [2017], answer
    status, answer = await call(server, idp, "acme-us", "DELETE", f"{API}/job/{array_id}_0")
    assert status == 200, answer
    assert await held(server, "acme-us") == 2 * H100_TPP  # task 1 still runs: the array stays held
    status, answer = await call(server, idp, "acme-us", "DELETE", f"{API}/job/{array_id}")
    assert status == 200, answer
    assert await held(server, "acme-us") == 0


async def test_v0038_update_body_is_the_job_itself(slurm: dict[str, Any], gateway: tuple[Server, Idp]) -> None:
    """v0.0.38 takes an update as the job's properties (not under "job"): priced, forwarded, applied."""
    server, idp = gateway
    status, answer = await call(server, idp, "acme-us", "POST", f"{API}/job/submit", job(slurm, 1, "upd"))
    assert status == 200, answer
    job_id = answer["job_id"]
    try:
        update = {"tasks": 1, "gpus": "h100:1", "time_limit": 5}
        status, answer = await call(server, idp, "acme-us", "POST", f"{API}/job/{job_id}", update)
        assert status == 200 and answer["errors"] == [], answer
        assert "TimeLimit=00:05:00" in scontrol(slurm, "show", "job", str(job_id))
        assert await held(server, "acme-us") == H100_TPP
        wrapped = {"job": {**update, "time_limit": 4}}
        status, answer = await call(server, idp, "acme-us", "POST", f"{API}/job/{job_id}", wrapped)
        # v0.0.38 reads "job" as an unknown key: errors (with HTTP 200), nothing applied; priced as its content
        assert [e.get("description") for e in answer["errors"]][:1] == ['Unknown key "job"'], (status, answer)
        assert "TimeLimit=00:05:00" in scontrol(slurm, "show", "job", str(job_id))
        assert await held(server, "acme-us") == H100_TPP
    finally:
        status, answer = await call(server, idp, "acme-us", "DELETE", f"{API}/job/{job_id}")
        assert status == 200, answer


async def test_unknown_facts_refuse_whole_nodes(slurm: dict[str, Any], tmp_path: Path) -> None:
    """Without facts_user the gateway knows no node sizes: an exclusive job is refused 400, naming what is
    missing, and never reaches Slurm; a plain job needs no facts and is admitted as before."""
    key = slurm["base"] / "state" / "jwt_hs256.key"
    headers = f"""    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{from_tenant: slurm_user, slurm_jwt_key_file: {key}, lifespan_s: 300}}
"""
    tenants = peer_registry("acme-us")
    async with peer_gateway(tmp_path, "slurm", slurm["url"], tenants=tenants, timeout_s=20, headers=headers) as gw:
        server, idp = gw
        body = shaped(slurm, "nofacts", tasks=1, exclusive="exclusive")
        status, answer = await call(server, idp, "acme-us", "POST", f"{API}/job/submit", body)
        assert (status, answer["code"]) == (400, "job_spec_invalid"), answer
        assert "GPUs per node of partition 'gpu' are not known" in answer["detail"]
        assert await held(server, "acme-us") == 0
        assert "nofacts" not in scontrol(slurm, "show", "jobs")
        assert await held_equals_allocated(slurm, gw, job(slurm, 2, "plain")) == 2


async def test_job_pending_past_its_allowance_keeps_its_lease_and_blocks_the_next(
    slurm: dict[str, Any], tmp_path: Path
) -> None:
    """A job slurmctld keeps PENDING past the lease's first end stays held, so the tenant's cap still refuses."""
    key = slurm["base"] / "state" / "jwt_hs256.key"
    headers = f"""    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{from_tenant: slurm_user, slurm_jwt_key_file: {key}, lifespan_s: 300}}
"""
    registry = "tenants:" + tenant("capped-ae", "AE/AE/AE", "\n    tpp_cap: 31664", slurm_user="root") + "\n"
    clock = Clock()
    async with peer_gateway(
        tmp_path, "slurm", slurm["url"], tenants=registry, timeout_s=20, headers=headers, clock=clock
    ) as (server, idp):
        idp.clock = clock  # tokens valid on the gateway's clock, which the test moves
        waiting = job(slurm, 2, "eg-later")
        waiting["job"]["hold"] = True  # slurmctld keeps it PENDING (JobHeldUser) until released
        status, body = await call(server, idp, "capped-ae", "POST", f"{API}/job/submit", waiting)
        assert status == 200, body
        job_id = body["job_id"]
        try:
            records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
            assert await held(server, "capped-ae") == 2 * 15832
            first_end = next(r["lease"]["lease_end"] for r in records if r["kind"] == "decision" and r["lease"])
            assert server.reconciler is not None
            clock.now = first_end - 60  # a round just before the first end: slurmctld still says PENDING
            assert await server.reconciler.run_once() == {"running": 1}
            clock.now = first_end + 600  # ten minutes past the allowance, before the next round
            assert "JobState=PENDING" in scontrol(slurm, "show", "job", str(job_id))
            assert await held(server, "capped-ae") == 2 * 15832
            status, body = await call(server, idp, "capped-ae", "POST", f"{API}/job/submit", job(slurm, 1, "eg-next"))
            assert (status, body["code"]) == (429, "quota_tenant_tpp")
            records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
            assert [r["reason"] for r in records if r["kind"] == "extend"] == ["pending"]
        finally:
            await call(server, idp, "capped-ae", "DELETE", f"{API}/job/{job_id}")


async def test_allocation_beyond_the_lease_is_charged_and_over_a_cap_cancelled(
    slurm: dict[str, Any], tmp_path: Path
) -> None:
    """Jobs moved around the gateway to 3 GPUs on 1-GPU leases: the uncapped one is charged 3, the capped cancelled."""
    key = slurm["base"] / "state" / "jwt_hs256.key"
    headers = f"""    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{from_tenant: slurm_user, slurm_jwt_key_file: {key}, lifespan_s: 300}}
"""
    registry = ("tenants:" + tenant("acme-us", "US/US/US", slurm_user="root")
                + tenant("capped-ae", "AE/AE/AE", "\n    tpp_cap: 31664", slurm_user="root") + "\n")  # fmt: skip
    config = "reconcile: {interval_s: 0}"
    async with peer_gateway(
        tmp_path, "slurm", slurm["url"], tenants=registry, timeout_s=20, headers=headers, config=config
    ) as (server, idp):
        assert server.reconciler is not None
        ids: dict[str, int] = {}
        for sub in ("acme-us", "capped-ae"):
            body = shaped(slurm, f"eg-moved-{sub}", tasks=1, gres="gpu:h100:1", hold=True)
            status, answer = await call(server, idp, sub, "POST", f"{API}/job/submit", body)
            assert status == 200, answer
            ids[sub] = answer["job_id"]
            # Someone with scontrol (an operator, or the user on a login node) moves it to 3 GPUs, then lets it run.
            scontrol(slurm, "update", f"JobId={ids[sub]}", "TresPerNode=gres:gpu:h100:3")
            scontrol(slurm, "release", str(ids[sub]))
        try:
            assert [await running_gpus(slurm, ids[sub]) for sub in ids] == [3, 3]
            assert await held(server, "acme-us") == 15832 and await held(server, "capped-ae") == 15832
            await server.reconciler.run_once()
            assert await held(server, "acme-us") == 3 * 15832  # what scontrol shows, at last
            records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
            over = [r for r in records if r["kind"] == "over_allocation"]
            expected = [("capped-ae", str(ids["capped-ae"]), "cancel")]
            assert [(r["tenant"], r["job_id"], r["action"]) for r in over] == expected
            state = ""
            for _ in range(40):
                state = scontrol(slurm, "show", "job", str(ids["capped-ae"]))
                if "JobState=CANCELLED" in state:
                    break
                await asyncio.sleep(0.25)
            assert "JobState=CANCELLED" in state
            assert "JobState=RUNNING" in scontrol(slurm, "show", "job", str(ids["acme-us"]))
        finally:
            for sub in ids:
                await call(server, idp, sub, "DELETE", f"{API}/job/{ids[sub]}")


async def test_job_submitted_around_the_gateway_is_flagged_and_with_cancel_cancelled(
    slurm: dict[str, Any], tmp_path: Path
) -> None:
    """A GPU job sent straight to slurmrestd as the tenants' Slurm user (root) holds no lease: under the bundled
    pack (`unadmitted: alert`) it is recorded for both tenants and runs on; a gateway whose pack says `cancel`
    records it and cancels it through slurmrestd. The job each gateway admitted itself is never flagged."""
    token = scontrol(slurm, "token", "username=root", "lifespan=600").strip().partition("=")[2]
    direct = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": token}
    body = job(slurm, 1, "eg-around", "#!/bin/bash\nsleep 300")
    status, answer, _ = await gateway_call(slurm["url"], "POST", f"{API}/job/submit", payload=body, headers=direct)
    assert status == 200, answer
    around = str(answer["job_id"])
    cancelling = tmp_path / "pack"
    shutil.copytree(BUNDLED_POLICIES / "ai-diffusion-2025", cancelling)
    manifest = (cancelling / "pack.yaml").read_text()
    (cancelling / "pack.yaml").write_text(manifest.replace("  unadmitted: alert\n", "  unadmitted: cancel\n"))
    key = slurm["base"] / "state" / "jwt_hs256.key"
    headers = f"""    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{from_tenant: slurm_user, slurm_jwt_key_file: {key}, lifespan_s: 300}}
"""
    try:
        for pack, action in ((None, "alert"), (cancelling, "cancel")):
            workdir, clock = tmp_path / action, Clock()
            workdir.mkdir()
            async with peer_gateway(
                workdir, "slurm", slurm["url"], tenants=peer_registry("acme-us", "nordlys-se"), timeout_s=20,
                headers=headers, config="reconcile: {interval_s: 0}", clock=clock, pack=pack,
            ) as (server, idp):  # fmt: skip
                idp.clock = clock
                assert server.reconciler is not None
                status, answer = await call(server, idp, "acme-us", "POST", f"{API}/job/submit", job(slurm, 1))
                assert status == 200, answer
                admitted = str(answer["job_id"])
                try:
                    await server.reconciler.run_once()  # seen once: it might be a submission still in flight
                    clock.now += 30  # past the upstream's connect plus read timeout (5 + 20 s)
                    assert (await server.reconciler.run_once()).get("unadmitted", 0) >= 1
                    records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
                    flagged = [r for r in records if r["kind"] == "unadmitted_job"]
                    mine = [(r["tenants"], r["action"]) for r in flagged if r["job_id"] == around]
                    assert mine == [(["acme-us", "nordlys-se"], action)]
                    assert admitted not in [r["job_id"] for r in flagged]
                    state = ""
                    for _ in range(40):
                        state = scontrol(slurm, "show", "job", around)
                        if action == "alert" or "JobState=CANCELLED" in state:
                            break
                        await asyncio.sleep(0.25)
                    assert ("JobState=CANCELLED" in state) is (action == "cancel"), state
                    assert "JobState=CANCELLED" not in scontrol(slurm, "show", "job", admitted)
                finally:
                    await call(server, idp, "acme-us", "DELETE", f"{API}/job/{admitted}")
    finally:  # straight to slurmrestd again (already cancelled under `cancel`: harmless)
        await gateway_call(slurm["url"], "DELETE", f"{API}/job/{around}", headers=direct)


async def test_envoy_priced_submission_is_adopted_and_counted_as_slurm_allocates(
    slurm: dict[str, Any], tmp_path: Path
) -> None:
    """Envoy's path, end to end but for the Envoy binary: a gRPC Check carrying the buffered body is priced and
    held, the body then goes straight to slurmrestd with the headers the Check set (as Envoy forwards it), and
    reconciliation adopts the job slurmctld created into that lease: what the gateway holds is what
    `scontrol show job` says the job was given, and the job is never flagged as submitted around the gateway."""
    key = slurm["base"] / "state" / "jwt_hs256.key"
    headers = f"""    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{from_tenant: slurm_user, slurm_jwt_key_file: {key}, lifespan_s: 300}}
"""
    clock, port = Clock(), free_port()
    config = f"reconcile: {{interval_s: 0}}\nenvoy_grpc: {{host: 127.0.0.1, port: {port}}}"
    async with peer_gateway(
        tmp_path, "slurm", slurm["url"], tenants=peer_registry("acme-us"), timeout_s=20, headers=headers,
        config=config, clock=clock,
    ) as (server, idp):  # fmt: skip
        idp.clock = clock
        assert server.reconciler is not None
        body = job(slurm, 3, "eg-envoy", "#!/bin/bash\nsleep 300")
        raw = json.dumps(body).encode()
        sent = {"Authorization": f"Bearer {idp.token('acme-us')}", "Content-Type": "application/json"}
        checked = await check(port, check_request("POST", f"{API}/job/submit", sent, body=raw))
        assert checked.allowed, checked.body
        decision_id = checked.headers["x-exportgate-decision-id"]
        assert await held(server, "acme-us") == 3 * H100_TPP  # held before anything reached slurmrestd
        upstream_headers = {k: v for k, v in checked.headers.items() if k not in checked.removed}
        status, answer, _ = await gateway_call(slurm["url"], "POST", f"{API}/job/submit", payload=body,
                                               headers=upstream_headers)  # fmt: skip
        assert status == 200, answer
        job_id = str(answer["job_id"])
        try:
            counts = await server.reconciler.run_once()
            assert counts.get("adopted") == 1, counts
            assert server.store is not None
            owner = await server.store.owner_of("slurm", job_id)
            assert owner is not None and (owner.tenant_id, owner.lease.lease_id) == ("acme-us", decision_id)
            assert await held(server, "acme-us") == await running_gpus(slurm, int(job_id)) * H100_TPP
            clock.now += 60  # past twice the upstream's connect plus read timeout: nothing left to adopt or flag
            await server.reconciler.run_once()
            await server.reconciler.run_once()
            records = ledger_records(server.settings.ledger.dir, server.settings.instance_id)
            assert not [r for r in records if r["kind"] == "unadmitted_job"]
            assert not [r for r in records if r["kind"] == "release" and r["decision_id"] == decision_id]
            status, _ = await call(server, idp, "acme-us", "DELETE", f"{API}/job/{job_id}")  # through the proxy
            assert status == 200
            assert await held(server, "acme-us") == 0
        finally:
            token = scontrol(slurm, "token", "username=root", "lifespan=600").strip().partition("=")[2]
            direct = {"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": token}
            await gateway_call(slurm["url"], "DELETE", f"{API}/job/{job_id}", headers=direct)
