"""One table of cases through every entry point (tests/decision_table.py): identical decisions, one ledger."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.decision_table import CASES, ENTRIES, OWNER, Case, Entry, Seen, table_config
from tests.harness import JOB, SUBMIT, Stack, call, ledger_records, running_stack, wait_until


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, extra=table_config()) as s:
        yield s


async def _owned_job(stack: Stack) -> str:
    status, body, _ = await call(stack, "POST", SUBMIT, OWNER, payload=JOB)
    assert status == 200, body
    return str(body["job_id"])


async def test_every_entry_decides_every_case_alike(stack: Stack) -> None:
    """Same status and code through the proxy and every decision entry; each is recorded with its entry."""
    job = await _owned_job(stack)
    seen: dict[tuple[str, str], Seen] = {}
    for case in CASES:
        path = case.path.format(job=job)
        for entry in ENTRIES:
            seen[(case.name, entry.name)] = await entry.ask(stack, case, path)
    wrong = {
        key: (got.status, got.code)
        for key, got in seen.items()
        if (got.status, got.code) != next((c.status, c.code) for c in CASES if c.name == key[0])
    }
    assert wrong == {}
    for case in CASES:
        if case.code == "method_not_allowed":
            assert {seen[(case.name, e.name)].allow for e in ENTRIES} == {"GET, HEAD"}

    def recorded() -> bool:
        ids = {r["decision_id"] for r in ledger_records(stack)}
        return all(s.decision_id in ids for s in seen.values())

    await wait_until(recorded, 3.0, message="some decisions never reached the ledger")
    by_id = {r["decision_id"]: r for r in ledger_records(stack) if r.get("kind") in ("decision", "access")}
    for (name, entry_name), got in seen.items():
        record = by_id[got.decision_id]
        case = next(c for c in CASES if c.name == name)
        assert record["entry"] == entry_name, (name, entry_name)
        assert record["code"] == case.code, (name, entry_name)
        assert record["decision"] == ("deny" if case.code else "allow"), (name, entry_name)
        assert record["kind"] == ("decision" if case.code else "access"), (name, entry_name)
    # One decision per ask: the decision entries never forward, so the scheduler saw only the proxy's reads.
    forwarded = [r for r in stack.standin.requests if r["headers"].get("X-Exportgate-Decision-Id")]
    proxy_allowed = [s for (n, e), s in seen.items() if e == "proxy" and s.code is None]
    assert len(forwarded) == len(proxy_allowed) + 1  # and the submission


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.name != "proxy"], ids=lambda e: e.name)
async def test_job_changing_routes_need_the_proxy(stack: Stack, entry: Entry) -> None:
    """Submit, update, cancel and listings are refused route_needs_proxy by a decision entry, and recorded."""
    job = await _owned_job(stack)
    asks = [("POST", SUBMIT), ("POST", f"/slurm/v0.0.38/job/{job}"), ("DELETE", f"/slurm/v0.0.38/job/{job}")]
    asks.append(("GET", "/slurm/v0.0.38/jobs"))
    for method, path in asks:
        got = await entry.ask(stack, Case("needs-proxy", OWNER, method, path, 403, "route_needs_proxy"), path)
        assert (got.status, got.code) == (403, "route_needs_proxy"), (method, path)
        record = next(r for r in ledger_records(stack) if r["decision_id"] == got.decision_id)
        assert (record["entry"], record["decision"], record["code"]) == (entry.name, "deny", "route_needs_proxy")
    # The job is still owned and running: nothing was cancelled or released.
    assert stack.standin.jobs[job]["job_state"] != "CANCELLED"
