"""How the Redis quota store spells its state: key names, value encodings, script arguments and replies."""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from gateway.core.leases import (
    CounterKind,
    CounterState,
    LeaseRef,
    Owner,
    Plan,
    QuotaState,
    ReserveResult,
    ReserveStatus,
    StoredResponse,
)

# Keys and members are whatever strings the gateway was given (a job id a scheduler returned may hold a lone
# surrogate): they are stored byte for byte like the in-memory store keeps them, never refused by the encoder.
ENCODING_ERRORS = "surrogatepass"


def text(raw: Any) -> str:
    return raw.decode("utf-8", ENCODING_ERRORS) if isinstance(raw, bytes) else str(raw)


def _quoted(part: str) -> str:
    """One key part percent-encoded whole (no ':' or '{' survives), any string included."""
    return quote(part, safe="", errors=ENCODING_ERRORS)


def num(value: float) -> str:
    """A float as Redis and Lua parse it back exactly."""
    return repr(float(value))


def opt(value: float | None) -> str:
    return "" if value is None else num(value)


def ttl(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The store's key names under one prefix.

    Every key of a reservation is `<prefix>{<hash tag>}:...`, so each script touches one Cluster slot;
    ownership records are keyed by (upstream, job id) and by (upstream, tenant) instead, outside that
    slot, because lookups know only those.
    """

    prefix: str

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix must not contain a hash tag")

    def key(self, tag: str, suffix: str) -> str:
        return f"{self.prefix}{{{tag}}}:{suffix}"

    def lease(self, tag: str, lease_id: str) -> str:
        return self.key(tag, f"lease:{lease_id}")

    def counter(self, tag: str, key: str) -> list[str]:
        return [self.key(tag, f"v:{key}"), self.key(tag, f"z:{key}"), self.key(tag, f"a:{key}")]

    def idem(self, tag: str, tenant_id: str, idempotency_key: str | None) -> str:
        suffix = "-" if idempotency_key is None else _quoted(idempotency_key)
        return self.key(tag, f"idem:{_quoted(tenant_id)}:{suffix}")

    def owner(self, upstream: str, job_id: str) -> str:
        return f"{self.prefix}own:{_quoted(upstream)}:{_quoted(job_id)}"

    def owned(self, upstream: str, tenant_id: str) -> str:
        return f"{self.prefix}owned:{_quoted(upstream)}:{_quoted(tenant_id)}"


def reserve_result(raw: Sequence[Any], plan: Plan, now: float) -> ReserveResult:
    """quota_reserve.lua's reply as a ReserveResult."""
    status = text(raw[0])
    if status == "in_progress":
        return ReserveResult(ReserveStatus.IN_PROGRESS)
    if status == "replay":
        headers = tuple((str(k), str(v)) for k, v in json.loads(text(raw[2])))
        body = raw[3] if isinstance(raw[3], bytes) else text(raw[3]).encode()
        return ReserveResult(ReserveStatus.REPLAY, response=StoredResponse(int(text(raw[1])), headers, body))
    shadow = tuple(text(k) for k in raw[3])
    befores = [float(text(b)) for b in raw[4]]
    takes = [float(text(t)) for t in raw[5]]
    if status == "admitted":
        states = tuple(CounterState(c.key, b, t, b + t) for c, b, t in zip(plan.counters, befores, takes, strict=True))
        return ReserveResult(ReserveStatus.ADMITTED, states, None, shadow)
    states = tuple(CounterState(c.key, b, t, b) for c, b, t in zip(plan.counters, befores, takes, strict=True))
    earliest = float(text(raw[2])) if text(raw[2]) else None
    retry = None if earliest is None else max(0.0, earliest - now)
    return ReserveResult(ReserveStatus.DENIED, states, text(raw[1]), shadow, earliest, retry)


def owner_json(lease: LeaseRef) -> str:
    return json.dumps(
        {
            "tenant": lease.tenant_id,
            "tag": lease.hash_tag,
            "lease": lease.lease_id,
            "idem": lease.idempotency_key,
            "counters": [[key, kind.value] for key, kind in lease.counters],
        }
    )


def owner_from_json(raw: Any) -> Owner:
    data = json.loads(text(raw))
    counters = tuple((str(key), CounterKind(kind)) for key, kind in data["counters"])
    lease = LeaseRef(data["tag"], data["tenant"], data["lease"], data["idem"], counters)
    return Owner(data["tenant"], lease)


class SlotOps:
    """The keys and operations of one quota_restore.lua call."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[str | bytes] = []
        self._index: dict[str, int] = {}

    def key(self, key: str) -> int:
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]

    def add(self, op: str, key: int, *values: str | bytes) -> None:
        self.args.extend([op, str(key), *values])


def slot_ops(keys: KeyLayout, state: QuotaState, tag: str, now: float, window: float) -> SlotOps:
    """What quota_restore.lua writes to restore one hash-tagged slot of `state`."""
    ops = SlotOps()
    for c in (c for c in state.counters if c.hash_tag == tag):
        v, z, a = (ops.key(k) for k in keys.counter(tag, c.key))
        if c.value > 0:
            ops.add("set", v, num(c.value))
        if c.held:
            for share in c.held:
                ops.add("zadd", z, num(share.end), share.lease_id)
                ops.add("hset", a, share.lease_id, num(share.amount))
            expiry = ttl(max(s.end for s in c.held) - now + window)
            for key in (v, z, a):
                ops.add("expire", key, expiry)
    for lease in (lease for lease in state.leases if lease.hash_tag == tag):
        key = ops.key(keys.lease(tag, lease.lease_id))
        fields = {"tenant": lease.tenant_id, "end": num(lease.end), "idem": lease.idempotency_key or ""}
        fields.update({f"{d.kind.value}:{d.key}": num(d.amount) for d in lease.debits})
        if lease.job is not None:
            fields.update({"upstream": lease.job[0], "job": lease.job[1]})
        fields.update({"released": "1"} if lease.released else {})
        fields.update({"refunded": "1"} if lease.refunded else {})
        for name, value in fields.items():
            ops.add("hset", key, name, value)
        ops.add("expire", key, ttl(lease.end - now + window))
    for idem in (i for i in state.idempotency if i.hash_tag == tag):
        key = ops.key(keys.idem(tag, idem.tenant_id, idem.key))
        record: dict[str, str | bytes] = {"lease": idem.lease_id, "expires": num(idem.expires)}
        if idem.response is None:
            record["state"] = "pending"
        else:
            headers = json.dumps([list(h) for h in idem.response.headers])
            record.update(state="done", status=str(idem.response.status), headers=headers, body=idem.response.body)
        for field_name, raw in record.items():
            ops.add("hset", key, field_name, raw)
        ops.add("expire", key, ttl(idem.expires - now))
    return ops
