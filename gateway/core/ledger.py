"""The ledger record format: canonical JSON, hash chaining, checkpoint and prune-anchor payloads."""

import bisect
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.jsontext import json_utf8

SCHEMA_VERSION = 1
# json raises these for a body it cannot write (an object, NaN, a cycle, absurd nesting).
UNENCODABLE = (TypeError, ValueError, RecursionError)
GENESIS = "0" * 64


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _text(value: Any) -> str:
    """Canonical JSON text of `value`: what `_ENCODER.encode` writes.

    json's C encoder is built once here, not per call as `encode` does (a third of a small record's cost).
    Without cycle markers: a self-containing value raises RecursionError instead of ValueError.
    """
    if _C_ENCODE is None:  # pragma: no cover - CPython always has the C accelerator
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


_make = getattr(json.encoder, "c_make_encoder", None)  # the C accelerator (not in the typing stubs)
_C_ENCODE: Callable[[Any, int], list[str]] | None = (
    None
    if _make is None
    else _make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, False)
)


def canonical(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash is computed over: sorted keys, no spaces, no NaN, lone surrogates escaped."""
    return json_utf8(_text(record))


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 over the canonical record without its own `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def seal(body: Mapping[str, Any], *, instance: str, seq: int, prev_hash: str) -> dict[str, Any]:
    """Chain `body` after `prev_hash` as record `seq` of `instance`."""
    return sealed_line(body, instance=instance, seq=seq, prev_hash=prev_hash)[0]


def sealed_line(body: Mapping[str, Any], *, instance: str, seq: int, prev_hash: str) -> tuple[dict[str, Any], bytes]:
    """`seal`, and the record's ledger line, from one encoding of its fields (see `Prepared`).

    Equal to `record_hash` and `line_of` (tests/test_ledger.py checks it).
    """
    prepared = prepare(body)
    digest, line = prepared.sealed(instance=instance, seq=seq, prev_hash=prev_hash)
    return prepared.record(instance=instance, seq=seq, prev_hash=prev_hash, digest=digest), line


# The fields sealing adds, in canonical (sorted) order; a body's own fields fall in the gaps between them.
_CHAIN = ("hash", "instance", "prev_hash", "seq", "v")
_CHAIN_KEYS = frozenset(_CHAIN)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A record body encoded once, before its place in the chain is known.

    Canonical JSON lists members in sorted key order, so the body's members fall into six runs around
    the fields sealing adds (`hash`, `instance`, `prev_hash`, `seq`, `v`). Each run is encoded now; sealing
    only joins them with the chain fields: without `hash`, the bytes the hash covers; with it, the line.
    """

    body: Mapping[str, Any]
    runs: tuple[bytes, ...]

    def sealed(self, *, instance: str, seq: int, prev_hash: str) -> tuple[str, bytes]:
        """The record's hash and its ledger line as record `seq` of `instance` after `prev_hash`."""
        r = self.runs
        chain = (
            b'"instance":' + json_utf8(_text(instance)),
            b'"prev_hash":' + json_utf8(_text(prev_hash)),
            b'"seq":' + str(int(seq)).encode(),
            b'"v":' + str(SCHEMA_VERSION).encode(),
        )
        tail = (r[1], chain[0], r[2], chain[1], r[3], chain[2], r[4], chain[3], r[5])
        digest = hashlib.sha256(b"{" + b",".join(part for part in (r[0], *tail) if part) + b"}").hexdigest()
        hash_member = b'"hash":"' + digest.encode() + b'"'
        return digest, b"{" + b",".join(part for part in (r[0], hash_member, *tail) if part) + b"}\n"

    def record(self, *, instance: str, seq: int, prev_hash: str, digest: str) -> dict[str, Any]:
        """The sealed record its line holds, as a dict (what `seal` returns)."""
        record = {k: v for k, v in self.body.items() if k not in _CHAIN_KEYS}
        record |= {"v": SCHEMA_VERSION, "instance": instance, "seq": seq, "prev_hash": prev_hash, "hash": digest}
        return record


def prepare(body: Mapping[str, Any]) -> Prepared:
    """Encode `body` for sealing (its own chain fields, if any, are dropped); raises what json raises."""
    runs: list[dict[str, Any]] = [{}, {}, {}, {}, {}, {}]
    for key, value in body.items():
        if key not in _CHAIN_KEYS:
            runs[bisect.bisect(_CHAIN, key)][key] = value
    return Prepared(body, tuple(canonical(run)[1:-1] if run else b"" for run in runs))


@dataclass(frozen=True, slots=True)
class Template:
    """Records that differ only in a few fields (a tenant's reads of one route), encoded once.

    Each run is kept as a bytes format with a `%b` for each field `fill` encodes into it (named in
    order beside it), so that a record costs the encoding of those fields alone; `fill(values)`
    equals `prepare(fixed | values)` (tests/test_ledger.py checks it).
    """

    fixed: Mapping[str, Any]
    runs: tuple[tuple[bytes, tuple[str, ...]], ...]

    def fill(self, values: Mapping[str, Any]) -> Prepared:
        """The prepared record with `values` (exactly the template's holes) filled in; raises what json raises."""
        encoded = {key: _member_value(value) for key, value in values.items()}
        runs = tuple([form % tuple([encoded[key] for key in keys]) if keys else form for form, keys in self.runs])
        return Prepared({**self.fixed, **values}, runs)


def _member_value(value: Any) -> bytes:
    """Canonical JSON of one value, as `canonical` writes it inside a record (strings and finite floats direct)."""
    kind = type(value)
    if kind is str:
        return json_utf8(json.encoder.encode_basestring(value))
    if kind is float and math.isfinite(value):
        return float.__repr__(value).encode()
    return json_utf8(_text(value))


_HOLE = "\ue000exportgate:{}\ue000"  # a private-use character: no record field ever holds one


def template(fixed: Mapping[str, Any], holes: Sequence[str]) -> Template | None:
    """A template of `fixed` with `holes` (field names not in `fixed`) left to fill; None when a fixed value
    happens to hold a hole's placeholder text, so the holes cannot be found exactly once each."""
    marks = {json_utf8(_text(_HOLE.format(key))): key for key in holes}
    prepared = prepare({**fixed, **{key: _HOLE.format(key) for key in holes}})
    runs: list[tuple[bytes, tuple[str, ...]]] = []
    found = 0
    for run in prepared.runs:
        form, keys = run.replace(b"%", b"%%"), []
        for mark, key in marks.items():
            count = form.count(mark)
            if count:
                found += count
                keys.append((form.index(mark), key))
                form = form.replace(mark, b"%b")
        runs.append((form, tuple(key for _, key in sorted(keys))) if keys else (run, ()))  # no hole: literal
    return Template(fixed, tuple(runs)) if found == len(marks) else None


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
