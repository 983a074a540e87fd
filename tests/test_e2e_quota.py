"""End to end on Slurm: exact quotas, leases, refunds, idempotent retries and job ownership."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.quota_memory import MemoryQuotaStore
from gateway.core.leases import QUOTA_SLOT
from gateway.core.rebuild import rebuild_state
from tests.harness import (
    E2E_TENANTS,
    H100,
    SUBMIT,
    Clock,
    Reply,
    Stack,
    call,
    held,
    ledger_records,
    metrics,
    running_stack,
    slurm_job,
    tenant,
    wait_for_record,
    wait_until,
)
from tests.redis_server import RedisProcess, free_port

LEASE_S = 60 * 60 + 3600  # a 60-minute job plus caps.yaml leases.pending_allowance_s


@pytest.fixture
def clock() -> Clock:
    """The gateway's clock; tests move it to end leases."""
    return Clock()


@pytest.fixture
async def stack(tmp_path: Path, clock: Clock) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS) as s:
        yield s


async def submit(stack: Stack, sub: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    return await call(stack, "POST", SUBMIT, sub, payload=slurm_job() if body is None else body, headers=headers)


def submissions(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.standin.requests if r["path"] == SUBMIT]


def decision(stack: Stack, decision_id: str) -> dict[str, Any]:
    return next(r for r in ledger_records(stack) if r["kind"] == "decision" and r["decision_id"] == decision_id)


# -- idempotency ------------------------------------------------------------------------------


async def test_retry_with_same_idempotency_key_is_replayed_and_debited_once(stack: Stack) -> None:
    """A retry gets the first answer and decision id back, marked replayed; nothing is forwarded or debited twice."""
    key = {"Idempotency-Key": "train-42:attempt"}
    first = await submit(stack, "capped-ae", headers=key)
    again = await submit(stack, "capped-ae", headers=key)
    assert first[0] == again[0] == 200 and first[1] == again[1] == {**first[1], "job_id": 1}
    assert again[2]["X-Exportgate-Decision-Id"] == first[2]["X-Exportgate-Decision-Id"]
    assert again[2]["X-Exportgate-Replayed"] == "true" and "X-Exportgate-Replayed" not in first[2]
    assert len(submissions(stack)) == 1
    assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
    await wait_for_record(stack, "replay", first_decision_id=first[2]["X-Exportgate-Decision-Id"])


async def test_idempotency_keys_belong_to_one_tenant(stack: Stack) -> None:
    """Another tenant sending the same key is a new submission, never the first tenant's stored answer."""
    key = {"Idempotency-Key": "shared-key"}
    first = await submit(stack, "us-one", headers=key)
    other = await submit(stack, "us-two", headers=key)
    assert (first[1]["job_id"], other[1]["job_id"]) == (1, 2)
    assert "X-Exportgate-Replayed" not in other[2]
    assert len(submissions(stack)) == 2


async def test_retry_while_first_is_in_flight_is_409(stack: Stack) -> None:
    """A retry while the first attempt waits on the scheduler is request_in_progress; after it, a replay."""
    stack.standin.slow_s = 0.5
    key = {"Idempotency-Key": "slow-1"}
    first = asyncio.create_task(submit(stack, "capped-ae", slurm_job(name="slow-me"), key))
    await wait_until(lambda: bool(submissions(stack)), 2.0)
    status, body, headers = await submit(stack, "capped-ae", slurm_job(name="slow-me"), key)
    assert (status, body["code"]) == (409, "request_in_progress")
    assert headers["Content-Type"] == "application/problem+json"
    assert (await first)[0] == 200
    replay = await submit(stack, "capped-ae", slurm_job(name="slow-me"), key)
    assert replay[0] == 200 and replay[2]["X-Exportgate-Replayed"] == "true"
    assert len(submissions(stack)) == 1
    assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
    assert decision(stack, body["decision_id"])["code"] == "request_in_progress"


# -- upstream failures: refund when the scheduler surely did nothing, hold when in doubt -----------

FAILURES = [
    ("slurm-definitive-500", {}, "reject-me", 500, None, "refund", 0.0),
    ("upstream-timeout", {"timeout_s": 0.3}, "slow-me", 504, "upstream_timeout", "unsettled", H100),
    ("upstream-unreachable", {"upstream_url": "nothing-listens"}, "t", 502, "upstream_unreachable", "refund", 0.0),
]


@pytest.mark.parametrize(
    ("case", "config", "name", "status", "code", "record", "after"), FAILURES, ids=[f[0] for f in FAILURES]
)
async def test_upstream_failure_refunds_or_holds(
    tmp_path: Path,
    case: str,
    config: dict[str, Any],
    name: str,
    status: int,
    code: str | None,
    record: str,
    after: float,
) -> None:
    """A definitive rejection or a refused connection refunds; a timeout keeps the lease, marked unsettled."""
    if config.get("upstream_url") == "nothing-listens":
        config = {"upstream_url": f"http://127.0.0.1:{free_port()}"}
    async with running_stack(tmp_path, registry=E2E_TENANTS, **config) as stack:
        stack.standin.slow_s = 1.0
        got, body, headers = await submit(stack, "capped-ae", slurm_job(name=name))
        assert got == status
        if code is None:  # the scheduler's own answer is passed through
            assert body["errors"][0]["error_code"] == 2014
        else:
            assert body["code"] == code
        decision_id = headers["X-Exportgate-Decision-Id"]
        assert decision(stack, decision_id)["decision"] == "allow"
        followup = await wait_for_record(stack, record, decision_id=decision_id)
        assert followup.get("refunded", True) is True
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == after


# -- leases ----------------------------------------------------------------------------------


async def test_cancel_through_gateway_releases_capacity(stack: Stack) -> None:
    """A cancelled job's TPP is given back at once, so a job that did not fit now fits."""
    for _ in range(2):
        assert (await submit(stack, "capped-ae"))[0] == 200
    assert (await submit(stack, "capped-ae"))[0] == 429
    status, _, headers = await call(stack, "DELETE", "/slurm/v0.0.38/job/1", "capped-ae")
    assert status == 200 and stack.standin.jobs["1"]["job_state"] == "CANCELLED"
    released = await wait_for_record(stack, "release", decision_id=headers["X-Exportgate-Decision-Id"])
    assert (released["job_id"], released["released"]) == ("1", True)
    assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
    assert (await submit(stack, "capped-ae"))[0] == 200


async def test_one_array_task_cannot_release_or_reprice_the_whole_job(stack: Stack) -> None:
    """Cancelling or resizing one array task keeps the whole job's lease held; cancelling the job frees it."""
    spec = slurm_job(gpus="h100:1")
    spec["job"]["array"] = "0-3"
    assert (await submit(stack, "us-one", spec))[1]["job_id"] == 1
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 4 * H100
    status, _, headers = await call(stack, "DELETE", "/slurm/v0.0.38/job/1_2", "us-one")
    assert status == 200 and stack.standin.jobs["1"]["cancelled_tasks"] == ["2"]
    released = await wait_for_record(stack, "release", decision_id=headers["X-Exportgate-Decision-Id"])
    assert (released["released"], released["whole_job"]) == (False, False)
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 4 * H100
    update = {"job": {"gpus": "h100:1", "time_limit": 60}}  # would replace the whole array's lease
    status, body, _ = await call(stack, "POST", "/slurm/v0.0.38/job/1_3", "us-one", payload=update)
    assert (status, body["code"]) == (403, "job_update_not_allowed")
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == 4 * H100
    status, _, _ = await call(stack, "DELETE", "/slurm/v0.0.38/job/1", "us-one")
    assert status == 200 and await held(stack, QUOTA_SLOT, "tenant:us-one") == 0.0


async def test_lease_end_returns_capacity(stack: Stack, clock: Clock) -> None:
    """Capacity comes back exactly at admission + walltime + the pending allowance, as Retry-After said."""
    for _ in range(2):
        assert (await submit(stack, "capped-ae"))[0] == 200
    clock.advance(LEASE_S - 1)
    status, body, headers = await submit(stack, "capped-ae")
    assert (status, body["code"], headers["Retry-After"]) == (429, "quota_tenant_tpp", "1")
    clock.advance(1)
    assert (await submit(stack, "capped-ae"))[0] == 200
    assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100


# -- caps ------------------------------------------------------------------------------------

CAPS = [
    ("tier2-capped", "capped-ae", [200, 200, 429]),
    ("tier1-metered-uncapped", "us-one", [200, 200, 200]),
]


@pytest.mark.parametrize(("case", "sub", "statuses"), CAPS, ids=[c[0] for c in CAPS])
async def test_tenant_cap(stack: Stack, case: str, sub: str, statuses: list[int]) -> None:
    """A Tier 2 tenant is refused past its cap with Retry-After to the earliest lease end; Tier 1 is only metered."""
    replies = [await submit(stack, sub) for _ in statuses]
    assert [r[0] for r in replies] == statuses
    admitted = statuses.count(200)
    assert await held(stack, QUOTA_SLOT, f"tenant:{sub}") == admitted * H100
    assert len(submissions(stack)) == admitted
    if 429 in statuses:
        _, body, headers = replies[-1]
        assert body["code"] == "quota_tenant_tpp" and "740.27" in body["citation"]
        assert headers["Retry-After"] == str(LEASE_S)
        record = decision(stack, body["decision_id"])
        assert (record["decision"], record["quota_before"][f"tenant:{sub}"]) == ("deny", 2 * H100)


AFFILIATES = [("ae-then-sg", "falcon-ae", "falcon-sg"), ("sg-then-ae", "falcon-sg", "falcon-ae")]


@pytest.mark.parametrize(("case", "big", "small"), AFFILIATES, ids=[a[0] for a in AFFILIATES])
async def test_affiliates_share_one_cap(stack: Stack, case: str, big: str, small: str) -> None:
    """Affiliates under one parent_entity draw on one LPP allowance."""
    assert (await submit(stack, big, slurm_job(gpus="h100:1699")))[0] == 200  # 26,898,568 of 26,900,000 TPP
    status, body, headers = await submit(stack, small)
    assert (status, body["code"]) == (429, "quota_tenant_tpp")
    assert int(headers["Retry-After"]) > 0
    assert await held(stack, QUOTA_SLOT, "group:falcon-group") == 1699 * H100
    assert await held(stack, QUOTA_SLOT, f"tenant:{small}") == 0.0


# -- ownership -------------------------------------------------------------------------------

FOREIGN = [
    ("read", "GET", None),
    ("update", "POST", {"job": {"name": "mine-now"}}),
    ("cancel", "DELETE", None),
]


@pytest.mark.parametrize(("case", "method", "payload"), FOREIGN, ids=[f[0] for f in FOREIGN])
async def test_other_tenants_job_is_not_found(stack: Stack, case: str, method: str, payload: Any) -> None:
    """Tenant B reading, updating or cancelling tenant A's job gets job_not_owned; the scheduler never hears of it."""
    assert (await submit(stack, "us-one"))[1]["job_id"] == 1
    status, body, _ = await call(stack, method, "/slurm/v0.0.38/job/1", "us-two", payload=payload)
    assert (status, body["code"]) == (404, "job_not_owned")
    assert [r for r in stack.standin.requests if r["path"] != SUBMIT] == []
    assert stack.standin.jobs["1"]["job_state"] == "PENDING"
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == H100


async def test_listing_shows_only_own_jobs(stack: Stack) -> None:
    """The jobs listing is cut down to the caller's own submissions."""
    for sub in ("us-one", "us-two", "us-one"):
        assert (await submit(stack, sub))[0] == 200
    listed = {}
    for sub in ("us-one", "us-two", "capped-ae"):
        status, body, _ = await call(stack, "GET", "/slurm/v0.0.38/jobs", sub)
        assert status == 200 and body["errors"] == []
        listed[sub] = sorted(j["job_id"] for j in body["jobs"])
    assert listed == {"us-one": [1, 3], "us-two": [2], "capped-ae": []}
    status, body, _ = await call(stack, "GET", "/slurm/v0.0.38/job/3", "us-one")
    assert status == 200 and body["jobs"][0]["job_id"] == 3


# -- submissions and updates that cannot be priced -------------------------------------------

ENV = '"environment": {"PATH": "/bin"}}}'
INVALID = [
    ("unknown-gpu-model", '{"job": {"time_limit": 60, "gpus": "z9000:1", ' + ENV, "unknown GPU model"),
    ("duplicate-keys", '{"job": {"time_limit": 60, "gpus": "h100:1", "gpus": "h100:512", ' + ENV, "duplicate"),
    ("no-time-limit", '{"job": {"partition": "gpu", "gpus": "h100:1", ' + ENV, "time_limit"),
    ("negative-gres", '{"job": {"time_limit": 60, "gres": "gpu:h100:-1", ' + ENV, "gres"),
    ("not-json", '{"job": {"time_limit": 60,', "not valid JSON"),
]


@pytest.mark.parametrize(("case", "raw", "hint"), INVALID, ids=[i[0] for i in INVALID])
async def test_unpriceable_submission_is_job_spec_invalid(stack: Stack, case: str, raw: str, hint: str) -> None:
    """A submission that cannot be priced is refused 400 job_spec_invalid, recorded, and never forwarded."""
    headers = {"Content-Type": "application/json"}
    status, body, _ = await call(stack, "POST", SUBMIT, "capped-ae", data=raw.encode(), headers=headers)
    assert (status, body["code"]) == (400, "job_spec_invalid")
    assert hint in body["detail"]
    assert decision(stack, body["decision_id"])["code"] == "job_spec_invalid"
    assert stack.standin.requests == []
    assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == 0.0


UPDATES = [
    ("resources-without-time-limit", {"job": {"gpus": "h100:4"}}, 403, "job_update_not_allowed", H100),
    ("heterogeneous", {"jobs": [{"gpus": "h100:1", "time_limit": 60}]}, 403, "job_update_not_allowed", H100),
    ("full-restatement", {"job": {"gpus": "h100:3", "time_limit": 60}}, 200, None, 3 * H100),
    ("rename-only", {"job": {"name": "renamed"}}, 200, None, H100),
]


@pytest.mark.parametrize(("case", "payload", "status", "code", "after"), UPDATES, ids=[u[0] for u in UPDATES])
async def test_job_update_is_priced_as_new_total_or_refused(
    stack: Stack, case: str, payload: Any, status: int, code: str | None, after: float
) -> None:
    """An owned update is forwarded when it changes no resources or restates them all; otherwise refused."""
    assert (await submit(stack, "us-one"))[1]["job_id"] == 1
    got, body, _ = await call(stack, "POST", "/slurm/v0.0.38/job/1", "us-one", payload=payload)
    assert got == status
    updates = [r for r in stack.standin.requests if r["path"] == "/slurm/v0.0.38/job/1"]
    if code is not None:
        assert body["code"] == code and updates == []
    else:
        assert body["errors"] == [] and len(updates) == 1
    assert await held(stack, QUOTA_SLOT, "tenant:us-one") == after


# A tenant capped at 2 x H100 (as capped-ae) with a monthly budget of TPP-hours.
BUDGETED_AE = tenant("budget-ae", "AE/AE/AE", "\n    tpp_cap: 31664\n    budget: {period: month, tpp_hours: 1000000}")


@pytest.fixture
async def budget_stack(tmp_path: Path, clock: Clock) -> AsyncIterator[Stack]:
    registry = E2E_TENANTS.rstrip("\n") + BUDGETED_AE + "\n"
    async with running_stack(tmp_path, clock=clock, registry=registry) as s:
        yield s


async def _one_h100_job(stack: Stack) -> tuple[str, dict[str, Any], str]:
    """budget-ae's 1-H100 job: its id, its decision record and its budget counter."""
    status, body, headers = await submit(stack, "budget-ae")
    assert status == 200
    first = decision(stack, headers["X-Exportgate-Decision-Id"])
    budget = next(c["key"] for c in first["lease"]["counters"] if c["key"].startswith("budget:budget-ae:"))
    assert await held(stack, QUOTA_SLOT, "tenant:budget-ae") == H100
    assert await held(stack, QUOTA_SLOT, budget) == first["cost"]["tpp_hours"]
    return str(body["job_id"]), first, budget


async def test_update_at_the_cap_is_charged_once(budget_stack: Stack) -> None:
    """A 1-H100 job updated to 2 H100s at a 2-H100 cap is admitted; held TPP and budget count the new total only."""
    stack = budget_stack
    job_id, first, budget = await _one_h100_job(stack)
    update = {"job": {"gpus": "h100:2", "time_limit": 60}}
    status, body, headers = await call(stack, "POST", f"/slurm/v0.0.38/job/{job_id}", "budget-ae", payload=update)
    assert (status, body["errors"]) == (200, [])
    second = decision(stack, headers["X-Exportgate-Decision-Id"])
    assert second["cost"]["tpp_hours"] == 2 * first["cost"]["tpp_hours"]
    settle = await wait_for_record(stack, "settle", decision_id=second["decision_id"])
    assert (settle["job_id"], settle["replaced_lease"]) == (job_id, first["decision_id"])
    assert await held(stack, QUOTA_SLOT, "tenant:budget-ae") == 2 * H100
    assert await held(stack, QUOTA_SLOT, budget) == second["cost"]["tpp_hours"]  # not the old job's as well
    store = stack.server.store
    assert store is not None
    owner = await store.owner_of("slurm", job_id)
    assert owner is not None and owner.lease.lease_id == second["decision_id"]
    assert (await submit(stack, "budget-ae"))[0] == 429  # the cap is full with the updated job
    # The ledger rebuilds the same state: the replaced lease given back whole, the job the new lease's.
    now = stack.server.clock()
    state = rebuild_state(ledger_records(stack), now, idempotency_window_s=86400, ownership_ttl_s=30 * 86400)
    rebuilt = MemoryQuotaStore()
    await rebuilt.restore(state, now)
    for key in ("tenant:budget-ae", budget, "country:AE"):
        assert await rebuilt.counter_value(QUOTA_SLOT, key, now) == await store.counter_value(QUOTA_SLOT, key, now)
    assert await rebuilt.owner_of("slurm", job_id) == owner
    assert (await call(stack, "DELETE", f"/slurm/v0.0.38/job/{job_id}", "budget-ae"))[0] == 200
    assert await held(stack, QUOTA_SLOT, "tenant:budget-ae") == 0.0
    assert await held(stack, QUOTA_SLOT, budget) == second["cost"]["tpp_hours"]  # a cancel keeps the budget spent


async def test_rejected_update_leaves_the_old_lease(budget_stack: Stack) -> None:
    """When the scheduler rejects an update only its new lease is refunded; the job's lease stays as it was."""
    stack = budget_stack
    job_id, first, budget = await _one_h100_job(stack)
    stack.standin.jobs.pop(job_id)  # slurmrestd now answers the update "Invalid job id specified"
    update = {"job": {"gpus": "h100:2", "time_limit": 60}}
    status, _, headers = await call(stack, "POST", f"/slurm/v0.0.38/job/{job_id}", "budget-ae", payload=update)
    assert status == 500
    await wait_for_record(stack, "refund", decision_id=headers["X-Exportgate-Decision-Id"], refunded=True)
    assert await held(stack, QUOTA_SLOT, "tenant:budget-ae") == H100
    assert await held(stack, QUOTA_SLOT, budget) == first["cost"]["tpp_hours"]
    store = stack.server.store
    assert store is not None
    owner = await store.owner_of("slurm", job_id)
    assert owner is not None and owner.lease.lease_id == first["decision_id"]


# -- the training threshold ------------------------------------------------------------------

TRAINING = [
    ("just-below", "below-ae", "llama-x", 200, []),
    ("crosses", "cross-ae", "llama-x", 403, []),
    ("renamed-lineage", "cross-ae", "llama-x-v2", 403, []),
    ("licensed-lineage", "licensed-ae", "llama-x", 200, ["D-1001"]),
    ("licence-for-another-lineage", "mislicensed-ae", "llama-x", 403, []),
    ("tier1-not-counted", "us-one", "llama-x", 200, []),
]


@pytest.mark.parametrize(("case", "sub", "lineage", "status", "licences"), TRAINING, ids=[t[0] for t in TRAINING])
async def test_training_threshold(
    stack: Stack, case: str, sub: str, lineage: str, status: int, licences: list[str]
) -> None:
    """One H100-hour that takes a lineage (or the tenant's total) to 1e26 ops needs a licence for that lineage."""
    got, body, headers = await submit(stack, sub, slurm_job(lineage=lineage))
    assert got == status
    record = decision(stack, headers["X-Exportgate-Decision-Id"])
    if status == 403:
        assert body["code"] == "licence_required" and "4E091" in body["citation"]
        assert "Retry-After" not in headers
        assert submissions(stack) == []
    else:
        assert record["decision"] == "allow" and record["licences"] == licences


PURPOSES = [
    ("declared-inference-not-counted", "inference", 200, ["purpose:inference"]),
    ("declared-training-counted", "training", 403, []),
]


@pytest.mark.parametrize(("case", "purpose", "status", "exemptions"), PURPOSES, ids=[p[0] for p in PURPOSES])
async def test_declared_inference_near_the_threshold(
    stack: Stack, case: str, purpose: str, status: int, exemptions: list[str]
) -> None:
    """Near 1e26 a job declared inference is admitted on the tenant's certification, which its record names."""
    body = slurm_job(lineage="llama-x")
    body["job"]["environment"]["EXPORTGATE_PURPOSE"] = purpose
    got, reply, headers = await submit(stack, "cross-ae", body)
    assert got == status, reply
    record = decision(stack, headers["X-Exportgate-Decision-Id"])
    assert (record["job"]["purpose"], record["exemptions"]) == (purpose, exemptions)
    assert any(c["key"].startswith("ops:") for c in record["lease"]["counters"]) is (status == 403)


# -- country allocations ---------------------------------------------------------------------

# Licensed tenants with a 2-H100 allowance: members of a group headquartered in the UAE (one in
# Saudi Arabia, one in the US) and a tenant located in Singapore but headquartered in Malaysia.
_LICENSED = "\n    tpp_cap: 31664\n    licences: [{id: D-2001, lifts: [tenant_cap]}]"
ALLOCATION_TENANTS = (
    tenant("dune-sa", "SA/SA/AE", "\n    parent_entity: dunes" + _LICENSED)
    + tenant("dune-us", "US/US/AE", "\n    parent_entity: dunes-us" + _LICENSED)
    + tenant("split-sg", "SG/MY/MY", _LICENSED)
)


@pytest.fixture
async def allocation_stack(tmp_path: Path, clock: Clock) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, clock=clock, registry=E2E_TENANTS.rstrip("\n") + ALLOCATION_TENANTS + "\n") as s:
        yield s


DRAWS = [
    ("member-draws-on-its-own-country-not-the-parents", "dune-sa", ["country:SA"]),
    ("member-in-tier1-draws-on-no-allocation", "dune-us", []),
    ("located-and-headquartered-apart-draws-on-both", "split-sg", ["country:SG", "country:MY"]),
]


@pytest.mark.parametrize(("case", "sub", "countries"), DRAWS, ids=[d[0] for d in DRAWS])
async def test_licensed_overflow_draws_on_the_tenants_own_countries(
    allocation_stack: Stack, case: str, sub: str, countries: list[str]
) -> None:
    """Beyond its allowance a licensed tenant's job draws on each Tier 2 country it is located or headquartered in."""
    stack = allocation_stack
    status, _, headers = await submit(stack, sub, slurm_job(gpus="h100:3"))
    assert status == 200
    record = decision(stack, headers["X-Exportgate-Decision-Id"])
    drawn = {c["key"]: c["amount"] for c in record["lease"]["counters"] if c["key"].startswith("country:")}
    assert drawn == {cc: H100 for cc in countries}  # the third H100, beyond the 2-H100 allowance
    for cc in ("country:AE", "country:US", *countries):
        assert await held(stack, QUOTA_SLOT, cc) == (H100 if cc in countries else 0.0)


# -- the Redis store failing closed ----------------------------------------------------------


async def backend_errors(stack: Stack) -> float:
    text = await metrics(stack)
    found = re.search(r'^exportgate_backend_errors_total\{backend="quota"\} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


async def test_redis_outage_fails_closed_then_recovers(tmp_path: Path, fresh_redis: RedisProcess) -> None:
    """With Redis down, routes needing the store are 503 backend_unavailable within a second; restarted, all works."""
    quota = f"quota: {{store: redis, redis_url: '{fresh_redis.url}', timeout_ms: 200}}"
    async with running_stack(tmp_path, registry=E2E_TENANTS, extra=quota) as stack:
        assert (await submit(stack, "capped-ae"))[0] == 200
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100
        fresh_redis.kill()
        for method, path in [("POST", SUBMIT), ("GET", "/slurm/v0.0.38/job/1"), ("GET", "/slurm/v0.0.38/jobs")]:
            started = time.monotonic()
            status, body, _ = await call(
                stack, method, path, "capped-ae", payload=slurm_job() if method == "POST" else None
            )
            assert time.monotonic() - started < 1.5
            assert (status, body["code"]) == (503, "backend_unavailable"), path
        assert len(submissions(stack)) == 1 and len(stack.standin.requests) == 1
        assert await backend_errors(stack) >= 3
        fresh_redis.start()
        status, body, _ = await submit(stack, "capped-ae")
        assert (status, body["job_id"]) == (200, 2)
        assert await held(stack, QUOTA_SLOT, "tenant:capped-ae") == H100  # the restarted Redis kept nothing
