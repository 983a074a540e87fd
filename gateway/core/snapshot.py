"""A quota snapshot: the rebuild's state after a prefix of the ledger, as canonical lines, and what it attests.

A snapshot file is one line per entry of the rebuild's `Builder`, in the builder's insertion order
(the state read from a builder depends on it), then a signed header line:

    ["C", n, [[key, kind], ...]]                        (the n-th list of counters a lease names, before its first use)
    ["L", lease_id, tag, tenant, end, idempotency_key, n, [amount, ...], replaces, released, refunded, job]
    ["I", tag, tenant, idempotency_key, lease_id, expires, null | [status, [[name, value], ...], body_b64]]
    ["O", upstream, job_id, lease_id, since]            (and, once the lease is forgotten, what the owner
                                                         keeps of it: tag, tenant, idempotency key, n)
    ["P", upstream, tenant]
    ["K", tag, counter key, kind]                       (each counter's kind, as its first lease recorded it)
    ["R", tag, counter key, [partial, ...]]             (forgotten leases' cumulative debits: an exact sum)
    ["S", skipped]
    {"kind":"quota_snapshot", "chains":{...}, "bound":[ts,chain], "state_sha256":..., "sig":...}   (last)

The header names, for every instance chain folded in, the (seq, hash) of its last record folded
in, and `bound`: the largest merge key (ts, chain) folded in. Continuing from the snapshot with
every chain's later records gives the full rebuild's state exactly when each chain's first later
record sorts after `bound` (`follows`): the records folded in were then the first ones of the
full rebuild's time-ordered merge too (a k-way merge picks the least head each time; a head
that sorts after every record picked so far would not have been picked before any of them).
The signature (the ledger key, as checkpoints) covers the header, and the header the SHA-256 of
the entry lines.
"""

import base64
import binascii
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.jsontext import json_utf8
from gateway.core.leases import CounterKind, Debit, StoredResponse
from gateway.core.rebuild import Builder, IdemEntry, LeaseEntry, OwnerEntry

DOMAIN = "exportgate-quota-snapshot/1"
KIND = "quota_snapshot"
FORMAT = 1

MergeKey = tuple[float, str]  # (ts, chain directory name): the order the rebuild merges chains in


class SnapshotFormatError(ValueError):
    """A snapshot line that is not what a snapshot writer writes."""


@dataclass(frozen=True, slots=True)
class Position:
    """The last record of one chain a snapshot folded in."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Cover:
    """What a snapshot covers: each chain's last folded record, the largest merge key, the record count."""

    chains: Mapping[str, Position]
    bound: MergeKey | None
    records: int
    until: float  # records were folded while their merge key's ts was below this


def follows(bound: MergeKey | None, ts: float, chain: str) -> bool:
    """Whether a record (ts, chain) not folded in sorts after every record a snapshot with `bound` folded in.

    The merge orders records by ts, then chain name, then place in the chain: a record with the bound's
    own (ts, chain) is a later record of the chain the bound came from, so it sorts after it too.
    """
    return bound is None or (ts, chain) >= bound


def encode_line(value: Any) -> bytes:
    """One canonical JSON line: sorted keys, no spaces, no NaN, lone surrogates escaped."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return json_utf8(text) + b"\n"


# -- the header ------------------------------------------------------------------------------


def header(
    cover: Cover, *, created: float, key_id: str, window_s: float, ownership_ttl_s: float, state_sha256: str,
    entries: int,
) -> dict[str, Any]:  # fmt: skip
    """The header fields before signing."""
    return {
        "kind": KIND,
        "v": FORMAT,
        "created": created,
        "key_id": key_id,
        "chains": {name: {"seq": p.seq, "hash": p.hash} for name, p in sorted(cover.chains.items())},
        "bound": list(cover.bound) if cover.bound is not None else None,
        "records": cover.records,
        "until": cover.until,
        "params": {"idempotency_window_s": window_s, "ownership_ttl_s": ownership_ttl_s},
        "entries": entries,
        "state_sha256": state_sha256,
    }


def payload(fields: Mapping[str, Any]) -> bytes:
    """The bytes a snapshot's signature covers: the header without `sig`, under the snapshot domain."""
    return encode_line({**{k: v for k, v in fields.items() if k != "sig"}, "domain": DOMAIN})[:-1]


@dataclass(frozen=True, slots=True)
class Header:
    """A snapshot's header as read back (its signature is checked by the caller)."""

    cover: Cover
    created: float
    key_id: str
    window_s: float
    ownership_ttl_s: float
    state_sha256: str
    entries: int


def read_header(fields: Mapping[str, Any]) -> Header:
    """The header's fields, typed; SnapshotFormatError when one is missing or of the wrong type."""
    if fields.get("kind") != KIND or fields.get("v") != FORMAT:
        raise SnapshotFormatError("not a version 1 quota snapshot")
    chains_raw, params = fields.get("chains"), fields.get("params")
    if not isinstance(chains_raw, Mapping) or not isinstance(params, Mapping):
        raise SnapshotFormatError("header without chains or params")
    chains = {}
    for name, pos in chains_raw.items():
        if not isinstance(pos, Mapping) or not _is_int(pos.get("seq")) or not isinstance(pos.get("hash"), str):
            raise SnapshotFormatError(f"chain {str(name)[:64]!r}: no seq and hash")
        chains[str(name)] = Position(pos["seq"], pos["hash"])
    bound_raw = fields.get("bound")
    bound: MergeKey | None = None
    if bound_raw is not None:
        if not (isinstance(bound_raw, list) and len(bound_raw) == 2 and _is_number(bound_raw[0])
                and isinstance(bound_raw[1], str)):  # fmt: skip
            raise SnapshotFormatError("bound is not [ts, chain]")
        bound = (bound_raw[0], bound_raw[1])
    try:
        cover = Cover(chains, bound, _count(fields.get("records")), _finite(fields.get("until")))
        return Header(
            cover,
            _finite(fields.get("created")),
            _text(fields.get("key_id")),
            _finite(params.get("idempotency_window_s")),
            _finite(params.get("ownership_ttl_s")),
            _text(fields.get("state_sha256")),
            _count(fields.get("entries")),
        )
    except TypeError as exc:
        raise SnapshotFormatError(f"header: {exc}") from None


# -- the entries -----------------------------------------------------------------------------


def encode_entries(b: Builder) -> Iterator[bytes]:
    """The builder's entries as lines, in its insertion order."""
    lists: dict[tuple[tuple[str, CounterKind], ...], int] = {}

    def counters(refs: tuple[tuple[str, CounterKind], ...]) -> Iterator[bytes]:
        if refs not in lists:
            lists[refs] = len(lists)
            yield encode_line(["C", lists[refs], [[key, kind.value] for key, kind in refs]])

    for lease_id, lease in b.leases.items():
        yield from counters(lease.counters)
        yield encode_line(["L", lease_id, *_lease_fields(lease, lists[lease.counters])])
    for (tag, tenant, key), rec in b.idem.items():
        yield encode_line(["I", tag, tenant, key, rec.lease_id, rec.expires, _response(rec.response)])
    for (upstream, job_id), entry in b.owners.items():
        lease = entry.lease
        if b.leases.get(entry.lease_id) is lease:
            yield encode_line(["O", upstream, job_id, entry.lease_id, entry.since])
        else:  # the lease is forgotten: what the owner keeps of it
            yield from counters(lease.counters)
            detached = [lease.tag, lease.tenant, lease.idem, lists[lease.counters]]
            yield encode_line(["O", upstream, job_id, entry.lease_id, entry.since, *detached])
    for upstream, tenant in sorted(b.owned_pairs):
        yield encode_line(["P", upstream, tenant])
    for (tag, key), kind in b.kinds.items():
        yield encode_line(["K", tag, key, kind.value])
    for (tag, key), partials in b.retired.items():
        yield encode_line(["R", tag, key, partials])
    yield encode_line(["S", b.skipped])


def _lease_fields(lease: LeaseEntry, counters: int) -> list[Any]:
    """A lease's fields after its id: its debits as one amount per counter it names (0 where none)."""
    debits = iter(lease.debits)
    amounts = []
    pending = next(debits, None)
    for key, kind in lease.counters:
        amount = 0.0
        if pending is not None and (pending.key, pending.kind) == (key, kind):
            amount, pending = pending.amount, next(debits, None)
        amounts.append(amount)
    if pending is not None or any(d.amount <= 0 for d in lease.debits):
        raise ValueError("a lease whose debits are not its positive counters cannot be written")
    job = list(lease.job) if lease.job is not None else None
    return [lease.tag, lease.tenant, lease.end, lease.idem, counters, amounts, lease.replaces, lease.released,
            lease.refunded, job]  # fmt: skip


def _response(response: StoredResponse | None) -> list[Any] | None:
    if response is None:
        return None
    return [response.status, [list(h) for h in response.headers], base64.b64encode(response.body).decode()]


class Decoder:
    """Rebuild a `Builder` from entry lines, sharing equal strings and counter lists between leases."""

    def __init__(self, window_s: float, ownership_ttl_s: float) -> None:
        self.builder = Builder(window_s, ownership_ttl_s)
        self._strings: dict[str, str] = {}
        self._lists: list[tuple[tuple[str, CounterKind], ...]] = []  # the "C" entries, by number
        self._debits: dict[tuple[int, tuple[Any, ...]], list[Debit]] = {}
        self._done = False

    def feed(self, lines: list[bytes]) -> None:
        """Entry lines (parsed as one JSON array: one parser call, not one per line); SnapshotFormatError when
        they are not entries. The file's digest, checked by the caller, is what says they were not altered."""
        try:
            entries = json.loads(b"[" + b",".join(line.rstrip(b"\n") for line in lines) + b"]")
        except ValueError:
            raise SnapshotFormatError("an entry line is not JSON") from None
        for entry in entries:
            if self._done or not isinstance(entry, list) or not entry:
                raise SnapshotFormatError("an entry is not a non-empty list (or follows the last one)")
            try:
                self._entry(entry)
            except (TypeError, ValueError, KeyError, IndexError, binascii.Error) as exc:
                kind = str(entry[0])[:8]
                raise SnapshotFormatError(f"a {kind!r} entry is malformed ({type(exc).__name__})") from None

    def finish(self) -> Builder:
        if not self._done:
            raise SnapshotFormatError("the entries end before the closing skipped count")
        self.builder.schedule()
        return self.builder

    def _s(self, value: Any) -> str:
        """A string many entries repeat (tenant, tag, counter key, upstream): one object for all of them."""
        if type(value) is not str:
            raise TypeError("not a string")
        return self._strings.setdefault(value, value)

    def _opt(self, value: Any) -> str | None:
        return None if value is None else self._s(value)

    def _entry(self, e: list[Any]) -> None:
        b, tag = self.builder, e[0]
        if tag == "C":
            _, number, refs = e
            if number != len(self._lists):
                raise ValueError("counter lists out of order")
            self._lists.append(tuple((self._s(key), CounterKind(kind)) for key, kind in refs))
        elif tag == "L":
            lease_id, *fields = e[1:]
            b.leases[_text(lease_id)] = self._lease(*fields)
        elif tag == "I":
            _, etag, tenant, key, lease_id, expires, response = e
            b.idem[(self._s(etag), self._s(tenant), _text(key))] = IdemEntry(
                _text(lease_id), _finite(expires), _stored(response)
            )
        elif tag == "O":
            _, upstream, job_id, lease_id, since, *detached = e
            lease = self._detached(*detached) if detached else b.leases[_text(lease_id)]
            b.owners[(self._s(upstream), _text(job_id))] = OwnerEntry(_text(lease_id), _finite(since), lease)
        elif tag == "P":
            _, upstream, tenant = e
            b.owned_pairs.add((self._s(upstream), self._s(tenant)))
        elif tag == "K":
            _, ctag, key, kind = e
            b.kinds[(self._s(ctag), self._s(key))] = CounterKind(kind)
        elif tag == "R":
            _, ctag, key, partials = e
            if not isinstance(partials, list):
                raise TypeError("partials are not a list")
            b.retired[(self._s(ctag), self._s(key))] = [_finite(x) for x in partials]
        elif tag == "S":
            _, skipped = e
            if not _is_int(skipped):
                raise TypeError("skipped is not an integer")
            b.skipped, self._done = skipped, True
        else:
            raise ValueError("unknown entry")

    def _lease(self, tag: Any, tenant: Any, end: Any, idem: Any, counters: Any, amounts: Any, replaces: Any,
               released: Any, refunded: Any, job: Any) -> LeaseEntry:  # fmt: skip
        if not isinstance(released, bool) or not isinstance(refunded, bool) or not isinstance(amounts, list):
            raise TypeError("flags or amounts of the wrong type")
        refs, debits = self._refs(counters), self._debits_of(counters, amounts)
        built_job = None
        if job is not None:
            upstream, job_id = job
            built_job = (self._s(upstream), _text(job_id))
        return LeaseEntry(self._s(tag), self._s(tenant), _finite(end), self._opt(idem), debits, refs,
                          self._opt(replaces), released, refunded, built_job)  # fmt: skip

    def _detached(self, tag: Any, tenant: Any, idem: Any, counters: Any) -> LeaseEntry:
        """The part of a forgotten lease its owner keeps (its tenant and reference)."""
        return LeaseEntry(self._s(tag), self._s(tenant), 0.0, self._opt(idem), [], self._refs(counters), None)

    def _refs(self, number: Any) -> tuple[tuple[str, CounterKind], ...]:
        if not _is_int(number) or not 0 <= number < len(self._lists):
            raise ValueError('a counter list number no "C" entry gave')
        return self._lists[int(number)]

    def _debits_of(self, number: int, amounts: list[Any]) -> list[Debit]:
        """A lease's debits; equal ones are one shared list (never mutated)."""
        shape = (number, tuple(amounts))
        found = self._debits.get(shape)
        if found is not None:
            return found
        refs = self._lists[number]
        if len(amounts) != len(refs):
            raise ValueError("amounts do not match the counters")
        debits = [Debit(key, kind, float(amount)) for (key, kind), amount in zip(refs, amounts, strict=True)
                  if _finite(amount) > 0]  # fmt: skip
        self._debits[shape] = debits
        return debits


def _stored(value: Any) -> StoredResponse | None:
    if value is None:
        return None
    status, headers, body = value
    if not _is_int(status) or not isinstance(headers, list) or not isinstance(body, str):
        raise TypeError("a stored response of the wrong shape")
    pairs = tuple((str(name), str(text)) for name, text in headers)
    return StoredResponse(status, pairs, base64.b64decode(body, validate=True))


def _text(value: Any) -> str:
    if type(value) is not str:
        raise TypeError("not a string")
    return value


def _count(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise TypeError("not a count")
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _finite(value: Any) -> float:
    if type(value) is float and math.isfinite(value):  # the usual case, checked first
        return value
    if not _is_number(value):
        raise TypeError("not a finite number")
    return float(value)
