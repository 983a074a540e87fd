"""Jobs the gateway never admitted, end to end against the Slurm/Ray stand-in: recorded, counted, cancelled."""

import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.http.reconcile import Reconciler
from tests.harness import (
    POLICIES,
    RAY_ENTRYPOINT,
    SUBMIT,
    Clock,
    Stack,
    call,
    ledger_records,
    ray_job,
    running_stack,
    slurm_job,
    tenant,
)
from tests.redis_server import free_port

# alpha and beta run as one Slurm user (one identity, asked about once); gamma as its own.
REGISTRY = (
    "tenants:"
    + tenant("alpha", "US/US/US", slurm_user="shared")
    + tenant("beta", "US/US/US", slurm_user="shared")
    + tenant("gamma", "US/US/US")
    + "\n"
)
SETTLE_S = 3.0  # the stand-in upstream's connect (1 s) plus read (2 s) timeout


def pack_with(tmp_path: Path, unadmitted: str) -> Path:
    """A copy of the bundled pack whose enforcement says `unadmitted: <unadmitted>`."""
    pack = tmp_path / "pack"
    shutil.copytree(POLICIES / "ai-diffusion-2025", pack)
    text = (pack / "pack.yaml").read_text()
    assert "  unadmitted: alert\n" in text
    (pack / "pack.yaml").write_text(text.replace("  unadmitted: alert\n", f"  unadmitted: {unadmitted}\n"))
    return pack


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stack(tmp_path: Path, clock: Clock) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, clock=clock, registry=REGISTRY) as s:
        yield s


@pytest.fixture
async def cancelling(tmp_path: Path, clock: Clock) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, clock=clock, registry=REGISTRY, pack=pack_with(tmp_path, "cancel")) as s:
        yield s


def reconciler(stack: Stack) -> Reconciler:
    assert stack.server.reconciler is not None
    return stack.server.reconciler


def around(stack: Stack, job_id: str, user: str, **fields: Any) -> dict[str, Any]:
    """A Slurm job submitted straight to the scheduler (a login node's sbatch), holding GPUs."""
    job = {"job_id": int(job_id), "job_state": "RUNNING", "name": "around", "user_name": user, "time_limit": 60,
           "array_job_id": 0, "het_job_id": 0, "tres_per_job": "gres:gpu:h100:2"} | fields  # fmt: skip
    stack.standin.jobs[job_id] = job
    return job


def unadmitted(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in ledger_records(stack) if r["kind"] == "unadmitted_job"]


def counted(stack: Stack, action: str) -> float:
    sample = stack.server.metrics.registry.get_sample_value("exportgate_unadmitted_jobs_total", {"action": action})
    return sample or 0.0


def deletes(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.standin.requests if r["method"] == "DELETE"]


async def two_sweeps(stack: Stack, clock: Clock) -> dict[str, int]:
    """A pass that first sees the jobs, then one a settle time later that may flag them; the second's counts."""
    await reconciler(stack).run_once()
    clock.now += SETTLE_S
    return await reconciler(stack).run_once()


async def test_unadmitted_job_is_recorded_counted_and_left_running(stack: Stack, clock: Clock) -> None:
    """Under `alert` a GPU job of a tenant's Slurm user that no lease covers is recorded once for every tenant
    of that identity, counted and logged; it keeps running and nothing is sent to the scheduler about it."""
    around(stack, "900", "shared")
    assert await reconciler(stack).run_once() == {}  # seen once: it may be a submission still in flight
    assert unadmitted(stack) == []
    clock.now += SETTLE_S
    assert await reconciler(stack).run_once() == {"unadmitted": 1}
    [record] = unadmitted(stack)
    assert {k: record[k] for k in ("decision_id", "tenants", "upstream", "job_id", "records", "action")} == {
        "decision_id": "unadmitted", "tenants": ["alpha", "beta"], "upstream": "slurm", "job_id": "900",
        "records": ["900"], "action": "alert",
    }  # fmt: skip
    assert counted(stack, "alert") == 1.0
    assert stack.standin.jobs["900"]["job_state"] == "RUNNING" and deletes(stack) == []
    listings = [r for r in stack.standin.requests if r["path"] == "/slurm/v0.0.38/jobs"]
    assert sorted(r["headers"]["X-SLURM-USER-NAME"] for r in listings[:2]) == ["gamma", "shared"]  # once each
    clock.now += SETTLE_S
    assert await reconciler(stack).run_once() == {}  # once per process
    assert len(unadmitted(stack)) == 1 and counted(stack, "alert") == 1.0


async def test_unadmitted_array_task_is_flagged_by_its_array_job(stack: Stack, clock: Clock) -> None:
    """Array tasks' records name their array job: one record for the job the submission would have returned."""
    around(stack, "905", "gamma", array_job_id=904)
    around(stack, "904", "gamma", array_job_id=904, job_state="PENDING")
    assert await two_sweeps(stack, clock) == {"unadmitted": 1}
    [record] = unadmitted(stack)
    assert (record["job_id"], record["records"], record["tenants"]) == ("904", ["905", "904"], ["gamma"])


async def test_owned_and_other_identities_jobs_are_never_flagged(stack: Stack, clock: Clock) -> None:
    """A GPU job submitted through the gateway is owned; jobs of users no tenant maps to, jobs holding no GPUs
    and jobs that are over are none of the sweep's business."""
    status, body, _ = await call(stack, "POST", SUBMIT, "gamma", payload=slurm_job(gpus="h100:2"))
    assert status == 200, body
    owned = stack.standin.jobs[str(body["job_id"])]
    owned.update(job_state="RUNNING", tres_per_job="gres:gpu:h100:2", array_job_id=0, het_job_id=0)
    around(stack, "910", "root")  # an operator's (or another customer's) job
    around(stack, "911", "gamma", tres_per_job="")  # no GPUs
    around(stack, "912", "gamma", job_state="COMPLETED")
    around(stack, "913", "")  # whose it is cannot be told
    for _ in range(3):
        assert "unadmitted" not in await two_sweeps(stack, clock)
    assert unadmitted(stack) == [] and counted(stack, "alert") == 0.0


async def test_cancel_records_first_then_cancels_as_the_identity(cancelling: Stack, clock: Clock) -> None:
    """Under `cancel` the job is recorded (action cancel), then cancelled through slurmrestd as its own user."""
    stack = cancelling
    around(stack, "920", "gamma")
    status, body, _ = await call(stack, "POST", SUBMIT, "gamma", payload=slurm_job(gpus="h100:1"))
    assert status == 200, body
    stack.standin.jobs[str(body["job_id"])].update(job_state="RUNNING", tres_per_job="gres:gpu:h100:1")
    counts = await two_sweeps(stack, clock)
    assert (counts["unadmitted"], counts["unadmitted_cancelled"]) == (1, 1)
    [record] = unadmitted(stack)
    assert (record["job_id"], record["action"], record["tenants"]) == ("920", "cancel", ["gamma"])
    assert stack.standin.jobs["920"]["job_state"] == "CANCELLED"
    [cancel] = deletes(stack)
    assert cancel["path"] == "/slurm/v0.0.38/job/920" and cancel["headers"]["X-SLURM-USER-NAME"] == "gamma"
    assert stack.standin.jobs[str(body["job_id"])]["job_state"] == "RUNNING"  # the admitted one runs on
    assert counted(stack, "cancel") == 1.0


async def test_ray_job_around_the_gateway_is_stopped(tmp_path: Path, clock: Clock) -> None:
    """Every live Ray job is a GPU job: one submitted straight to the dashboard is recorded and stopped; the
    gateway's own submission runs on."""
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    async with running_stack(
        tmp_path, clock=clock, registry=REGISTRY, scheduler="ray", headers=headers,
        upstream_extra=RAY_ENTRYPOINT, pack=pack_with(tmp_path, "cancel"),
    ) as stack:  # fmt: skip
        assert (await call(stack, "POST", "/api/jobs/", "gamma", payload=ray_job("mine")))[0] == 200
        stack.standin.ray_jobs["around-1"] = {**stack.standin.ray_jobs["mine"], "submission_id": "around-1",
                                              "status": "RUNNING"}  # fmt: skip
        counts = await two_sweeps(stack, clock)
        assert (counts["unadmitted"], counts["unadmitted_cancelled"]) == (1, 1)
        [record] = unadmitted(stack)
        assert (record["job_id"], record["action"], record["upstream"]) == ("around-1", "cancel", "ray")
        assert record["tenants"] == ["alpha", "beta", "gamma"]  # one identity: the gateway's own Ray token
        assert stack.standin.ray_jobs["around-1"]["status"] == "STOPPED"
        assert stack.standin.ray_jobs["mine"]["status"] == "PENDING"


async def test_unreachable_scheduler_is_counted_and_the_round_goes_on(tmp_path: Path, clock: Clock) -> None:
    """A listing that cannot be fetched is logged and counted; the round returns as usual."""
    url = f"http://127.0.0.1:{free_port()}"
    async with running_stack(tmp_path, clock=clock, registry=REGISTRY, upstream_url=url) as stack:
        assert await two_sweeps(stack, clock) == {}
        errors = stack.server.metrics.registry.get_sample_value(
            "exportgate_unadmitted_sweep_errors_total", {"stage": "list"}
        )
        assert errors == 4.0  # two identities, two sweeps


async def test_an_id_chosen_around_the_gateway_reaches_the_ledger_bounded(tmp_path: Path, clock: Clock) -> None:
    """A Ray job submitted around the gateway with a long, multi-line id is recorded quoted and cut, with its digest."""
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    async with running_stack(
        tmp_path, clock=clock, registry=REGISTRY, scheduler="ray", headers=headers, upstream_extra=RAY_ENTRYPOINT
    ) as stack:
        assert (await call(stack, "POST", "/api/jobs/", "gamma", payload=ray_job("mine")))[0] == 200
        odd = "x" * 5000 + '\n{"kind": "forged"}'
        stack.standin.ray_jobs[odd] = {**stack.standin.ray_jobs["mine"], "submission_id": odd, "status": "RUNNING"}
        counts = await two_sweeps(stack, clock)
        assert counts["unadmitted"] == 1
        [record] = unadmitted(stack)
        assert len(record["job_id"]) <= 64 and "\n" not in record["job_id"]
        assert record["job_id_sha256"] == hashlib.sha256(odd.encode()).hexdigest()
