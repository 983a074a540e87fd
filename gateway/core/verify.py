"""Ledger verification as a state machine: feed one chain's lines in order, then read its first finding."""

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gateway.core.ledger import CHECKPOINT, GENESIS, PRUNE, checkpoint_payload, prune_payload, record_hash


class Kind(StrEnum):
    """What is wrong with a chain, named after the tampering or damage it reveals."""

    UNPARSEABLE_LINE = "unparseable_line"
    EDITED_RECORD = "edited_record"
    DELETED_RECORD = "deleted_record"
    REORDERED_RECORDS = "reordered_records"
    WRONG_INSTANCE = "wrong_instance"
    TRUNCATED_TAIL = "truncated_tail"
    HEAD_MISMATCH = "head_mismatch"
    FORGED_CHECKPOINT = "forged_checkpoint"
    WRONG_KEY = "wrong_key"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    BAD_PRUNE_ANCHOR = "bad_prune_anchor"
    MISSING_CHAIN = "missing_chain"


@dataclass(frozen=True, slots=True)
class Where:
    """A line of a segment (line 0: the chain as a whole)."""

    segment: str
    line: int


@dataclass(frozen=True, slots=True)
class Finding:
    """The first problem of a chain."""

    where: Where
    kind: Kind
    detail: str


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """The verifying key, always supplied from outside the ledger: its id and a signature check."""

    key_id: str
    verify: Callable[[bytes, bytes], bool]


@dataclass(frozen=True, slots=True)
class Expected:
    """A record the chain must contain: from --expect-head, an anchor copy, or the manifest."""

    hash: str
    seq: int | None
    source: str


def _short(value: object) -> str:
    return str(value)[:16]


class ChainCheck:
    """One instance's chain; `feed` every line in order, then `finish`. Constant memory."""

    def __init__(self, key: TrustedKey, expected: Sequence[Expected] = ()) -> None:
        self.key = key
        self.instance: str | None = None
        self.seq = 0
        self.hash = GENESIS
        self.start_seq = 0
        self.records = 0
        self.checkpoints = 0
        self.checkpoint: tuple[int, str] | None = None
        self.finding: Finding | None = None
        self.last = Where("-", 0)
        self._gap: tuple[Where, int, int] | None = None
        self._expected = list(expected)
        self._by_seq = {e.seq: e for e in expected if e.seq is not None}
        self._by_hash = {e.hash: e for e in expected}
        self._met: set[str] = set()

    @property
    def done(self) -> bool:
        """True once a problem is certain; the rest of the chain need not be read."""
        return self.finding is not None

    def _fail(self, where: Where, kind: Kind, detail: str) -> None:
        if self.finding is None:
            self.finding = Finding(where, kind, detail)

    def feed(self, where: Where, record: Mapping[str, Any] | None) -> None:
        """Check the next line (None: it is not a JSON object)."""
        if self.finding is not None:
            return
        if self._gap is not None:  # classify a seq jump: is the missing record further on?
            gap_where, missing, seen = self._gap
            if record is not None and record.get("seq") == missing:
                self._fail(
                    gap_where,
                    Kind.REORDERED_RECORDS,
                    f"seq {seen} stands where seq {missing} belongs; seq {missing} is at {where.segment}:{where.line}",
                )
            return
        if record is None:
            self._fail(where, Kind.UNPARSEABLE_LINE, "not a JSON object")
            return
        if record.get("kind") == PRUNE:
            self._prune(where, record)
            return
        if self.instance is None:
            self.instance = str(record.get("instance"))
        if record.get("instance") != self.instance:
            self._fail(
                where, Kind.WRONG_INSTANCE, f"instance {record.get('instance')!r} in the chain of {self.instance!r}"
            )
            return
        if record.get("hash") != record_hash(record):
            self._fail(where, Kind.EDITED_RECORD, f"seq {record.get('seq')}: hash does not match the record's content")
            return
        seq = record.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self._fail(where, Kind.EDITED_RECORD, f"seq {seq!r} is not an integer")
            return
        if seq > self.seq + 1:
            self._gap = (where, self.seq + 1, seq)
            return
        if seq <= self.seq:
            self._fail(where, Kind.REORDERED_RECORDS, f"seq {seq} comes after seq {self.seq}")
            return
        if record.get("prev_hash") != self.hash:
            self._fail(
                where,
                Kind.EDITED_RECORD,
                f"seq {seq}: prev_hash does not match the record before it ({self.last.segment}:{self.last.line}); "
                "one of the two was edited and re-hashed",
            )
            return
        if record.get("kind") == CHECKPOINT and not self._checkpoint(where, record):
            return
        self._accept(where, seq, str(record["hash"]))

    def _accept(self, where: Where, seq: int, hash_: str) -> None:
        self.seq, self.hash, self.last = seq, hash_, where
        self.records += 1
        wanted = self._by_seq.get(seq)
        if wanted is not None and wanted.hash != hash_:
            self._fail(
                where,
                Kind.HEAD_MISMATCH,
                f"seq {seq} has hash {_short(hash_)}…, {wanted.source} says {_short(wanted.hash)}…",
            )
            return
        named = self._by_hash.get(hash_)
        if named is not None and named.seq in (None, seq):
            self._met.add(hash_)

    def _signed(self, sig: object, payload: bytes) -> bool:
        if not isinstance(sig, str):
            return False
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            return False
        return self.key.verify(payload, raw)

    def _bad_signature(self, where: Where, key_id: object, what: str, forged: Kind) -> None:
        if key_id != self.key.key_id:
            self._fail(
                where, Kind.WRONG_KEY, f"{what} is signed by key {key_id!r}, not the given key {self.key.key_id}"
            )
        else:
            self._fail(where, forged, f"{what}: the signature does not verify under key {self.key.key_id}")

    def _checkpoint(self, where: Where, record: Mapping[str, Any]) -> bool:
        head = record.get("head")
        seq = record.get("seq")
        if not isinstance(head, Mapping) or head.get("seq") != self.seq or head.get("hash") != self.hash:
            self._fail(
                where,
                Kind.CHECKPOINT_MISMATCH,
                f"checkpoint seq {seq} attests {head!r}, but the chain before it ends at seq {self.seq} "
                f"hash {_short(self.hash)}…",
            )
            return False
        ts = record.get("ts")
        key_id = record.get("key_id")
        if not isinstance(ts, int | float) or not isinstance(key_id, str):
            self._fail(where, Kind.FORGED_CHECKPOINT, f"checkpoint seq {seq} lacks ts or key_id")
            return False
        payload = checkpoint_payload(
            instance=str(self.instance), head_seq=self.seq, head_hash=self.hash, ts=ts, key_id=key_id
        )
        if not self._signed(record.get("sig"), payload):
            self._bad_signature(where, key_id, f"checkpoint seq {seq}", Kind.FORGED_CHECKPOINT)
            return False
        self.checkpoints += 1
        self.checkpoint = (int(seq), str(record["hash"])) if isinstance(seq, int) else None
        return True

    def _prune(self, where: Where, anchor: Mapping[str, Any]) -> None:
        """A signed prune anchor may open a chain: it names the archived record the rest continues from."""
        if self.records or self.start_seq:
            self._fail(where, Kind.BAD_PRUNE_ANCHOR, "a prune anchor can only start a chain")
            return
        seq, hash_, ts, key_id = anchor.get("seq"), anchor.get("hash"), anchor.get("ts"), anchor.get("key_id")
        segments, archive, instance = anchor.get("segments"), anchor.get("archive"), anchor.get("instance")
        if (
            not isinstance(seq, int)
            or seq < 1
            or not isinstance(hash_, str)
            or not isinstance(ts, int | float)
            or not isinstance(key_id, str)
            or not isinstance(segments, list)
            or not isinstance(archive, str)
            or not isinstance(instance, str)
        ):
            self._fail(where, Kind.BAD_PRUNE_ANCHOR, "malformed prune anchor")
            return
        payload = prune_payload(
            instance=instance,
            seq=seq,
            hash=hash_,
            ts=ts,
            key_id=key_id,
            segments=[str(s) for s in segments],
            archive=archive,
        )
        if not self._signed(anchor.get("sig"), payload):
            self._bad_signature(where, key_id, "prune anchor", Kind.BAD_PRUNE_ANCHOR)
            return
        self.instance, self.seq, self.hash, self.start_seq, self.last = instance, seq, hash_, seq, where

    def finish(self) -> Finding | None:
        """The chain has ended: report a pending gap or an expected record that never came."""
        if self._gap is not None:
            gap_where, missing, seen = self._gap
            span = f"seq {missing}" if seen == missing + 1 else f"seq {missing}..{seen - 1}"
            self._fail(gap_where, Kind.DELETED_RECORD, f"{span} missing before seq {seen}")
        for wanted in self._expected:
            if self.finding is not None:
                break
            if wanted.hash in self._met or (wanted.seq is not None and wanted.seq <= self.start_seq):
                continue
            reach = f"seq {wanted.seq} " if wanted.seq is not None else ""
            self._fail(
                self.last,
                Kind.TRUNCATED_TAIL,
                f"the chain ends at seq {self.seq}; {wanted.source} says it holds {reach}hash {_short(wanted.hash)}…",
            )
        return self.finding
