"""Segments rotate by size and age, a manifest tracks them, checkpoints are signed, prune keeps the rest verifiable."""

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.ledger.signing import load_public_key, load_signer
from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.config.located import ConfigError
from gateway.config.settings import load_settings
from gateway.core.ledger import GENESIS, checkpoint_payload, link_problem
from tests.harness import ledger_records, wait_until, write_config
from tests.ledger_kit import Keys, fill, run_cli

DAY = 86_400.0


class FakeClock:
    """A writer clock that moves only when the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def assert_chained(records: list[dict[str, Any]], start: tuple[int, str] = (0, GENESIS)) -> None:
    seq, head = start
    for record in records:
        assert link_problem(record, head, seq) is None, record
        seq, head = record["seq"], record["hash"]


async def test_rotation_by_size_continues_the_chain_in_the_next_segment(tmp_path: Path) -> None:
    """Past segment_max_bytes the writer opens the next segment; its first record links to the last one before."""
    keys = Keys(tmp_path)
    await fill(tmp_path / "ledger", "gw", 40, segment_max_bytes=3000, signer=keys.signer, checkpoint_every_records=1000)
    segments = sorted((tmp_path / "ledger" / "gw").glob("*.jsonl"))
    assert [s.name for s in segments[:3]] == ["000001.jsonl", "000002.jsonl", "000003.jsonl"]
    assert len(segments) >= 4
    for closed, following in itertools.pairwise(segments):
        last, first = ledger_records(closed)[-1], ledger_records(following)[0]
        assert last["kind"] == "checkpoint" and last["reason"] == "rotation"
        assert (first["seq"], first["prev_hash"]) == (last["seq"] + 1, last["hash"])
        assert closed.stat().st_size < 3000 + 1000  # at most one batch past the limit
    assert_chained(ledger_records(tmp_path / "ledger", "gw"))


async def test_manifest_lists_segments_with_seq_ranges_and_head(tmp_path: Path) -> None:
    """manifest.json names each segment's first and last seq and the chain's head and latest checkpoint."""
    keys = Keys(tmp_path)
    writer = await fill(tmp_path / "l", "gw", 30, segment_max_bytes=2500, signer=keys.signer)
    directory = tmp_path / "l" / "gw"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["head"] == {"seq": writer.head[0], "hash": writer.head[1]}
    assert manifest["checkpoint"] == {"seq": writer.head[0], "hash": writer.head[1]}  # the close checkpoint
    assert [s["name"] for s in manifest["segments"]] == [p.name for p in sorted(directory.glob("*.jsonl"))]
    for entry in manifest["segments"]:
        records = ledger_records(directory / entry["name"])
        assert (entry["first_seq"], entry["last_seq"]) == (records[0]["seq"], records[-1]["seq"])
        assert entry["last_hash"] == records[-1]["hash"]
    assert not list(directory.glob(".*.tmp"))  # written via temp file and rename


async def test_rotation_by_age(tmp_path: Path) -> None:
    """A segment older than segment_max_age_s is closed before the next write, never while empty."""
    clock = FakeClock(1_700_000_000.0)
    writer = LedgerWriter(tmp_path, "gw", batch_window_s=0, segment_max_age_s=3600, clock=clock)
    await writer.open()
    await writer.append({"kind": "test", "i": 0}, wait=True)
    clock.now += 1800
    await writer.append({"kind": "test", "i": 1}, wait=True)
    clock.now += 1801
    await writer.append({"kind": "test", "i": 2}, wait=True)
    clock.now += 7200
    await writer.close()
    directory = tmp_path / "gw"
    assert [[r["i"] for r in ledger_records(p)] for p in sorted(directory.glob("*.jsonl"))] == [[0, 1], [2]]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["segments"][1]["opened"] == 1_700_000_000.0 + 3601
    assert_chained(ledger_records(tmp_path, "gw"))


async def test_checkpoints_every_n_records_and_at_close(tmp_path: Path) -> None:
    """A signed checkpoint follows every Nth record and closes the chain at shutdown; each signature verifies."""
    keys = Keys(tmp_path)
    seen: list[dict[str, Any]] = []
    writer = LedgerWriter(
        tmp_path / "l", "gw", batch_window_s=0, signer=keys.signer, checkpoint_every_records=5,
        anchor_dir=tmp_path / "anchors", on_checkpoint=seen.append,
    )  # fmt: skip
    await writer.open()
    await asyncio.gather(*(writer.append({"kind": "test", "i": i}, wait=True) for i in range(12)))
    await writer.close()
    records = ledger_records(tmp_path / "l", "gw")
    kinds = "".join("C" if r["kind"] == "checkpoint" else "r" for r in records)
    assert kinds == "rrrrrCrrrrrCrrC"
    assert [r["reason"] for r in records if r["kind"] == "checkpoint"] == ["records", "records", "close"]
    for cp in (r for r in records if r["kind"] == "checkpoint"):
        before = next(r for r in records if r["seq"] == cp["seq"] - 1)
        assert cp["head"] == {"seq": before["seq"], "hash": before["hash"]}
        assert cp["key_id"] == keys.verifier.key_id
        payload = checkpoint_payload(
            instance="gw", head_seq=before["seq"], head_hash=before["hash"], ts=cp["ts"], key_id=cp["key_id"]
        )
        assert keys.verifier.verify(payload, base64.b64decode(cp["sig"]))
    assert [c["seq"] for c in seen] == [12, 15]  # one batch held both 6 and 12: its latest is published
    assert json.loads((tmp_path / "anchors" / "gw.json").read_text()) == records[-1]
    assert_chained(records)


async def test_checkpoint_after_the_interval(tmp_path: Path) -> None:
    """With checkpoint_every_s elapsed and records unsigned, an idle writer signs them."""
    keys = Keys(tmp_path)
    writer = LedgerWriter(tmp_path, "gw", batch_window_s=0, signer=keys.signer, checkpoint_every_s=0.05)
    await writer.open()
    await writer.append({"kind": "test"}, wait=True)
    with contextlib.suppress(AssertionError):
        await wait_until(lambda: writer.head[0] == 2, 1.0)
    await writer.close()
    assert [(r["kind"], r.get("reason")) for r in ledger_records(tmp_path, "gw")] == [
        ("test", None),
        ("checkpoint", "interval"),
    ]


async def test_without_a_key_no_checkpoints_and_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without signing_key_file the ledger still runs, writes no checkpoints and warns once."""
    with caplog.at_level(logging.WARNING, logger="gateway.adapters.ledger"):
        await fill(tmp_path, "gw", 12, checkpoint_every_records=5)
    assert {r["kind"] for r in ledger_records(tmp_path, "gw")} == {"decision"}
    assert len([m for m in caplog.messages if "no signing_key_file" in m]) == 1


async def test_reopen_signs_what_the_last_run_left_unsigned(tmp_path: Path) -> None:
    """A writer that finds records after the last checkpoint checkpoints them when it opens."""
    keys = Keys(tmp_path)
    await fill(tmp_path, "gw", 3)  # an earlier run without a key
    writer = LedgerWriter(tmp_path, "gw", batch_window_s=0, signer=keys.signer)
    await writer.open()
    await writer.append({"kind": "test"}, wait=True)
    await writer.close()
    records = ledger_records(tmp_path, "gw")
    assert [(r["kind"], r.get("reason")) for r in records][3:] == [("checkpoint", "open"), ("test", None),
                                                                   ("checkpoint", "close")]  # fmt: skip


async def test_a_second_writer_for_the_same_instance_is_refused(tmp_path: Path) -> None:
    """Two processes never append to one chain: the second writer cannot open it."""
    first = LedgerWriter(tmp_path, "gw")
    await first.open()
    with pytest.raises(LedgerUnavailable, match="another process"):
        await LedgerWriter(tmp_path, "gw").open()
    await first.close()


def test_keys_generate_writes_a_private_key_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`keys generate --out DIR` writes a 0600 private key whose public half verifies its signatures."""
    code, out, _ = run_cli(capsys, "keys", "generate", "--out", tmp_path / "keys")
    assert code == 0
    private, public = tmp_path / "keys" / "ledger-signing.pem", tmp_path / "keys" / "ledger-signing.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    signer, verifier = load_signer(private), load_public_key(public)
    assert signer.key_id == verifier.key_id and signer.key_id in out
    assert verifier.verify(b"payload", base64.b64decode(signer.sign(b"payload")))
    assert not verifier.verify(b"other", base64.b64decode(signer.sign(b"payload")))
    code, _, err = run_cli(capsys, "keys", "generate", "--private", private, "--public", tmp_path / "p2.pem")
    assert code == 1 and f"{private}: already exists" in err


@pytest.mark.parametrize("inside", ["ledger", "ledger/archive", "."], ids=["same-dir", "inside", "around"])
async def test_prune_refuses_an_archive_inside_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], inside: str
) -> None:
    """An archive in, under or around the ledger would copy segments onto themselves and delete them: refused."""
    keys = Keys(tmp_path)
    ledger = tmp_path / "ledger"
    old = FakeClock(time.time() - 800 * DAY)
    options: dict[str, Any] = {"segment_max_bytes": 2500, "signer": keys.signer, "checkpoint_every_records": 7}
    await fill(ledger, "gw", 30, clock=old, **options)
    await fill(ledger, "gw", 10, start=30, **options)
    before = sorted((p.name, p.read_bytes()) for p in (ledger / "gw").glob("*.jsonl"))
    code, _, err = run_cli(
        capsys, "ledger", "prune", ledger, "--archive-dir", tmp_path / inside, "--signing-key", keys.private
    )
    assert code == 1 and "must lie outside the ledger directory" in err
    assert sorted((p.name, p.read_bytes()) for p in (ledger / "gw").glob("*.jsonl")) == before


async def test_prune_archives_old_segments_and_the_rest_still_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Segments older than the retention move to the archive; a signed prune anchor lets both halves verify."""
    keys = Keys(tmp_path)
    ledger, archive = tmp_path / "ledger", tmp_path / "archive"
    old = FakeClock(time.time() - 800 * DAY)
    options: dict[str, Any] = {"segment_max_bytes": 2500, "signer": keys.signer, "checkpoint_every_records": 7}
    await fill(ledger, "gw", 30, clock=old, **options)
    old_segments = sorted(p.name for p in (ledger / "gw").glob("*.jsonl"))
    await fill(ledger, "gw", 10, start=30, **options)  # today: the old last segment is closed by age
    code, out, err = run_cli(capsys, "ledger", "prune", ledger, "--archive-dir", archive, "--signing-key", keys.private)
    assert code == 0, err
    assert "gw: archived" in out
    assert sorted(p.name for p in (archive / "gw").glob("*.jsonl")) == old_segments
    assert not any((ledger / "gw" / name).exists() for name in old_segments)
    manifest = json.loads((ledger / "gw" / "manifest.json").read_text())
    assert manifest["pruned_through"]["seq"] == ledger_records(archive / "gw" / old_segments[-1])[-1]["seq"]
    code, out, _ = run_cli(capsys, "ledger", "verify", ledger, "--public-key", keys.public)
    assert code == 0, out
    assert "continues from the prune anchor" in out
    code, out, _ = run_cli(capsys, "ledger", "verify", archive, "--public-key", keys.public)
    assert code == 0, out
    code, out, _ = run_cli(capsys, "ledger", "prune", ledger, "--archive-dir", archive, "--signing-key", keys.private)
    assert code == 0 and "no closed segment older than 730 days" in out
    writer = LedgerWriter(ledger, "gw", batch_window_s=0, signer=keys.signer)  # the chain goes on after a prune
    await writer.open()
    await writer.append({"kind": "test"}, wait=True)
    await writer.close()
    assert run_cli(capsys, "ledger", "verify", ledger, "--public-key", keys.public)[0] == 0


async def test_a_forged_prune_anchor_fails_verification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Deleting old segments and writing an unsigned or edited prune anchor is caught."""
    keys = Keys(tmp_path)
    ledger = tmp_path / "ledger"
    old = FakeClock(time.time() - 800 * DAY)
    await fill(ledger, "gw", 20, clock=old, segment_max_bytes=2500, signer=keys.signer)
    await fill(ledger, "gw", 3, start=20, signer=keys.signer)
    run_cli(capsys, "ledger", "prune", ledger, "--archive-dir", tmp_path / "a", "--signing-key", keys.private)
    anchor_file = ledger / "gw" / "prune-anchor.json"
    anchor = json.loads(anchor_file.read_text())
    anchor["seq"] += 1
    anchor_file.write_text(json.dumps(anchor))
    code, _, err = run_cli(capsys, "ledger", "verify", ledger, "--public-key", keys.public)
    assert code == 1
    assert f"{ledger / 'gw' / 'prune-anchor.json'}:1: bad_prune_anchor:" in err  # a finding goes to stderr


BAD_LEDGER_CONFIG = [
    ("zero-segment-size", "segment_max_bytes: 0", "ledger.segment_max_bytes: must be greater than 0"),
    ("negative-interval", "checkpoint_every_s: -1", "ledger.checkpoint_every_s: must be greater than 0"),
    ("string-records", "checkpoint_every_records: many", "ledger.checkpoint_every_records: must be an integer"),
    ("missing-key-file", "signing_key_file: /nonexistent/key.pem", "/nonexistent/key.pem: no such file"),
    ("anchor-inside-ledger", "anchor_dir: LEDGER/anchors", "ledger.anchor_dir: must lie outside the ledger directory"),
    ("unknown-key", "segment_bytes: 10", "ledger.segment_bytes: unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "line", "message"), BAD_LEDGER_CONFIG, ids=[c[0] for c in BAD_LEDGER_CONFIG])
def test_bad_ledger_settings_are_located(tmp_path: Path, case: str, line: str, message: str) -> None:
    """Each bad `ledger:` value is refused as `file:line: field: problem`."""
    ledger = tmp_path / "ledger"
    path = write_config(
        tmp_path, "http://127.0.0.1:1", ledger_dir=ledger, ledger_options=line.replace("LEDGER", str(ledger))
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert any(str(p).startswith(f"{path}:") and message in str(p) for p in caught.value.problems), (
        caught.value.problems
    )


def test_ledger_settings_are_read(tmp_path: Path) -> None:
    """Segment, checkpoint, key and anchor settings reach LedgerSettings."""
    keys = Keys(tmp_path)
    ledger = tmp_path / "ledger"
    options = (
        "segment_max_bytes: 1048576, segment_max_age_s: 3600, checkpoint_every_records: 100, checkpoint_every_s: 5"
    )
    path = write_config(
        tmp_path, "http://127.0.0.1:1", ledger_dir=ledger, ledger_options=options,
        signing_key_file=keys.private, anchor_dir=tmp_path / "anchors",
    )  # fmt: skip
    s = load_settings(path, env={}).ledger
    assert (s.segment_max_bytes, s.segment_max_age_s, s.checkpoint_every_records, s.checkpoint_every_s) == (
        1048576, 3600.0, 100, 5.0)  # fmt: skip
    assert (s.signing_key_file, s.anchor_dir) == (keys.private, tmp_path / "anchors")
