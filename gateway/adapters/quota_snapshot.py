"""Quota snapshots: continue the rebuild from the newest snapshot that checks out, and write new ones.

A snapshot is trusted only when its signature verifies with a ledger key the caller supplies
(the gateway's own signing key, or public keys given to the CLI), its parameters match, every
chain it names still holds the attested (seq, hash), and every chain's first record after it
sorts after everything it folded in (`gateway.core.snapshot.follows`). Anything else is
ignored with a warning and the next older snapshot is tried, then the whole ledger is read.
"""

import base64
import binascii
import contextlib
import hashlib
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import snapshot_files
from gateway.adapters.ledger.cursor import NotInChain, after
from gateway.adapters.ledger.reader import (
    Located,
    every_chain,
    instance_dirs,
    merge_key,
    merged,
    prune_anchor,
    read_instance,
)
from gateway.adapters.ledger.signing import PublicKey, Signer
from gateway.core.rebuild import Builder
from gateway.core.snapshot import (
    Cover,
    Decoder,
    Header,
    MergeKey,
    Position,
    SnapshotFormatError,
    encode_entries,
    encode_line,
    follows,
    header,
    payload,
    read_header,
)

log = logging.getLogger(__name__)

# Records are folded into a snapshot only once their `ts` is this old: a record reaches the ledger
# moments after its `ts` (a decision after its reservation, a follow-up when it happens), and one
# appended later with an older `ts` than a snapshot's bound makes that snapshot unusable.
SETTLE_S = 30.0


class SnapshotRejected(Exception):
    """Why a snapshot file cannot be continued from; it is then ignored."""


class CannotSnapshot(Exception):
    """The ledger holds a line no snapshot can attest (a record without seq or hash)."""


@dataclass(frozen=True, slots=True)
class Trust:
    """Where snapshots are, and the keys a snapshot must be signed with to be used."""

    directory: Path
    keys: tuple[PublicKey, ...]


@dataclass(slots=True)
class Resumed:
    """A rebuild ready to continue: the builder, what it covers, and where each chain continues."""

    builder: Builder
    chains: dict[str, Position]
    bound: MergeKey | None
    records: int
    starts: dict[str, Iterator[Located]]
    source: Path | None = None  # the snapshot continued from; None: the ledger's start
    read: int = 0  # records folded in after `source`


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What the start-up rebuild did: the snapshot it continued from (if any) and the records it read."""

    snapshot: Path | None
    from_snapshot: int
    read: int
    rejected: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.snapshot is None:
            return f"the whole ledger ({self.read} records)"
        return f"quota snapshot {self.snapshot.name} ({self.from_snapshot} records) and {self.read} later records"


def fresh(root: Path, window_s: float, ownership_ttl_s: float) -> Resumed:
    """A rebuild from the start of every chain."""
    return Resumed(Builder(window_s, ownership_ttl_s), {}, None, 0, every_chain(root))


def _verified(path: Path, trust: Trust, window_s: float, ownership_ttl_s: float) -> tuple[Header, int]:
    fields, length = snapshot_files.read_header(path)
    if fields is None:
        raise SnapshotRejected("its last line is not a snapshot header (a partial or foreign file)")
    try:
        head = read_header(fields)
    except SnapshotFormatError as exc:
        raise SnapshotRejected(str(exc)) from None
    key = next((k for k in trust.keys if k.key_id == head.key_id), None)
    if key is None:
        raise SnapshotRejected(f"signed by key {head.key_id[:16]!r}, not by {', '.join(k.key_id for k in trust.keys)}")
    try:
        signature = base64.b64decode(str(fields.get("sig", "")), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    if not signature or not key.verify(payload(fields), signature):
        raise SnapshotRejected("its signature does not verify (edited or forged)")
    if (head.window_s, head.ownership_ttl_s) != (window_s, ownership_ttl_s):
        raise SnapshotRejected("it was taken with another idempotency window or ownership TTL")
    return head, length


def _peek(lines: Iterator[Located]) -> tuple[dict[str, Any] | None, Iterator[Located]]:
    """The first committed record of `lines`, and `lines` unconsumed."""
    seen: list[Located] = []
    for loc in lines:
        seen.append(loc)
        if loc.record and loc.complete:
            return loc.record, itertools.chain(seen, lines)
    return None, iter(seen)


def resume(root: Path, path: Path, trust: Trust, window_s: float, ownership_ttl_s: float) -> Resumed:
    """Continue from the snapshot at `path`; SnapshotRejected if it cannot be trusted or continued from."""
    head, length = _verified(path, trust, window_s, ownership_ttl_s)
    cover = head.cover
    dirs = {d.name: d for d in instance_dirs(root)}
    starts: dict[str, Iterator[Located]] = {}
    for name, pos in cover.chains.items():
        if name not in dirs:
            raise SnapshotRejected(f"chain {name!r} it covers is not in {root}")
        try:
            starts[name] = after(dirs[name], pos.seq, pos.hash)
        except NotInChain as exc:
            raise SnapshotRejected(f"chain {name!r} does not hold seq {pos.seq} as attested: {exc}") from None
    for name, directory in dirs.items():
        first, starts[name] = _peek(starts[name] if name in starts else read_instance(directory))
        if first is None:
            continue
        ts = merge_key(first)
        if not follows(cover.bound, ts, name):
            raise SnapshotRejected(
                f"chain {name!r} continues with seq {first.get('seq')} at ts {ts!r}, before the snapshot's last record"
            )
    with path.open("rb") as fh:  # the digest is checked before any entry is parsed
        digest, count = hashlib.sha256(), 0
        for line in snapshot_files.entry_lines(fh, length):
            digest.update(line)
            count += 1
        if digest.hexdigest() != head.state_sha256 or count != head.entries:
            raise SnapshotRejected("its entries do not match the signed digest (edited or truncated)")
        decoder, lines = Decoder(window_s, ownership_ttl_s), snapshot_files.entry_lines(fh, length)
        try:
            while batch := list(itertools.islice(lines, 10_000)):
                decoder.feed(batch)
            builder = decoder.finish()
        except SnapshotFormatError as exc:
            raise SnapshotRejected(str(exc)) from None
    return Resumed(builder, dict(cover.chains), cover.bound, cover.records, starts, path)


def newest(
    root: Path, trust: Trust, window_s: float, ownership_ttl_s: float, rejected: list[str] | None = None
) -> Resumed | None:
    """The newest snapshot in `trust.directory` that can be continued from, or None (each rejection is logged)."""
    for path in snapshot_files.listing(trust.directory):
        try:
            return resume(root, path, trust, window_s, ownership_ttl_s)
        except (SnapshotRejected, OSError) as exc:
            log.warning("quota snapshot %s ignored: %s", path, exc)
            if rejected is not None:
                rejected.append(f"{path.name}: {exc}")
    return None


def fold(resumed: Resumed, until: float | None = None, *, attest: bool = False) -> Resumed:
    """Fold the records after `resumed` into its builder, in the rebuild's order; those from `until` on stay out.

    With `attest`, keep each chain's last (seq, hash) and the bound, for a snapshot (CannotSnapshot if a
    record has no seq or hash); `resumed` is used up either way.
    """
    b, chains, bound, read = resumed.builder, resumed.chains, resumed.bound, 0
    for ts, name, record in merged(resumed.starts):
        if until is not None and ts >= until:
            break
        b.apply(record)
        read += 1
        if attest:
            seq, hash_ = record.get("seq"), record.get("hash")
            if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(hash_, str):
                raise CannotSnapshot(f"{name}: a record without seq and hash (ts {ts!r})")
            chains[name] = Position(seq, hash_)
            if bound is None or (ts, name) > bound:
                bound = (ts, name)
    resumed.starts = {}
    resumed.bound, resumed.records, resumed.read = bound, resumed.records + read, read
    return resumed


def unprotected_prunes(root: Path) -> list[str]:
    """Chains pruned through some seq (`name@seq`): a rebuild from their remaining records misses the pruned debits."""
    found = []
    for directory in instance_dirs(root):
        anchor = prune_anchor(directory)
        if anchor is not None:
            found.append(f"{directory.name}@{anchor.get('seq')}")
    return found


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Taken:
    """A snapshot run: the file that now covers the ledger (None: nothing to cover), and what it added."""

    path: Path | None
    written: bool
    records: int  # covered by `path`
    added: int  # records folded in by this run
    chains: dict[str, Position]


def take(
    root: Path,
    directory: Path,
    signer: Signer,
    *,
    now: float,
    until: float,
    keep: int,
    window_s: float,
    ownership_ttl_s: float,
    extra_keys: Sequence[PublicKey] = (),
    write: bool = True,
) -> Taken:
    """Continue the newest usable snapshot (or the ledger's start) with records before `until`, sign, write.

    Nothing is written when no record was added (the newest snapshot still covers the ledger) or the
    ledger has no record before `until`. Without `write`, say what would be covered and write nothing.
    """
    trust = Trust(directory, (signer.public(), *extra_keys))
    with snapshot_files.locked(directory) if write else contextlib.nullcontext():
        resumed = newest(root, trust, window_s, ownership_ttl_s) or fresh(root, window_s, ownership_ttl_s)
        source = resumed.source
        folded = fold(resumed, until, attest=True)
        if not folded.read or not write:
            return Taken(source if not folded.read else None, False, folded.records, folded.read, dict(folded.chains))
        cover = Cover(folded.chains, folded.bound, folded.records, until)

        def signed_header(digest: str, entries: int) -> bytes:
            fields = header(cover, created=now, key_id=signer.key_id, window_s=window_s,
                            ownership_ttl_s=ownership_ttl_s, state_sha256=digest, entries=entries)  # fmt: skip
            return encode_line({**fields, "sig": signer.sign(payload(fields))})

        path = snapshot_files.write(directory, encode_entries(folded.builder), signed_header, keep)
    return Taken(path, True, folded.records, folded.read, dict(folded.chains))
