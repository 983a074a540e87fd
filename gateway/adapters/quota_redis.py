"""RedisQuotaStore: one Lua script per reservation, on Redis or Redis Cluster, keys hash-tagged by slot."""

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import unquote

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
from gateway.adapters.quota_redis_layout import (
    ENCODING_ERRORS,
    KeyLayout,
    num,
    opt,
    owner_from_json,
    owner_json,
    reserve_result,
    slot_ops,
    text,
)
from gateway.core.leases import (
    CounterKind,
    CounterValue,
    Debit,
    HeldShare,
    LeaseRef,
    LeaseState,
    Owner,
    OwnerState,
    Plan,
    QuotaState,
    ReserveResult,
    StoredResponse,
)

Client = Redis | RedisCluster
LISTING_DEADLINE_S = 30.0  # a usage listing scans the store: bounded as a whole, not per call
LISTING_BATCH = 500  # commands per pipelined round trip of a listing


def _script(name: str) -> str:
    return (resources.files("gateway.adapters") / "lua" / name).read_text(encoding="utf-8")


class RedisQuotaStore:
    """Counters, leases and idempotency records in Redis; all of a reservation in one script.

    Keys follow KeyLayout: a reservation's keys share its plan's hash tag (core plans use one tag
    for all quota keys, `QUOTA_SLOT`), so each script touches one Cluster slot.
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
        self._keys = KeyLayout(prefix)
        self._client = client
        self._window = idempotency_window_s
        self._ownership_ttl = ownership_ttl_s
        self._deadline = deadline_s
        self._reserve = client.register_script(_script("quota_reserve.lua"))
        self._release = client.register_script(_script("quota_release.lua"))
        self._refund = client.register_script(_script("quota_refund.lua"))
        self._complete = client.register_script(_script("quota_complete.lua"))
        self._value = client.register_script(_script("quota_value.lua"))
        self._restore = client.register_script(_script("quota_restore.lua"))
        self._extend = client.register_script(_script("quota_extend.lua"))

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

    async def reserve(self, plan: Plan, now: float) -> ReserveResult:
        tag = plan.hash_tag
        keys = [self._keys.lease(tag, plan.decision_id), self._keys.idem(tag, plan.tenant_id, plan.idempotency_key)]
        args = [
            num(now),
            num(plan.lease_end),
            plan.decision_id,
            plan.tenant_id,
            plan.idempotency_key or "",
            num(self._window),
            str(len(plan.counters)),
        ]
        for c in plan.counters:
            keys.extend(self._keys.counter(tag, c.key))
            reach, enforced = "1" if c.reach_refuses else "0", "1" if c.enforced else "0"
            args.extend([c.key, c.kind.value, num(c.amount), opt(c.cap), num(c.base), reach, enforced])
            args.extend([c.share.value, num(c.chip_max), num(c.chip_min)])
        replaced = plan.replaces
        if replaced is not None and replaced.hash_tag == tag:  # another slot's lease earns no credit
            keys.append(self._keys.lease(tag, replaced.lease_id))
            args.append(replaced.lease_id)
        else:
            args.append("")
        async with self._io():
            raw = await self._reserve(keys=keys, args=args)
        return reserve_result(raw, plan, now)

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
                # Ownership first: once the response can be replayed, the job must be owned. One round
                # trip (the keys are in other slots than the lease's, so not in the script).
                ttl = max(1, int(self._ownership_ttl))
                owned = self._keys.owned(upstream, lease.tenant_id)
                pipe = self._client.pipeline(transaction=False)  # queued commands return the pipe
                _ = pipe.set(self._keys.owner(upstream, job_id), owner_json(lease), ex=ttl)
                _ = pipe.zadd(owned, {job_id: now})
                _ = pipe.zremrangebyscore(owned, "-inf", num(now - self._ownership_ttl))
                _ = pipe.expire(owned, ttl)
                await pipe.execute()
            keys = [
                self._keys.lease(tag, lease.lease_id),
                self._keys.idem(tag, lease.tenant_id, lease.idempotency_key),
            ]
            args: list[str | bytes] = [
                lease.lease_id,
                "0" if lease.idempotency_key is None else "1",
                num(now),
                num(self._window),
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
        keys = [self._keys.lease(tag, lease.lease_id), self._keys.idem(tag, lease.tenant_id, lease.idempotency_key)]
        args = [lease.lease_id]
        for key, kind in lease.counters:
            keys.extend(self._keys.counter(tag, key))
            args.extend([key, kind.value])
        async with self._io():
            done = await self._refund(keys=keys, args=args)
        return bool(int(done))

    async def release_job(self, upstream: str, job_id: str, now: float) -> bool:
        owner = await self.owner_of(upstream, job_id)
        if owner is None:
            return False
        lease = owner.lease
        keys = [self._keys.lease(lease.hash_tag, lease.lease_id)]
        for key, kind in lease.counters:
            if kind is CounterKind.HELD:
                keys.extend(self._keys.counter(lease.hash_tag, key))
        async with self._io():
            gave = await self._release(keys=keys, args=[lease.lease_id])
        return bool(int(gave))

    async def extend_job(self, upstream: str, job_id: str, end: float, now: float) -> float | None:
        owner = await self.owner_of(upstream, job_id)
        if owner is None:
            return None
        lease = owner.lease
        keys = [self._keys.lease(lease.hash_tag, lease.lease_id)]
        args = [lease.lease_id, num(end), num(now), num(self._window)]
        for key, kind in lease.counters:
            if kind is CounterKind.HELD:
                keys.extend(self._keys.counter(lease.hash_tag, key))
                args.append(key)
        async with self._io():
            after = await self._extend(keys=keys, args=args)
        return None if after is None else float(text(after))

    async def held_amounts(self, upstream: str, job_id: str) -> dict[str, float] | None:
        owner = await self.owner_of(upstream, job_id)
        if owner is None:
            return None
        async with self._io():
            fields = await self._client.hgetall(self._keys.lease(owner.lease.hash_tag, owner.lease.lease_id))
        decoded = {text(k): text(v) for k, v in fields.items()}
        if not decoded or "released" in decoded:
            return None
        held = CounterKind.HELD.value + ":"
        return {k[len(held) :]: float(v) for k, v in decoded.items() if k.startswith(held)}

    async def disown(self, upstream: str, job_id: str) -> None:
        key = self._keys.owner(upstream, job_id)
        async with self._io():
            raw = await self._client.get(key)
            if raw is None:
                return
            pipe = self._client.pipeline(transaction=False)  # queued commands return the pipe
            _ = pipe.delete(key)
            _ = pipe.zrem(self._keys.owned(upstream, owner_from_json(raw).tenant_id), job_id)
            await pipe.execute()

    async def owner_of(self, upstream: str, job_id: str) -> Owner | None:
        async with self._io():
            raw = await self._client.get(self._keys.owner(upstream, job_id))
        return None if raw is None else owner_from_json(raw)

    async def owned_jobs(self, upstream: str, tenant_id: str) -> set[str]:
        async with self._io():
            raw = await self._client.zrange(self._keys.owned(upstream, tenant_id), 0, -1)
        return {text(member) for member in raw}

    async def counter_value(self, hash_tag: str, key: str, now: float) -> float:
        async with self._io():
            raw = await self._value(keys=self._keys.counter(hash_tag, key), args=[num(now)])
        return float(text(raw))

    async def restore(self, state: QuotaState, now: float) -> None:
        """One script per hash-tagged slot, then ownership keys (each its own slot) in a pipeline."""
        for tag in state.tags():
            ops = slot_ops(self._keys, state, tag, now, self._window)
            async with self._io():
                await self._restore(keys=ops.keys, args=ops.args)
        if not state.owners and not state.owned:
            return
        async with self._io():
            pipe = self._client.pipeline(transaction=False)  # queued commands return the pipe, not awaitables
            for entry in state.owners:
                ttl = max(1, int(entry.since + self._ownership_ttl - now))
                _ = pipe.set(self._keys.owner(entry.upstream, entry.job_id), owner_json(entry.owner.lease), ex=ttl)
            for owned in state.owned:
                key = self._keys.owned(owned.upstream, owned.tenant_id)
                _ = pipe.delete(key)
                if owned.jobs:
                    _ = pipe.zadd(key, {job: since for job, since in owned.jobs})
                    last = max(since for _, since in owned.jobs)
                    _ = pipe.expire(key, max(1, int(last + self._ownership_ttl - now)))
            await pipe.execute()

    async def holdings(self, now: float) -> QuotaState:
        """Counters, leases and owners by SCAN under the prefix, pipelined; bounded by LISTING_DEADLINE_S."""
        try:
            async with asyncio.timeout(LISTING_DEADLINE_S):
                counters = await self._listed_counters(now)
                leases = await self._listed_leases()
                owners = await self._listed_owners()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"quota store: {type(exc).__name__}: {exc}") from exc
        return QuotaState(now, counters, leases, owners=owners)

    async def _scan(self, suffix: str) -> list[str]:
        """Every key `<prefix><suffix>`, `suffix` a glob (the prefix is matched literally)."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._keys.prefix) + suffix
        return sorted({text(k) async for k in self._client.scan_iter(match=pattern, count=1000)})

    def _tagged(self, raw_key: str, kind: str) -> tuple[str, str] | None:
        """(hash tag, rest) of `<prefix>{tag}:<kind>:<rest>`, or None for another key."""
        head = self._keys.prefix + "{"
        if not raw_key.startswith(head):
            return None
        tag, sep, rest = raw_key[len(head) :].partition("}:" + kind + ":")
        return (tag, rest) if sep and "}" not in tag else None

    async def _batched(self, keys: list[str], queue: Callable[[Any, str], object]) -> list[Any]:
        out: list[Any] = []
        for start in range(0, len(keys), LISTING_BATCH):
            pipe = self._client.pipeline(transaction=False)
            for key in keys[start : start + LISTING_BATCH]:
                _ = queue(pipe, key)
            out.extend(await pipe.execute())
        return out

    async def _listed_counters(self, now: float) -> tuple[CounterValue, ...]:
        found = [(k, t) for k in await self._scan("{*}:v:*") if (t := self._tagged(k, "v"))]
        out = []
        for _, (tag, key) in found:  # each read ends the counter's expired leases, as a reservation would
            raw = await self._value(keys=self._keys.counter(tag, key), args=[num(now)])
            _, z, a = self._keys.counter(tag, key)
            pipe = self._client.pipeline(transaction=False)
            _ = pipe.zrange(z, 0, -1, withscores=True)
            _ = pipe.hgetall(a)
            ends, amounts = await pipe.execute()
            by_id = {text(i): float(text(v)) for i, v in amounts.items()}
            shares = tuple(HeldShare(text(i), float(e), by_id.get(text(i), 0.0)) for i, e in ends)
            kind = CounterKind.HELD if shares else CounterKind.CUMULATIVE
            out.append(CounterValue(tag, key, kind, float(text(raw)), shares))
        return tuple(out)

    async def _listed_leases(self) -> tuple[LeaseState, ...]:
        keys = [k for k in await self._scan("{*}:lease:*") if self._tagged(k, "lease")]
        hashes = await self._batched(keys, lambda p, k: p.hgetall(k))
        out = []
        for key, raw in zip(keys, hashes, strict=True):
            tagged = self._tagged(key, "lease")
            fields = {text(k): text(v) for k, v in raw.items()}
            if tagged is None or not fields:
                continue
            out.append(_lease_state(tagged[0], tagged[1], fields))
        return tuple(out)

    async def _listed_owners(self) -> tuple[OwnerState, ...]:
        head = self._keys.prefix + "own:"
        keys = [k for k in await self._scan("own:*") if k.count(":", len(head)) == 1]
        values = await self._batched(keys, lambda p, k: p.get(k))
        out = []
        for key, raw in zip(keys, values, strict=True):
            if raw is None:
                continue
            upstream, _, job_id = key[len(head) :].partition(":")
            names = (unquote(upstream, errors=ENCODING_ERRORS), unquote(job_id, errors=ENCODING_ERRORS))
            out.append(OwnerState(*names, owner_from_json(raw), 0.0))
        return tuple(out)

    async def ping(self) -> None:
        """Raise BackendUnavailable unless the store answers within its deadline (for readiness)."""
        async with self._io():
            await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()


def _lease_state(tag: str, lease_id: str, fields: dict[str, str]) -> LeaseState:
    """A lease hash as quota_reserve.lua writes it (debits as `<kind>:<counter>`) and later scripts mark it."""
    debits = []
    for name, value in fields.items():
        kind, sep, counter = name.partition(":")
        if sep and kind in (CounterKind.HELD.value, CounterKind.CUMULATIVE.value):
            debits.append(Debit(counter, CounterKind(kind), float(value)))
    job = (fields["upstream"], fields["job"]) if fields.get("job") else None
    counters = tuple((d.key, d.kind) for d in debits)
    end, idem = float(fields.get("end", "0")), fields.get("idem") or None
    released, refunded = "released" in fields, "refunded" in fields
    return LeaseState(
        tag, lease_id, fields.get("tenant", ""), end, idem, tuple(debits), counters, released, refunded, job
    )
