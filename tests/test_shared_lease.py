"""One lease per tenant and Ray cluster (priced whole), shared by the tenant's live jobs (issue 9)."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.ledger.reader import records_in_time_order
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.leases import QUOTA_SLOT
from gateway.core.replay import replay
from gateway.http.reconcile import Reconciler
from tests.harness import (
    H100,
    POLICIES,
    Stack,
    call,
    held,
    ledger_records,
    ray_job,
    running_stack,
    tenant,
    wait_for_record,
)
from tests.redis_server import RedisProcess

SUBMIT = "/api/jobs/"
CLUSTER = 8 * H100  # the stand-in cluster: scheduler_options.cluster_gpus {H100: 8}
# 8 H100 for 60 min is 2.85e19 training ops: one such job stays under 1e26 from this base, two reach it.
NEAR = "\n    declared_training_ops: {default: 9.999996e+25}"
TENANTS = "tenants:" + "".join([
    tenant("us-two", "US/US/US"),
    tenant("us-three", "US/US/US"),
    tenant("capped-ae", "AE/AE/AE", "\n    tpp_cap: 31664  # 2 x H100: not even one cluster"),
    tenant("cluster-ae", "AE/AE/AE", f"\n    tpp_cap: {CLUSTER:.0f}  # one cluster"),
    tenant("near-ae", "AE/AE/AE", NEAR),
]) + "\n"  # fmt: skip


def ray_options(tmp_path: Path) -> dict[str, Any]:
    headers = f"""
    headers:
      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}
"""
    extra = "    scheduler_options: {cluster_gpus: {H100: 8}}"
    return {"registry": TENANTS, "scheduler": "ray", "headers": headers, "upstream_extra": extra}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, **ray_options(tmp_path)) as s:
        yield s


def reconciler(stack: Stack) -> Reconciler:
    assert stack.server.reconciler is not None
    return stack.server.reconciler


async def submit(stack: Stack, sub: str, submission_id: str) -> str:
    """Submit a Ray job; the decision id of its lease."""
    status, body, headers = await call(stack, "POST", SUBMIT, sub, payload=ray_job(submission_id))
    assert status == 200, body
    return headers["X-Exportgate-Decision-Id"]


async def stop(stack: Stack, sub: str, submission_id: str) -> str:
    status, body, headers = await call(stack, "POST", f"{SUBMIT}{submission_id}/stop", sub)
    assert (status, body) == (200, {"stopped": True})
    return headers["X-Exportgate-Decision-Id"]


async def lease_of(stack: Stack, job_id: str) -> str:
    assert stack.server.store is not None
    owner = await stack.server.store.owner_of("ray", job_id)
    assert owner is not None
    return owner.lease.lease_id


async def test_two_live_jobs_hold_the_cluster_once(stack: Stack) -> None:
    """A tenant's second job joins its lease (one cluster held, both jobs owned by the new lease, the ledger says
    so); another tenant's job holds the cluster on its own."""
    first = await submit(stack, "us-two", "a-1")
    second = await submit(stack, "us-two", "a-2")
    await submit(stack, "us-three", "b-1")
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == CLUSTER
    assert await held(stack, QUOTA_SLOT, "tenant:us-three") == CLUSTER
    assert await lease_of(stack, "a-1") == await lease_of(stack, "a-2") == second
    assert await lease_of(stack, "b-1") not in (first, second)
    decision = next(r for r in ledger_records(stack) if r.get("decision_id") == second and r["kind"] == "decision")
    assert decision["lease"]["joins_lease"] == first and decision["lease"]["shared_with"] == ["a-1"]
    assert decision["lease"]["replaces_job"] is None  # a rebuild must not refund the first lease whole
    release = await wait_for_record(stack, "release", job_id="a-1", reason="shared_lease")
    assert (release["decision_id"], release["lease"], release["released"]) == (second, first, True)
    moved = await wait_for_record(stack, "settle", job_id="a-1", decision_id=second)
    assert moved["reason"] == "shared_lease" and "status" not in moved  # the submission's stored answer stays a-2's


async def test_first_stop_keeps_the_lease_and_the_last_releases_it(stack: Stack) -> None:
    """Stopping one of two jobs through the gateway holds the cluster for the other (recorded as held back)."""
    await submit(stack, "us-two", "a-1")
    await submit(stack, "us-two", "a-2")
    first_stop = await stop(stack, "us-two", "a-1")
    record = await wait_for_record(stack, "release", decision_id=first_stop)
    assert (record["released"], record["held_for"], record["reason"]) == (False, ["a-2"], "shared_lease")
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == CLUSTER
    last_stop = await stop(stack, "us-two", "a-2")
    await wait_for_record(stack, "release", decision_id=last_stop, released=True)
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 0.0


async def test_reconciliation_releases_only_after_the_last_job(stack: Stack) -> None:
    """Reconciliation seeing one job SUCCEEDED holds the shared lease; seeing the last one over releases it."""
    await submit(stack, "us-two", "a-1")
    await submit(stack, "us-two", "a-2")
    stack.standin.ray_jobs["a-1"]["status"] = "SUCCEEDED"
    assert await reconciler(stack).run_once() == {"finished": 1, "running": 1}
    record = await wait_for_record(stack, "release", job_id="a-1", released=False)
    assert (record["held_for"], record["reason"]) == (["a-2"], "shared_lease")
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == CLUSTER
    stack.standin.ray_jobs["a-2"]["status"] = "SUCCEEDED"
    assert await reconciler(stack).run_once() == {"released": 1}
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 0.0


async def test_jobs_known_over_no_longer_keep_the_lease(stack: Stack) -> None:
    """A job reconciliation saw over, or one cancelled through the gateway, keeps the lease for nobody: the next
    cancel releases it (and the over job stays its tenant's to read); a live sibling is taken as live."""
    await submit(stack, "us-two", "a-1")
    await submit(stack, "us-two", "a-2")
    await submit(stack, "us-two", "a-3")
    stack.standin.ray_jobs["a-1"]["status"] = "FAILED"
    assert await reconciler(stack).run_once() == {"finished": 1, "running": 2}
    second = await stop(stack, "us-two", "a-2")
    record = await wait_for_record(stack, "release", decision_id=second)
    assert (record["released"], record["held_for"]) == (False, ["a-3"])  # a-3 is live as far as a cancel knows
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == CLUSTER
    last = await stop(stack, "us-two", "a-3")
    await wait_for_record(stack, "release", decision_id=last, released=True)
    assert await held(stack, QUOTA_SLOT, "tenant:us-two") == 0.0
    status, body, _ = await call(stack, "GET", f"{SUBMIT}a-1", "us-two")
    assert (status, body["status"]) == (200, "FAILED")
    assert await reconciler(stack).run_once() == {"finished": 2}  # a-2 and a-3 seen stopped: nothing left to give


async def test_capped_tenant_runs_two_jobs_on_one_cluster(stack: Stack) -> None:
    """A cap that fits one cluster runs a second and third job on it; a cap under one cluster runs none."""
    for submission_id in ("c-1", "c-2", "c-3"):
        await submit(stack, "cluster-ae", submission_id)
    assert await held(stack, QUOTA_SLOT, "tenant:cluster-ae") == CLUSTER
    assert len({await lease_of(stack, j) for j in ("c-1", "c-2", "c-3")}) == 1
    status, body, _ = await call(stack, "POST", SUBMIT, "capped-ae", payload=ray_job("d-1"))
    assert (status, body["code"]) == (429, "quota_tenant_tpp")


async def test_joining_does_not_forgive_earlier_training_operations(stack: Stack) -> None:
    """The joined lease's held TPP is credited, its training operations are not: the job that would take the
    tenant to 1e26 is refused, and the debit the store took for it is given back."""
    await submit(stack, "near-ae", "n-1")
    ops = await held(stack, QUOTA_SLOT, "ops:near-ae:default")
    assert ops > 0
    status, body, headers = await call(stack, "POST", SUBMIT, "near-ae", payload=ray_job("n-2"))
    assert (status, body["code"]) == (403, "licence_required"), body
    await wait_for_record(stack, "refund", decision_id=headers["X-Exportgate-Decision-Id"], refunded=True)
    assert await held(stack, QUOTA_SLOT, "ops:near-ae:default") == ops
    assert await held(stack, QUOTA_SLOT, "tenant:near-ae") == CLUSTER
    assert "n-2" not in stack.standin.ray_jobs and await lease_of(stack, "n-1") != headers["X-Exportgate-Decision-Id"]


async def test_rejected_job_moves_nothing(stack: Stack) -> None:
    """A job the scheduler rejects (a duplicate id of another tenant's job) leaves the first lease as it was."""
    first = await submit(stack, "us-two", "a-1")
    await submit(stack, "us-three", "taken")
    status, _, _ = await call(stack, "POST", SUBMIT, "us-two", payload=ray_job("taken"))
    assert status == 500  # ambiguous for Ray: the new lease is held, the old one is not released
    assert await lease_of(stack, "a-1") == first
    assert not [r for r in ledger_records(stack) if r["kind"] == "release"]


async def test_restart_holds_one_cluster_and_replay_agrees(tmp_path: Path) -> None:
    """After a restart the tenant still holds one cluster (a held-back release is not applied), its jobs are owned
    by the same lease (the stopped one too: the rebuild holds for it until reconciliation sees it over), and
    replaying the ledger under the same pack and registry changes nothing."""
    async with running_stack(tmp_path, **ray_options(tmp_path)) as stack:
        await submit(stack, "cluster-ae", "c-1")
        await submit(stack, "cluster-ae", "c-2")
        await submit(stack, "cluster-ae", "c-3")
        held_back = await stop(stack, "cluster-ae", "c-1")
        await wait_for_record(stack, "release", decision_id=held_back, released=False)
        before = await lease_of(stack, "c-2")
        assert await lease_of(stack, "c-3") == before and await lease_of(stack, "c-1") != before  # c-1 is over
        await submit(stack, "us-two", "u-1")
    async with running_stack(tmp_path, **ray_options(tmp_path)) as stack:
        assert await held(stack, QUOTA_SLOT, "tenant:cluster-ae") == CLUSTER
        assert await lease_of(stack, "c-1") == await lease_of(stack, "c-2") == await lease_of(stack, "c-3") == before
        await submit(stack, "cluster-ae", "c-4")  # still fits: it joins the rebuilt lease
        assert await held(stack, QUOTA_SLOT, "tenant:cluster-ae") == CLUSTER
        ledger = stack.settings.ledger.dir
    records = list(records_in_time_order(ledger))
    report = replay(records, load_pack(POLICIES / "ai-diffusion-2025"), load_registry(tmp_path / "tenants.yaml"))
    assert (report.decided, report.changes, report.skipped) == (5, (), 0)


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_joined_lease_is_held_as_long_as_the_one_it_replaced(
    tmp_path: Path, redis_server: RedisProcess, store: str
) -> None:
    """A short job joining a long one's lease holds the new lease until the old one's end (an `extend` record);
    the same on the Redis store: one cluster held, one lease owned by both, released by the last stop."""
    options = ray_options(tmp_path)
    if store == "redis":
        options["extra"] = f"quota: {{store: redis, redis_url: '{redis_server.url}', prefix: 'eg-{tmp_path.name}:'}}"
    async with running_stack(tmp_path, **options) as stack:
        status, _, headers = await call(stack, "POST", SUBMIT, "cluster-ae", payload=ray_job("long", "600"))
        assert status == 200
        first = next(r for r in ledger_records(stack) if r.get("decision_id") == headers["X-Exportgate-Decision-Id"])
        status, _, headers = await call(stack, "POST", SUBMIT, "cluster-ae", payload=ray_job("short", "10"))
        assert status == 200
        second = headers["X-Exportgate-Decision-Id"]
        extended = await wait_for_record(stack, "extend", decision_id=second, reason="shared_lease")
        assert extended["end"] == first["lease"]["lease_end"]
        assert await lease_of(stack, "long") == await lease_of(stack, "short") == second
        assert await held(stack, QUOTA_SLOT, "tenant:cluster-ae") == CLUSTER
        assert stack.server.store is not None
        assert await stack.server.store.extend_job("ray", "short", 0.0, stack.server.clock()) == extended["end"]
        await stop(stack, "cluster-ae", "long")
        assert await held(stack, QUOTA_SLOT, "tenant:cluster-ae") == CLUSTER
        await stop(stack, "cluster-ae", "short")
        assert await held(stack, QUOTA_SLOT, "tenant:cluster-ae") == 0.0
