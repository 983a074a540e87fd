"""Quota state rebuilt from the ledger equals the state before a restart, in memory and in Redis."""

import asyncio
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.adapters.ledger.reader import records_in_time_order
from gateway.adapters.quota import QuotaStore
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.cli import main
from gateway.core.codes import Code
from gateway.core.leases import QUOTA_SLOT, Counter, CounterKind, Plan
from gateway.core.policy import RuleId
from gateway.core.rebuild import rebuild_state
from gateway.core.tiers import Tier
from tests.harness import JOB_PATH, SUBMIT, Stack, call, running_stack, slurm_job, wait_for_record
from tests.redis_server import RedisProcess

job = partial(slurm_job, partition=None)  # this module's submissions name no partition

TENANTS = """
tenants:
  - id: acme-us
    identities: [{issuer: "https://idp.example.com", subject: acme-us}]
    location: US
    headquarters: US
    parent_headquarters: US
    kyc: {status: verified, verified_at: 2025-01-20}
    upstream_identity: {slurm_user: acme}
  - id: falcon-ae
    identities: [{issuer: "https://idp.example.com", subject: falcon-ae}]
    location: AE
    headquarters: AE
    parent_headquarters: AE
    parent_entity: falcon-group
    kyc: {status: verified, verified_at: 2025-03-01}
    upstream_identity: {slurm_user: falcon}
  - id: falcon-sg
    identities: [{issuer: "https://idp.example.com", subject: falcon-sg}]
    location: SG
    headquarters: SG
    parent_headquarters: AE
    parent_entity: falcon-group
    kyc: {status: verified, verified_at: 2025-03-01}
    upstream_identity: {slurm_user: falcon}
  - id: kiwi-br
    identities: [{issuer: "https://idp.example.com", subject: kiwi-br}]
    location: BR
    headquarters: BR
    parent_headquarters: BR
    kyc: {status: verified, verified_at: 2025-03-01}
    budget: {period: month, tpp_hours: 1000000}
    upstream_identity: {slurm_user: kiwi}
"""
TENANT_IDS = ("acme-us", "falcon-ae", "falcon-sg", "kiwi-br")


async def make_history(stack: Stack) -> None:
    """Submissions (one with an idempotency key), a refund, a cancel, an update, budget and training-ops debits."""
    assert (await call(stack, "POST", SUBMIT, "acme-us", payload=job("h100:1")))[0] == 200
    idem = {"Idempotency-Key": "falcon-1"}
    status, body, _ = await call(
        stack, "POST", SUBMIT, "falcon-ae", payload=job("h100:1", lineage="llm-a"), headers=idem
    )
    assert status == 200
    falcon_job = body["job_id"]
    status, body, _ = await call(stack, "POST", SUBMIT, "falcon-sg", payload=job("h100:2", lineage="llm-b"))
    assert status == 200
    sg_job = body["job_id"]
    assert (await call(stack, "POST", SUBMIT, "kiwi-br", payload=job("a100:4")))[0] == 200
    assert (await call(stack, "POST", SUBMIT, "kiwi-br", payload=job("a100:2", env=False)))[0] == 400  # refunded
    assert (await call(stack, "DELETE", JOB_PATH.format(sg_job), "falcon-sg"))[0] == 200  # released
    update = {"job": {"gpus": "h100:3", "time_limit": 90, "environment": {"EXPORTGATE_LINEAGE": "llm-a"}}}
    status, _, headers = await call(stack, "POST", JOB_PATH.format(falcon_job), "falcon-ae", payload=update)
    assert status == 200
    # Follow-up records do not wait for their group commit; the update's settle record is the last.
    await wait_for_record(stack, "settle", decision_id=headers["X-Exportgate-Decision-Id"])


def counter_names(ledger: Path) -> list[tuple[str, str]]:
    """Every (hash tag, counter key) a recorded lease touched."""
    found = {
        (r["lease"]["hash_tag"], c["key"])
        for r in records_in_time_order(ledger)
        if r.get("kind") == "decision" and r.get("lease")
        for c in r["lease"]["counters"]
    }
    return sorted(found)


async def snapshot(store: QuotaStore, ledger: Path, now: float) -> dict[str, Any]:
    """Counters, owners and owned jobs as the store answers them."""
    counters = {f"{tag}/{key}": await store.counter_value(tag, key, now) for tag, key in counter_names(ledger)}
    owners = {job_id: await store.owner_of("slurm", job_id) for job_id in ("1", "2", "3", "4", "5")}
    owned = {t: await store.owned_jobs("slurm", t) for t in TENANT_IDS}
    return {"counters": counters, "owners": owners, "owned": owned}


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Counters agree to float rounding; ownership exactly."""
    assert after["counters"] == pytest.approx(before["counters"], rel=1e-12, abs=1e-6)
    assert after["owners"] == before["owners"]
    assert after["owned"] == before["owned"]


def check_history(state: dict[str, Any]) -> None:
    """The history left the debits it should: a live update, a released cancel, a refund, budget and ops."""
    counters = state["counters"]
    assert counters[f"{QUOTA_SLOT}/group:falcon-group"] == 3 * 15832  # the update replaced 1 H100; a cancel gave 2
    # The update gave the replaced 1-H100 lease back whole: ops count only the new total, never both.
    assert counters[f"{QUOTA_SLOT}/ops:falcon-ae:llm-a"] == pytest.approx(989e12 * 5400 * 3)
    assert counters[f"{QUOTA_SLOT}/ops:falcon-ae:*"] == pytest.approx(989e12 * 5400 * 3)
    assert counters[f"{QUOTA_SLOT}/ops:falcon-sg:llm-b"] == pytest.approx(989e12 * 3600 * 2)  # stays after cancel
    budget = next(k for k in counters if k.startswith(f"{QUOTA_SLOT}/budget:kiwi-br:"))
    assert counters[budget] == pytest.approx(4 * 4992)  # the refunded submission gave its budget back
    assert counters[f"{QUOTA_SLOT}/tenant:kiwi-br"] == 4 * 4992
    assert state["owners"]["5"] is None and state["owners"]["2"] is not None
    assert state["owned"]["falcon-ae"] == {"2"}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A work directory with this module's tenant registry."""
    (tmp_path / "tenants.yaml").write_text(TENANTS)
    return tmp_path


async def test_memory_store_restart_keeps_quotas(workdir: Path) -> None:
    """A restarted in-memory gateway holds the same counters, owners and idempotency records as before."""
    now = time.time()
    async with running_stack(workdir) as stack:
        await make_history(stack)
        assert stack.server.store is not None
        before = await snapshot(stack.server.store, stack.settings.ledger.dir, now)
    check_history(before)
    async with running_stack(workdir) as stack:
        assert stack.server.store is not None
        after = await snapshot(stack.server.store, stack.settings.ledger.dir, now)
        assert_same(before, after)
        retry = job("h100:1", lineage="llm-a")
        status, _, headers = await call(
            stack, "POST", SUBMIT, "falcon-ae", payload=retry, headers={"Idempotency-Key": "falcon-1"}
        )
        assert (status, headers.get("X-Exportgate-Replayed")) == (200, "true")
        assert stack.standin.requests == []


async def test_redis_store_rebuilt_by_cli_after_flush(workdir: Path, fresh_redis: RedisProcess) -> None:
    """FLUSHDB, then `exportgate quota rebuild --redis` restores the same keys, counters and owners."""
    now = time.time()
    quota = f"quota: {{store: redis, redis_url: '{fresh_redis.url}', prefix: 'eg:'}}"
    client = Redis.from_url(fresh_redis.url)
    try:
        async with running_stack(workdir, extra=quota) as stack:
            await make_history(stack)
            store, ledger = stack.server.store, stack.settings.ledger.dir
            assert store is not None
            before = await snapshot(store, ledger, now)
            keys = sorted(await client.keys("*"))
            await client.flushdb()
            assert (await snapshot(store, ledger, now))["counters"] != before["counters"]
            argv = ["quota", "rebuild", "--ledger", str(ledger), "--redis", fresh_redis.url, "--prefix", "eg:"]
            assert await asyncio.to_thread(main, argv) == 0
            assert sorted(await client.keys("*")) == keys
            assert_same(before, await snapshot(store, ledger, now))
            check_history(before)
    finally:
        await client.aclose()


def lease_record(decision_id: str, ts: float, end: float, amount: float, **extra: Any) -> dict[str, Any]:
    """An admitted submission's record with one held and one cumulative counter."""
    counters = [{"key": "tenant:t", "kind": "held", "amount": amount}, {"key": "ops:t:x", "kind": "cumulative",
                                                                          "amount": 10.0}]  # fmt: skip
    lease = {"hash_tag": "FR", "lease_end": end, "idempotency_key": None, "replaces_job": None, "counters": counters}
    lease.update(extra)
    return {"kind": "decision", "route_kind": "submit", "decision": "allow", "decision_id": decision_id,
            "tenant": "t", "ts": ts, "lease": lease}  # fmt: skip


CASES = [
    ("live", [lease_record("a", 0, 100, 5)], 5.0, 10.0),
    ("ended", [lease_record("a", 0, 40, 5)], 0.0, 10.0),
    ("refunded", [lease_record("a", 0, 100, 5), {"kind": "refund", "decision_id": "a", "ts": 1}], 0.0, 0.0),
    ("denied", [{**lease_record("a", 0, 100, 5), "decision": "deny"}], 0.0, 0.0),
    (
        "cancelled",
        [
            lease_record("a", 0, 100, 5),
            {"kind": "settle", "decision_id": "a", "ts": 1, "upstream": "u", "job_id": "7", "status": 200},
            {"kind": "release", "decision_id": "c", "ts": 2, "upstream": "u", "job_id": "7"},
        ],
        0.0,
        10.0,
    ),
    (
        "part-cancelled",
        [
            lease_record("a", 0, 100, 5),
            {"kind": "settle", "decision_id": "a", "ts": 1, "upstream": "u", "job_id": "7", "status": 200},
            {"kind": "release", "decision_id": "c", "ts": 2, "upstream": "u", "job_id": "7", "whole_job": False},
        ],
        5.0,
        10.0,
    ),
    (
        "replaced",
        [
            lease_record("a", 0, 100, 5),
            {"kind": "settle", "decision_id": "a", "ts": 1, "upstream": "u", "job_id": "7", "status": 200},
            {**lease_record("b", 2, 100, 8, replaces_job="7"), "route_kind": "update"},
            {"kind": "settle", "decision_id": "b", "ts": 3, "upstream": "u", "job_id": "7", "status": 200},
        ],
        8.0,
        10.0,  # the replaced lease is given back whole: its ops are not charged as well
    ),
    (
        "replaced-named",
        [
            lease_record("a", 0, 100, 5),
            {"kind": "settle", "decision_id": "a", "ts": 1, "upstream": "u", "job_id": "7", "status": 200},
            {**lease_record("b", 2, 100, 8, replaces_job="7"), "route_kind": "update"},
            {"kind": "settle", "decision_id": "b", "ts": 3, "upstream": "u", "job_id": "7", "status": 200}
            | {"replaced_lease": "a"},
        ],
        8.0,
        10.0,
    ),
    (
        "update-rejected",
        [
            lease_record("a", 0, 100, 5),
            {"kind": "settle", "decision_id": "a", "ts": 1, "upstream": "u", "job_id": "7", "status": 200},
            {**lease_record("b", 2, 100, 8, replaces_job="7"), "route_kind": "update"},
            {"kind": "refund", "decision_id": "b", "ts": 3},
        ],
        5.0,
        10.0,
    ),
]


@pytest.mark.parametrize(("case", "records", "held", "ops"), CASES, ids=[c[0] for c in CASES])
def test_rebuild_state_table(case: str, records: list[dict[str, Any]], held: float, ops: float) -> None:
    """Each kind of follow-up leaves the held and cumulative counters it should at t=50."""
    state = rebuild_state(records, 50.0, idempotency_window_s=1000, ownership_ttl_s=1000)
    values = {c.key: c.value for c in state.counters}
    assert (values.get("tenant:t", 0.0), values.get("ops:t:x", 0.0)) == (held, ops)


def test_leases_recorded_under_country_tags_rebuild_into_the_one_slot() -> None:
    """Records from when keys were tagged by country rebuild into today's slot, where new reservations look."""
    records = [
        lease_record("a", 0, 100, 5, idempotency_key="k1"),
        {**lease_record("b", 1, 100, 7), "lease": {**lease_record("b", 1, 100, 7)["lease"], "hash_tag": "AE"}},
        {"kind": "settle", "decision_id": "a", "ts": 2, "upstream": "u", "job_id": "7", "status": 200},
    ]
    state = rebuild_state(records, 50.0, idempotency_window_s=1000, ownership_ttl_s=1000)
    assert state.tags() == [QUOTA_SLOT]
    assert {(c.hash_tag, c.key): c.value for c in state.counters} == {
        (QUOTA_SLOT, "tenant:t"): 12.0, (QUOTA_SLOT, "ops:t:x"): 20.0,
    }  # fmt: skip
    assert [(i.hash_tag, i.key) for i in state.idempotency] == [(QUOTA_SLOT, "k1")]
    assert [o.owner.lease.hash_tag for o in state.owners] == [QUOTA_SLOT]


async def test_restore_replaces_only_named_keys(redis_server: RedisProcess) -> None:
    """A restore overwrites the counters it names and leaves other keys under and outside the prefix alone."""
    prefix = f"r{time.monotonic_ns()}:"
    store = RedisQuotaStore.from_url(redis_server.url, cluster=False, prefix=prefix)
    client = Redis.from_url(redis_server.url)
    try:
        counter = Counter("tenant:other", 7.0, None, CounterKind.HELD, Code.QUOTA_TENANT_TPP, RuleId.TENANT_CAP, True)
        plan = Plan("DE", "other", "z", None, "u", Tier.TWO, 500.0, (counter,), "lpp", "lpp", ())
        await store.reserve(plan, 0.0)
        await client.set("unrelated", "1")
        await store.restore(rebuild_state([lease_record("a", 0, 100, 5)], 50.0, idempotency_window_s=1000,
                                          ownership_ttl_s=1000), 50.0)  # fmt: skip
        assert await store.counter_value(QUOTA_SLOT, "tenant:t", 50.0) == 5.0  # recorded under "FR": re-homed
        assert await store.counter_value("DE", "tenant:other", 50.0) == 7.0
        assert await client.get("unrelated") == b"1"
        assert await store.owned_jobs("u", "t") == set()
    finally:
        await client.delete("unrelated")
        await store.close()
        await client.aclose()
