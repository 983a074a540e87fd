"""Replaying recorded submissions under another pack flips exactly the decisions the change implies."""

import csv
import io
import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.adapters.ledger.reader import records_in_time_order
from gateway.cli import main
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.core.replay import ReplayReport, replay
from tests.harness import JOB_PATH, POLICIES, SUBMIT, call, running_stack, slurm_job, tenant
from tests.redis_server import RedisProcess

job = partial(slurm_job, partition=None)  # this module's submissions name no partition

PEOPLE = [
    # id, location, headquarters, parent hq, extra YAML
    ("acme-us", "US", "US", "US", ""),
    ("nordlys-se", "SE", "SE", "SE", ""),
    ("falcon-ae", "AE", "AE", "AE", "parent_entity: falcon-group"),
    ("falcon-sg", "SG", "SG", "AE", "parent_entity: falcon-group"),
    ("kiwi-br", "BR", "BR", "BR", ""),
    ("tiny-br", "BR", "BR", "BR", "tpp_cap: 10000"),
    ("fjord-se-cn", "SE", "SE", "CN", ""),
    ("selva-br", "BR", "BR", "BR", "kyc: {status: pending}"),
    ("dune-ae", "AE", "AE", "AE", "kyc: {status: pending}"),
]
AE_TENANTS = {"falcon-ae", "falcon-sg", "dune-ae"}
EXPECTED = {"allow -> tier3_embargoed": 3, "kyc_not_verified -> tier3_embargoed": 1}


def registry_yaml() -> str:
    """A registry with one tenant per row of PEOPLE."""
    out = ["tenants:"]
    for tenant_id, location, hq, parent, extra in PEOPLE:
        kyc = "" if "kyc:" in extra else "kyc: {status: verified, verified_at: 2025-01-20}"
        out.append(
            f"  - {{id: {tenant_id}, identities: [{{issuer: 'https://idp.example.com', subject: {tenant_id}}}], "
            f"location: {location}, headquarters: {hq}, parent_headquarters: {parent}"
            + "".join(f", {part}" for part in (kyc, extra) if part)
            + f", upstream_identity: {{slurm_user: {tenant_id}}}}}"
        )
    return "\n".join(out) + "\n"


def pack_with_ae_in_tier3(tmp_path: Path) -> Path:
    """A copy of the bundled pack with the United Arab Emirates added to Tier 3."""
    pack = tmp_path / "pack-ae"
    shutil.copytree(POLICIES / "ai-diffusion-2025", pack)
    tiers = pack / "tiers.yaml"
    text = tiers.read_text()
    assert "  - MO\n" in text
    tiers.write_text(text.replace("  - MO\n", "  - MO\n  - AE\n"))
    return pack


async def dump(client: "Redis") -> dict[bytes | str, bytes | None]:
    """Every key of the database with its serialised value."""
    return {key: await client.dump(key) for key in sorted(await client.keys("*"))}


@pytest.fixture
async def history(tmp_path: Path, fresh_redis: RedisProcess) -> dict[str, Any]:
    """A ledger of allowed, refused, refunded and cancelled submissions, made through a Redis-backed gateway."""
    (tmp_path / "tenants.yaml").write_text(registry_yaml())
    quota = f"quota: {{store: redis, redis_url: '{fresh_redis.url}', prefix: 'eg:'}}"
    expected_codes = {"fjord-se-cn": 451, "selva-br": 403, "dune-ae": 403, "tiny-br": 429}
    async with running_stack(tmp_path, extra=quota) as stack:
        for tenant_id, *_ in PEOPLE:
            status, body, _ = await call(stack, "POST", SUBMIT, tenant_id, payload=job("h100:1", lineage="llm"))
            assert status == expected_codes.get(tenant_id, 200), (tenant_id, body)
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=job("h100:2")))[0] == 200
        status, body, _ = await call(stack, "POST", SUBMIT, "falcon-ae", payload=job("a100:8"))
        assert status == 200
        assert (await call(stack, "DELETE", JOB_PATH.format(body["job_id"]), "falcon-ae"))[0] == 200
        assert (await call(stack, "POST", SUBMIT, "kiwi-br", payload=job("a100:2", env=False)))[0] == 400  # refunded
        ledger = stack.settings.ledger.dir
    return {"ledger": ledger, "registry": tmp_path / "tenants.yaml", "redis": fresh_redis, "tmp": tmp_path}


def submissions(ledger: Path) -> list[dict[str, Any]]:
    """The recorded submission decisions."""
    return [r for r in records_in_time_order(ledger) if r.get("kind") == "decision" and r.get("route_kind") == "submit"]


def run_replay(history: dict[str, Any], pack: Path, *, registry: bool) -> ReplayReport:
    records = list(records_in_time_order(history["ledger"]))
    return replay(records, load_pack(pack), load_registry(history["registry"]) if registry else None)


def test_same_pack_changes_nothing(history: dict[str, Any]) -> None:
    """Replaying under the pack that made the decisions reproduces every one of them."""
    report = run_replay(history, POLICIES / "ai-diffusion-2025", registry=True)
    assert report.decided == len(submissions(history["ledger"])) == len(PEOPLE) + 3
    assert (report.changes, report.skipped) == ((), 0)


def test_ae_in_tier3_flips_exactly_the_ae_tenants(history: dict[str, Any]) -> None:
    """With AE in Tier 3, every AE-linked submission becomes tier3_embargoed and nothing else changes."""
    report = run_replay(history, pack_with_ae_in_tier3(history["tmp"]), registry=True)
    expected_ids = {r["decision_id"] for r in submissions(history["ledger"]) if r["tenant"] in AE_TENANTS}
    assert {c.decision_id for c in report.changes} == expected_ids
    assert report.transitions() == EXPECTED
    assert report.by_tier() == {"2 -> 3": 4}
    assert report.by_country() == {"AE": 4, "SG": 1}
    assert report.incomplete_facts == ()


def test_recorded_facts_name_what_the_ledger_lacks(history: dict[str, Any]) -> None:
    """Without a registry the tier change is the same; the override tenant is flagged, as its cap is unknown."""
    report = run_replay(history, pack_with_ae_in_tier3(history["tmp"]), registry=False)
    assert report.transitions() == {**EXPECTED, "quota_tenant_tpp -> allow": 1}
    assert report.incomplete_facts == ("tiny-br",)
    assert report.facts == "recorded"


async def test_cli_formats_parse_and_redis_is_untouched(
    history: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """`exportgate replay` prints parseable JSON and CSV and never writes to the live quota store."""
    client = Redis.from_url(history["redis"].url)
    try:
        before = await dump(client)
        assert before
        pack = pack_with_ae_in_tier3(history["tmp"])
        base = ["replay", "--ledger", str(history["ledger"]), "--policy", str(pack), "--registry",
                str(history["registry"])]  # fmt: skip
        assert main([*base, "--format", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert (doc["changed"], doc["transitions"]) == (4, EXPECTED)
        assert {c["tenant"] for c in doc["changes"]} == AE_TENANTS
        assert main([*base, "--format", "csv"]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert sorted(r["decision_id"] for r in rows) == sorted(c["decision_id"] for c in doc["changes"])
        assert {(r["old"], r["new"]) for r in rows} == {("allow", "tier3_embargoed"),
                                                        ("kyc_not_verified", "tier3_embargoed")}  # fmt: skip
        assert main([*base, "--format", "text"]) == 0
        assert "4 would change" in capsys.readouterr().out
        assert await dump(client) == before
    finally:
        await client.aclose()


def test_bad_pack_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pack that does not load is reported as file:line problems, exit 1."""
    (tmp_path / "ledger").mkdir()
    assert main(["replay", "--ledger", str(tmp_path / "ledger"), "--policy", str(tmp_path)]) == 1
    assert "pack.yaml" in capsys.readouterr().err


async def test_update_is_replayed_as_charged_once(tmp_path: Path) -> None:
    """An update at the cap, then a job its budget fits only if the update was charged once: replayed unchanged."""
    extra = "\n    tpp_cap: 31664\n    budget: {period: month, tpp_hours: 63328}"  # 2 H100s; 4 H100-hours
    registry = tmp_path / "budget.yaml"
    registry.write_text("tenants:" + tenant("budget-ae", "AE/AE/AE", extra) + "\n")
    async with running_stack(tmp_path, registry=registry.read_text()) as stack:
        status, body, _ = await call(stack, "POST", SUBMIT, "budget-ae", payload=job("h100:1"))
        assert status == 200
        path = JOB_PATH.format(body["job_id"])
        update = {"job": {"gpus": "h100:2", "time_limit": 60}}
        assert (await call(stack, "POST", path, "budget-ae", payload=update))[
            0
        ] == 200  # 2 + 1 H100s would pass the cap
        assert (await call(stack, "DELETE", path, "budget-ae"))[0] == 200
        assert (await call(stack, "POST", SUBMIT, "budget-ae", payload=job("h100:2")))[0] == 200  # 2 + 2 H100-hours
        status, body, _ = await call(stack, "POST", SUBMIT, "budget-ae", payload=job("h100:1"))
        assert (status, body["code"]) == (429, "quota_tenant_tpp")
        ledger = stack.settings.ledger.dir
    records = list(records_in_time_order(ledger))
    report = replay(records, load_pack(POLICIES / "ai-diffusion-2025"), load_registry(registry))
    assert (report.decided, report.changes, report.skipped) == (4, (), 0)
