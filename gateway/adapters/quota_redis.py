"""RedisQuotaStore: one Lua script per reservation, on Redis or Redis Cluster, keys hash-tagged by slot."""

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import quote

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from gateway.adapters.quota import (
    DEFAULT_IDEMPOTENCY_WINDOW_S,
    DEFAULT_OWNERSHIP_TTL_S,
    BackendUnavailable,
    lease_ref,
)
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

Client = Redis | RedisCluster


def _script(name: str) -> str:
    return (resources.files("gateway.adapters") / "lua" / name).read_text(encoding="utf-8")


# Keys and members are whatever strings the gateway was given (a job id a scheduler returned may hold a lone
# surrogate): they are stored byte for byte like the in-memory store keeps them, never refused by the encoder.
ENCODING_ERRORS = "surrogatepass"


def _text(raw: Any) -> str:
    return raw.decode("utf-8", ENCODING_ERRORS) if isinstance(raw, bytes) else str(raw)


def _quoted(part: str) -> str:
    """One key part percent-encoded whole (no ':' or '{' survives), any string included."""
    return quote(part, safe="", errors=ENCODING_ERRORS)


def _num(value: float) -> str:
    """A float as Redis and Lua parse it back exactly."""
    return repr(float(value))


def _opt(value: float | None) -> str:
    return "" if value is None else _num(value)


class RedisQuotaStore:
    """Counters, leases and idempotency records in Redis; all of a reservation in one script.

    Every key of a reservation is `<prefix>{<plan.hash_tag>}:...` (core plans use one tag for
    all quota keys, `QUOTA_SLOT`), so each script touches one Cluster slot. Ownership records
    are keyed by (upstream, job id) and by (upstream, tenant) instead, outside that slot,
    because lookups know only those.
    The client must use `decode_responses=False` (stored bodies are bytes).
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "eg:",
        idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
        ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S,
        deadline_s: float | None = 1.0,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain a hash tag")
        self._client = client
        self._prefix = prefix
        self._window = idempotency_window_s
        self._ownership_ttl = ownership_ttl_s
        self._deadline = deadline_s
        self._reserve = client.register_script(_script("quota_reserve.lua"))
        self._release = client.register_script(_script("quota_release.lua"))
        self._refund = client.register_script(_script("quota_refund.lua"))
        self._complete = client.register_script(_script("quota_complete.lua"))
        self._value = client.register_script(_script("quota_value.lua"))
        self._restore = client.register_script(_script("quota_restore.lua"))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool,
        timeout_s: float = 0.25,
        prefix: str = "eg:",
        idempotency_window_s: float = DEFAULT_IDEMPOTENCY_WINDOW_S,
        ownership_ttl_s: float = DEFAULT_OWNERSHIP_TTL_S,
        max_connections: int = 1024,
    ) -> "RedisQuotaStore":
        """A store on its own client with bounded timeouts and no command retries.

        A retried script could apply twice, so the client never retries; MOVED and ASK
        redirections (the command did not run) are still followed. `max_connections` bounds
        each Cluster node's pool (requests beyond it fail as BackendUnavailable rather than
        queue); a standalone client's pool grows as needed.
        """
        client: Client
        if cluster:
            client = RedisCluster.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
                encoding_errors=ENCODING_ERRORS,
                max_connections=max_connections,
            )
        else:
            client = Redis.from_url(
                url,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
                decode_responses=False,
                encoding_errors=ENCODING_ERRORS,
            )
        # Worst case: connect, NOSCRIPT, SCRIPT LOAD, EVALSHA.
        deadline = 4 * timeout_s
        return cls(
            client,
            prefix=prefix,
            idempotency_window_s=idempotency_window_s,
            ownership_ttl_s=ownership_ttl_s,
            deadline_s=deadline,
        )

    @asynccontextmanager
    async def _io(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._deadline):
                yield
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"quota store: {type(exc).__name__}: {exc}") from exc

    def _key(self, tag: str, suffix: str) -> str:
        return f"{self._prefix}{{{tag}}}:{suffix}"

    def _counter_keys(self, tag: str, key: str) -> list[str]:
        return [self._key(tag, f"v:{key}"), self._key(tag, f"z:{key}"), self._key(tag, f"a:{key}")]

    def _idem_key(self, tag: str, tenant_id: str, idempotency_key: str | None) -> str:
        suffix = "-" if idempotency_key is None else _quoted(idempotency_key)
        return self._key(tag, f"idem:{_quoted(tenant_id)}:{suffix}")

    def _owner_key(self, upstream: str, job_id: str) -> str:
        return f"{self._prefix}own:{_quoted(upstream)}:{_quoted(job_id)}"

    def _owned_key(self, upstream: str, tenant_id: str) -> str:
        return f"{self._prefix}owned:{_quoted(upstream)}:{_quoted(tenant_id)}"

    async def reserve(self, plan: Plan, now: float) -> ReserveResult:
        tag = plan.hash_tag
        keys = [self._key(tag, f"lease:{plan.decision_id}"), self._idem_key(tag, plan.tenant_id, plan.idempotency_key)]
        args = [
            _num(now),
            _num(plan.lease_end),
            plan.decision_id,
            plan.tenant_id,
            plan.idempotency_key or "",
            _num(self._window),
            str(len(plan.counters)),
        ]
        for c in plan.counters:
            keys.extend(self._counter_keys(tag, c.key))
            reach, enforced = "1" if c.reach_refuses else "0", "1" if c.enforced else "0"
            args.extend([c.key, c.kind.value, _num(c.amount), _opt(c.cap), _num(c.base), reach, enforced])
            args.extend([c.share.value, _num(c.chip_max), _num(c.chip_min)])
        replaced = plan.replaces
        if replaced is not None and replaced.hash_tag == tag:  # another slot's lease earns no credit
            keys.append(self._key(tag, f"lease:{replaced.lease_id}"))
            args.append(replaced.lease_id)
        else:
            args.append("")
        async with self._io():
            raw = await self._reserve(keys=keys, args=args)
        return _reserve_result(raw, plan, now)

    async def complete(
        self,
        ref: Plan | LeaseRef,
        *,
        upstream: str,
        job_id: str | None,
        response: StoredResponse,
        now: float,
    ) -> None:
        lease = lease_ref(ref)
        tag = lease.hash_tag
        async with self._io():
            if job_id is not None:
                # Ownership first: once the response can be replayed, the job must be owned.
                ttl = max(1, int(self._ownership_ttl))
                await self._client.set(self._owner_key(upstream, job_id), _owner_json(lease), ex=ttl)
                owned = self._owned_key(upstream, lease.tenant_id)
                await self._client.zadd(owned, {job_id: now})
                await self._client.zremrangebyscore(owned, "-inf", _num(now - self._ownership_ttl))
                await self._client.expire(owned, ttl)
            keys = [
                self._key(tag, f"lease:{lease.lease_id}"),
                self._idem_key(tag, lease.tenant_id, lease.idempotency_key),
            ]
            args: list[str | bytes] = [
                lease.lease_id,
                "0" if lease.idempotency_key is None else "1",
                _num(now),
                _num(self._window),
                str(response.status),
                json.dumps([list(h) for h in response.headers]),
                response.body,
                upstream,
                job_id or "",
            ]
            await self._complete(keys=keys, args=args)

    async def refund(self, ref: Plan | LeaseRef, now: float) -> bool:
        lease = lease_ref(ref)
        tag = lease.hash_tag
        keys = [self._key(tag, f"lease:{lease.lease_id}"), self._idem_key(tag, lease.tenant_id, lease.idempotency_key)]
        args = [lease.lease_id]
        for key, kind in lease.counters:
            keys.extend(self._counter_keys(tag, key))
            args.extend([key, kind.value])
        async with self._io():
            done = await self._refund(keys=keys, args=args)
        return bool(int(done))

    async def release_job(self, upstream: str, job_id: str, now: float) -> bool:
        owner = await self.owner_of(upstream, job_id)
        if owner is None:
            return False
        lease = owner.lease
        keys = [self._key(lease.hash_tag, f"lease:{lease.lease_id}")]
        for key, kind in lease.counters:
            if kind is CounterKind.HELD:
                keys.extend(self._counter_keys(lease.hash_tag, key))
        async with self._io():
            gave = await self._release(keys=keys, args=[lease.lease_id])
        return bool(int(gave))

    async def owner_of(self, upstream: str, job_id: str) -> Owner | None:
        async with self._io():
            raw = await self._client.get(self._owner_key(upstream, job_id))
        return None if raw is None else _owner_from_json(raw)

    async def owned_jobs(self, upstream: str, tenant_id: str) -> set[str]:
        async with self._io():
            raw = await self._client.zrange(self._owned_key(upstream, tenant_id), 0, -1)
        return {_text(member) for member in raw}

    async def counter_value(self, hash_tag: str, key: str, now: float) -> float:
        async with self._io():
            raw = await self._value(keys=self._counter_keys(hash_tag, key), args=[_num(now)])
        return float(_text(raw))

    async def restore(self, state: QuotaState, now: float) -> None:
        """One script per hash-tagged slot, then ownership keys (each its own slot) in a pipeline."""
        for tag in state.tags():
            ops = self._slot_ops(state, tag, now)
            async with self._io():
                await self._restore(keys=ops.keys, args=ops.args)
        if not state.owners and not state.owned:
            return
        async with self._io():
            pipe = self._client.pipeline(transaction=False)  # queued commands return the pipe, not awaitables
            for entry in state.owners:
                ttl = max(1, int(entry.since + self._ownership_ttl - now))
                _ = pipe.set(self._owner_key(entry.upstream, entry.job_id), _owner_json(entry.owner.lease), ex=ttl)
            for owned in state.owned:
                key = self._owned_key(owned.upstream, owned.tenant_id)
                _ = pipe.delete(key)
                if owned.jobs:
                    _ = pipe.zadd(key, {job: since for job, since in owned.jobs})
                    last = max(since for _, since in owned.jobs)
                    _ = pipe.expire(key, max(1, int(last + self._ownership_ttl - now)))
            await pipe.execute()

    def _slot_ops(self, state: QuotaState, tag: str, now: float) -> "_SlotOps":
        ops = _SlotOps()
        for c in (c for c in state.counters if c.hash_tag == tag):
            v, z, a = (ops.key(k) for k in self._counter_keys(tag, c.key))
            if c.value > 0:
                ops.add("set", v, _num(c.value))
            if c.held:
                for share in c.held:
                    ops.add("zadd", z, _num(share.end), share.lease_id)
                    ops.add("hset", a, share.lease_id, _num(share.amount))
                ttl = _ttl(max(s.end for s in c.held) - now + self._window)
                for key in (v, z, a):
                    ops.add("expire", key, ttl)
        for lease in (lease for lease in state.leases if lease.hash_tag == tag):
            key = ops.key(self._key(tag, f"lease:{lease.lease_id}"))
            fields = {"tenant": lease.tenant_id, "end": _num(lease.end), "idem": lease.idempotency_key or ""}
            fields.update({f"{d.kind.value}:{d.key}": _num(d.amount) for d in lease.debits})
            if lease.job is not None:
                fields.update({"upstream": lease.job[0], "job": lease.job[1]})
            fields.update({"released": "1"} if lease.released else {})
            fields.update({"refunded": "1"} if lease.refunded else {})
            for name, value in fields.items():
                ops.add("hset", key, name, value)
            ops.add("expire", key, _ttl(lease.end - now + self._window))
        for idem in (i for i in state.idempotency if i.hash_tag == tag):
            key = ops.key(self._idem_key(tag, idem.tenant_id, idem.key))
            record: dict[str, str | bytes] = {"lease": idem.lease_id, "expires": _num(idem.expires)}
            if idem.response is None:
                record["state"] = "pending"
            else:
                headers = json.dumps([list(h) for h in idem.response.headers])
                record.update(state="done", status=str(idem.response.status), headers=headers, body=idem.response.body)
            for field_name, raw in record.items():
                ops.add("hset", key, field_name, raw)
            ops.add("expire", key, _ttl(idem.expires - now))
        return ops

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the store answers within its deadline (for readiness)."""
        async with self._io():
            await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()


class _SlotOps:
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


def _ttl(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def _reserve_result(raw: Sequence[Any], plan: Plan, now: float) -> ReserveResult:
    status = _text(raw[0])
    if status == "in_progress":
        return ReserveResult(ReserveStatus.IN_PROGRESS)
    if status == "replay":
        headers = tuple((str(k), str(v)) for k, v in json.loads(_text(raw[2])))
        body = raw[3] if isinstance(raw[3], bytes) else _text(raw[3]).encode()
        return ReserveResult(ReserveStatus.REPLAY, response=StoredResponse(int(_text(raw[1])), headers, body))
    shadow = tuple(_text(k) for k in raw[3])
    befores = [float(_text(b)) for b in raw[4]]
    takes = [float(_text(t)) for t in raw[5]]
    if status == "admitted":
        states = tuple(CounterState(c.key, b, t, b + t) for c, b, t in zip(plan.counters, befores, takes, strict=True))
        return ReserveResult(ReserveStatus.ADMITTED, states, None, shadow)
    states = tuple(CounterState(c.key, b, t, b) for c, b, t in zip(plan.counters, befores, takes, strict=True))
    earliest = float(_text(raw[2])) if _text(raw[2]) else None
    retry = None if earliest is None else max(0.0, earliest - now)
    return ReserveResult(ReserveStatus.DENIED, states, _text(raw[1]), shadow, earliest, retry)


def _owner_json(lease: LeaseRef) -> str:
    return json.dumps(
        {
            "tenant": lease.tenant_id,
            "tag": lease.hash_tag,
            "lease": lease.lease_id,
            "idem": lease.idempotency_key,
            "counters": [[key, kind.value] for key, kind in lease.counters],
        }
    )


def _owner_from_json(raw: Any) -> Owner:
    data = json.loads(_text(raw))
    counters = tuple((str(key), CounterKind(kind)) for key, kind in data["counters"])
    lease = LeaseRef(data["tag"], data["tenant"], data["lease"], data["idem"], counters)
    return Owner(data["tenant"], lease)
