"""Read-back true-up end to end: a lease follows what the scheduler allocated, and over-allocation is acted on."""

import json
import shutil
from pathlib import Path

from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.leases import QUOTA_SLOT
from gateway.core.replay import replay
from gateway.http.reconcile import Reconciler
from tests.harness import (
    E2E_TENANTS,
    H100,
    POLICIES,
    SUBMIT,
    Clock,
    Stack,
    call,
    held,
    ledger_records,
    running_stack,
    slurm_job,
    wait_for_record,
)

TRES = "cpu={cpus},mem=4000M,node={nodes},billing={cpus},gres/gpu={gpus},gres/gpu:h100={gpus}"


def reconciler(stack: Stack) -> Reconciler:
    assert stack.server.reconciler is not None
    return stack.server.reconciler


def runs_with(stack: Stack, job_id: str, gpus: int, *, nodes: int = 1) -> None:
    """slurmctld's record of the job: RUNNING with `gpus` H100s allocated."""
    stack.standin.jobs[job_id] |= {
        "job_state": "RUNNING",
        "start_time": int(stack.server.clock()),
        "tres_alloc_str": TRES.format(cpus=2 * nodes, nodes=nodes, gpus=gpus),
    }


def true_ups(stack: Stack) -> list[dict[str, object]]:
    return [r for r in ledger_records(stack) if r.get("route_kind") == "true_up"]


def counted(stack: Stack, direction: str, action: str) -> float:
    labels = {"direction": direction, "action": action}
    return stack.server.metrics.registry.get_sample_value("exportgate_true_ups_total", labels) or 0.0


async def test_more_than_leased_is_charged_and_released_with_the_job(tmp_path: Path) -> None:
    """A job slurmctld gave 3 GPUs on a 1-GPU lease holds 3 from the next round on; its end gives all 3 back."""
    async with running_stack(tmp_path, clock=Clock(), registry=E2E_TENANTS) as stack:
        assert (await call(stack, "POST", SUBMIT, "us-two", payload=slurm_job("h100:1")))[0] == 200
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == H100
        runs_with(stack, "1", 3)
        assert await reconciler(stack).run_once() == {"running": 1}
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 3 * H100
        [record] = true_ups(stack)
        assert (record["direction"], record["leased_tpp"], record["over_allocation"]) == ("up", H100, [])
        assert record["cost"]["gpus"] == 3  # type: ignore[index]
        release = await wait_for_record(stack, "release", job_id="1", reason="true_up")
        settle = await wait_for_record(stack, "settle", decision_id=record["decision_id"])
        assert release["decision_id"] == record["replaced_lease"] and settle["job_id"] == "1"
        assert counted(stack, "up", "none") == 1.0
        assert await reconciler(stack).run_once() == {"running": 1}  # unchanged: nothing new
        assert len(true_ups(stack)) == 1
        stack.standin.jobs["1"]["job_state"] = "COMPLETED"
        assert await reconciler(stack).run_once() == {"released": 1}
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 0.0


async def test_over_a_cap_is_charged_then_cancelled_by_default(tmp_path: Path) -> None:
    """Over its cap once charged, the job is recorded, cancelled through the scheduler, and held until it ends."""
    async with running_stack(tmp_path, clock=Clock(), registry=E2E_TENANTS) as stack:
        assert (await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job("h100:1")))[0] == 200
        runs_with(stack, "1", 3)  # the cap is 2 x H100
        assert await reconciler(stack).run_once() == {"running": 1}
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 3 * H100  # the true count, over the cap
        record = await wait_for_record(stack, "over_allocation", job_id="1")
        assert (record["counters"], record["action"], record["cancelled"]) == (["tenant:capped-ae"], "cancel", True)
        deletes = [r for r in stack.standin.requests if r["method"] == "DELETE"]
        assert [r["path"] for r in deletes] == ["/slurm/v0.0.38/job/1"]
        assert deletes[0]["headers"]["X-SLURM-USER-NAME"] == "capped-ae"  # as the job's owner
        assert counted(stack, "up", "cancel") == 1.0
        assert await reconciler(stack).run_once() == {"released": 1}  # the stand-in marked it CANCELLED
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 0.0


async def test_alert_leaves_the_over_allocated_job_running(tmp_path: Path) -> None:
    """With `over_allocation: alert` the job is charged, recorded and counted, and nothing is cancelled."""
    pack = alerting_pack(tmp_path)
    assert load_pack(pack).enforcement.over_allocation.value == "alert"
    async with running_stack(tmp_path, clock=Clock(), registry=E2E_TENANTS, pack=pack) as stack:
        assert (await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job("h100:1")))[0] == 200
        runs_with(stack, "1", 3)
        assert await reconciler(stack).run_once() == {"running": 1}
        record = await wait_for_record(stack, "over_allocation", job_id="1")
        assert (record["action"], record["cancelled"]) == ("alert", False)
        assert [r for r in stack.standin.requests if r["method"] == "DELETE"] == []
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 3 * H100
        assert counted(stack, "up", "alert") == 1.0


async def test_less_than_leased_is_given_back_once_nothing_more_can_start(tmp_path: Path) -> None:
    """A 4-GPU lease on a job that runs with 2 gives 2 back; while a record still waits, nothing is given back."""
    async with running_stack(tmp_path, clock=Clock(), registry=E2E_TENANTS) as stack:
        assert (await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job("h100:2")))[0] == 200
        assert (await call(stack, "POST", SUBMIT, "us-two", payload=slurm_job("h100:4")))[0] == 200
        runs_with(stack, "2", 2)
        stack.standin.status_answers["2"] = (200, _with_pending_record(stack, "2"))
        assert await reconciler(stack).run_once() == {"running": 2}
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 4 * H100  # a task may still start
        del stack.standin.status_answers["2"]  # now every record runs: nothing more can be allocated
        assert await reconciler(stack).run_once() == {"running": 2}
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 2 * H100
        [record] = true_ups(stack)
        assert record["direction"] == "down" and record["leased_tpp"] == 4 * H100
        assert counted(stack, "down", "none") == 1.0


def _with_pending_record(stack: Stack, job_id: str) -> bytes:
    """The status answer of an array whose one task runs while another still waits."""
    running = dict(stack.standin.jobs[job_id])
    waiting = running | {"job_state": "PENDING", "tres_alloc_str": "", "start_time": 0}
    return json.dumps({"meta": {}, "errors": [], "jobs": [running, waiting]}).encode()


def alerting_pack(tmp_path: Path) -> Path:
    """The example pack with `over_allocation: alert`."""
    pack = tmp_path / "pack"
    shutil.copytree(POLICIES / "ai-diffusion-2025", pack)
    manifest = pack / "pack.yaml"
    manifest.write_text(manifest.read_text().replace("over_allocation: cancel", "over_allocation: alert"))
    return pack


async def test_a_true_up_survives_restart_and_replay(tmp_path: Path) -> None:
    """The start-up rebuild and `replay` both hold what the true-up moved the job to, not what admission priced.

    The trued-up job holds 3 of the tenant's 2-H100 cap, so the next 1-GPU job is refused live; a
    replay that left the true-up out would admit it and report a change.
    """
    clock, pack = Clock(), alerting_pack(tmp_path)
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS, pack=pack) as stack:
        assert (await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job("h100:1")))[0] == 200
        runs_with(stack, "1", 3)
        await reconciler(stack).run_once()
        await wait_for_record(stack, "settle", job_id="1", status=200, settled=True, upstream="slurm")
        status, body, _ = await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job("h100:1"))
        assert (status, body["code"]) == (429, "quota_tenant_tpp")
        records = ledger_records(stack)
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS, pack=pack) as stack:
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 3 * H100
    report = replay(records, load_pack(pack), load_registry(tmp_path / "tenants.yaml"))
    assert report.decided == 2 and report.changes == ()
