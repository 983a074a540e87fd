"""Quota snapshots: continuing from one gives exactly the full rebuild; only signed, matching snapshots are used."""

import asyncio
import itertools
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.ledger import snapshot_files
from gateway.adapters.ledger.prune import prune_instance
from gateway.adapters.ledger.reader import records_in_time_order
from gateway.adapters.ledger.writer import LedgerWriter
from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S as WINDOW
from gateway.adapters.quota import DEFAULT_OWNERSHIP_TTL_S as TTL
from gateway.adapters.quota_snapshot import Taken, Trust, take
from gateway.adapters.rebuild import rebuild
from gateway.core.leases import QuotaState
from tests.ledger_kit import Keys, run_cli
from tests.quota_history import Clock, History, write_history

DAY = 86_400.0
START = 1_750_000_000.0
JITTER = 1.5


Params = tuple[float, float]  # idempotency window, ownership TTL
DEFAULTS: Params = (WINDOW, TTL)
SHORT: Params = (25.0, 70.0)  # lapse within a test's history: leases, idempotency records and owners are forgotten


def full(root: Path, now: float, params: Params = DEFAULTS) -> QuotaState:
    """The state a rebuild from the start of every chain gives."""
    return rebuild(root, now, idempotency_window_s=params[0], ownership_ttl_s=params[1])[0]


def trust(root: Path, keys: Keys) -> Trust:
    return Trust(root, (keys.verifier,))


def snap(root: Path, keys: Keys, until: float, now: float, keep: int = 3, params: Params = DEFAULTS) -> Taken:
    return take(root, root, keys.signer, now=now, until=until, keep=keep, window_s=params[0],
                ownership_ttl_s=params[1])  # fmt: skip


def nows(clock: Clock) -> list[float]:
    """Instants to compare states at: now, after leases and idempotency records lapse, after ownership lapses."""
    return [clock.now, clock.now + 2 * DAY, clock.now + 40 * DAY]


async def history(root: Path, keys: Keys, seed: int = 7, count: int = 120) -> tuple[History, Clock]:
    h, clock = History(random.Random(seed)), Clock(START)
    await write_history(root, h, ["gw-a", "gw-b"], count, clock, signer=keys.signer, jitter=JITTER)
    return h, clock


def folded_before(root: Path, until: float) -> int:
    """How many records the rebuild's merge yields before the first one at or after `until`."""
    return next((n for n, r in enumerate(records_in_time_order(root)) if r["ts"] >= until), -1)


def covered_and_read(
    root: Path, keys: Keys, now: float, params: Params = DEFAULTS
) -> tuple[QuotaState, int, Path | None]:
    state, how = rebuild(root, now, trust(root, keys), idempotency_window_s=params[0], ownership_ttl_s=params[1])
    return state, how.read, how.snapshot


@pytest.mark.parametrize(("seed", "params"), [(seed, SHORT if seed % 2 else DEFAULTS) for seed in range(10)])
async def test_snapshot_then_rest_equals_the_full_rebuild(tmp_path: Path, seed: int, params: Params) -> None:
    """For random splits of real multi-chain ledgers (records interleaved in time, chains not strictly in time
    order, a chain added and one left), a snapshot, a second one continuing it, then the rest == full rebuild;
    with short windows, leases, idempotency records and owners lapse along the way and are forgotten."""
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    rng = random.Random(seed)
    h, clock = History(random.Random(seed + 100)), Clock(START)
    first = rng.sample(["gw-a", "gw-b", "gw-c"], rng.randint(1, 3))
    await write_history(root, h, first, rng.randint(30, 150), clock, signer=keys.signer, jitter=JITTER)
    until = rng.uniform(START + 10, clock.now - JITTER)
    one = snap(root, keys, until, clock.now, params=params)
    assert one.written and one.records == folded_before(root, until) > 0
    second = rng.sample(["gw-a", "gw-b", "gw-c", "gw-d"], rng.randint(1, 3))
    await write_history(root, h, second, rng.randint(30, 150), clock, signer=keys.signer, jitter=JITTER)
    latest = clock.now - JITTER  # the second snapshot folds in records up to a random point, or (short windows,
    until = latest if params == SHORT else rng.uniform(latest - 200, latest)  # for something to lapse) to the end
    two = snap(root, keys, until, clock.now, params=params)
    assert two.path is not None and two.records >= one.records
    await write_history(root, h, rng.sample(["gw-a", "gw-d", "gw-e"], 2), rng.randint(0, 80), clock,
                        signer=keys.signer, jitter=JITTER)  # fmt: skip
    total = sum(1 for _ in records_in_time_order(root))
    for now in nows(clock):
        state, read, used = covered_and_read(root, keys, now, params)
        assert used == two.path
        assert read == total - two.records
        assert state == full(root, now, params)
    assert any(c.value for c in full(root, clock.now, params).counters if c.kind == "cumulative")
    if params == SHORT:  # leases lapsed before the snapshot: it holds fewer than were admitted
        held = sum(1 for line in two.path.read_bytes().splitlines() if line.startswith(b'["L"'))
        folded = itertools.islice(records_in_time_order(root), two.records)
        admitted = sum(1 for r in folded if r["kind"] == "decision" and r["decision"] != "deny")
        assert held < admitted


async def test_snapshot_continues_the_previous_one_exactly(tmp_path: Path) -> None:
    """A snapshot written in steps holds the same entries as one written from the start in one go."""
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    _, clock = await history(root, keys, count=150)
    for until in (START + 40, START + 90, clock.now - JITTER):
        stepped = snap(root, keys, until, clock.now)
    other = tmp_path / "other"
    whole = take(root, other, keys.signer, now=clock.now, until=clock.now - JITTER, keep=1, window_s=WINDOW,
                 ownership_ttl_s=TTL)  # fmt: skip
    assert stepped.path is not None and whole.path is not None
    assert stepped.chains == whole.chains and stepped.records == whole.records
    entries = []
    for path in (stepped.path, whole.path):
        with path.open("rb") as fh:
            entries.append(list(snapshot_files.entry_lines(fh, snapshot_files.read_header(path)[1])))
    assert entries[0] == entries[1]


async def test_nothing_new_writes_nothing_and_only_n_files_are_kept(tmp_path: Path, capsys: Any) -> None:
    """`quota snapshot` twice with nothing new writes once; --keep bounds the files."""
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    _, clock = await history(root, keys, count=60)
    args: list[str | Path] = [
        "quota",
        "snapshot",
        "--ledger",
        root,
        "--signing-key",
        keys.private,
        "--now",
        str(clock.now),
    ]
    for until in (START + 20, START + 40, START + 60, START + 80):
        code, out, err = run_cli(capsys, *args, "--until", str(until), "--keep", "2")
        assert code == 0 and "wrote" in out, err
    code, out, _ = run_cli(capsys, *args, "--until", str(START + 80), "--keep", "2")
    assert code == 0 and "still covers the ledger" in out
    assert [p.name for p in snapshot_files.listing(root)] == [
        "quota-snapshot-000004.snap",
        "quota-snapshot-000003.snap",
    ]
    code, out, _ = run_cli(capsys, *args, "--until", str(START - 1))
    assert code == 0  # the newest still covers more than "before START - 1" would
    code, out, err = run_cli(capsys, "quota", "snapshot", "--ledger", root, "--signing-key", tmp_path / "nokey.pem")
    assert code == 1 and "nokey.pem" in err


def _rewrite_line(path: Path, index: int, change: Any) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[index] = change(lines[index])
    path.write_bytes(b"".join(lines))


async def _snapshotted(tmp_path: Path) -> tuple[Keys, Path, Clock, Path]:
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    _, clock = await history(root, keys, count=100)
    taken = snap(root, keys, clock.now - 60, clock.now)
    assert taken.path is not None
    return keys, root, clock, taken.path


def _ignored(root: Path, keys: Keys, clock: Clock, caplog: pytest.LogCaptureFixture, why: str) -> None:
    """The snapshot is ignored with a warning naming why, and the state is the full rebuild's."""
    caplog.set_level(logging.WARNING, "gateway.adapters.quota_snapshot")
    for now in nows(clock):
        state, read, used = covered_and_read(root, keys, now)
        assert used is None and read == sum(1 for _ in records_in_time_order(root))
        assert state == full(root, now)
    assert "ignored" in caplog.text and why in caplog.text, caplog.text


async def test_a_tampered_entry_is_caught_by_the_signed_digest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lowering a cumulative debit in a snapshot's entry lines voids it."""
    keys, root, clock, path = await _snapshotted(tmp_path)

    def lower(line: bytes) -> bytes:
        entry = json.loads(line)
        entry[7] = [0.0 for _ in entry[7]]  # a lease's debits
        return json.dumps(entry).encode() + b"\n"

    lines = path.read_bytes().splitlines()
    _rewrite_line(path, next(i for i, line in enumerate(lines) if line.startswith(b'["L"')), lower)
    _ignored(root, keys, clock, caplog, "do not match the signed digest")


async def test_an_edited_header_fails_its_signature(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Moving a snapshot's attested position (so that records would be skipped) breaks its signature."""
    keys, root, clock, path = await _snapshotted(tmp_path)

    def skip_ahead(line: bytes) -> bytes:
        fields = json.loads(line)
        fields["records"] += 1
        return json.dumps(fields).encode() + b"\n"

    _rewrite_line(path, -1, skip_ahead)
    _ignored(root, keys, clock, caplog, "signature does not verify")


async def test_a_snapshot_signed_with_another_key_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A forger's snapshot, well formed and signed, but not with the ledger key, is ignored."""
    keys, root, clock, path = await _snapshotted(tmp_path)
    path.unlink()
    forger = Keys(tmp_path / "forger")
    assert snap(root, forger, clock.now - 60, clock.now).written
    _ignored(root, keys, clock, caplog, f"signed by key '{forger.signer.key_id}'")


async def test_an_unsigned_snapshot_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Dropping the signature does not make a snapshot trusted."""
    keys, root, clock, path = await _snapshotted(tmp_path)
    _rewrite_line(path, -1, lambda line: json.dumps({**json.loads(line), "sig": ""}).encode() + b"\n")
    _ignored(root, keys, clock, caplog, "signature does not verify")


async def test_a_rewritten_chain_voids_the_snapshot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A chain rewritten from scratch (same instance, same length, other records) no longer holds the attested
    record: the snapshot is ignored rather than continued with the new chain's tail."""
    keys, root, clock, _ = await _snapshotted(tmp_path)
    count = sum(1 for r in records_in_time_order(root) if r["instance"] == "gw-a")
    shutil.rmtree(root / "gw-a")
    h = History(random.Random(99))
    await write_history(root, h, ["gw-a"], count, Clock(START), signer=None, checkpoint_every_s=1e9)
    _ignored(root, keys, clock, caplog, "does not hold seq")


async def test_a_truncated_chain_voids_the_snapshot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Cutting a chain before the attested record voids the snapshot."""
    keys, root, clock, path = await _snapshotted(tmp_path)
    header, _ = snapshot_files.read_header(path)
    assert header is not None
    seq = header["chains"]["gw-b"]["seq"]
    segment = sorted((root / "gw-b").glob("*.jsonl"))[-1]
    segment.write_bytes(b"".join(segment.read_bytes().splitlines(keepends=True)[: seq - 3]))
    (root / "gw-b" / "manifest.json").unlink()
    _ignored(root, keys, clock, caplog, "does not hold seq")


async def _append(root: Path, keys: Keys, clock: Clock, instance: str, body: dict[str, Any]) -> None:
    writer = LedgerWriter(root, instance, batch_window_s=0, signer=keys.signer, clock=clock)
    await writer.open()
    await writer.append(body, wait=True)
    await writer.close()


async def test_a_record_sorting_before_the_snapshot_voids_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A chain whose next record after the snapshot has a ts before the snapshot's last folded record: the
    snapshot would no longer be a prefix of the full rebuild's order, so it is ignored. Behind records the
    snapshot left out, such a record changes nothing: the snapshot is still used, and still exact."""
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    _, clock = await history(root, keys, count=100)
    partial = snap(root, keys, clock.now - 60, clock.now)
    late = {"kind": "refund", "decision_id": "d000001", "ts": START + 1.0}
    await _append(root, keys, clock, "gw-b", late)
    state, _, used = covered_and_read(root, keys, clock.now)
    assert used == partial.path and state == full(root, clock.now)
    assert snap(root, keys, clock.now + 1, clock.now, keep=1).written  # every record folded in; the only file
    await _append(root, keys, clock, "gw-b", late)
    _ignored(root, keys, clock, caplog, "before the snapshot's last record")


async def test_an_older_snapshot_serves_when_the_newest_is_void(tmp_path: Path) -> None:
    """With the newest snapshot damaged, the one before it is continued from."""
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    _, clock = await history(root, keys, count=100)
    older = snap(root, keys, START + 50, clock.now)
    newest = snap(root, keys, clock.now - 10, clock.now)
    assert newest.path is not None and older.path is not None
    _rewrite_line(newest.path, -2, lambda line: line.replace(b'"S"', b'"X"'))  # the last entry
    state, read, used = covered_and_read(root, keys, clock.now)
    assert used == older.path and read == sum(1 for _ in records_in_time_order(root)) - older.records
    assert state == full(root, clock.now)


async def test_without_a_key_no_snapshot_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`quota rebuild` reads every chain unless given the key the snapshot must be signed with."""
    keys, root, clock, path = await _snapshotted(tmp_path)
    now = str(clock.now)
    code, out, _ = run_cli(capsys, "quota", "rebuild", "--ledger", root, "--now", now)
    assert code == 0 and "quota snapshots are not used" in out
    code, with_key, _ = run_cli(capsys, "quota", "rebuild", "--ledger", root, "--now", now, "--public-key", keys.public)
    assert code == 0 and f"read from quota snapshot {path}" in with_key
    assert out.splitlines()[0] == with_key.splitlines()[0]  # the same counters either way
    code, _, err = run_cli(capsys, "quota", "rebuild", "--ledger", root, "--public-key", tmp_path / "none.pem")
    assert code == 1 and "none.pem" in err


# -- prune ---------------------------------------------------------------------------------------


async def _old_and_new(tmp_path: Path) -> tuple[Keys, Path, Clock]:
    """Two chains: 800-day-old segments full of debits, then today's records."""
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    h, clock = History(random.Random(3)), Clock(time.time() - 800 * DAY)
    options: dict[str, Any] = {"segment_max_bytes": 6000}
    await write_history(root, h, ["gw-a", "gw-b"], 160, clock, signer=keys.signer, jitter=JITTER, **options)
    clock.now = time.time() - 120
    await write_history(root, h, ["gw-a", "gw-b"], 20, clock, signer=keys.signer, **options)
    return keys, root, clock


async def test_prune_keeps_cumulative_counters_through_a_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Pruning writes a snapshot first; the rebuild after the prune continues from it and loses no training
    operations or budget, while a rebuild that may not use it (no key) misses what the archive took away."""
    keys, root, clock = await _old_and_new(tmp_path)
    before = full(root, clock.now)
    archive = tmp_path / "archive"
    prune: list[str | Path] = ["ledger", "prune", root, "--archive-dir", archive, "--signing-key", keys.private]
    code, out, err = run_cli(capsys, *prune, "--dry-run")
    assert code == 0 and "quota snapshot (not written on a dry run) would cover" in out and "would archive" in out
    assert not snapshot_files.listing(root) and not archive.exists()
    code, out, err = run_cli(capsys, *prune)
    assert code == 0, err
    assert "quota snapshot" in out and "gw-a: archived" in out and "gw-b: archived" in out
    assert snapshot_files.listing(root)
    state, read, used = covered_and_read(root, keys, clock.now)
    assert used is not None and state == before
    assert read < 60  # today's records; the old ones are only in the snapshot (and the archive)
    caplog.set_level(logging.ERROR, "gateway.adapters.rebuild")
    cumulative = {c.key: c.value for c in full(root, clock.now).counters if c.kind == "cumulative"}
    assert cumulative != {c.key: c.value for c in before.counters if c.kind == "cumulative"}
    assert "no quota snapshot covers them" in caplog.text
    code, out, _ = run_cli(capsys, "ledger", "verify", root, "--public-key", keys.public)
    assert code == 0 and "ok: 2 chains" in out  # snapshot files are not chains


async def test_prune_refuses_when_no_snapshot_can_cover(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ledger line no snapshot can attest (an object without seq and hash) stops the prune before anything moves."""
    keys, root, _ = await _old_and_new(tmp_path)
    first = sorted((root / "gw-b").glob("*.jsonl"))[0]
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join([*lines[:3], b'{"kind":"note","ts":1}\n', *lines[3:]]))
    before = sorted(p.name for p in root.rglob("*.jsonl"))
    code, _, err = run_cli(
        capsys, "ledger", "prune", root, "--archive-dir", tmp_path / "archive", "--signing-key", keys.private
    )
    assert code == 1 and "gw-b: a record without seq and hash (ts 1); nothing pruned" in err
    assert sorted(p.name for p in root.rglob("*.jsonl")) == before and not snapshot_files.listing(root)


async def test_prune_holds_back_segments_no_snapshot_covers(tmp_path: Path) -> None:
    """Old segments past the covered seq stay where they are."""
    keys, root, _ = await _old_and_new(tmp_path)
    segments = sorted((root / "gw-a").glob("*.jsonl"))
    first_end = json.loads(segments[0].read_bytes().splitlines()[-1])["seq"]
    held: list[str] = []
    pruned = prune_instance(root / "gw-a", tmp_path / "archive", keys.signer, cutoff=time.time() - 730 * DAY,
                            now=time.time(), covered_through=first_end, held_back=held)  # fmt: skip
    assert pruned is not None and pruned.segments == (segments[0].name,)
    assert held == [segments[1].name] and segments[1].exists()


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "problem"),
    [
        ("snapshot_dir: LEDGER/snaps", "ledger.snapshot_dir: must be the ledger directory itself or lie outside it"),
        ("snapshot_keep: 0", "ledger.snapshot_keep: must be at least 1"),
        ("snapshot_every_s: -5", "ledger.snapshot_every_s: must be 0 (only at shutdown) or more"),
        ("snapshot_dir: ANCHORS, anchor_dir: ANCHORS", "ledger.snapshot_dir: must differ from anchor_dir"),
    ],
    ids=["inside-ledger", "keep-zero", "negative-interval", "anchor-dir"],
)
def test_snapshot_settings_are_checked(tmp_path: Path, option: str, problem: str) -> None:
    from gateway.config.located import ConfigError
    from gateway.config.settings import load_settings
    from tests.harness import write_config

    option = option.replace("LEDGER", str(tmp_path / "ledger")).replace("ANCHORS", str(tmp_path / "anchors"))
    with pytest.raises(ConfigError) as raised:
        load_settings(write_config(tmp_path, "http://127.0.0.1:1", ledger_options=option), env={})
    assert any(problem in str(p) for p in raised.value.problems), raised.value.problems


def test_snapshot_settings_default_to_the_ledger_directory(tmp_path: Path) -> None:
    from gateway.config.settings import load_settings
    from tests.harness import write_config

    settings = load_settings(write_config(tmp_path, "http://127.0.0.1:1"), env={})
    s = settings.ledger
    assert (s.snapshots, s.snapshot_every_s, s.snapshot_keep) == (tmp_path / "ledger", 300.0, 3)


# -- the gateway ---------------------------------------------------------------------------------


async def test_a_memory_gateway_snapshots_while_serving_and_at_shutdown_then_starts_from_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Periodic and shutdown snapshots (child processes); the restarted gateway reads only what came after the
    newest one and holds the same counters and ownership."""
    from gateway.core.leases import QUOTA_SLOT
    from tests.harness import JOB, SUBMIT, call, running_stack, wait_until
    from tests.harness import Clock as GatewayClock

    keys, clock = Keys(tmp_path), GatewayClock()
    options: dict[str, Any] = {"clock": clock, "signing_key_file": keys.private,
                               "ledger_options": "snapshot_every_s: 0.2"}  # fmt: skip
    ledger = tmp_path / "ledger"
    caplog.set_level(logging.INFO, "gateway")
    async with running_stack(tmp_path, **options) as stack:
        for _ in range(2):
            assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[0] == 200
        clock.advance(60)  # the submissions are now older than the snapshot's settling time
        await wait_until(lambda: bool(snapshot_files.listing(ledger)), within_s=30, every=0.1)
        periodic = snapshot_files.listing(ledger)
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[0] == 200
        clock.advance(60)
        store = stack.server.store
        assert store is not None
        before = await store.counter_value(QUOTA_SLOT, "tenant:acme-us", clock())
        assert before == 3 * 15832
        owner = await store.owner_of("slurm", "3")
    written = snapshot_files.listing(ledger)
    assert len(written) == len(periodic) + 1  # the one at shutdown covers the third submission too
    header, _ = snapshot_files.read_header(written[0])
    assert header is not None and header["records"] > 3 * 2 and header["key_id"] == keys.signer.key_id
    caplog.clear()
    async with running_stack(tmp_path, **options) as stack:
        assert f"from quota snapshot {written[0].name} ({header['records']} records) and" in caplog.text
        store = stack.server.store
        assert store is not None
        assert await store.counter_value(QUOTA_SLOT, "tenant:acme-us", clock()) == before
        assert await store.owner_of("slurm", "3") == owner is not None
    state, _, used = covered_and_read(ledger, keys, clock())
    assert used is not None and state == full(ledger, clock())


async def test_a_gateway_without_a_signing_key_writes_no_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No key, no snapshot: nothing could tell the gateway's from a forged one. Start-up says so."""
    from tests.harness import JOB, SUBMIT, call, running_stack
    from tests.harness import Clock as GatewayClock

    clock = GatewayClock()
    caplog.set_level(logging.WARNING, "gateway")
    async with running_stack(tmp_path, clock=clock, ledger_options="snapshot_every_s: 0.1") as stack:
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[0] == 200
        clock.advance(120)
        await asyncio.sleep(0.5)
    assert not snapshot_files.listing(tmp_path / "ledger")
    assert "no quota snapshots: start-up reads the whole ledger" in caplog.text


async def test_a_chain_continuing_at_the_bounds_own_ts_keeps_the_snapshot(tmp_path: Path) -> None:
    """The next record of the chain the bound came from, with the same ts (a settle written in the same
    instant as its decision), sorts after it: the snapshot is used."""
    keys, root = Keys(tmp_path), tmp_path / "ledger"
    clock = Clock(START)
    await _append(root, keys, clock, "gw-a", {"kind": "note", "ts": START})
    taken = snap(root, keys, START + 1, START)
    assert taken.written and taken.records == 2  # the note and the closing checkpoint
    await _append(root, keys, clock, "gw-a", {"kind": "note", "ts": START})
    await _append(root, keys, clock, "gw-b", {"kind": "note", "ts": START})  # gw-b > gw-a: after it too
    state, read, used = covered_and_read(root, keys, START)
    assert used == taken.path and read == 4 and state == full(root, START)


async def test_a_snapshot_child_past_its_time_is_stopped_and_leaves_nothing(tmp_path: Path) -> None:
    """At shutdown the snapshot gets a time budget: a child still running then is killed, no file half-written."""
    from gateway.adapters.snapshot_task import SnapshotTask

    keys, root = Keys(tmp_path), tmp_path / "ledger"
    _, clock = await history(root, keys, count=30)
    task = SnapshotTask(ledger_dir=root, snapshot_dir=root, signing_key_file=keys.private, keep=3, every_s=0,
                        clock=clock, head=lambda: 1, settle_s=0)  # fmt: skip
    assert await task.run_once(timeout_s=0.05) is False  # a Python child cannot even start in 50 ms
    assert not snapshot_files.listing(root) and not list(root.glob(".quota-snapshot-*.tmp"))
    clock.now += 1  # its records are all older than `until` now
    assert await task.run_once() is True and len(snapshot_files.listing(root)) == 1
    clock.now += 60
    assert await task.run_once() is True and task.runs == 1  # the chain has not moved: no second child


async def test_a_rotated_key_continues_the_old_keys_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`quota snapshot --signing-key NEW --public-key OLD.pub` carries the state over to the new key, so a
    gateway with the new key starts from it (and nothing signed by the old key alone is trusted by it)."""
    old, new = Keys(tmp_path / "old"), Keys(tmp_path / "new")
    root = tmp_path / "ledger"
    _, clock = await history(root, old, count=80)
    first = snap(root, old, clock.now - 20, clock.now)
    assert first.path is not None and covered_and_read(root, new, clock.now)[2] is None
    rotate: list[str | Path] = ["quota", "snapshot", "--ledger", root, "--signing-key", new.private, "--public-key",
                                old.public, "--until", str(clock.now + 1), "--now", str(clock.now)]  # fmt: skip
    code, out, err = run_cli(capsys, *rotate)
    assert code == 0 and f"{first.records} new" not in out and "wrote" in out, err
    state, read, used = covered_and_read(root, new, clock.now)
    assert used is not None and used != first.path and read == 0 and state == full(root, clock.now)
