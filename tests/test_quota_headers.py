"""Priced answers tell the tenant's tools what the job cost and how much room its caps have left, and which
cap binds, on admissions and on refusals over quota; over real HTTP, with the memory and the Redis store."""

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.core.codes import Code
from gateway.core.headroom import Headroom, cap_name, headrooms
from gateway.core.leases import Counter, CounterKind, Plan, Share
from gateway.core.outcome import CounterUse, QuotaOutcome
from gateway.core.policy import RuleId
from gateway.core.tiers import Tier
from gateway.demo.standin import StandinState, standin_app
from gateway.http.quota_headers import number
from tests.harness import (
    E2E_TENANTS,
    H100,
    SUBMIT,
    Clock,
    Reply,
    Stack,
    call,
    ledger_records,
    running_stack,
    slurm_job,
)
from tests.redis_server import RedisProcess

LPP = 26_900_000.0  # caps.yaml lpp.tpp
THRESHOLD = 1e26  # caps.yaml training.threshold_ops

# -- the arithmetic --------------------------------------------------------------------------


def counter(key: str, cap: float | None, *, share: Share = Share.FIXED, code: Code = Code.QUOTA_TENANT_TPP,
            enforced: bool = True, base: float = 0.0) -> Counter:  # fmt: skip
    return Counter(key, 1.0, cap, CounterKind.HELD, code, RuleId.TENANT_CAP, enforced, base, share=share)


def outcome(counters: list[Counter], after: dict[str, float]) -> QuotaOutcome:
    plan = Plan("q", "t", "d", None, "slurm", Tier.TWO, 0.0, tuple(counters), "lpp", "lpp", ())
    uses = {c.key: CounterUse(after[c.key], 0.0, after[c.key], c.cap) for c in counters if c.key in after}
    return QuotaOutcome(plan, uses)


HEADROOMS = [
    ("one-cap", [counter("tenant:t", 100.0)], {"tenant:t": 30.0}, {"tpp": Headroom(70.0, "tenant")}),
    ("uncapped", [counter("tenant:t", None)], {"tenant:t": 30.0}, {}),
    ("shadow-cap-refuses-nothing", [counter("tenant:t", 100.0, enforced=False)], {"tenant:t": 30.0}, {}),
    ("over-a-cap-is-zero", [counter("tenant:t", 100.0)], {"tenant:t": 130.0}, {"tpp": Headroom(0.0, "tenant")}),
    (
        # A licensed tenant: its allowance's room, plus the least room of the licence and its countries.
        "licensed-split",
        [
            counter("tenant:t", 100.0, share=Share.HEADROOM),
            counter("licensed:tenant:t", 1000.0, share=Share.OVERFLOW),
            counter("country:AE", 500.0, share=Share.OVERFLOW, code=Code.QUOTA_COUNTRY_TPP),
        ],
        {"tenant:t": 90.0, "licensed:tenant:t": 200.0, "country:AE": 460.0},
        {"tpp": Headroom(10.0 + 40.0, "country:AE")},
    ),
    (
        "training-ops-with-a-declared-base",
        [
            counter("ops:t:llama", THRESHOLD, code=Code.LICENCE_REQUIRED, base=9e25),
            counter("ops:t:*", THRESHOLD, code=Code.LICENCE_REQUIRED, base=9.5e25),
        ],
        {"ops:t:llama": 1e24, "ops:t:*": 1e24},
        {"training_ops": Headroom(THRESHOLD - 9.5e25 - 1e24, "lineages")},
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "counters", "after", "expected"), HEADROOMS, ids=[h[0] for h in HEADROOMS])
def test_headroom_under_the_caps(
    case: str, counters: list[Counter], after: dict[str, float], expected: dict[str, Headroom]
) -> None:
    """The room left is what the next job could take before an enforced cap refuses it."""
    assert headrooms(outcome(counters, after)) == expected


def test_cap_names_never_show_the_tenant_id() -> None:
    names = ["tenant:acme", "group:falcon", "veu:x", "licensed:group:falcon", "country:AE", "ops:t:llama-x", "ops:t:*"]
    assert [cap_name(k) for k in names] == [
        "tenant", "group", "veu", "licence", "country:AE", "lineage:llama-x", "lineages",
    ]  # fmt: skip
    assert [number(v) for v in (15832.0, 26_900_000.0, 0.5, 1e26)] == ["15832", "26900000", "0.5", "1e+26"]


# -- over HTTP, with both stores --------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    quota = None
    if request.param == "redis":
        server: RedisProcess = request.getfixturevalue("redis_server")
        quota = f"store: redis, redis_url: '{server.url}', prefix: 'headers-{time.monotonic_ns()}:'"
    async with running_stack(tmp_path, clock=Clock(), registry=E2E_TENANTS, quota=quota) as s:
        yield s


async def submit(stack: Stack, sub: str, gpus: str = "h100:1") -> Reply:
    return await call(stack, "POST", SUBMIT, sub, payload=slurm_job(gpus))


def recorded_cost(stack: Stack, reply: Reply) -> dict[str, Any]:
    decision_id = reply[2]["X-Exportgate-Decision-Id"]
    record = next(r for r in ledger_records(stack) if r["kind"] == "decision" and r["decision_id"] == decision_id)
    cost: dict[str, Any] = record["cost"]
    return cost


def headers_of(reply: Reply) -> dict[str, str]:
    return {k: v for k, v in reply[2].items() if k.lower().startswith(("x-exportgate-cost", "x-exportgate-head",
                                                                       "x-exportgate-binding"))}  # fmt: skip


async def test_admissions_count_down_to_the_refusal(stack: Stack) -> None:
    """A tenant capped at two H100s: each admission shows the job's cost and the room left; the refusal shows
    the same cost, no room, and that the tenant's own cap binds."""
    first, second, third = [await submit(stack, "capped-ae") for _ in range(3)]
    assert (first[0], second[0], third[0]) == (200, 200, 429)
    cost = recorded_cost(stack, first)
    assert headers_of(first) == {
        "X-Exportgate-Cost-TPP": "15832",
        "X-Exportgate-Cost-GPUs": "1",
        "X-Exportgate-Cost-TPP-Hours": number(cost["tpp_hours"]),
        "X-Exportgate-Cost-Training-Ops": number(cost["training_ops"]),
        "X-Exportgate-Headroom-TPP": "15832",
        "X-Exportgate-Binding-Cap": "tenant",
        "X-Exportgate-Headroom-Training-Ops": number(THRESHOLD - cost["training_ops"]),
    }
    assert cost["tpp"] == H100
    assert second[2]["X-Exportgate-Headroom-TPP"] == "0"
    assert third[1]["code"] == "quota_tenant_tpp" and "Retry-After" in third[2]
    assert (third[2]["X-Exportgate-Cost-TPP"], third[2]["X-Exportgate-Headroom-TPP"]) == ("15832", "0")
    assert third[2]["X-Exportgate-Binding-Cap"] == "tenant"


async def test_a_refusal_shows_the_room_there_is_now(stack: Stack) -> None:
    """A job bigger than what is left is refused with the room the tenant still has (nothing was taken)."""
    assert (await submit(stack, "capped-ae"))[0] == 200
    refused = await submit(stack, "capped-ae", "h100:2")
    assert refused[0] == 429
    assert (refused[2]["X-Exportgate-Cost-TPP"], refused[2]["X-Exportgate-Cost-GPUs"]) == ("31664", "2")
    assert refused[2]["X-Exportgate-Headroom-TPP"] == "15832"


async def test_a_group_shares_its_allowance(stack: Stack) -> None:
    """Affiliates of one group draw on one LPP allowance: the group's cap binds and both see its room."""
    ae = await submit(stack, "falcon-ae", "h100:4")
    sg = await submit(stack, "falcon-sg", "h100:2")
    assert (ae[0], sg[0]) == (200, 200)
    assert (ae[2]["X-Exportgate-Binding-Cap"], sg[2]["X-Exportgate-Binding-Cap"]) == ("group", "group")
    assert ae[2]["X-Exportgate-Headroom-TPP"] == number(LPP - 4 * H100)
    assert sg[2]["X-Exportgate-Headroom-TPP"] == number(LPP - 6 * H100)


async def test_training_threshold_headroom(stack: Stack) -> None:
    """Near the 1e26 training threshold: the room left in operations shows, and a refusal over it says so."""
    ok = await submit(stack, "below-ae")
    refused = await submit(stack, "cross-ae")
    assert (ok[0], refused[0], refused[1]["code"]) == (200, 403, "licence_required")
    ops = recorded_cost(stack, ok)["training_ops"]
    assert float(ok[2]["X-Exportgate-Headroom-Training-Ops"]) == pytest.approx(THRESHOLD - 9.999999e25 - ops)
    assert float(refused[2]["X-Exportgate-Headroom-Training-Ops"]) == pytest.approx(THRESHOLD - 9.9999999e25)
    assert refused[2]["X-Exportgate-Cost-Training-Ops"] == number(ops)


def spoofing_standin(state: StandinState) -> web.Application:
    """The stand-in, answering with the gateway's header names as if it could speak for the counts."""
    app = standin_app(state)

    async def spoof(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Exportgate-Headroom-TPP"] = "999999999"
        response.headers["x-exportgate-binding-cap"] = "none"
        response.headers["X-Exportgate-Cost-TPP"] = "1"

    app.on_response_prepare.append(spoof)
    return app


async def test_uncapped_tier1_shows_cost_only_and_the_upstream_cannot_speak_for_it(tmp_path: Path) -> None:
    """A Tier 1 tenant has no TPP cap: cost, no headroom; headers the scheduler sent under those names are
    replaced or dropped."""
    async with running_stack(tmp_path, registry=E2E_TENANTS, standin=spoofing_standin) as stack:
        reply = await submit(stack, "us-two")
    assert reply[0] == 200
    shown = headers_of(reply)
    assert shown["X-Exportgate-Cost-TPP"] == "15832"
    assert not {"x-exportgate-headroom-tpp", "x-exportgate-binding-cap"} & {k.lower() for k in shown}
    assert "X-Exportgate-Headroom-Training-Ops" not in shown  # Tier 1's training operations are not counted


async def test_refusals_before_pricing_carry_no_cost(stack: Stack) -> None:
    """A refusal that comes before the job is priced (no token) has nothing to tell."""
    refused = await call(stack, "POST", SUBMIT, None, payload=slurm_job())
    assert refused[0] == 401 and headers_of(refused) == {}
