"""No single request stalls the ledger: lone surrogates, unencodable records, a crashed or a stuck writer."""

import asyncio
import fcntl
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.ledger import supervision as ledger_module
from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.core.ledger import GENESIS, canonical, line_of, link_problem, seal
from tests.harness import (
    E2E_TENANTS,
    JOB,
    SUBMIT,
    Stack,
    call,
    chain_problems,
    ledger_records,
    metrics,
    running_stack,
    wait_for_record,
    wait_until,
)
from tests.ledger_kit import Keys, run_cli

PING = "/slurm/v0.0.38/ping"

# -- the record format: any string a JSON parser accepts is written faithfully ----------------

# (id, the string, how the ledger line spells it)
STRINGS = [
    ("ascii", "plain", b'"plain"'),
    ("astral", "é \U0001f600", '"é \U0001f600"'.encode()),
    ("lone-high", "a\ud800b", b'"a\\ud800b"'),
    ("lone-low", "\udc00", b'"\\udc00"'),
    ("reversed-pair", "\udc00\ud800", b'"\\udc00\\ud800"'),
    ("split-pair", "\ud83d\ude00", '"\U0001f600"'.encode()),  # two code points a parser reads as one character
    ("high-then-pair", "\ud800\ud83d\ude00", b'"\\ud800' + "\U0001f600".encode() + b'"'),
    ("escape-lookalike", "\\ud800 \ud800", b'"\\\\ud800 \\ud800"'),
]


@pytest.mark.parametrize(("text", "spelt"), [s[1:] for s in STRINGS], ids=[s[0] for s in STRINGS])
def test_canonical_form_round_trips_every_string(text: str, spelt: bytes) -> None:
    """A sealed record holding `text` in a value, a key and a list is valid UTF-8 and verifies after parsing."""
    record = seal({"kind": "t", "value": text, text: [text, {"k": text}]}, instance="i", seq=1, prev_hash=GENESIS)
    line = line_of(record)
    line.decode("utf-8")  # strict: the ledger is valid UTF-8
    assert b'"value":' + spelt in line
    parsed = json.loads(line)
    assert link_problem(parsed, GENESIS, 0) is None
    assert canonical(parsed) == canonical(record)
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # valid text keeps its bytes: old ledgers still verify
        usual = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert canonical(record) == usual


async def test_writer_records_lone_surrogates_and_the_cli_verifies_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records with lone surrogates in values, keys and paths are written, signed and verified by the CLI."""
    keys = Keys(tmp_path)
    root = tmp_path / "ledger"
    writer = LedgerWriter(root, "gw", signer=keys.signer, checkpoint_every_records=2)
    await writer.open()
    bodies: list[dict[str, Any]] = [
        {"kind": "decision", "decision_id": "d1", "path": "/job/\udc80", "job": {"lineage": "\ud800"}},
        {"kind": "access", "decision_id": "d2", "\udfff": ["\ud83d\ude00"]},
        {"kind": "settle", "decision_id": "d3", "job_id": "x\udbff"},
    ]
    async with asyncio.timeout(5):
        for body in bodies:
            await writer.append(body, wait=True)
        await writer.close()
    records = ledger_records(root, "gw")
    assert [r["kind"] for r in records if r["kind"] != "checkpoint"] == ["decision", "access", "settle"]
    assert records[0]["job"]["lineage"] == "\ud800" and records[0]["path"] == "/job/\udc80"
    assert chain_problems(records) == []
    code, out, _ = run_cli(capsys, "ledger", "verify", root, "--public-key", keys.public)
    assert code == 0 and "ok: 1 chains" in out


# -- through the gateway: refused before anything is reserved, and nothing stalls -------------


def _with(**job: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(JOB)
    return {**base, "job": {**base["job"], "gpus": "h100:2", **job}}


SURROGATE_JOBS = [
    ("lineage-value", _with(environment={"EXPORTGATE_LINEAGE": "\ud800"}), "job.environment.EXPORTGATE_LINEAGE"),
    ("env-key", _with(environment={"\udc00": "x"}), "job.environment.\\udc00"),
    ("comment", _with(comment="exportgate:lineage=a\udfffb"), "job.comment"),
    ("script", {**_with(), "script": "#!/bin/bash\n\ud83d"}, "script"),
    ("list-item", _with(argv=["ok", "\udbff"]), "job.argv[1]"),
]


async def _ready(stack: Stack) -> tuple[int, dict[str, Any]]:
    status, body, _ = await call(stack, "GET", "/readyz", admin=True)
    return status, body


async def _metric(stack: Stack, name: str) -> float:
    text = await metrics(stack)
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


@pytest.mark.parametrize(("job", "field"), [c[1:] for c in SURROGATE_JOBS], ids=[c[0] for c in SURROGATE_JOBS])
async def test_a_lone_surrogate_in_a_submission_is_refused_and_stalls_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], job: dict[str, Any], field: str
) -> None:
    """400 job_spec_invalid naming the field, nothing reserved or sent; later requests answer; the chain verifies."""
    keys = Keys(tmp_path)
    async with running_stack(tmp_path, registry=E2E_TENANTS, signing_key_file=keys.private) as stack:
        async with asyncio.timeout(10):
            status, body, _ = await call(stack, "POST", SUBMIT, "capped-ae", payload=job)
            assert (status, body["code"]) == (400, "job_spec_invalid")
            assert body["detail"].startswith(f"{field}: ")
            assert stack.standin.requests == []
            # The tenant's cap is exactly two H100s: had the refused job reserved them, this would be 429.
            status, body, _ = await call(stack, "POST", SUBMIT, "capped-ae", payload=_with())
            assert status == 200, body
            assert (await call(stack, "POST", SUBMIT, None, payload=JOB))[0] == 401
            assert (await call(stack, "GET", PING, "capped-ae"))[0] == 200
            await wait_for_record(stack, "access", tenant="capped-ae")
            assert (await _ready(stack))[0] == 200
            assert await _metric(stack, "exportgate_ledger_errors_total") == 0
    code, out, _ = run_cli(capsys, "ledger", "verify", tmp_path / "ledger", "--public-key", keys.public)
    assert code == 0, out


# -- the writer is supervised -------------------------------------------------------------


class _Errors:
    """Counts the writer's on_error calls (what exportgate_ledger_errors_total counts)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
async def writer(tmp_path: Path) -> AsyncIterator[tuple[LedgerWriter, _Errors]]:
    errors = _Errors()
    opened = LedgerWriter(tmp_path, "w", on_error=errors)
    await opened.open()
    yield opened, errors
    async with asyncio.timeout(5):
        await opened.close()


UNENCODABLE: list[tuple[str, Callable[[], Any]]] = [
    ("set", lambda: {1, 2}),
    ("nan", lambda: math.nan),
    ("object", object),
    ("bytes", lambda: b"\x00"),
]


@pytest.mark.parametrize("make", [m for _, m in UNENCODABLE], ids=[i for i, _ in UNENCODABLE])
async def test_an_unencodable_waited_record_is_refused_alone(
    tmp_path: Path, writer: tuple[LedgerWriter, _Errors], make: Callable[[], Any]
) -> None:
    """Its caller gets LedgerUnavailable at once, it is counted, and its batch and later records commit."""
    w, errors = writer
    async with asyncio.timeout(5):
        bad: Any
        good: Any
        bad, good = await asyncio.gather(
            w.append({"kind": "decision", "decision_id": "bad", "job": make()}, wait=True),
            w.append({"kind": "decision", "decision_id": "good"}, wait=True),
            return_exceptions=True,
        )
        assert isinstance(bad, LedgerUnavailable)
        assert isinstance(good, dict) and good["seq"] == 1
        later = await w.append({"kind": "decision", "decision_id": "later"}, wait=True)
    assert later is not None and later["seq"] == 2
    assert errors.count == 1 and w.healthy
    assert [r["decision_id"] for r in ledger_records(tmp_path, "w")] == ["good", "later"]


async def test_an_unencodable_access_record_is_refused_before_its_read_goes_on(
    tmp_path: Path, writer: tuple[LedgerWriter, _Errors]
) -> None:
    """A record nobody waits for is checked when queued: the read it belongs to is refused, not forwarded unrecorded."""
    w, errors = writer
    with pytest.raises(LedgerUnavailable, match="cannot be encoded"):
        await w.append({"kind": "access", "decision_id": "bad", "cost": {"tpp": math.inf}}, wait=False)
    async with asyncio.timeout(5):
        await w.append({"kind": "access", "decision_id": "next"}, wait=True)
    assert errors.count == 1
    assert [r["decision_id"] for r in ledger_records(tmp_path, "w")] == ["next"]


class FailingClock:
    """Wall-clock time that raises while `failures` is above zero: an unforeseen error inside the writer task."""

    def __init__(self) -> None:
        self.failures = 0

    def __call__(self) -> float:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("clock source unavailable")
        return time.time()


async def _ready_is(stack: Stack, wanted: int) -> bool:
    return (await _ready(stack))[0] == wanted


async def test_a_crashed_writer_fails_its_waiters_and_restarts(tmp_path: Path) -> None:
    """The waiting caller gets LedgerUnavailable, the crash is counted, and the restarted writer continues the chain."""
    clock, errors = FailingClock(), _Errors()
    w = LedgerWriter(tmp_path, "w", on_error=errors, clock=clock)
    await w.open()
    await w.append({"kind": "decision", "decision_id": "before"}, wait=True)
    clock.failures = 1
    await w.append({"kind": "access", "decision_id": "kept"}, wait=False)
    with pytest.raises(LedgerUnavailable, match="writer stopped"):
        async with asyncio.timeout(5):
            await w.append({"kind": "decision", "decision_id": "crashed"}, wait=True)
    assert errors.count == 1 and not w.healthy
    await wait_until(lambda: w.healthy)
    async with asyncio.timeout(5):
        after = await w.append({"kind": "decision", "decision_id": "after"}, wait=True)
        await w.close()
    records = ledger_records(tmp_path, "w")
    assert [r["decision_id"] for r in records] == ["before", "kept", "after"]
    assert after is not None and after["seq"] == 3
    assert chain_problems(records) == []


async def test_a_writer_that_keeps_crashing_stays_stopped_and_refuses(tmp_path: Path) -> None:
    """After MAX_RESTARTS restarts it stays stopped: unhealthy, every append refused at once, close() prompt."""
    clock, errors = FailingClock(), _Errors()
    w = LedgerWriter(tmp_path, "w", on_error=errors, clock=clock)
    await w.open()
    clock.failures = 10**6
    async with asyncio.timeout(10):
        while w.running:
            with pytest.raises(LedgerUnavailable):
                await w.append({"kind": "decision", "decision_id": "x"}, wait=True)
    assert errors.count == ledger_module.MAX_RESTARTS + 1
    assert not w.healthy
    with pytest.raises(LedgerUnavailable, match="stopped"):
        await w.append({"kind": "access", "decision_id": "read"}, wait=False)
    started = time.monotonic()
    await w.close()
    assert time.monotonic() - started < 1.0
    assert ledger_records(tmp_path, "w") == []


# -- a dead or stuck writer shows on /readyz and in metrics -----------------------------------


def _replaced(writer: LedgerWriter, task: "asyncio.Task[None]") -> bool:
    """Whether the supervisor has dealt with `task`'s death: restarted it, or stopped for good."""
    return writer._task is not task or not writer.running


async def test_a_dead_writer_turns_the_gateway_unready_and_forwards_nothing(tmp_path: Path) -> None:
    """A writer task killed past its restart budget: /readyz 503, writer_up 0, submissions and reads refused."""
    async with running_stack(tmp_path) as stack:
        writer = stack.server.ledger
        assert writer is not None and await _metric(stack, "exportgate_ledger_writer_up") == 1
        async with asyncio.timeout(10):
            for _ in range(ledger_module.MAX_RESTARTS + 1):
                task = writer._task
                assert task is not None
                task.cancel()
                await wait_until(partial(_replaced, writer, task))
            status, body = await _ready(stack)
            assert (status, body["parts"]["ledger"]) == (503, False)
            assert await _metric(stack, "exportgate_ledger_writer_up") == 0
            assert await _metric(stack, "exportgate_ledger_errors_total") == ledger_module.MAX_RESTARTS + 1
            status, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
            assert (status, body["code"]) == (503, "backend_unavailable")
            assert (await call(stack, "GET", PING, "acme-us"))[0] == 503
            assert stack.standin.requests == []
            assert (await call(stack, "POST", SUBMIT, None, payload=JOB))[0] == 401


async def test_a_stuck_writer_turns_the_gateway_unready_until_it_moves(tmp_path: Path) -> None:
    """Records waiting past ledger.stall_after_s (the writer blocked on the manifest lock) make /readyz 503."""
    keys = Keys(tmp_path)
    options = f"signing_key_file: {keys.private}, checkpoint_every_records: 1, stall_after_s: 0.5"
    async with running_stack(tmp_path, ledger_options=options) as stack:
        # Hold the manifest lock as a `ledger prune` would: the writer blocks publishing its next checkpoint.
        fd = os.open(tmp_path / "ledger" / "test-gw" / ".manifest.lock", os.O_RDWR)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            async with asyncio.timeout(10):
                status, _, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
                assert status == 200  # its decision is durable; its settle record waits
                await wait_until(partial(_ready_is, stack, 503), 10, every=0.05)
                status, body = await _ready(stack)
                assert (status, body["parts"]["ledger"]) == (503, False)
                assert await _metric(stack, "exportgate_ledger_oldest_pending_seconds") >= 0.5
                assert await _metric(stack, "exportgate_ledger_writer_up") == 1
        finally:
            os.close(fd)  # releases the lock
        async with asyncio.timeout(10):
            await wait_until(partial(_ready_is, stack, 200), 10, every=0.05)
            await wait_for_record(stack, "settle", tenant="acme-us")
        assert await _metric(stack, "exportgate_ledger_oldest_pending_seconds") == 0
