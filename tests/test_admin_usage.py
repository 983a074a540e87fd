"""Who holds what: the usage routes and `exportgate usage` agree with the quota store itself after admissions,
an operator release and reconciliation, on the memory store and on a real Redis; bad queries are 400."""

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.config.admin import Role, load_admin_tokens
from gateway.config.located import ConfigError
from gateway.core.leases import QUOTA_SLOT
from tests.admin_kit import admin, tokens_file
from tests.harness import E2E_TENANTS, H100, SUBMIT, Stack, call, running_stack, slurm_job, tenant
from tests.redis_server import RedisProcess

# A licensed tenant located in Singapore and headquartered in Malaysia: beyond its 2-H100 allowance it
# draws on both countries' allocations.
REGISTRY = E2E_TENANTS.rstrip("\n") + tenant(
    "split-sg", "SG/MY/MY", "\n    tpp_cap: 31664\n    licences: [{id: D-2001, lifts: [tenant_cap]}]"
) + "\n"  # fmt: skip
PREFIXES = (f"eg*usage[{i}]:" for i in itertools.count())  # glob characters: matched literally


def quota_config(kind: str, redis: RedisProcess | None) -> str | None:
    if kind == "memory":
        return None
    assert redis is not None
    return f"store: redis, redis_url: '{redis.url}', prefix: '{next(PREFIXES)}'"


@pytest.fixture(params=["memory", "redis"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    redis = request.getfixturevalue("redis_server") if request.param == "redis" else None
    quota = quota_config(request.param, redis)
    async with running_stack(tmp_path, registry=REGISTRY, admin_tokens_file=tokens_file(tmp_path), quota=quota) as s:
        yield s


async def read(stack: Stack, path: str) -> Any:
    status, body, _ = await admin(stack, "GET", path)
    assert status == 200, body
    return body


async def agree_with_store(stack: Stack) -> dict[str, dict[str, Any]]:
    """Every cap of every tenant, and every country, shows what the store holds; the tenants by id."""
    store, now = stack.server.store, stack.server.clock()
    tenants = {t["id"]: t for t in (await read(stack, "/admin/v1/tenants"))["tenants"]}
    for row in tenants.values():
        for cap in row["caps"]:
            assert cap["held"] == await store.counter_value(QUOTA_SLOT, cap["key"], now), (row["id"], cap)
    for country in (await read(stack, "/admin/v1/countries"))["countries"]:
        assert country["held"] == await store.counter_value(QUOTA_SLOT, f"country:{country['country']}", now)
    return tenants


async def submit(stack: Stack, sub: str, gpus: str = "h100:1") -> str:
    status, body, _ = await call(stack, "POST", SUBMIT, sub, payload=slurm_job(gpus=gpus))
    assert status == 200, body
    return str(body["job_id"])


async def test_usage_agrees_with_the_store(stack: Stack) -> None:
    """After admissions, an operator release and a reconciled end, every number matches the store."""
    first, second = await submit(stack, "capped-ae"), await submit(stack, "capped-ae")
    await submit(stack, "falcon-ae")
    await submit(stack, "us-one")
    await submit(stack, "split-sg", "h100:3")  # one H100 beyond its allowance: on SG's and MY's allocations
    tenants = await agree_with_store(stack)
    capped = tenants["capped-ae"]
    assert (capped["tier"], capped["kyc"], capped["live_leases"], capped["held_tpp"]) == (2, "verified", 2, 2 * H100)
    [cap] = [c for c in capped["caps"] if c["cap_name"] == "tenant"]
    assert (cap["held"], cap["cap"], cap["room"], cap["used"]) == (2 * H100, 2 * H100, 0.0, 1.0)
    group = next(c for c in tenants["falcon-sg"]["caps"] if c["cap_name"] == "group")
    assert (group["held"], group["shared_with"]) == (H100, ["falcon-ae"])  # a member's job counts for the group
    split = {c["cap_name"]: c["held"] for c in tenants["split-sg"]["caps"]}
    assert split == {"tenant": 2 * H100, "licence": H100, "country:SG": H100, "country:MY": H100,
                     "lineage:default": split["lineage:default"], "lineages": split["lineages"]}  # fmt: skip
    countries = {c["country"]: c for c in (await read(stack, "/admin/v1/countries"))["countries"]}
    assert countries["SG"]["tenants"] == [{"tenant": "split-sg", "held": H100}]
    assert countries["MY"]["cap"] == 790_000_000 and countries["MY"]["tier"] == 2

    status, body, _ = await admin(stack, "POST", f"/admin/v1/jobs/slurm/{first}/release", role="operate")
    assert (status, body["released"]) == (200, True)
    stack.standin.jobs[second]["job_state"] = "COMPLETED"
    assert stack.server.reconciler is not None
    assert (await stack.server.reconciler.run_once()).get("released") == 1
    tenants = await agree_with_store(stack)
    assert (tenants["capped-ae"]["live_leases"], tenants["capped-ae"]["held_tpp"]) == (0, 0.0)
    one = await read(stack, "/admin/v1/tenants/capped-ae")
    assert sorted((lease["state"], lease["jobs"][0]["job_id"]) for lease in one["leases"]) == [
        ("released", first), ("released", second)]  # fmt: skip
    assert all(lease["held_tpp"] == H100 and lease["end"] > stack.server.clock() for lease in one["leases"])
    assert [d["decision"] for d in one["recent_decisions"]] == ["allow", "allow"]
    assert {d["path"] for d in one["recent_decisions"]} == {SUBMIT}
    leases = await read(stack, "/admin/v1/leases?tenant=capped-ae&state=released&upstream=slurm")
    assert (leases["total"], leases["truncated"]) == (2, False)
    live = await read(stack, "/admin/v1/leases?state=live&limit=1")
    assert (live["total"], len(live["leases"]), live["truncated"]) == (3, 1, True)


BAD_QUERIES = [
    ("unknown-parameter", "/admin/v1/leases?bogus=1", "unknown query parameter"),
    ("repeated-parameter", "/admin/v1/leases?tenant=a&tenant=b", "given more than once"),
    ("limit-zero", "/admin/v1/leases?limit=0", "limit:"),
    ("limit-not-a-number", "/admin/v1/leases?limit=1e3", "limit:"),
    ("limit-huge", "/admin/v1/leases?limit=99999999999999999999", "limit:"),
    ("unknown-state", "/admin/v1/leases?state=dead", "state:"),
    ("markup-tenant", "/admin/v1/leases?tenant=%3Cscript%3E", "tenant:"),
    ("long-upstream", "/admin/v1/leases?upstream=" + "u" * 200, "upstream:"),
    ("query-on-tenants", "/admin/v1/tenants?x=1", "unknown query parameter"),
    ("query-on-countries", "/admin/v1/countries?tenant=a", "unknown query parameter"),
    ("markup-tenant-id", "/admin/v1/tenants/%3Cb%3E", "tenant id:"),
]


@pytest.mark.parametrize(("case", "path", "says"), BAD_QUERIES, ids=[b[0] for b in BAD_QUERIES])
async def test_hostile_queries_are_400(tmp_path: Path, case: str, path: str, says: str) -> None:
    """Problem+json 400 request_malformed with a detail naming the parameter; nothing is read."""
    async with running_stack(tmp_path, admin_tokens_file=tokens_file(tmp_path)) as stack:
        status, body, headers = await admin(stack, "GET", path)
        assert (status, body["code"], headers["Content-Type"]) == (400, "request_malformed", "application/problem+json")
        assert says in body["detail"]
        status, body, _ = await admin(stack, "GET", "/admin/v1/tenants/nobody")
        assert (status, body["code"]) == (404, "route_not_allowed")


# (who, method, path, payload, status, code): each role's reach
ROLES = [
    ("read", "GET", "/admin/v1/tenants", None, 200, None),
    ("read", "POST", "/admin/v1/explain", {"tenant": "acme-us", "method": "GET", "path": "/slurm/v0.0.38/ping"},
     200, None),
    ("read", "POST", "/admin/v1/jobs/slurm/1/release", None, 403, "role_insufficient"),
    ("read", "POST", "/admin/v1/reload", None, 403, "role_insufficient"),
    ("operate", "GET", "/admin/v1/leases", None, 200, None),
    ("operate", "POST", "/admin/v1/jobs/slurm/1/release", None, 200, None),
    ("operate", "POST", "/admin/v1/reload", None, 403, "role_insufficient"),
    ("admin", "POST", "/admin/v1/reload", None, 200, None),
    ("admin", "GET", "/admin/v1/countries", None, 200, None),
]  # fmt: skip


async def test_roles(tmp_path: Path) -> None:
    """read looks, operate also releases, admin also reloads; a wrong role is 403 role_insufficient problem+json."""
    async with running_stack(tmp_path, admin_tokens_file=tokens_file(tmp_path)) as stack:
        for role, method, path, payload, status, code in ROLES:
            got, body, headers = await admin(stack, method, path, role=role, payload=payload)
            assert got == status, (role, path, body)
            if code is not None:
                assert body["code"] == code and headers["Content-Type"] == "application/problem+json"
                assert f"has the {role} role; this needs" in body["detail"]
                assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
        _, body, _ = await admin(stack, "POST", "/admin/v1/reload", role="admin")
        assert (body["accepted"], body["changed"], body["pack"]["name"]) == (True, False, "ai-diffusion-2025")
        (tmp_path / "tenants.yaml").write_text("tenants:\n  - id: x\n    bogus_key: 1\n")
        _, body, _ = await admin(stack, "POST", "/admin/v1/reload", role="admin")
        assert (body["accepted"], body["changed"]) == (False, False)  # the last good registry keeps serving


TOKEN_FILES = [
    ("legacy-write-is-operate", "- {name: a, role: write, sha256: %s}", None),
    ("no-role", "- {name: a, sha256: %s}", "admin-tokens.yaml:2: tokens[0].role: required"),
    ("unknown-role", "- {name: a, role: root, sha256: %s}",
     "admin-tokens.yaml:2: tokens[0].role: 'root' is not one of read, operate, admin, write"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "entry", "problem"), TOKEN_FILES, ids=[t[0] for t in TOKEN_FILES])
def test_tokens_file_roles(tmp_path: Path, case: str, entry: str, problem: str | None) -> None:
    """`write` (before roles were split) reads as `operate`; a missing or unknown role is `file:line: field: ...`."""
    path = tmp_path / "admin-tokens.yaml"
    path.write_text("tokens:\n  " + entry % ("a" * 64) + "\n")
    if problem is None:
        assert [t.role for t in load_admin_tokens(path)] == [Role.OPERATE]
        return
    with pytest.raises(ConfigError) as raised:
        load_admin_tokens(path)
    assert [str(p).replace(f"{tmp_path}/", "") for p in raised.value.problems] == [problem]


async def fill(workdir: Path, quota: str | None) -> dict[str, Any]:
    """Run a gateway, admit three jobs and release one; the tenants report it answered."""
    async with running_stack(workdir, registry=REGISTRY, admin_tokens_file=tokens_file(workdir), quota=quota) as s:
        first = await submit(s, "capped-ae")
        await submit(s, "capped-ae")
        await submit(s, "split-sg", "h100:3")
        assert (await admin(s, "POST", f"/admin/v1/jobs/slurm/{first}/release", role="operate"))[0] == 200
        return {t["id"]: t for t in (await read(s, "/admin/v1/tenants"))["tenants"]}


@pytest.mark.parametrize("kind", ["ledger", "redis"])
def test_usage_cli_shows_what_the_api_showed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, redis_server: RedisProcess
) -> None:
    """`exportgate usage`, from the ledger (memory store) or from Redis: the admin API's numbers, offline."""
    live = asyncio.run(fill(tmp_path, quota_config("memory" if kind == "ledger" else "redis", redis_server)))
    config = str(tmp_path / "gateway.yaml")
    assert main(["usage", "--config", config, "--format", "json"]) == 0
    offline = {t["id"]: t for t in json.loads(capsys.readouterr().out)["tenants"]}
    for tenant_id in ("capped-ae", "split-sg"):
        assert offline[tenant_id]["caps"] == live[tenant_id]["caps"]
        assert offline[tenant_id]["live_leases"] == live[tenant_id]["live_leases"]
    assert main(["usage", "--config", config, "--tenant", "capped-ae"]) == 0
    text = capsys.readouterr().out
    assert "capped-ae: tier 2, KYC verified" in text and text.count(" released ") == 1 and "live" in text
    assert "allow" in text.split("recent decisions:")[1]
    assert main(["usage", "--config", config, "--tenant", "nobody-here"]) == 1
    assert capsys.readouterr().err == "error: no tenant 'nobody-here' is registered or holds a lease\n"
    assert main(["usage", "--config", config, "--countries"]) == 0
    assert "SG (tier 2): 15,832 of 790,000,000 TPP" in capsys.readouterr().out
    assert main(["usage", "--config", config, "--upstream", "slurm"]) == 2
    assert "--of, --upstream and --state filter --leases" in capsys.readouterr().err
