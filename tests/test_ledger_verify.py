"""`ledger verify` names the segment, line and kind of each tampering, and passes an untouched ledger."""

import asyncio
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.ledger.signing import Signer
from gateway.core.ledger import canonical, checkpoint_payload, record_hash
from tests.harness import ledger_records
from tests.ledger_kit import Keys, fill, run_cli

INSTANCES = {"gw-a": 60, "gw-b": 40}


@dataclass
class Template:
    """A pristine ledger of two instances in several segments each, its keys and anchor copies."""

    root: Path
    keys: Keys
    other: Keys


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("template")
    keys, other = Keys(base / "keys"), Keys(base / "other-keys")

    async def build() -> None:
        for instance, count in INSTANCES.items():
            await fill(
                base / "ledger", instance, count, segment_max_bytes=3000, signer=keys.signer,
                checkpoint_every_records=8, anchor_dir=base / "anchors",
            )  # fmt: skip

    asyncio.run(build())
    return Template(base, keys, other)


@dataclass
class Ledger:
    """A copy of the template that one test may tamper with."""

    root: Path
    anchors: Path
    keys: Keys
    other: Keys

    def segment(self, instance: str, number: int) -> Path:
        return self.root / instance / f"{number:06d}.jsonl"

    def segments(self, instance: str) -> list[Path]:
        return sorted((self.root / instance).glob("*.jsonl"))

    def lines(self, path: Path) -> list[bytes]:
        return path.read_bytes().splitlines(keepends=True)

    def write(self, path: Path, lines: list[bytes]) -> None:
        path.write_bytes(b"".join(lines))

    def where(self, path: Path, line: int) -> str:
        return f"{path}:{line}"


@pytest.fixture
def ledger(template: Template, tmp_path: Path) -> Ledger:
    shutil.copytree(template.root / "ledger", tmp_path / "ledger")
    shutil.copytree(template.root / "anchors", tmp_path / "anchors")
    return Ledger(tmp_path / "ledger", tmp_path / "anchors", template.keys, template.other)


def verify(capsys: pytest.CaptureFixture[str], ledger: Ledger, *extra: str | Path) -> tuple[int, str]:
    code, out, err = run_cli(capsys, "ledger", "verify", ledger.root, "--public-key", ledger.keys.public, *extra)
    return code, out + err


def first_record_line(ledger: Ledger, path: Path, *, at_least: int = 2) -> int:
    """A line (1-based) of `path` holding a plain record followed by another plain record."""
    records = ledger_records(path)
    for i in range(at_least - 1, len(records) - 1):
        if records[i]["kind"] == "decision" and records[i + 1]["kind"] == "decision":
            return i + 1
    raise AssertionError(f"{path}: no two plain records in a row")


def edit(ledger: Ledger) -> str:
    path = ledger.segment("gw-a", 2)
    n = first_record_line(ledger, path)
    lines = ledger.lines(path)
    record = json.loads(lines[n - 1])
    record["decision_id"] = "someone-else"
    lines[n - 1] = canonical(record) + b"\n"
    ledger.write(path, lines)
    return ledger.where(path, n)


def edit_and_rehash(ledger: Ledger) -> str:
    path = ledger.segment("gw-a", 2)
    n = first_record_line(ledger, path)
    lines = ledger.lines(path)
    record = json.loads(lines[n - 1])
    record["decision_id"] = "someone-else"
    record["hash"] = record_hash(record)
    lines[n - 1] = canonical(record) + b"\n"
    ledger.write(path, lines)
    return ledger.where(path, n + 1)  # the next record no longer links to it


def delete(ledger: Ledger) -> str:
    path = ledger.segment("gw-a", 2)
    n = first_record_line(ledger, path)
    lines = ledger.lines(path)
    del lines[n - 1]
    ledger.write(path, lines)
    return ledger.where(path, n)


def delete_segment(ledger: Ledger) -> str:
    ledger.segment("gw-a", 2).unlink()
    return ledger.where(ledger.segment("gw-a", 3), 1)


def reorder(ledger: Ledger) -> str:
    path = ledger.segment("gw-a", 2)
    n = first_record_line(ledger, path)
    lines = ledger.lines(path)
    lines[n - 1], lines[n] = lines[n], lines[n - 1]
    ledger.write(path, lines)
    return ledger.where(path, n)


def truncate_after_checkpoint(ledger: Ledger) -> str:
    """Drop the newest records, the final checkpoint among them, and the manifest that would tell."""
    path = ledger.segments("gw-a")[-1]
    lines = ledger.lines(path)
    assert json.loads(lines[-1])["kind"] == "checkpoint"
    ledger.write(path, lines[:-3])
    (ledger.root / "gw-a" / "manifest.json").unlink()
    return ledger.where(path, len(lines) - 3)


def truncate_keep_manifest(ledger: Ledger) -> str:
    path = ledger.segments("gw-a")[-1]
    lines = ledger.lines(path)
    ledger.write(path, lines[:-3])
    return ledger.where(path, len(lines) - 3)


def rewrite_from(ledger: Ledger, signer: Signer, key_id: str) -> str:
    """Edit a record and re-hash and re-sign everything after it, as someone without the real key would."""
    path = ledger.segment("gw-a", 2)
    n = first_record_line(ledger, path)
    seq, head, started, found = 0, "", False, ""
    for segment in ledger.segments("gw-a"):
        lines = ledger.lines(segment)
        for i, raw in enumerate(lines):
            record: dict[str, Any] = json.loads(raw)
            if segment == path and i == n - 1:
                record["decision_id"], started = "someone-else", True
            if started:
                record["prev_hash"] = head
                if record["kind"] == "checkpoint":
                    record["head"] = {"seq": seq, "hash": head}
                    record["key_id"] = key_id
                    payload = checkpoint_payload(instance="gw-a", head_seq=seq, head_hash=head, ts=record["ts"],
                                                 key_id=key_id)  # fmt: skip
                    record["sig"] = signer.sign(payload)
                    found = found or ledger.where(segment, i + 1)
                record["hash"] = record_hash(record)
                lines[i] = canonical(record) + b"\n"
            seq, head = record["seq"], record["hash"]
        ledger.write(segment, lines)
    return found


def forge(ledger: Ledger) -> str:
    return rewrite_from(ledger, ledger.other.signer, ledger.keys.signer.key_id)


def forge_with_own_key(ledger: Ledger) -> str:
    return rewrite_from(ledger, ledger.other.signer, ledger.other.signer.key_id)


def garble(ledger: Ledger) -> str:
    path = ledger.segment("gw-a", 2)
    lines = ledger.lines(path)
    lines[1] = b"{not json\n"
    ledger.write(path, lines)
    return ledger.where(path, 2)


def expect_final_checkpoint(ledger: Ledger) -> list[str]:
    final = json.loads((ledger.anchors / "gw-a.json").read_text())
    return ["--expect-head", f"gw-a={final['seq']}:{final['hash']}"]


TAMPERS: list[tuple[str, Callable[[Ledger], str], str, Callable[[Ledger], list[str]]]] = [
    ("edited-record", edit, "edited_record", lambda _: []),
    ("edited-and-rehashed-record", edit_and_rehash, "edited_record", lambda _: []),
    ("deleted-record", delete, "deleted_record", lambda _: []),
    ("deleted-segment", delete_segment, "deleted_record", lambda _: []),
    ("reordered-records", reorder, "reordered_records", lambda _: []),
    ("truncated-tail-expect-head", truncate_after_checkpoint, "truncated_tail", expect_final_checkpoint),
    ("truncated-tail-anchor-dir", truncate_after_checkpoint, "truncated_tail",
     lambda ledger: ["--expect-heads-from", str(ledger.anchors)]),
    ("truncated-tail-manifest", truncate_keep_manifest, "truncated_tail", lambda _: []),
    ("forged-checkpoint", forge, "forged_checkpoint", lambda _: []),
    ("rewritten-and-signed-with-another-key", forge_with_own_key, "wrong_key", lambda _: []),
    ("unparseable-line", garble, "unparseable_line", lambda _: []),
]  # fmt: skip


@pytest.mark.parametrize(("case", "tamper", "kind", "extra"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_tampering_is_named_by_segment_line_and_kind(
    ledger: Ledger,
    capsys: pytest.CaptureFixture[str],
    case: str,
    tamper: Callable[[Ledger], str],
    kind: str,
    extra: Callable[[Ledger], list[str]],
) -> None:
    """Each kind of tampering makes verify exit 1 with `segment:line: kind:` for its first problem."""
    args = extra(ledger)
    where = tamper(ledger)
    code, out = verify(capsys, ledger, *args)
    assert code == 1, out
    assert f"{where}: {kind}:" in out, out
    # the other chain is still checked and reported
    assert any(line.startswith("gw-b: 45 records, 5 checkpoints") for line in out.splitlines())
    assert "FAILED: 1 of 2 chains" in out


def test_truncation_without_a_witness_goes_unseen(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """Cutting the tail and the manifest passes a bare verify: that is what anchors and --expect-head are for."""
    truncate_after_checkpoint(ledger)
    assert verify(capsys, ledger)[0] == 0


def test_wrong_key_is_named(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """Verifying with a key that did not sign the checkpoints fails at the first checkpoint as wrong_key."""
    code, stdout, out = run_cli(capsys, "ledger", "verify", ledger.root, "--public-key", ledger.other.public)
    assert code == 1 and "wrong_key" not in stdout  # problems go to standard error
    first = next(i for i, r in enumerate(ledger_records(ledger.segment("gw-a", 1)), 1) if r["kind"] == "checkpoint")
    assert f"{ledger.segment('gw-a', 1)}:{first}: wrong_key:" in out
    assert f"{ledger.segment('gw-b', 1)}:{first}: wrong_key:" in out


def test_untouched_ledger_verifies_with_counts_and_heads(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """Several rotated segments of two instances verify: exit 0, each chain's counts and head hash printed."""
    assert all(len(ledger.segments(i)) >= 3 for i in INSTANCES)
    code, out = verify(capsys, ledger, "--expect-heads-from", ledger.anchors)
    assert code == 0, out
    for instance in INSTANCES:
        records = [r for p in ledger.segments(instance) for r in ledger_records(p)]
        checkpoints = sum(r["kind"] == "checkpoint" for r in records)
        head = records[-1]
        assert (
            f"{instance}: {len(records)} records, {checkpoints} checkpoints, {len(ledger.segments(instance))} "
            f"segments; head seq {head['seq']} hash {head['hash']}"
        ) in out
    assert f"ok: 2 chains, {sum(len(ledger_records(p)) for i in INSTANCES for p in ledger.segments(i))} records" in out


def test_expect_head_accepts_a_bare_hash(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """`INSTANCE=HASH` (no seq) passes when the chain holds that record."""
    middle = ledger_records(ledger.segment("gw-b", 2))[0]["hash"]
    assert verify(capsys, ledger, "--expect-head", f"gw-b={middle}")[0] == 0
    code, out = verify(capsys, ledger, "--expect-head", f"gw-b={'0' * 63}1")
    assert code == 1 and "truncated_tail" in out


def test_a_missing_chain_is_named(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """An instance named by --expect-head that has no directory fails as missing_chain."""
    shutil.rmtree(ledger.root / "gw-b")
    code, out = verify(capsys, ledger, "--expect-heads-from", ledger.anchors)
    assert code == 1 and f"{ledger.root / 'gw-b'}: missing_chain:" in out


def test_a_torn_last_line_is_a_warning(ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """A half-written last line (a crash before the writer's repair) was never committed: warned, not failed."""
    with ledger.segments("gw-a")[-1].open("ab") as fh:
        fh.write(b'{"kind":"decision","seq":')
    code, out = verify(capsys, ledger)
    assert code == 0 and "torn last line" in out


USAGE = [
    ("key-inside-ledger", lambda ledger: ["--public-key", str(ledger.root / "key.pem")], "inside the ledger"),
    ("bad-expect-head", lambda ledger: ["--expect-head", "gw-a=12"], "expected INSTANCE=HASH"),
    ("not-a-key", lambda ledger: ["--public-key", str(ledger.root.parent / "junk.pem")], "not a PEM public key"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "args", "message"), USAGE, ids=[u[0] for u in USAGE])
def test_usage_errors_exit_2(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], case: str, args: Callable[[Ledger], list[str]], message: str
) -> None:
    """A key kept inside the ledger is never trusted, and malformed expectations are refused."""
    shutil.copy(ledger.keys.public, ledger.root / "key.pem")
    (ledger.root.parent / "junk.pem").write_text("not a key")
    rest = args(ledger)
    if "--public-key" not in rest:
        rest = [*rest, "--public-key", str(ledger.keys.public)]
    code, _, err = run_cli(capsys, "ledger", "verify", ledger.root, *rest)
    assert code == 2 and message in err
