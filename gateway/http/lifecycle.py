"""The gateway's long-lived parts, each opened and closed by one step of the proxy application's cleanup_ctx.

A step is an async generator: what comes before its `yield` opens the part and stores it under
its `web.AppKey`, what comes after closes it. aiohttp enters the steps in the order of PARTS
while the proxy runner is set up, before its listener opens, and leaves them in reverse once
the listener has closed and its in-flight requests have had `shutdown.grace_s`:

    policy -> auth -> ledger -> upstreams -> Slurm facts -> Ray capacity -> quota store and its readiness probe
           -> memory store rebuilt from the ledger -> pipeline -> reconciler

so the ledger opens before the store is rebuilt from it, the rebuild ends before any listener
opens, the reconciler starts only when the ledger opened, and the ledger closes (writing its
closing checkpoint) after the reconciler, the store and the upstreams that could still record.
"""

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.adapters.auth import Authenticator
from gateway.adapters.background import cancel_and_wait
from gateway.adapters.ledger.signing import KeyFileError, Signer, load_signer
from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.quota_memory import MemoryQuotaStore
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.adapters.ray_capacity import RayCapacitySource, reads_capacity
from gateway.adapters.rebuild import rebuild_store
from gateway.adapters.slurm_facts import SlurmFactsSource
from gateway.adapters.snapshot_task import SNAPSHOT_AT_STOP_S, gateway_snapshots
from gateway.adapters.upstream import Upstream
from gateway.config.settings import QuotaSettings, Settings
from gateway.config.upstreams import UpstreamSettings
from gateway.http.ext_authz_grpc import ExtAuthzServer
from gateway.http.proxy import DECISIONS, PIPELINE, Parts, build_decisions, build_pipeline
from gateway.http.reconcile import Reconciler
from gateway.schedulers import RayAdapter, SchedulerAdapter, SlurmAdapter, build_adapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Base:
    """What every part is built from; set on the application before it starts."""

    settings: Settings
    env: Mapping[str, str]
    clock: Callable[[], float]
    metrics: Metrics


class StoreProbe:
    """Readiness follows the store within about a second; requests do not wait for the probe."""

    def __init__(self, store: QuotaStore, every_s: float = 1.0) -> None:
        self.store = store
        self.every_s = every_s
        self.ok = False
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        try:
            await self.store.ping()
        except BackendUnavailable as exc:
            if self.ok or self._task is None:
                log.warning("quota store unreachable: %s; job submissions are refused until it answers", exc)
            self.ok = False
            return
        if not self.ok and self._task is not None:
            log.info("quota store answers again")
        self.ok = True

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.check()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """One probe now, then one every `every_s` until the block ends."""
        await self.check()
        self._task = asyncio.create_task(self._forever(), name="quota-probe")
        try:
            yield
        finally:
            await cancel_and_wait(self._task)


BASE = web.AppKey("base", Base)
POLICY = web.AppKey("policy", PolicyFiles)
AUTH = web.AppKey("auth", Authenticator)
LEDGER = web.AppKey("ledger", LedgerWriter)
LEDGER_OPEN = web.AppKey("ledger_open", bool)  # False when the signing key or the directory failed
UPSTREAMS: web.AppKey[list[Upstream]] = web.AppKey("upstreams")
STORE: web.AppKey[QuotaStore] = web.AppKey("store")
PROBE = web.AppKey("store_probe", StoreProbe)
RECONCILER = web.AppKey("reconciler", Reconciler)
ENVOY_GRPC = web.AppKey("envoy_grpc", ExtAuthzServer)
SLURM_FACTS: web.AppKey[list[SlurmFactsSource]] = web.AppKey("slurm_facts")
RAY_CAPACITY: web.AppKey[list[RayCapacitySource]] = web.AppKey("ray_capacity")


def adapter_for(upstream: UpstreamSettings) -> SchedulerAdapter | None:
    """The scheduler adapter an upstream names (None for a plain `scheduler: none` proxy)."""
    return None if upstream.options is None else build_adapter(upstream.scheduler, upstream.options)


def publish_policy(metrics: Metrics, policy: PolicyFiles) -> None:
    pack = policy.pack
    metrics.policy_info.info({"pack": pack.name, "version": pack.version, "hash": pack.content_hash})


async def policy_files(app: web.Application) -> AsyncIterator[None]:
    base, s = app[BASE], app[BASE].settings

    def on_reload(result: str) -> None:
        base.metrics.config_reloads.labels(result).inc()
        if result == "ok":
            publish_policy(base.metrics, app[POLICY])

    app[POLICY] = policy = PolicyFiles(s.pack_dir, s.registry_file, on_reload)
    publish_policy(base.metrics, policy)
    policy.start_watching(s.reload_interval_s)  # its first look comes one interval later
    yield
    await policy.stop()


async def authenticator(app: web.Application) -> AsyncIterator[None]:
    base, issuers = app[BASE], app[BASE].settings.issuers
    on_refresh: Callable[[str], None] = lambda result: base.metrics.jwks_refresh.labels(result).inc()  # noqa: E731
    app[AUTH] = auth = Authenticator(issuers, clock=base.clock, on_refresh=on_refresh)
    await auth.start()
    if not issuers:
        log.warning("no token issuer configured (auth.issuers or EXPORTGATE_JWKS): every request gets 401")
    yield
    await auth.close()


async def ledger(app: web.Application) -> AsyncIterator[None]:
    base = app[BASE]
    signer, signing_ok = _signer(base.settings)
    app[LEDGER] = writer = _ledger_writer(base, signer)
    app[LEDGER_OPEN] = False
    # A dead or stuck writer shows at the next scrape.
    base.metrics.ledger_writer_up.set_function(lambda: 1.0 if writer.running else 0.0)
    base.metrics.ledger_oldest_pending.set_function(writer.oldest_pending_s)
    if signing_ok:
        try:
            await writer.open()
            app[LEDGER_OPEN] = True
        except (OSError, LedgerUnavailable) as exc:
            log.error("ledger %s cannot be opened: %s; job submissions will be refused", base.settings.ledger.dir, exc)
    yield
    if app[LEDGER_OPEN]:
        await writer.close()  # the closing checkpoint


async def upstreams(app: web.Application) -> AsyncIterator[None]:
    base = app[BASE]
    app[UPSTREAMS] = started = []
    try:
        for u in base.settings.upstreams:
            adapter = adapter_for(u)
            upstream = Upstream(u, (*(adapter.routes() if adapter else ()), *u.routes), adapter)
            await upstream.start(base.env, tls_reload_s=base.settings.reload_interval_s)
            started.append(upstream)
        yield
    finally:
        for upstream in started:
            await upstream.close()


async def slurm_facts(app: web.Application) -> AsyncIterator[None]:
    """Each Slurm upstream's nodes and partitions, read from slurmrestd now and refreshed in the background;
    its adapter prices with the newest snapshot (a start-up without them only refuses jobs that need them)."""
    app[SLURM_FACTS] = sources = []
    try:
        for upstream in app[UPSTREAMS]:
            if isinstance(upstream.adapter, SlurmAdapter):
                source = SlurmFactsSource(upstream, upstream.adapter)
                upstream.adapter = dataclasses.replace(upstream.adapter, facts=source.snapshot)
                sources.append(source)
                await source.start()
        yield
    finally:
        for source in sources:
            await source.stop()


async def ray_capacity(app: web.Application) -> AsyncIterator[None]:
    """Each Ray upstream's GPUs per model, read from its dashboard now and refreshed in the background, when
    it prices jobs at its cluster and `cluster_gpus` does not say the cluster (configured capacity wins)."""
    app[RAY_CAPACITY] = sources = []
    try:
        for upstream in app[UPSTREAMS]:
            if isinstance(upstream.adapter, RayAdapter) and reads_capacity(upstream.adapter.options):
                source = RayCapacitySource(upstream, upstream.adapter.options)
                upstream.adapter = dataclasses.replace(upstream.adapter, capacity=source.snapshot)
                sources.append(source)
                await source.start()
        yield
    finally:
        for source in sources:
            await source.stop()


async def quota_store(app: web.Application) -> AsyncIterator[None]:
    app[STORE] = store = _quota_store(app[BASE].settings.quota)
    app[PROBE] = probe = StoreProbe(store)
    try:
        async with probe.running():
            yield
    finally:
        await store.close()


async def rebuilt_memory_store(app: web.Application) -> AsyncIterator[None]:
    """A restarted single process keeps its quotas: the ledger is the source of truth.

    Runs before the listeners open. A Redis store outlives the process and is rebuilt
    on demand (`exportgate quota rebuild`), never at start-up.
    """
    base, store = app[BASE], app[STORE]
    snapshots = None
    if isinstance(store, MemoryQuotaStore) and app[LEDGER_OPEN]:
        # With a signing key: start from the newest quota snapshot, and write new ones while serving.
        trust, snapshots = gateway_snapshots(base.settings.ledger, app[LEDGER], base.clock)
        state, how = await rebuild_store(store, base.settings.ledger.dir, base.clock(), trust)
        log.info(
            "quota: rebuilt %d counters, %d leases, %d owned jobs from %s",
            len(state.counters), len(state.leases), len(state.owners), how.describe(),
        )  # fmt: skip
        if snapshots is not None:
            snapshots.start()
    yield
    if snapshots is not None:
        await snapshots.stop(SNAPSHOT_AT_STOP_S)


async def pipeline(app: web.Application) -> AsyncIterator[None]:
    base = app[BASE]
    parts = Parts(
        base.settings, app[POLICY], app[AUTH], app[LEDGER], base.metrics, app[UPSTREAMS], app[STORE], base.clock,
        base.env,
    )  # fmt: skip
    app[PIPELINE] = build_pipeline(parts)
    app[DECISIONS] = build_decisions(parts)
    yield


async def reconciler(app: web.Application) -> AsyncIterator[None]:
    base = app[BASE]
    app[RECONCILER] = reconciler = Reconciler(
        base.settings.reconcile, app[UPSTREAMS], app[STORE], app[LEDGER], app[POLICY], base.metrics, base.clock,
        webhook=base.settings.admission_webhook,
    )  # fmt: skip
    if app[LEDGER_OPEN]:  # no audit, no action: releases are recorded
        reconciler.start()
    yield
    await reconciler.stop()


async def envoy_grpc(app: web.Application) -> AsyncIterator[None]:
    """Envoy's ext_authz gRPC listener (`envoy_grpc:`), asking the decision core; the first part to close.

    Server.stop closes its port with the proxy's (begin_stop), so its in-flight Checks finish while
    the proxy's requests do, and the parts they record through close after both.
    """
    s = app[BASE].settings
    if s.envoy_grpc is None:
        yield
        return
    app[ENVOY_GRPC] = server = ExtAuthzServer(
        app[DECISIONS], s.envoy_grpc.host, s.envoy_grpc.port, max_body_bytes=s.limits.max_body_bytes,
        max_concurrent=s.limits.max_connections, reuse_port=s.workers > 1,
    )  # fmt: skip
    await server.start()
    log.info("envoy ext_authz gRPC listening on %s", server.address)
    try:
        yield
    finally:
        await server.stop(s.shutdown.grace_s / 2)


PARTS = (
    policy_files, authenticator, ledger, upstreams, slurm_facts, ray_capacity,
    quota_store, rebuilt_memory_store, pipeline, reconciler, envoy_grpc,
)  # fmt: skip


def _quota_store(q: QuotaSettings) -> QuotaStore:
    if q.store == "redis":
        assert q.redis_url is not None
        return RedisQuotaStore.from_url(q.redis_url, cluster=q.cluster, timeout_s=q.timeout_s, prefix=q.prefix)
    return MemoryQuotaStore()


def _signer(settings: Settings) -> tuple[Signer | None, bool]:
    """The signing key, and False when one is configured but cannot be loaded (then the ledger stays closed)."""
    path = settings.ledger.signing_key_file
    if path is None:
        return None, True
    try:
        return load_signer(path), True
    except KeyFileError as exc:
        log.error("ledger signing key: %s; the ledger stays closed and job submissions are refused", exc)
        return None, False


def _ledger_writer(base: Base, signer: Signer | None) -> LedgerWriter:
    s, metrics = base.settings.ledger, base.metrics

    def on_commit(records: int, seconds: float) -> None:
        metrics.ledger_records.inc(records)
        metrics.ledger_commit_seconds.observe(seconds)

    def on_checkpoint(record: dict[str, Any]) -> None:
        """Publish each checkpoint outside the ledger directory: a metric and a log line."""
        instance, seq, digest = str(record["instance"]), int(record["seq"]), str(record["hash"])
        metrics.ledger_head_seq.labels(instance).set(seq)  # one series per chain: the seq is its value
        metrics.ledger_checkpoint_time.labels(instance).set(float(record["ts"]))
        fields = {"ledger_instance": instance, "seq": seq, "hash": digest, "key_id": str(record["key_id"])}
        log.info("ledger checkpoint: instance=%s seq=%d hash=%s key=%s", instance, seq, digest, record["key_id"],
                 extra=fields)  # fmt: skip

    # LedgerWriter's own keyword list is being regrouped in adapters/ledger/writer.py; this call follows it.
    return LedgerWriter(
        s.dir,
        base.settings.instance_id,
        batch_window_s=s.batch_window_s,
        max_batch=s.max_batch,
        queue_limit=s.queue_limit,
        on_commit=on_commit,
        on_error=metrics.ledger_errors.inc,
        segment_max_bytes=s.segment_max_bytes,
        segment_max_age_s=s.segment_max_age_s,
        signer=signer,
        checkpoint_every_records=s.checkpoint_every_records,
        checkpoint_every_s=s.checkpoint_every_s,
        anchor_dir=s.anchor_dir,
        on_checkpoint=on_checkpoint,
        clock=base.clock,
        stall_after_s=s.stall_after_s,
    )
