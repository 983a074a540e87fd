"""Sealing a batch into the hash chain, with a signed checkpoint after every N records and when the interval is up."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.adapters.ledger.pending import Item, LedgerUnavailable, Mark
from gateway.adapters.ledger.signing import Signer
from gateway.core.ledger import (
    GENESIS,
    UNENCODABLE,
    Prepared,
    checkpoint_body,
    checkpoint_payload,
    line_of,
    prepare,
    seal,
)


@dataclass(frozen=True, slots=True)
class Checkpoints:
    """Who signs this instance's checkpoints (None: nobody) and how often."""

    instance: str
    signer: Signer | None
    every_records: int
    every_s: float

    def make(self, seq: int, head: str, now: float, reason: str) -> dict[str, Any]:
        """A signed checkpoint over (`seq`, `head`), sealed as the record after it."""
        assert self.signer is not None
        key_id = self.signer.key_id
        sig = self.signer.sign(
            checkpoint_payload(instance=self.instance, head_seq=seq, head_hash=head, ts=now, key_id=key_id)
        )
        body = checkpoint_body(head_seq=seq, head_hash=head, ts=now, reason=reason, key_id=key_id, sig=sig)
        return seal(body, instance=self.instance, seq=seq + 1, prev_hash=head)


@dataclass(slots=True)
class Sealed:
    """One batch sealed in memory; the writer's state moves to it only once it is on disk."""

    count: int = 0  # records sealed, checkpoints included
    first_seq: int | None = None
    lines: list[bytes] = field(default_factory=list)  # each record's ledger line, encoded once
    results: list[dict[str, Any] | None] = field(default_factory=list)
    rejected: set[int] = field(default_factory=set)  # batch positions whose body could not be encoded
    seq: int = 0
    head: str = GENESIS
    since: int = 0
    cp_time: float = 0.0
    checkpoint: dict[str, Any] | None = None


def seal_batch(
    batch: list[Item],
    now: float,
    out: Sealed,
    checkpoints: Checkpoints,
    unencodable: Callable[[Mapping[str, Any], BaseException], LedgerUnavailable],
    trailing: str | None = None,
) -> Sealed:
    """Chain the batch onto `out` (the chain so far), inserting a checkpoint after every N records and when the
    interval is up; a body that cannot be encoded is refused alone, its caller answered `unencodable(...)`."""

    def add(seq: int, digest: str, line: bytes) -> None:
        out.lines.append(line)
        out.count += 1
        out.first_seq = seq if out.first_seq is None else out.first_seq
        out.seq, out.head = seq, digest

    def checkpoint(reason: str) -> None:
        if checkpoints.signer is not None and out.since > 0:
            out.checkpoint = record = checkpoints.make(out.seq, out.head, now, reason)
            add(record["seq"], record["hash"], line_of(record))
            out.since, out.cp_time = 0, now

    instance = checkpoints.instance
    for position, (body, future, _) in enumerate(batch):
        if isinstance(body, Mark):
            checkpoint(body.reason)
            out.results.append(None)
            continue
        seq, prev_hash = out.seq + 1, out.head
        try:
            prepared = body if isinstance(body, Prepared) else prepare(body)
            digest, line = prepared.sealed(instance=instance, seq=seq, prev_hash=prev_hash)
        except UNENCODABLE as exc:  # this body's fault, not the writer's: refuse it alone
            out.rejected.add(position)
            out.results.append(None)
            error = unencodable(body.body if isinstance(body, Prepared) else body, exc)
            if future is not None and not future.done():
                future.set_exception(error)
            continue
        add(seq, digest, line)
        # Only a caller that waits gets the sealed record back; nobody reads it for the others.
        record = prepared.record(instance=instance, seq=seq, prev_hash=prev_hash, digest=digest) if future else None
        out.results.append(record)
        out.since += 1
        if out.since >= checkpoints.every_records:
            checkpoint("records")
    if trailing is not None or now - out.cp_time >= checkpoints.every_s:
        checkpoint(trailing or "interval")
    return out
