"""The ledger record format: canonical JSON, hash chaining and the decision record body."""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SCHEMA_VERSION = 1
GENESIS = "0" * 64


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash is computed over: sorted keys, no spaces, no NaN."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical record without its own `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def seal(body: Mapping[str, Any], *, instance: str, seq: int, prev_hash: str) -> dict[str, Any]:
    """Chain `body` after `prev_hash` as record `seq` of `instance`."""
    record = {**body, "v": SCHEMA_VERSION, "instance": instance, "seq": seq, "prev_hash": prev_hash}
    record["hash"] = record_hash(record)
    return record


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
