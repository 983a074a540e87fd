"""Explain: the decide table and the live tables, asked both ways (explain, then the real request), agree.

Explain runs the proxy's own stages dry, so each case is asked of `POST /admin/v1/explain` first and
then sent through the running gateway; decision and code must be the same, and explaining must leave
no trace (no ledger record, no counter moved, nothing forwarded).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota_memory import MemoryQuotaStore
from gateway.adapters.upstream import Upstream
from gateway.cli import main
from gateway.config.settings import load_settings
from gateway.core.decide import Facts, decide
from gateway.core.explain import tier_record
from gateway.core.iso import ISO_3166_ALPHA2
from gateway.core.routes import RouteKind
from gateway.core.tenants import Registry, Tenant
from gateway.core.tiers import deciding_detail, tier_path
from gateway.http.explain import Explainer, Question
from gateway.http.lifecycle import adapter_for
from tests import test_decide
from tests.admin_kit import admin, tokens_file
from tests.decision_table import CASES, OWNER, Case, via_proxy
from tests.harness import (
    E2E_TENANTS,
    H100,
    JOB,
    SUBMIT,
    Stack,
    call,
    ledger_records,
    running_stack,
    slurm_job,
    write_config,
)
from tests.test_e2e_proxy import REFUSALS
from tests.test_e2e_quota import ALLOCATION_TENANTS, CAPS, DRAWS, TRAINING, UPDATES

# A path for each route kind of the decide table (a READ is asked as a plain read: the decide table has no
# owned job, and decide() treats both kinds alike).
PATHS = {
    RouteKind.SUBMIT: ("POST", SUBMIT),
    RouteKind.UPDATE: ("POST", "/slurm/v0.0.38/job/1"),
    RouteKind.READ: ("GET", "/slurm/v0.0.38/ping"),
    RouteKind.LIST: ("GET", "/slurm/v0.0.38/jobs"),
    RouteKind.PLAIN_READ: ("GET", "/slurm/v0.0.38/ping"),
}


async def offline_explainer(tmp_path: Path, who: Tenant | None) -> Explainer:
    """An explainer over the bundled pack, a registry of just `who` and an empty memory store."""
    # No credential headers: the table's tenants name no scheduler identity.
    settings = load_settings(write_config(tmp_path, "http://127.0.0.1:1", headers=""), env={})
    policy = PolicyFiles(settings.pack_dir, settings.registry_file)
    policy.pack = test_decide.PACK
    policy.registry = Registry({who.id: who} if who else {}, {i: who.id for i in who.identities} if who else {})
    upstreams = []
    for u in settings.upstreams:
        adapter = adapter_for(u)
        upstreams.append(Upstream(u, (*(adapter.routes() if adapter else ()), *u.routes), adapter))
    return Explainer(policy, upstreams, MemoryQuotaStore(), settings.limits)


@pytest.mark.parametrize(("case", "who", "kind", "outcome", "code", "tier"), test_decide.CASES,
                         ids=[c[0] for c in test_decide.CASES])  # fmt: skip
async def test_explain_agrees_with_the_decide_table(
    tmp_path: Path, case: str, who: Tenant | None, kind: RouteKind, outcome: Any, code: Any, tier: Any
) -> None:
    """Every case of test_decide's table: explain's decision, code and tier are decide()'s, and the table's."""
    method, path = PATHS[kind]
    explainer = await offline_explainer(tmp_path, who)
    body = json.dumps(JOB).encode() if kind is RouteKind.SUBMIT else None
    at = test_decide.NOW.timestamp()
    got = await explainer.explain(Question(method, path, tenant_id=who.id if who else "t1", body=body, at=at))
    decided = decide(Facts(test_decide.NOW, who, kind), test_decide.PACK)
    assert (got["decision"], got["code"]) == (decided.outcome.value, decided.code.value if decided.code else None)
    assert (got["decision"], got["code"]) == (outcome.value, code.value if code else None)
    assert (got["tier"] or {}).get("tier") == (int(tier) if tier is not None else None)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, admin_tokens_file=tokens_file(tmp_path)) as s:
        yield s


async def explained(stack: Stack, question: dict[str, Any]) -> dict[str, Any]:
    status, body, _ = await admin(stack, "POST", "/admin/v1/explain", payload=question)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def _question(stack: Stack, case: Case, path: str) -> dict[str, Any]:
    """A decision table case as an explain question: the same token the client sends (or none to give)."""
    if case.authorization is not None:
        token = case.authorization.removeprefix("Bearer ")
    else:
        assert case.sub is not None
        token = stack.idp.token(case.sub)
    question: dict[str, Any] = {"token": token, "method": case.method, "path": path}
    return question | ({"body": JOB} if path.endswith("/job/submit") else {})


async def test_explain_agrees_with_live_decisions_on_the_decision_table(stack: Stack) -> None:
    """tests/decision_table.py's cases (a token each) explained, then sent through the proxy: same decision."""
    status, body, _ = await call(stack, "POST", SUBMIT, OWNER, payload=JOB)
    assert status == 200, body
    job = str(body["job_id"])
    asked = [c for c in CASES if c.sub is not None or c.authorization is not None]  # explain needs a who
    assert len(asked) == len(CASES) - 1
    for case in asked:
        path = case.path.format(job=job)
        x = await explained(stack, _question(stack, case, path))
        live = await via_proxy(stack, case, path)
        assert (x["status"], x["code"]) == (live.status, live.code) == (case.status, case.code), case.name
    # Explaining records nothing: every record is a live request's.
    assert not [r for r in ledger_records(stack) if r.get("decision_id") == "explain"]


@pytest.mark.parametrize(("case", "sub", "status", "code"), [r for r in REFUSALS if r[1] is not None],
                         ids=[r[0] for r in REFUSALS if r[1] is not None])  # fmt: skip
async def test_explain_agrees_with_the_e2e_refusals(stack: Stack, case: str, sub: str, status: int, code: str) -> None:
    """test_e2e_proxy's refusal table, by tenant id: explain names the refusal the live submission gets."""
    x = await explained(stack, {"tenant": sub, "method": "POST", "path": SUBMIT, "body": JOB})
    live, reply, _ = await call(stack, "POST", SUBMIT, sub, payload=JOB)
    assert (x["decision"], x["code"], x["status"]) == ("deny", code, status)
    assert (live, reply["code"]) == (status, code)
    assert stack.standin.requests == []


# -- the quota tables of test_e2e_quota, explained before each live submission ---------------------------------

# test_e2e_quota's cap and training-threshold tables: (case, tenant, lineage, live statuses in turn, refusal code)
QUOTA_CASES = [(case, sub, None, statuses, "quota_tenant_tpp") for case, sub, statuses in CAPS] + [
    (f"training-{case}", sub, lineage, [status], "licence_required") for case, sub, lineage, status, _ in TRAINING
]


@pytest.mark.parametrize(("case", "sub", "lineage", "statuses", "code"), QUOTA_CASES, ids=[q[0] for q in QUOTA_CASES])
async def test_explain_agrees_with_live_quota_decisions(
    tmp_path: Path, case: str, sub: str, lineage: str | None, statuses: list[int], code: str | None
) -> None:
    """Before each submission, explain predicts its answer; the counters it reads are the ones the proxy debits."""
    async with running_stack(tmp_path, registry=E2E_TENANTS, admin_tokens_file=tokens_file(tmp_path)) as stack:
        body = slurm_job(lineage=lineage)
        for expected in statuses:
            x = await explained(stack, {"tenant": sub, "method": "POST", "path": SUBMIT, "body": body})
            live, reply, _ = await call(stack, "POST", SUBMIT, sub, payload=body)
            assert live == expected
            assert x["status"] == live, x
            assert x["code"] == (None if live == 200 else code) == (None if live == 200 else reply["code"])
            if live in (200, 429):
                tenant_cap = next(c for c in x["quota"]["counters"] if c["rule"] == "tenant_cap")
                assert tenant_cap["job_takes"] == H100


@pytest.mark.parametrize(("case", "sub", "countries"), DRAWS, ids=[d[0] for d in DRAWS])
async def test_explain_names_the_country_allocations_a_job_draws_on(
    tmp_path: Path, case: str, sub: str, countries: list[str]
) -> None:
    """test_e2e_quota's allocation table: explain's country counters and shares are the live lease's."""
    registry = E2E_TENANTS.rstrip("\n") + ALLOCATION_TENANTS + "\n"
    async with running_stack(tmp_path, registry=registry, admin_tokens_file=tokens_file(tmp_path)) as stack:
        body = slurm_job(gpus="h100:3")
        x = await explained(stack, {"tenant": sub, "method": "POST", "path": SUBMIT, "body": body})
        drawn = {c["key"]: c["job_takes"] for c in x["quota"]["counters"] if c["key"].startswith("country:")}
        assert drawn == {cc: H100 for cc in countries}
        live, _, headers = await call(stack, "POST", SUBMIT, sub, payload=body)
        assert (x["decision"], live) == ("allow", 200)
        decision_id = headers["X-Exportgate-Decision-Id"]
        [record] = [r for r in ledger_records(stack) if r["kind"] == "decision" and r["decision_id"] == decision_id]
        recorded = {c["key"]: c["amount"] for c in record["lease"]["counters"]}
        assert {c["key"]: c["job_takes"] for c in x["quota"]["counters"]} == recorded


# test_e2e_quota's update table (us-one, uncapped), and an update to the cap that passes only net of the old lease.
UPDATE_CASES = [(case, "us-one", payload, status, code) for case, payload, status, code, _ in UPDATES] + [
    ("to-the-cap-net-of-its-lease", "capped-ae", {"job": {"gpus": "h100:2", "time_limit": 60}}, 200, None),
    ("past-the-cap", "capped-ae", {"job": {"gpus": "h100:3", "time_limit": 60}}, 429, "quota_tenant_tpp"),
]


@pytest.mark.parametrize(("case", "sub", "payload", "status", "code"), UPDATE_CASES, ids=[u[0] for u in UPDATE_CASES])
async def test_explain_agrees_with_live_updates(
    tmp_path: Path, case: str, sub: str, payload: Any, status: int, code: str | None
) -> None:
    """An owned job's update explained, then sent: same answer (an update is checked net of the job's lease)."""
    async with running_stack(tmp_path, registry=E2E_TENANTS, admin_tokens_file=tokens_file(tmp_path)) as stack:
        job_id = await _submitted(stack, sub)
        path = f"/slurm/v0.0.38/job/{job_id}"
        x = await explained(stack, {"tenant": sub, "method": "POST", "path": path, "body": payload})
        live, reply, _ = await call(stack, "POST", path, sub, payload=payload)
        assert (x["status"], x["code"]) == (live, reply.get("code") if live != 200 else None) == (status, code)
        other = await explained(stack, {"tenant": "us-two", "method": "POST", "path": path, "body": payload})
        assert (other["code"], other["decided_at"]) == ("job_not_owned", "ownership")


async def _submitted(stack: Stack, sub: str) -> str:
    status, body, _ = await call(stack, "POST", SUBMIT, sub, payload=slurm_job())
    assert status == 200, body
    return str(body["job_id"])


async def test_explanation_shows_tier_path_price_sources_and_headroom(tmp_path: Path) -> None:
    """The deciding country, the price with its fields, each cap's room now, and the shadow state before a date."""
    async with running_stack(tmp_path, registry=E2E_TENANTS, admin_tokens_file=tokens_file(tmp_path)) as stack:
        x = await explained(stack, {"tenant": "fjord-se-cn", "method": "POST", "path": SUBMIT, "body": JOB})
        assert x["detail"] == "parent headquarters CN is Tier 3"
        assert x["tier"]["deciding"] == ["parent"]
        assert [(c["role"], c["tier"], c["list"]) for c in x["tier"]["countries"]] == [
            ("location", 1, "tier1"), ("headquarters", 1, "tier1"), ("parent", 3, "tier3")]  # fmt: skip
        assert x["reasons"][0] | {"citation": ""} == {
            "code": "tier3_embargoed", "rule": "tier3", "state": "enforced", "enforced_from": None,
            "detail": "parent headquarters CN is Tier 3", "citation": ""}  # fmt: skip
        assert (await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job()))[0] == 200
        x = await explained(stack, {"tenant": "capped-ae", "method": "POST", "path": SUBMIT,
                                    "body": slurm_job(gpus="h100:2")})  # fmt: skip
        assert (x["decision"], x["code"]) == ("deny", "quota_tenant_tpp")
        price = x["price"]
        assert (price["total_gpus"], price["held_tpp"], price["walltime_s"]) == (2, 2 * H100, 3600.0)
        assert price["gpus"][0] | {"dense_flops_per_chip": 0} == {
            "label": "h100", "model": "H100-SXM", "gpus": 2, "concurrency": 1, "count": 2, "tpp_per_chip": H100,
            "controlled": True, "dense_flops_per_chip": 0}  # fmt: skip
        fields = {(s["quantity"], s["field"], s["value"]) for s in price["sources"]}
        assert {("gpus", "job.gpus", "h100:2"), ("walltime", "job.time_limit", 60)} <= fields
        [cap] = [c for c in x["quota"]["counters"] if c["cap_name"] == "tenant"]
        assert (cap["held_now"], cap["cap"], cap["room_now"], cap["job_takes"], cap["refuses"]) == (
            H100, 2 * H100, H100, 2 * H100, True)  # fmt: skip
        assert x["quota"]["headroom"]["tpp"] == {"amount": H100, "binding": "tenant"}
        # Before tenant_cap's enforced-from date the same job would go through, counted: shadow.
        early = await explained(stack, {"tenant": "capped-ae", "method": "POST", "path": SUBMIT,
                                        "body": slurm_job(gpus="h100:2"), "at": "2025-03-01"})  # fmt: skip
        assert (early["decision"], early["code"], early["status"]) == ("shadow_deny", "quota_tenant_tpp", 200)
        assert early["reasons"][0]["state"] == "shadow" and early["reasons"][0]["enforced_from"] == "2025-05-15"
        assert next(r for r in early["rules"] if r["rule"] == "tenant_cap")["state"] == "shadow"
        assert early["at"].startswith("2025-03-01") and early["quota"]["counters"][0]["held_now"] == H100


async def test_explain_shows_the_parameter_threshold_on_jobs(tmp_path: Path) -> None:
    """A job declaring 1e24 parameters: explain names rule weights_parameters (enforced, shadow before its date) and
    agrees with the live answer; a Tier 1 tenant's job is admitted and meters the lineage."""
    job = slurm_job(lineage="giant", params="1e24")
    async with running_stack(tmp_path, registry=E2E_TENANTS, admin_tokens_file=tokens_file(tmp_path)) as stack:
        x = await explained(stack, {"tenant": "falcon-ae", "method": "POST", "path": SUBMIT, "body": job})
        live, reply, _ = await call(stack, "POST", SUBMIT, "falcon-ae", payload=job)
        assert (x["decision"], x["code"], x["status"]) == ("deny", "licence_required", 403) == ("deny", reply["code"],
                                                                                                live)  # fmt: skip
        assert x["reasons"][0]["rule"] == "weights_parameters" and x["reasons"][0]["state"] == "enforced"
        rule = next(r for r in x["rules"] if r["rule"] == "weights_parameters")
        assert (rule["objection"], rule["enforced_from"]) == ("licence_required", "2025-05-15")
        assert x["price"]["parameters"] == 1e24
        assert ("parameters", "job.environment.EXPORTGATE_PARAMS", "1e24") in {
            (s["quantity"], s["field"], s["value"]) for s in x["price"]["sources"]}  # fmt: skip
        early = await explained(stack, {"tenant": "falcon-ae", "method": "POST", "path": SUBMIT, "body": job,
                                        "at": "2025-03-01"})  # fmt: skip
        assert (early["decision"], early["code"], early["status"]) == ("shadow_deny", "licence_required", 200)
        assert "lineage_params_declared:giant" in [c["key"] for c in early["quota"]["counters"]]
        tier1 = await explained(stack, {"tenant": "us-two", "method": "POST", "path": SUBMIT, "body": job})
        assert (tier1["decision"], tier1["code"]) == ("allow", None)
        meter = next(c for c in tier1["quota"]["counters"] if c["key"] == "lineage_params_declared:giant")
        assert (meter["rule"], meter["cap"], meter["job_takes"]) == ("weights_parameters", None, 1.0)
        assert (await call(stack, "POST", SUBMIT, "us-two", payload=job))[0] == 200


async def test_explaining_reserves_records_and_forwards_nothing(stack: Stack) -> None:
    """However many times a job is explained, the counters, the ledger and the scheduler never hear of it."""
    records = len(ledger_records(stack))
    for _ in range(3):
        x = await explained(stack, {"tenant": "acme-us", "method": "POST", "path": SUBMIT, "body": JOB})
        assert x["decision"] == "allow"
    assert x["quota"]["counters"][0]["held_now"] == 0.0
    assert len(ledger_records(stack)) == records
    assert stack.standin.requests == []
    store = stack.server.store
    assert await store.counter_value("quota", "tenant:acme-us", stack.server.clock()) == 0.0


MALFORMED = [
    ("not-an-object", [1, 2], "the body must be a JSON object"),
    ("no-who", {"method": "GET", "path": "/x"}, "give exactly one"),
    ("both-whos", {"tenant": "a", "token": "b", "method": "GET", "path": "/x"}, "give exactly one"),
    ("unknown-field", {"tenant": "a", "method": "GET", "path": "/x", "nope": 1}, "nope: unknown field"),
    ("bad-method", {"tenant": "a", "method": "get me", "path": "/x"}, "method:"),
    ("relative-path", {"tenant": "a", "method": "GET", "path": "x"}, "path: must start with /"),
    ("bad-date", {"tenant": "a", "method": "GET", "path": "/x", "at": "soon"}, "at:"),
    ("number-tenant", {"tenant": 7, "method": "GET", "path": "/x"}, "tenant:"),
    ("two-bodies", {"tenant": "a", "method": "POST", "path": "/x", "body": {}, "body_text": "{}"}, "at most one"),
]


@pytest.mark.parametrize(("case", "question", "says"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_questions_are_400(stack: Stack, case: str, question: Any, says: str) -> None:
    """A question explain cannot read is problem+json 400 request_malformed naming the field."""
    status, body, headers = await admin(stack, "POST", "/admin/v1/explain", payload=question)
    assert (status, body["code"]) == (400, "request_malformed")
    assert says in body["detail"] and headers["Content-Type"] == "application/problem+json"


async def two_jobs(workdir: Path) -> str:
    """Run a gateway long enough for capped-ae to fill its 2-H100 cap (its ledger stays in `workdir`); a token
    of capped-ae's, signed by the key the gateway's jwks_file holds."""
    async with running_stack(workdir, registry=E2E_TENANTS) as stack:
        for _ in range(2):
            assert (await call(stack, "POST", SUBMIT, "capped-ae", payload=slurm_job()))[0] == 200
        return stack.idp.token("capped-ae")


def test_explain_cli_reads_the_ledger_and_agrees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`exportgate explain` offline, from gateway.yaml and the ledger: the admin API's answer, as JSON and text."""
    token = asyncio.run(two_jobs(tmp_path))
    config = str(tmp_path / "gateway.yaml")
    (tmp_path / "job.json").write_text(json.dumps(slurm_job()))
    args = ["explain", "--config", config, "--tenant", "capped-ae", "--method", "POST", "--path", SUBMIT,
            "--body-file", str(tmp_path / "job.json")]  # fmt: skip
    assert main([*args, "--format", "json"]) == 0
    x = json.loads(capsys.readouterr().out)
    assert (x["decision"], x["code"], x["quota_source"]) == ("deny", "quota_tenant_tpp", f"ledger {tmp_path}/ledger")
    assert next(c for c in x["quota"]["counters"] if c["cap_name"] == "tenant")["held_now"] == 2 * H100
    by_token = [a if a != "capped-ae" else token for a in args]
    assert main([*[a if a != "--tenant" else "--token" for a in by_token], "--format", "json"]) == 0
    y = json.loads(capsys.readouterr().out)
    assert (y["decision"], y["code"], y["identity"]["subject"]) == ("deny", "quota_tenant_tpp", "capped-ae")
    assert main([*args, "--at", "2025-03-01"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("decision: shadow_deny quota_tenant_tpp (200)")
    assert "tenant_cap" in text and "shadow (from 2025-05-15)" in text and "<- refuses" in text
    assert main(["explain", "--config", config, "--tenant", "fjord-se-cn", "--method", "GET", "--path",
                 "/slurm/v0.0.38/ping"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "parent headquarters CN is Tier 3" in text and "parent        CN: tier 3, tier3  <- deciding" in text
    assert main(["explain", "--config", config, "--tenant", "x", "--method", "GET", "--path", "/",
                 "--ledger", str(tmp_path / "absent")]) == 1  # fmt: skip
    assert "not a ledger directory" in capsys.readouterr().err
    assert datetime.fromisoformat(x["at"].replace("Z", "+00:00")).year >= 2025


@pytest.mark.parametrize(
    ("countries", "day", "detail", "listed"),
    [
        (("SE", "SE", "CN"), "2026-11-27", "parent headquarters CN is Tier 3", [None, None, None]),
        (("HK", "SE", "SE"), "2026-11-27", "location HK (counted as CN) is Tier 3", [None, None, None]),
        (("KH", "KH", "KH"), "2026-02-02", "location KH, headquarters KH and parent headquarters KH are Tier 3",
         ["2026-02-03"] * 3),
        (("KH", "AE", "AE"), "2026-02-03", "location KH, headquarters AE and parent headquarters AE are Tier 2",
         [None, None, None]),
    ],
    ids=["parent", "alias", "dated-list-before-removal", "dated-list-after-removal"],
)  # fmt: skip
def test_refusal_detail_and_tier_path_name_the_deciding_country(
    countries: tuple[str, str, str], day: str, detail: str, listed: list[str | None]
) -> None:
    """decide()'s Tier 3 detail and explain's tier record name the deciding roles and the dated list entry."""
    who = test_decide.tenant(*countries)
    when = datetime.fromisoformat(day + "T12:00:00+00:00")
    path = tier_path(who.countries(), test_decide.PACK.tiers, ISO_3166_ALPHA2, when.date())
    assert deciding_detail(path) == detail
    assert [c["listed_until"] for c in tier_record(path)["countries"]] == listed
    decision = decide(Facts(when, who, RouteKind.SUBMIT), test_decide.PACK)
    assert [r.detail for r in decision.reasons if r.rule is not None and r.rule.value == "tier3"] == (
        [detail] if "Tier 3" in detail else []
    )
