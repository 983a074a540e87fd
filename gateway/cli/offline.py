"""What `explain` and `usage` read without a running gateway: gateway.yaml, the pack and registry it names,
its upstreams' route tables and adapters (not connected), and the quota state from Redis or a ledger.

The quota state comes from `--redis URL` (or gateway.yaml's `quota.redis_url` with `store: redis`), else
from the ledger (`--ledger DIR`, or gateway.yaml's `ledger.dir`), rebuilt as a memory-store gateway
rebuilds it at start. Nothing is written to either.
"""

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.quota_memory import MemoryQuotaStore
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.adapters.rebuild import state_from_ledger
from gateway.adapters.upstream import Upstream
from gateway.config.located import ConfigError
from gateway.config.settings import Settings, load_settings
from gateway.http.lifecycle import adapter_for

T = TypeVar("T")


class Unusable(Exception):
    """What the command was given cannot be used (exit 1); the message says why."""


def add_sources(parser: argparse.ArgumentParser) -> None:
    """--config, and where the quota state is read from."""
    parser.add_argument("--config", type=Path, help="gateway.yaml (default: embedded defaults)")
    parser.add_argument("--ledger", type=Path, metavar="DIR", help="read the quota state from this ledger")
    parser.add_argument("--redis", metavar="URL", help="read the quota state from this Redis")
    parser.add_argument("--cluster", action="store_true", help="--redis names a Redis Cluster node")
    parser.add_argument("--prefix", help="Redis key prefix (default: gateway.yaml's quota.prefix)")


def usage_problem(args: argparse.Namespace) -> str | None:
    if args.cluster and not args.redis:
        return "--cluster needs --redis"
    if args.ledger is not None and args.redis is not None:
        return "give --ledger or --redis, not both"
    return None


@dataclass
class Offline:
    """The gateway's parts as `serve` would build them, unconnected, and the quota state."""

    settings: Settings
    policy: PolicyFiles
    upstreams: list[Upstream]
    store: QuotaStore
    source: str  # where the quota state was read: "redis URL" or "ledger DIR"
    ledger_dir: Path | None  # for recent decisions


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


@asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[Offline]:
    """The parts; raises ConfigError (gateway.yaml, pack, registry) or Unusable (a ledger that is not one)."""
    settings = load_settings(args.config)
    policy = PolicyFiles(settings.pack_dir, settings.registry_file)
    upstreams = []
    for u in settings.upstreams:
        adapter = adapter_for(u)
        upstreams.append(Upstream(u, (*(adapter.routes() if adapter else ()), *u.routes), adapter))
    q = settings.quota
    redis_url = args.redis or (q.redis_url if args.ledger is None and q.store == "redis" else None)
    store: QuotaStore
    if redis_url is not None:
        cluster = args.cluster or (args.redis is None and q.cluster)
        prefix = args.prefix or q.prefix
        store = RedisQuotaStore.from_url(redis_url, cluster=cluster, timeout_s=max(q.timeout_s, 2.0), prefix=prefix)
        source = f"redis {_redacted(redis_url)}"
        ledger_dir = settings.ledger.dir if settings.ledger.dir.is_dir() else None  # for recent decisions
    else:
        ledger_dir = args.ledger or settings.ledger.dir
        if args.ledger is not None and not args.ledger.is_dir():
            raise Unusable(f"{args.ledger}: not a ledger directory")
        store = MemoryQuotaStore()
        now = time.time()
        await store.restore(state_from_ledger(ledger_dir, now), now)
        source = f"ledger {ledger_dir}"
    try:
        yield Offline(settings, policy, upstreams, store, source, ledger_dir)
    finally:
        await store.close()


def run_offline(work: Coroutine[Any, Any, T]) -> T | None:
    """What `work` returns, or None once stderr says why it could not read its sources (exit 1): the
    problems in gateway.yaml, the pack or registry, or an unusable ledger, Redis or argument."""
    try:
        return asyncio.run(work)
    except ConfigError as exc:
        for found in exc.problems:
            print(found, file=sys.stderr)
    except (Unusable, BackendUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return None
