"""The ledger: hash chains, restarts, torn tails, group commit and "no audit, no action"."""

import asyncio
import hashlib
import json
import random
import re
from pathlib import Path

from gateway.adapters.ledger.writer import LedgerWriter
from gateway.core.jsontext import json_utf8
from gateway.core.ledger import SCHEMA_VERSION, canonical, line_of, prepare, record_hash, sealed_line, template
from tests.harness import (
    JOB,
    SUBMIT,
    Stack,
    call,
    chain_problems,
    ledger_records,
    metrics,
    running_stack,
    wait_for_record,
)


async def test_every_decision_is_chained(tmp_path: Path) -> None:
    """Allows, denies and accesses are all records of one unbroken hash chain."""
    async with running_stack(tmp_path) as stack:
        await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
        await call(stack, "POST", SUBMIT, "fjord-se-cn", payload=JOB)
        await call(stack, "GET", "/slurm/v0.0.38/ping", "acme-us")
        await wait_for_record(stack, "access")  # access records ride the next batch
        records = ledger_records(stack)
        assert chain_problems(records) == []
        assert [r["kind"] for r in records] == ["decision", "settle", "decision", "access"]
        assert [r.get("decision") for r in records] == ["allow", None, "deny", "allow"]
        assert records[1]["decision_id"] == records[0]["decision_id"] and records[1]["job_id"] == "1"
        first = records[0]
        assert first["countries"] == {"location": "US", "headquarters": "US", "parent": "US"}
        assert first["policy"]["name"] == "ai-diffusion-2025" and len(first["policy"]["hash"]) == 64
        assert "Acme" not in json.dumps(records)  # display names (PII) never reach the ledger


async def test_chain_continues_across_restart(tmp_path: Path) -> None:
    """A restarted gateway continues the same instance's chain where it stopped."""
    async with running_stack(tmp_path) as stack:
        await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
    async with running_stack(tmp_path) as stack:
        await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
    records = ledger_records(stack)  # read after shutdown: the settle records have been drained
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert {r["instance"] for r in records} == {"test-gw"}
    assert chain_problems(records) == []


async def test_torn_tail_is_moved_aside_and_recorded(tmp_path: Path) -> None:
    """A half-written last line is set aside, the repair is recorded, and the chain goes on."""
    writer = LedgerWriter(tmp_path, "w1", batch_window_s=0)
    await writer.open()
    for i in range(3):
        await writer.append({"kind": "test", "i": i}, wait=True)
    await writer.close()
    segment = next((tmp_path / "w1").glob("*.jsonl"))
    with segment.open("ab") as fh:
        fh.write(b'{"kind":"test","i":3,"seq":4,"hash":"ab')  # crash mid-write
    writer = LedgerWriter(tmp_path, "w1", batch_window_s=0)
    await writer.open()
    await writer.append({"kind": "test", "i": 4}, wait=True)
    await writer.close()
    records = [json.loads(line) for line in segment.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["test", "test", "test", "repair", "test"]
    assert chain_problems(records) == []
    assert list((tmp_path / "w1").glob("*.torn-*"))


async def test_group_commit_batches_concurrent_records(tmp_path: Path) -> None:
    """Concurrent waited appends share fsyncs: far fewer batches than records, all durable."""
    commits: list[int] = []
    writer = LedgerWriter(tmp_path, "w1", batch_window_s=0.005, on_commit=lambda n, s: commits.append(n))
    await writer.open()
    sealed = await asyncio.gather(*(writer.append({"kind": "test", "i": i}, wait=True) for i in range(200)))
    await writer.close()
    assert sum(commits) == 200
    assert len(commits) < 50
    assert sorted(r["seq"] for r in sealed if r) == list(range(1, 201))


async def _submission_refused_without_ledger(stack: Stack) -> None:
    status, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
    assert (status, body["code"]) == (503, "backend_unavailable")
    assert stack.standin.requests == []


async def test_unwritable_ledger_directory_refuses_submissions(tmp_path: Path) -> None:
    """When the ledger directory cannot be created, the gateway is not ready and forwards no submission."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    async with running_stack(tmp_path, ledger_dir=blocker / "ledger") as stack:
        status, body, _ = await call(stack, "GET", "/readyz", admin=True)
        assert status == 503
        assert body["parts"]["ledger"] is False
        await _submission_refused_without_ledger(stack)


async def test_full_disk_refuses_submissions(tmp_path: Path) -> None:
    """When writes fail (ENOSPC), a submission is refused 503 and never forwarded."""
    segment_dir = tmp_path / "ledger" / "test-gw"
    segment_dir.mkdir(parents=True)
    (segment_dir / "000001.jsonl").symlink_to("/dev/full")
    async with running_stack(tmp_path) as stack:
        await _submission_refused_without_ledger(stack)
        text = await metrics(stack)
        errors = re.search(r"^exportgate_ledger_errors_total (\S+)$", text, re.M)
        assert errors is not None and float(errors.group(1)) >= 1  # the refused record, and any retried follow-ups
        assert 'exportgate_backend_errors_total{backend="ledger"} 1.0' in text


ALPHABET = ["a", "hash", "hasi", "has", "h", "é", "\ud800", "\u2028", "z", "", '"', "\\", "instance", "v", "seq",
            "%b", "%", "\ue000"]  # fmt: skip


def _random_value(rng: random.Random, depth: int = 0) -> object:
    """A value of any JSON shape the ledger takes: nesting, big ints, floats, escapes, lone surrogates, `%`."""
    kind = rng.randrange(6 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2**70, 1.5, 1e-300, 1e23, -0.0])
    if kind in (1, 2):
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(4)))
    if kind == 3:
        return rng.random() * 10 ** rng.randrange(-5, 25)
    if kind == 4:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {
        "".join(rng.choice(ALPHABET) for _ in range(2)): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))
    }


def test_canonical_is_json_dumps_sorted_and_compact() -> None:
    """The record encoding (json's C encoder, built once) writes what json.dumps with the canonical options does."""
    rng = random.Random(11)
    for _ in range(2000):
        value = {"".join(rng.choice(ALPHABET) for _ in range(3)): _random_value(rng) for _ in range(rng.randrange(5))}
        dumped = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        assert canonical(value) == json_utf8(dumped)
    for bad in ({"a": float("nan")}, {"a": float("inf")}, {"a": object()}, {"a": {1: 2, "b": 3}}):
        try:
            canonical(bad)
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"{bad!r} was encoded")


def test_template_fills_to_what_prepare_encodes() -> None:
    """A record filled into its template is byte for byte the record encoded whole, whatever the fields hold."""
    rng = random.Random(13)
    holes = ("decision_id", "ts", "client_ip", "method", "path")
    for i in range(500):
        keys = ("".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 3))) for _ in range(rng.randrange(8)))
        fixed = {key: _random_value(rng) for key in keys if key not in holes}
        made = template(fixed, holes)
        assert made is not None
        values = {hole: _random_value(rng, depth=2) for hole in holes}
        filled = made.fill(values)
        assert filled.runs == prepare({**fixed, **values}).runs
        assert filled.sealed(instance="i-1", seq=i + 1, prev_hash="0" * 64) == prepare({**fixed, **values}).sealed(
            instance="i-1", seq=i + 1, prev_hash="0" * 64
        )
    # A fixed value that holds a hole's placeholder text: no template (the hole could not be found once).
    assert template({"tenant": "\ue000exportgate:path\ue000"}, holes) is None


def test_sealed_line_is_the_canonical_line_and_hash() -> None:
    """One encoding of the fields gives exactly the canonical line and `record_hash`, for any body the ledger takes."""
    rng = random.Random(7)

    def value(depth: int) -> object:
        return _random_value(rng, depth)

    alphabet = ALPHABET
    for i in range(500):
        keys = ("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 3))) for _ in range(rng.randrange(6)))
        body = {key: value(0) for key in keys}
        record, line = sealed_line(body, instance="i-1", seq=i + 1, prev_hash="0" * 64)
        # The definition: the hash over the canonical record without `hash`, the line the canonical record.
        expected = {**body, "v": SCHEMA_VERSION, "instance": "i-1", "seq": i + 1, "prev_hash": "0" * 64}
        expected["hash"] = hashlib.sha256(canonical({k: v for k, v in expected.items() if k != "hash"})).hexdigest()
        assert record == expected
        assert line == canonical(expected) + b"\n" == line_of(record)
        assert record["hash"] == record_hash(record)


async def test_records_nobody_waits_for_are_gathered_until_a_waiter_comes(tmp_path: Path) -> None:
    """Access records wait (up to the access window) to share one fsync; a record someone waits for is
    committed at once, with them, not after the window; so is a follow-up nobody waits for."""
    commits: list[int] = []
    writer = LedgerWriter(tmp_path, "w1", access_window_s=30.0, on_commit=lambda n, s: commits.append(n))
    await writer.open()
    opened = len(commits)
    for i in range(20):
        await writer.append({"kind": "access", "i": i}, wait=False)
    await asyncio.sleep(0.2)
    assert len(commits) == opened  # gathered, not yet written (the window is 30 s)
    sealed = await asyncio.wait_for(writer.append({"kind": "decision", "i": 20}, wait=True), timeout=5.0)
    assert sealed is not None and sealed["seq"] == 21
    assert commits[opened:] == [21]  # the waiter and the 20 before it: one batch
    await writer.append({"kind": "access", "i": 21}, wait=False)
    await writer.append({"kind": "settle", "i": 22}, wait=False)  # a follow-up: not gathered
    for _ in range(500):  # committed without the 30 s window
        if sum(commits[opened:]) == 23:
            break
        await asyncio.sleep(0.01)
    assert commits[opened + 1 :] == [2]
    await writer.close()
    lines = (tmp_path / "w1").glob("*.jsonl")
    records = [json.loads(line) for path in lines for line in path.read_text().splitlines()]
    assert [r["i"] for r in records if "i" in r] == list(range(23))
