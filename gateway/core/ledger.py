"""The ledger record format: canonical JSON, hash chaining, checkpoint and prune-anchor payloads."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.core.jsontext import json_utf8

SCHEMA_VERSION = 1
GENESIS = "0" * 64


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash is computed over: sorted keys, no spaces, no NaN, lone surrogates escaped."""
    return json_utf8(json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False))


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical record without its own `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def seal(body: Mapping[str, Any], *, instance: str, seq: int, prev_hash: str) -> dict[str, Any]:
    """Chain `body` after `prev_hash` as record `seq` of `instance`."""
    return sealed_line(body, instance=instance, seq=seq, prev_hash=prev_hash)[0]


def sealed_line(body: Mapping[str, Any], *, instance: str, seq: int, prev_hash: str) -> tuple[dict[str, Any], bytes]:
    """`seal`, and the record's ledger line, from one encoding of its fields.

    Canonical JSON lists keys in sorted order, so the fields sorting before `hash` and those after
    it encode as two halves: joined they are the bytes the hash covers; with `"hash":"..."` between
    them, the line. Equal to `record_hash` and `line_of` (tests/test_ledger.py checks it).
    """
    record = {k: v for k, v in body.items() if k != "hash"}
    record |= {"v": SCHEMA_VERSION, "instance": instance, "seq": seq, "prev_hash": prev_hash}
    lower = canonical({k: v for k, v in record.items() if k < "hash"})[1:-1]
    upper = canonical({k: v for k, v in record.items() if k > "hash"})[1:-1]
    digest = hashlib.sha256(b"{" + b",".join(part for part in (lower, upper) if part) + b"}").hexdigest()
    record["hash"] = digest
    line = b"{" + b",".join(part for part in (lower, b'"hash":"' + digest.encode() + b'"', upper) if part) + b"}\n"
    return record, line


def line_of(record: Mapping[str, Any]) -> bytes:
    """One ledger line: the canonical record and a newline."""
    return canonical(record) + b"\n"


def link_problem(record: Mapping[str, Any], prev_hash: str, prev_seq: int) -> str | None:
    """Why `record` does not follow (prev_seq, prev_hash) correctly, or None."""
    if record.get("hash") != record_hash(record):
        return "hash mismatch (edited record)"
    if record.get("seq") != prev_seq + 1:
        return f"seq {record.get('seq')} follows {prev_seq} (deleted or reordered records)"
    if record.get("prev_hash") != prev_hash:
        return "prev_hash does not match the previous record (deleted or reordered records)"
    return None


# -- checkpoints and prune anchors ----------------------------------------------------------

CHECKPOINT = "checkpoint"
PRUNE = "prune"


def key_id(public_raw: bytes) -> str:
    """A short, stable name for a signing key: the first 16 hex digits of SHA-256 over its raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def checkpoint_payload(*, instance: str, head_seq: int, head_hash: str, ts: float, key_id: str) -> bytes:
    """The bytes a checkpoint signs: the chain head it attests, when, and by which key."""
    return canonical(
        {
            "domain": "exportgate-ledger-checkpoint/1",
            "instance": instance,
            "head_seq": head_seq,
            "head_hash": head_hash,
            "ts": ts,
            "key_id": key_id,
        }
    )


def checkpoint_body(*, head_seq: int, head_hash: str, ts: float, reason: str, key_id: str, sig: str) -> dict[str, Any]:
    """A checkpoint record before sealing; it is chained right after the head it attests."""
    return {
        "kind": CHECKPOINT,
        "ts": ts,
        "reason": reason,
        "key_id": key_id,
        "head": {"seq": head_seq, "hash": head_hash},
        "sig": sig,
    }


def prune_payload(
    *, instance: str, seq: int, hash: str, ts: float, key_id: str, segments: Sequence[str], archive: str
) -> bytes:
    """The bytes a prune anchor signs: the last archived record the remaining chain continues from."""
    return canonical(
        {
            "domain": "exportgate-ledger-prune/1",
            "instance": instance,
            "seq": seq,
            "hash": hash,
            "ts": ts,
            "key_id": key_id,
            "segments": list(segments),
            "archive": archive,
        }
    )


def prune_anchor(
    *, instance: str, seq: int, hash: str, ts: float, key_id: str, segments: Sequence[str], archive: str, sig: str
) -> dict[str, Any]:
    """The prune anchor a pruned chain starts from (kept beside the segments, not in them)."""
    return {
        "kind": PRUNE,
        "v": SCHEMA_VERSION,
        "instance": instance,
        "seq": seq,
        "hash": hash,
        "ts": ts,
        "key_id": key_id,
        "segments": list(segments),
        "archive": archive,
        "sig": sig,
    }
