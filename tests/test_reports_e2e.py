"""The reports of a ledger the real gateway wrote: submissions through the proxy (admitted, refused by each cap,
cancelled, refunded), then every report from that signed ledger, its numbers checked against the quota store's
own counters and leases, and every HTML report parsed."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.core.leases import QUOTA_SLOT
from tests.harness import (
    E2E_TENANTS,
    H100,
    SUBMIT,
    Clock,
    Stack,
    call,
    ledger_records,
    running_stack,
    slurm_job,
    tenant,
)
from tests.ledger_kit import Keys, run_cli
from tests.report_kit import external_references, parse_html, rows

REGISTRY = E2E_TENANTS.rstrip("\n") + tenant("nveu-sa", "SA/SA/SA", "\n    veu: national") + "\n"
LEASE_S = 3600 + 3600  # a 60-minute job and the pack's pending allowance


async def submit(stack: Stack, sub: str, gpus: str = "h100:1", lineage: str | None = None) -> tuple[int, Any]:
    status, body, _ = await call(stack, "POST", SUBMIT, sub, payload=slurm_job(gpus, lineage=lineage))
    return status, body


async def traffic(stack: Stack, clock: Clock) -> None:
    """Admissions under every kind of cap, a refusal by each, a cancel, reads, and leases that end."""
    assert (await submit(stack, "us-one", "h100:8"))[0] == 200
    status, first = await submit(stack, "us-one", "h100:8")
    assert status == 200
    assert (await submit(stack, "falcon-ae", "h100:1699"))[0] == 200  # the group's allowance, nearly all of it
    assert (await submit(stack, "falcon-sg"))[1]["code"] == "quota_tenant_tpp"
    assert [(await submit(stack, "capped-ae"))[0] for _ in range(3)] == [200, 200, 429]
    assert (await submit(stack, "below-ae", lineage="llama-x"))[0] == 200
    assert (await submit(stack, "cross-ae", lineage="llama-x"))[1]["code"] == "licence_required"
    assert (await submit(stack, "nveu-sa", "h100:64"))[0] == 200
    assert (await submit(stack, "fjord-se-cn"))[1]["code"] == "tier3_embargoed"
    assert (await call(stack, "GET", "/slurm/v0.0.38/jobs", "us-two"))[0] == 200
    job = str(first["job_id"])
    assert (await call(stack, "DELETE", f"/slurm/v0.0.38/job/{job}", "us-one"))[0] == 200
    clock.advance(LEASE_S + 1)  # every lease above has ended
    assert (await submit(stack, "nveu-sa", "h100:32"))[0] == 200
    assert (await submit(stack, "falcon-sg", "h100:2"))[0] == 200
    assert (await submit(stack, "us-two", "h100:4"))[0] == 200


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_reports_agree_with_the_quota_store(tmp_path: Path, clock: Clock,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    (tmp_path / "keys").mkdir()
    keys = Keys(tmp_path / "keys")
    async with running_stack(tmp_path, clock=clock, registry=REGISTRY, signing_key_file=keys.private) as stack:
        await traffic(stack, clock)
        assert stack.server.store is not None
        state = await stack.server.store.holdings(clock.now)
        records = ledger_records(stack)
    at = clock.now
    iso = datetime.fromtimestamp(at, UTC).isoformat()
    root = tmp_path / "ledger"
    docs = {}
    for kind in ("compute-held", "aia-trigger", "veu", "large-training", "refusals-access"):
        code, out, err = run_cli(capsys, "report", kind, "--ledger", root, "--public-key", keys.public, "--at", iso,
                                 "--format", "json")  # fmt: skip
        assert code == 0, err
        docs[kind] = json.loads(out)

    # compute held: every counter of the store, held and cumulative, at the same time
    store = {c.key: c.value for c in state.counters if c.hash_tag == QUOTA_SLOT and c.value}
    reported = {r["counter"]: r["value"] for r in rows(docs["compute-held"], "held_at_end") if r["value"]}
    assert reported == store
    assert store["veu:nveu-sa"] == 32 * H100 and store["tenant:us-two"] == 4 * H100  # what is still held
    by_tenant: dict[str, float] = {}
    for lease in state.leases:
        if not lease.released and not lease.refunded and lease.end > at:
            held = sum(d.amount for d in lease.debits if d.key.startswith(("tenant:", "group:", "veu:")))
            by_tenant[lease.tenant_id] = by_tenant.get(lease.tenant_id, 0.0) + held
    tenants = {r["tenant"]: r for r in rows(docs["compute-held"], "tenants")}
    assert {t: r["held_at_end_tpp"] for t, r in tenants.items() if r["held_at_end_tpp"]} == by_tenant
    assert tenants["falcon-ae"]["peak_held_tpp"] == 1699 * H100 and tenants["us-one"]["peak_held_tpp"] == 16 * H100
    closest = {r["cap"]: r for r in rows(docs["compute-held"], "closest")}
    assert (closest["lpp"]["counter"], closest["lpp"]["peak_tpp"]) == ("group:falcon-group", 1699 * H100)
    assert closest["lpp"]["used"] == pytest.approx(1699 * H100 / 26_900_000)
    refusals = {(r["counter"], r["code"]): r["refused"] for r in rows(docs["compute-held"], "refusals_by_cap")}
    assert refusals == {("group:falcon-group", "quota_tenant_tpp"): 1, ("tenant:capped-ae", "quota_tenant_tpp"): 1,
                        ("ops:cross-ae:llama-x", "licence_required"): 1}  # fmt: skip

    # AIA: cumulative TPP is every admitted lease's TPP (a cancel gives none back)
    admitted = [r for r in records if r["kind"] == "decision" and r["decision"] == "allow" and r["lease"]]
    cumulative = {r["consignee"]: r["cumulative_tpp"] for r in rows(docs["aia-trigger"], "consignees")}
    assert cumulative["tenant:us-one"] == 16 * H100 and cumulative["group:falcon-group"] == 1701 * H100
    assert sum(cumulative.values()) == sum(r["cost"]["tpp"] for r in admitted)
    assert rows(docs["aia-trigger"], "reached") == []

    # VEU: the NVEU tenant's holdings, against the schedule step in force
    customers = [r for r in rows(docs["veu"], "customers") if r["tenant"] == "nveu-sa"]
    assert sum(r["admissions"] for r in customers) == 2
    assert max(r["peak_held_tpp"] for r in customers) == 64 * H100
    assert customers[-1]["held_at_end_tpp"] == store["veu:nveu-sa"]

    # Large training: lineage totals are the store's training-operations counters (no tier 1, no refused job)
    lineages = {(r["tenant"], r["lineage"]): r["lineage_total_ops"] for r in rows(docs["large-training"], "lineages")}
    for (tenant_id, lineage), total in lineages.items():
        assert store.get(f"ops:{tenant_id}:{lineage}") == total
    assert ("below-ae", "llama-x") in lineages and not any(t == "us-one" for t, _ in lineages)

    # Refusals and access: each refusal of the ledger, by code; the reads and their client IP
    by_code = {r["code"]: r["refused"] for r in rows(docs["refusals-access"], "by_code")}
    denied: dict[str, int] = {}
    for r in records:
        if r["kind"] in ("decision", "access") and r["decision"] == "deny":
            denied[r["code"]] = denied.get(r["code"], 0) + 1
    assert by_code == denied and by_code["tier3_embargoed"] == 1
    ips = {(r["tenant"], r["client_ip"]) for r in rows(docs["refusals-access"], "access_by_ip")}
    assert ("us-two", "127.0.0.1") in ips

    # Every report as HTML: charts inline, nothing fetched
    for kind in docs:
        code, out, err = run_cli(capsys, "report", kind, "--ledger", root, "--public-key", keys.public, "--at", iso)
        assert code == 0, err
        page = parse_html(out)
        assert page.svgs == len(docs[kind]["charts"]) >= 1
        assert external_references(page, out) == []
