"""Reconciliation end to end: finished jobs give their capacity back, live or unreadable ones stay held."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.located import Problem, load_text
from gateway.config.reconcile import ReconcileSettings, load_reconcile_settings
from gateway.core.leases import QUOTA_SLOT
from gateway.http.reconcile import Reconciler
from tests.harness import (
    E2E_TENANTS,
    H100,
    RAY_ENTRYPOINT,
    SUBMIT,
    Clock,
    Stack,
    call,
    held,
    ledger_records,
    ray_job,
    running_stack,
    slurm_job,
    wait_for_record,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stack(tmp_path: Path, clock: Clock) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS) as s:
        yield s


def reconciler(stack: Stack) -> Reconciler:
    assert stack.server.reconciler is not None
    return stack.server.reconciler


async def submit(stack: Stack, sub: str, name: str = "t") -> str:
    """Submit a one-H100 Slurm job; its decision id."""
    status, body, headers = await call(stack, "POST", SUBMIT, sub, payload=slurm_job(name=name))
    assert status == 200, body
    return headers["X-Exportgate-Decision-Id"]


def releases(stack: Stack) -> list[dict[str, object]]:
    return [r for r in ledger_records(stack) if r["kind"] == "release"]


def counted(stack: Stack, result: str) -> float:
    value = stack.server.metrics.registry.get_sample_value("exportgate_reconcile_total", {"result": result})
    return value or 0.0


async def test_completed_job_is_released_and_pending_job_held(stack: Stack) -> None:
    """A COMPLETED job's TPP comes back with a `reconciled` release record; the PENDING one stays held."""
    first = await submit(stack, "capped-ae")
    await submit(stack, "capped-ae")
    status, body, _ = await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job())
    assert (status, body["code"]) == (429, "quota_tenant_tpp")
    stack.standin.jobs["1"]["job_state"] = "COMPLETED"
    assert await reconciler(stack).run_once() == {"released": 1, "running": 1}
    assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
    record = await wait_for_record(stack, "release", job_id="1")
    assert {k: record[k] for k in ("decision_id", "tenant", "upstream", "released", "whole_job", "reason")} == {
        "decision_id": first, "tenant": "capped-ae", "upstream": "slurm", "released": True, "whole_job": True,
        "reason": "reconciled",
    }  # fmt: skip
    asked = [r for r in stack.standin.requests if r["method"] == "GET" and r["path"] == "/slurm/v0.0.38/job/1"]
    assert asked and asked[0]["headers"]["X-SLURM-USER-NAME"] == "capped-ae"
    assert asked[0]["headers"]["X-SLURM-USER-TOKEN"] == "gateway-held-slurm-token"
    assert (await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job()))[0] == 200  # the freed room is usable
    # Job 1 is not asked about again; the next pass sees jobs 2 and 3 running.
    assert await reconciler(stack).run_once() == {"running": 2}
    assert len(releases(stack)) == 1
    assert (counted(stack, "released"), counted(stack, "running")) == (1.0, 3.0)


def holds(stack: Stack, reason: str) -> float:
    value = stack.server.metrics.registry.get_sample_value("exportgate_lease_holds_total", {"reason": reason})
    return value or 0.0


async def test_pending_job_keeps_its_lease_past_its_first_end(tmp_path: Path, clock: Clock) -> None:
    """A job still PENDING when its lease would end is held (its walltime ahead of it) and blocks the next job."""
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS) as stack:
        first = await submit(stack, "capped-ae")
        await submit(stack, "capped-ae")
        first_end = (await wait_for_record(stack, "decision", decision_id=first))["lease"]["lease_end"]
        clock.now = first_end - 100  # a round shortly before the lease would end
        assert await reconciler(stack).run_once() == {"running": 2}
        record = await wait_for_record(stack, "extend", job_id="1")
        hold = reconciler(stack).hold_s()
        assert (record["decision_id"], record["reason"]) == (first, "pending")
        assert record["end"] == clock.now + 60 * 60 + hold  # time_limit 60 min ahead, plus the hold
        clock.now = first_end + 1  # the lease's first end has passed; slurmctld still lists the job PENDING
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 2 * H100
        status, body, _ = await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job())
        assert (status, body["code"]) == (429, "quota_tenant_tpp")
        # A round within the hold writes nothing new; the job starting moves the end to start + walltime.
        stack.standin.jobs["1"] |= {"job_state": "RUNNING", "start_time": int(clock.now)}
        assert await reconciler(stack).run_once() == {"running": 2}
        assert len([r for r in ledger_records(stack) if r["kind"] == "extend"]) == 2
        assert holds(stack, "pending") == 2.0
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS) as stack:  # a rebuild keeps the holds
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 2 * H100


async def test_unreachable_scheduler_holds_instead_of_releasing(tmp_path: Path, clock: Clock) -> None:
    """When the scheduler cannot answer, leases are held on (counted as unconfirmed), never ended by the clock."""
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS) as stack:
        decision = await submit(stack, "capped-ae")
        first_end = (await wait_for_record(stack, "decision", decision_id=decision))["lease"]["lease_end"]
        stack.standin.status_answers["1"] = (503, b"slurmrestd is restarting")
        clock.now = first_end - 10
        assert await reconciler(stack).run_once() == {"error": 1}
        clock.now = first_end + 600
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
        record = await wait_for_record(stack, "extend", job_id="1")
        assert record["reason"] == "unconfirmed" and holds(stack, "unconfirmed") == 1.0
        del stack.standin.status_answers["1"]
        stack.standin.jobs["1"]["job_state"] = "COMPLETED"
        assert await reconciler(stack).run_once() == {"released": 1}
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 0.0


async def test_ray_job_past_its_walltime_is_stopped_and_held_until_it_stops(tmp_path: Path, clock: Clock) -> None:
    """Ray enforces no walltime: past walltime plus grace the gateway records a stop, asks Ray, and holds on."""
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    extra = "reconcile: {interval_s: 0, walltime_grace_s: 30}"
    async with running_stack(
        tmp_path, clock=clock, registry=E2E_TENANTS, scheduler="ray", headers=headers,
        upstream_extra=RAY_ENTRYPOINT, extra=extra,
    ) as stack:  # fmt: skip
        assert (await call(stack, "POST", "/api/jobs/", "us-two", payload=ray_job("train-1", "10")))[0] == 200
        job = stack.standin.ray_jobs["train-1"]
        job |= {"status": "RUNNING", "start_time": int(clock.now * 1000)}
        clock.advance(10 * 60 + 20)  # within the grace
        assert await reconciler(stack).run_once() == {"running": 1}
        stops = [r for r in stack.standin.requests if r["path"] == "/api/jobs/train-1/stop"]
        assert stops == []
        clock.advance(60)
        assert await reconciler(stack).run_once() == {"running": 1}
        stops = [r for r in stack.standin.requests if r["path"] == "/api/jobs/train-1/stop"]
        assert [r["method"] for r in stops] == ["POST"]
        assert stops[0]["headers"]["Authorization"] == "Bearer gateway-held-slurm-token"
        record = await wait_for_record(stack, "walltime_stop", job_id="train-1")
        assert (record["walltime_s"], record["overdue_s"]) == (600.0, 80.0)
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 2 * H100  # held until Ray says it stopped
        job["status"] = "STOPPED"
        assert await reconciler(stack).run_once() == {"released": 1}
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 0.0
        assert holds(stack, "walltime_stop") == 1.0


@pytest.mark.parametrize(
    ("answer", "state", "result"),
    [
        ((200, b"<html>maintenance</html>"), "PENDING", "unknown"),
        (None, "SOMETHING_NEW", "unknown"),
        ((503, b"slurmrestd is restarting"), "PENDING", "error"),
    ],
    ids=["unparseable-body", "unknown-state", "scheduler-down"],
)
async def test_unsure_answers_keep_holding(
    stack: Stack, answer: tuple[int, bytes] | None, state: str, result: str
) -> None:
    """When in doubt, hold: an unreadable, unknown or failed status answer releases nothing; the round goes on."""
    await submit(stack, "capped-ae")
    await submit(stack, "capped-ae")
    stack.standin.jobs["1"]["job_state"] = state
    if answer is not None:
        stack.standin.status_answers["1"] = answer
    stack.standin.jobs["2"]["job_state"] = "FAILED"
    assert await reconciler(stack).run_once() == {result: 1, "released": 1}
    assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
    assert [r["job_id"] for r in [await wait_for_record(stack, "release", job_id="2")]] == ["2"]
    assert all(r["job_id"] == "2" for r in releases(stack))


async def test_batch_spreads_jobs_over_rounds(tmp_path: Path, clock: Clock) -> None:
    """With batch 2, three owned jobs are asked about over two rounds, each once per pass."""
    extra = "reconcile: {interval_s: 0, batch: 2}"
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS, extra=extra) as stack:
        for sub in ("us-one", "us-two", "us-two"):
            await submit(stack, sub)
        assert stack.settings.reconcile == ReconcileSettings(0.0, 2)
        assert reconciler(stack)._task is None  # interval 0: no background task
        assert await reconciler(stack).run_once() == {"running": 2}
        assert await reconciler(stack).run_once() == {"running": 1}
        asked = sorted(r["path"] for r in stack.standin.requests if r["method"] == "GET" and "/job/" in r["path"])
        assert asked == [f"/slurm/v0.0.38/job/{i}" for i in (1, 2, 3)]  # (the sweep's /jobs listings aside)


async def test_background_task_releases_on_its_own(tmp_path: Path, clock: Clock) -> None:
    """Server.start runs rounds every interval_s without a test calling run_once."""
    async with running_stack(
        tmp_path, clock=clock, registry=E2E_TENANTS, extra="reconcile: {interval_s: 0.05}"
    ) as stack:
        await submit(stack, "capped-ae")
        stack.standin.jobs["1"]["job_state"] = "TIMEOUT"
        await wait_for_record(stack, "release", job_id="1", reason="reconciled")
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 0.0


class FlakyClock(Clock):
    """The test clock, raising while `failures` is above zero: an unforeseen error inside a round."""

    failures = 0

    def __call__(self) -> float:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("clock source unavailable")
        return super().__call__()


async def test_a_failed_round_does_not_end_reconciliation(tmp_path: Path) -> None:
    """A round that raises something unforeseen is counted as an error, and the next round releases the job."""
    clock = FlakyClock()
    async with running_stack(
        tmp_path, clock=clock, registry=E2E_TENANTS, extra="reconcile: {interval_s: 0.05}"
    ) as stack:
        await submit(stack, "capped-ae")
        await wait_for_record(stack, "settle", job_id="1")  # the ledger writer is done with the clock
        clock.failures = 1
        stack.standin.jobs["1"]["job_state"] = "COMPLETED"
        await wait_for_record(stack, "release", job_id="1", reason="reconciled")
        assert clock.failures == 0 and counted(stack, "error") >= 1
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 0.0


async def test_reconciled_release_survives_restart(tmp_path: Path, clock: Clock) -> None:
    """The memory store's start-up rebuild applies the reconciled release; ownership is kept."""
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS) as stack:
        await submit(stack, "capped-ae")
        await submit(stack, "capped-ae")
        stack.standin.jobs["2"]["job_state"] = "COMPLETED"
        assert await reconciler(stack).run_once() == {"released": 1, "running": 1}
        await wait_for_record(stack, "release", job_id="2")
    async with running_stack(tmp_path, clock=clock) as stack:
        assert stack.server.store is not None
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
        owner = await stack.server.store.owner_of("slurm", "2")
        assert owner is not None and owner.tenant_id == "capped-ae"


async def test_ray_succeeded_and_vanished_jobs_are_released(tmp_path: Path) -> None:
    """A SUCCEEDED Ray job, then one the dashboard no longer knows (404 "does not exist"), give TPP back."""
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    async with running_stack(
        tmp_path, registry=E2E_TENANTS, scheduler="ray", headers=headers, upstream_extra=RAY_ENTRYPOINT
    ) as stack:
        for submission_id in ("train-1", "train-2"):
            assert (await call(stack, "POST", "/api/jobs/", "us-two", payload=ray_job(submission_id)))[0] == 200
        stack.standin.ray_jobs["train-1"]["status"] = "SUCCEEDED"
        assert await reconciler(stack).run_once() == {"released": 1, "running": 1}
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 2 * H100
        record = await wait_for_record(stack, "release", job_id="train-1", reason="reconciled")
        assert record["upstream"] == "ray"
        asked = [r for r in stack.standin.requests if r["path"] == "/api/jobs/train-1" and r["method"] == "GET"]
        assert asked[0]["headers"]["Authorization"] == "Bearer gateway-held-slurm-token"
        del stack.standin.ray_jobs["train-2"]
        assert await reconciler(stack).run_once() == {"released": 1}
        assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("interval_s: -1\n", "g.yaml:1: interval_s: must be 0 (off) or a positive number of seconds"),
        ("batch: 0\n", "g.yaml:1: batch: must be at least 1"),
        ("every: 5\n", "g.yaml:1: every: unknown key"),
        (
            "interval_s: 600\nhold_s: 900\n",
            "g.yaml:2: hold_s: must be at least twice interval_s, or leases lapse between rounds",
        ),
        ("walltime_grace_s: -1\n", "g.yaml:1: walltime_grace_s: must be 0 or a positive number of seconds"),
    ],
    ids=["negative-interval", "zero-batch", "unknown-key", "short-hold", "negative-grace"],
)
def test_settings_problems(text: str, expected: str) -> None:
    """A bad `reconcile:` section is reported as file:line: field: problem."""
    problems: list[Problem] = []
    load_reconcile_settings(load_text(text, "g.yaml"), problems)
    assert [str(p) for p in problems] == [expected]


def test_settings_defaults() -> None:
    """Without a `reconcile:` section, rounds run every 60 s, 100 jobs at a time."""
    assert load_reconcile_settings(None, []) == ReconcileSettings(60.0, 100)


async def test_stop_cancels_the_task(tmp_path: Path) -> None:
    """Stopping the server ends the background task promptly, even mid-interval."""
    started = time.monotonic()
    async with running_stack(tmp_path, registry=E2E_TENANTS) as stack:
        task = reconciler(stack)._task
        assert task is not None and not task.done()
    await asyncio.sleep(0)
    assert task is not None and task.cancelled() and time.monotonic() - started < 5
