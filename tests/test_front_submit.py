"""Submissions priced for Envoy (ext_authz gRPC with `with_request_body`), settled by reconciliation.

The gateway runs as in every end-to-end test with `envoy_grpc:` configured. A real gRPC client
sends the Check Envoy sends for a buffered submission; when it is allowed the test forwards the
body to the scheduler stand-in as Envoy would, with the headers the Check said to set, and never
tells the gateway the job id. Reconciliation must then adopt the job into the submission's lease,
or release a lease whose job never came.
"""

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.core.rebuild import rebuild_state
from gateway.http.front_adopt import adoption_window_s
from gateway.http.front_submit import placeholder_scope
from gateway.http.reconcile import Reconciler
from tests.envoy_kit import OK, PERMISSION_DENIED, Checked, check, check_request
from tests.harness import (
    JOB_PATH,
    SUBMIT,
    Clock,
    Stack,
    call,
    ledger_records,
    running_stack,
    slurm_job,
    tenant,
)
from tests.redis_server import free_port

SCOPE = placeholder_scope("slurm")
# alpha and beta run as one Slurm user; gamma as its own.
REGISTRY = (
    "tenants:"
    + tenant("alpha", "US/US/US", slurm_user="shared")
    + tenant("beta", "US/US/US", slurm_user="shared")
    + tenant("gamma", "US/US/US")
    + tenant("dragon", "CN/CN/CN")
    + "\n"
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stack(tmp_path: Path, clock: Clock) -> AsyncIterator[Stack]:
    extra = f"envoy_grpc: {{host: 127.0.0.1, port: {free_port()}}}\n"
    async with running_stack(tmp_path, clock=clock, registry=REGISTRY, extra=extra) as running:
        yield running


def reconciler(stack: Stack) -> Reconciler:
    assert stack.server.reconciler is not None
    return stack.server.reconciler


async def envoy_check(stack: Stack, who: str, body: Any, **headers: str) -> Checked:
    assert stack.settings.envoy_grpc is not None
    raw = json.dumps(body).encode()
    sent = {**stack.auth(who), "Content-Type": "application/json", **headers}
    return await check(stack.settings.envoy_grpc.port, check_request("POST", SUBMIT, sent, body=raw))


async def envoy_forwards(stack: Stack, checked: Checked, body: Any) -> int:
    """What Envoy does after an OK: the body upstream with the headers the Check set; the scheduler's job id."""
    headers = {k: v for k, v in checked.headers.items() if k not in checked.removed}
    async with aiohttp.ClientSession() as session:
        url = stack.settings.upstreams[0].url.rstrip("/") + SUBMIT
        async with session.post(url, data=json.dumps(body).encode(), headers=headers) as response:
            answer = await response.json()
            assert response.status == 200, answer
            return int(answer["job_id"])


def records(stack: Stack, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in ledger_records(stack) if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


async def placeholders(stack: Stack, tenant_id: str) -> set[str]:
    assert stack.server.store is not None
    return await stack.server.store.owned_jobs(SCOPE, tenant_id)


async def test_an_envoy_submission_is_reserved_recorded_then_adopted_by_its_job(stack: Stack, clock: Clock) -> None:
    """Allowed with the scheduler identity to set upstream; decided, debited and recorded before the allow; the
    job Envoy then created is adopted by reconciliation (never flagged as unadmitted) and released when it ends."""
    body = slurm_job("h100:2")
    checked = await envoy_check(stack, "alpha", body)
    assert checked.rpc_code == OK, checked.body
    assert checked.headers["x-slurm-user-name"] == "shared"
    decision_id = checked.headers["x-exportgate-decision-id"]
    decision = records(stack, "decision", decision_id=decision_id)
    assert len(decision) == 1 and decision[0]["entry"] == "envoy_grpc" and decision[0]["decision"] == "allow"
    assert decision[0]["job"]["parts"][0]["gpus"] == 2  # priced from the body Envoy buffered
    placed = await placeholders(stack, "alpha")
    assert len(placed) == 1
    (placeholder,) = placed
    assert records(stack, "settle", decision_id=decision_id, upstream=SCOPE, job_id=placeholder)
    store = stack.server.store
    assert store is not None
    held = await store.held_amounts(SCOPE, placeholder)
    assert held and max(held.values()) > 0  # the two H100s are held before anything reached the scheduler

    job_id = str(await envoy_forwards(stack, checked, body))
    counts = await reconciler(stack).run_once()
    assert counts.get("adopted") == 1, counts
    owner = await store.owner_of("slurm", job_id)
    assert owner is not None and (owner.tenant_id, owner.lease.lease_id) == ("alpha", decision_id)
    assert await placeholders(stack, "alpha") == set()
    adopted = records(stack, "settle", decision_id=decision_id, upstream="slurm", job_id=job_id)
    assert adopted and adopted[0]["adopted_from_job_id"] == placeholder

    clock.now += adoption_window_s(reconciler(stack).upstreams["slurm"]) + 1
    await reconciler(stack).run_once()
    await reconciler(stack).run_once()
    assert not records(stack, "unadmitted_job"), "the adopted job was taken for one submitted around the gateway"
    assert not records(stack, "release", decision_id=decision_id)  # still running: held

    # The owner reads its job through Envoy like one submitted through the proxy.
    assert stack.settings.envoy_grpc is not None
    read_job = check_request("GET", JOB_PATH.format(job_id), stack.auth("alpha"))
    read = await check(stack.settings.envoy_grpc.port, read_job)
    assert read.rpc_code == OK
    stack.standin.jobs[job_id]["job_state"] = "COMPLETED"
    for _ in range(3):
        await reconciler(stack).run_once()
    assert records(stack, "release", decision_id=decision_id, job_id=job_id)
    assert not any((await store.held_amounts("slurm", job_id) or {}).values())


async def test_a_submission_envoy_never_delivered_is_released_after_the_window(stack: Stack, clock: Clock) -> None:
    """No job appears: the placeholder waits out the adoption window, then its held capacity is released with a
    record first; the same tenant's next submission through the full proxy is not flagged or confused with it."""
    checked = await envoy_check(stack, "gamma", slurm_job("h100:4"))
    assert checked.allowed
    decision_id = checked.headers["x-exportgate-decision-id"]
    (placeholder,) = await placeholders(stack, "gamma")
    await reconciler(stack).run_once()
    assert await placeholders(stack, "gamma") == {placeholder}  # inside the window: kept
    clock.now += adoption_window_s(reconciler(stack).upstreams["slurm"]) + 1
    counts = await reconciler(stack).run_once()
    assert counts.get("placeholders_released") == 1, counts
    released = records(stack, "release", decision_id=decision_id)
    assert released and released[0]["disowned"] is True and released[0]["job_id"] == placeholder
    assert await placeholders(stack, "gamma") == set()
    store = stack.server.store
    assert store is not None
    state = await store.holdings(clock.now)
    lease = next(le for le in state.leases if le.lease_id == decision_id)
    assert lease.released


async def test_adoption_survives_a_rebuild_from_the_ledger(stack: Stack, clock: Clock) -> None:
    """The ledger alone says who owns what: after adoption a rebuild owns the job and not the placeholder."""
    body = slurm_job("h100:1")
    checked = await envoy_check(stack, "beta", body)
    assert checked.allowed
    job_id = str(await envoy_forwards(stack, checked, body))
    await reconciler(stack).run_once()
    state = rebuild_state(ledger_records(stack), clock.now, idempotency_window_s=86_400, ownership_ttl_s=30 * 86_400)
    owners = {(o.upstream, o.job_id): o.owner.tenant_id for o in state.owners}
    assert owners.get(("slurm", job_id)) == "beta"
    assert not [key for key in owners if key[0] == SCOPE]


async def test_one_identity_two_tenants_each_job_adopted_once(stack: Stack, clock: Clock) -> None:
    """alpha and beta share a Slurm user: two forwarded submissions, two jobs, each lease adopted by one job."""
    first, second = slurm_job("h100:1", name="a"), slurm_job("h100:1", name="b")
    one = await envoy_check(stack, "alpha", first)
    clock.now += 1
    two = await envoy_check(stack, "beta", second)
    assert one.allowed and two.allowed
    jobs = [str(await envoy_forwards(stack, one, first)), str(await envoy_forwards(stack, two, second))]
    counts = await reconciler(stack).run_once()
    assert counts.get("adopted") == 2, counts
    store = stack.server.store
    assert store is not None
    owners = [await store.owner_of("slurm", job) for job in jobs]
    assert sorted(o.lease.lease_id for o in owners if o is not None) == sorted(
        [one.headers["x-exportgate-decision-id"], two.headers["x-exportgate-decision-id"]]
    )


async def test_refusals_through_envoy_hold_nothing(stack: Stack, clock: Clock) -> None:
    """Tier 3, an unreadable body and an update: denied with the proxy's codes, recorded, and no placeholder."""
    embargoed = await envoy_check(stack, "dragon", slurm_job("h100:1"))
    assert (embargoed.rpc_code, embargoed.status, embargoed.body["code"]) == (PERMISSION_DENIED, 451, "tier3_embargoed")
    bad = await envoy_check(stack, "gamma", {"job": {"gpus": "h100:1"}})
    assert (bad.status, bad.body["code"]) == (400, "job_spec_invalid")
    assert records(stack, "decision", decision_id=bad.body["decision_id"])[0]["entry"] == "envoy_grpc"
    assert await placeholders(stack, "gamma") == set()
    assert await placeholders(stack, "dragon") == set()
    status, submitted, _ = await call(stack, "POST", SUBMIT, "gamma", payload=slurm_job())
    assert status == 200, submitted
    assert stack.settings.envoy_grpc is not None
    update = check_request(
        "POST", JOB_PATH.format(submitted["job_id"]), {**stack.auth("gamma"), "Content-Type": "application/json"},
        body=b'{"job": {"time_limit": 30}}',
    )  # fmt: skip
    updated = await check(stack.settings.envoy_grpc.port, update)
    assert updated.body["code"] == "route_needs_proxy"


async def test_a_retried_idempotency_key_is_not_forwarded_twice(stack: Stack, clock: Clock) -> None:
    """Envoy cannot replay the scheduler's first answer: the second Check of a key is refused, nothing held twice."""
    body = slurm_job("h100:1")
    first = await envoy_check(stack, "gamma", body, **{"Idempotency-Key": "run-7"})
    again = await envoy_check(stack, "gamma", body, **{"Idempotency-Key": "run-7"})
    assert first.allowed
    assert (again.status, again.body["code"]) == (409, "request_in_progress")
    assert len(await placeholders(stack, "gamma")) == 1
