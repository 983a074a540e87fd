"""Assemble the gateway from Settings and run its two listeners (proxy and admin)."""

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from gateway.adapters.auth import Authenticator
from gateway.adapters.ledger.signing import KeyFileError, load_signer
from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.quota_memory import MemoryQuotaStore
from gateway.adapters.quota_redis import RedisQuotaStore
from gateway.adapters.rebuild import rebuild_store
from gateway.adapters.upstream import Upstream
from gateway.config.admin import load_admin_tokens
from gateway.config.settings import Settings
from gateway.config.upstreams import UpstreamSettings
from gateway.http import client_faults
from gateway.http.admin import admin_app
from gateway.http.admin_api import AdminApi
from gateway.http.connections import Guard, GuardedSite
from gateway.http.pipeline import Pipeline
from gateway.http.proxy import build_pipeline, proxy_app
from gateway.http.reconcile import Reconciler
from gateway.schedulers import SchedulerAdapter, build_adapter

log = logging.getLogger(__name__)
LINGER_S = 2.0


def adapter_for(upstream: UpstreamSettings) -> SchedulerAdapter | None:
    """The scheduler adapter an upstream names (None for a plain `scheduler: none` proxy)."""
    return None if upstream.options is None else build_adapter(upstream.scheduler, upstream.options)


class Server:
    """The running gateway: start() binds both listeners, stop() drains and closes."""

    def __init__(
        self, settings: Settings, *, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.env = dict(os.environ) if env is None else dict(env)
        self.clock = clock
        self.metrics = Metrics()
        self.policy: PolicyFiles | None = None
        self.auth: Authenticator | None = None
        self.ledger: LedgerWriter | None = None
        self.pipeline: Pipeline | None = None
        self.store: QuotaStore | None = None
        self.upstreams: list[Upstream] = []
        self.reconciler: Reconciler | None = None
        self._runners: list[web.AppRunner] = []
        self._ledger_ok = False
        self._store_ok = False
        self._probe: asyncio.Task[None] | None = None
        self.draining = False
        self.guard = Guard(
            settings.limits,
            on_open=self.metrics.connections_open.set,
            on_refused=lambda reason: self.metrics.connections_refused.labels(reason).inc(),
        )

    def ready(self) -> dict[str, bool]:
        """Each part of readiness; `quota` is reported even when it is not required."""
        return {
            "config": self.policy is not None,
            "keys": bool(self.settings.issuers) and self.auth is not None and self.auth.ready,
            "ledger": self._ledger_ok and self.ledger is not None and self.ledger.healthy,
            "quota": self._store_ok,
            "serving": not self.draining,
        }

    def readiness(self) -> tuple[bool, dict[str, bool]]:
        """Whether /readyz answers 200, and the parts it reports."""
        parts = self.ready()
        required = {k: v for k, v in parts.items() if k != "quota" or self.settings.quota.required_for_ready}
        return all(required.values()), parts

    def _publish_readiness(self) -> float:
        ok, parts = self.readiness()
        for part, value in parts.items():
            self.metrics.ready_part.labels(part).set(1.0 if value else 0.0)
        return 1.0 if ok else 0.0

    async def start(self) -> None:
        s = self.settings
        self.policy = PolicyFiles(s.pack_dir, s.registry_file, self._on_reload)
        self._publish_policy()
        self.metrics.ready.set_function(self._publish_readiness)
        self.auth = Authenticator(
            s.issuers,
            clock=self.clock,
            on_refresh=lambda result: self.metrics.jwks_refresh.labels(result).inc(),
        )
        await self.auth.start()
        if not s.issuers:
            log.warning("no token issuer configured (auth.issuers or EXPORTGATE_JWKS): every request gets 401")
        self.ledger, signing_ok = self._ledger_writer()
        ledger = self.ledger  # a dead or stuck writer shows at the next scrape
        self.metrics.ledger_writer_up.set_function(lambda: 1.0 if ledger.running else 0.0)
        self.metrics.ledger_oldest_pending.set_function(ledger.oldest_pending_s)
        try:
            if signing_ok:
                await self.ledger.open()
                self._ledger_ok = True
        except (OSError, LedgerUnavailable) as exc:
            log.error("ledger %s cannot be opened: %s; job submissions will be refused", s.ledger.dir, exc)
        for u in s.upstreams:
            adapter = adapter_for(u)
            upstream = Upstream(u, (*(adapter.routes() if adapter else ()), *u.routes), adapter)
            await upstream.start(self.env)
            self.upstreams.append(upstream)
        self.store = self._quota_store()
        await self._probe_store()
        self._probe = asyncio.create_task(self._probe_store_forever(), name="quota-probe")
        await self._rebuild_memory_store()
        self.pipeline = build_pipeline(
            s, self.policy, self.auth, self.ledger, self.metrics, self.upstreams, self.store, self.clock
        )
        proxy = proxy_app(self.pipeline, s.max_body_bytes)
        proxy.on_response_prepare.append(self._close_when_draining)
        # Several workers share the proxy port; the kernel spreads connections among them.
        await self._listen_guarded(proxy, s.listen_host, s.listen_port, reuse_port=s.workers > 1)
        api = None
        if s.admin_tokens_file is not None:
            tokens = load_admin_tokens(s.admin_tokens_file)
            api = AdminApi(tokens, self.store, self.ledger, [u.name for u in s.upstreams], self.clock)
        await self._listen(admin_app(self.metrics, self.readiness, api), s.admin_host, s.admin_port)
        self.policy.start_watching(s.reload_interval_s)
        self.reconciler = Reconciler(
            s.reconcile, self.upstreams, self.store, self.ledger, self.policy, self.metrics, self.clock
        )
        if self._ledger_ok:  # no audit, no action: releases are recorded
            self.reconciler.start()

    def _quota_store(self) -> QuotaStore:
        q = self.settings.quota
        if q.store == "redis":
            assert q.redis_url is not None
            return RedisQuotaStore.from_url(q.redis_url, cluster=q.cluster, timeout_s=q.timeout_s, prefix=q.prefix)
        return MemoryQuotaStore()

    async def _probe_store(self) -> None:
        assert self.store is not None
        try:
            await self.store.ping()
        except BackendUnavailable as exc:
            if self._store_ok or self._probe is None:
                log.warning("quota store unreachable: %s; job submissions are refused until it answers", exc)
            self._store_ok = False
            return
        if not self._store_ok and self._probe is not None:
            log.info("quota store answers again")
        self._store_ok = True

    async def _probe_store_forever(self, every_s: float = 1.0) -> None:
        """Readiness follows the store within about a second; requests do not wait for the probe."""
        while True:
            await asyncio.sleep(every_s)
            await self._probe_store()

    async def _close_when_draining(self, request: web.Request, response: web.StreamResponse) -> None:
        """While draining, every answer closes its connection so clients reconnect to a pod that stays."""
        if self.draining:  # aiohttp has computed the headers by now: set both the header and the state
            response.force_close()
            response.headers["Connection"] = "close"

    async def _rebuild_memory_store(self) -> None:
        """A restarted single process keeps its quotas: the ledger is the source of truth.

        Runs before the listeners open. A Redis store outlives the process and is rebuilt
        on demand (`exportgate quota rebuild`), never at start-up.
        """
        if not isinstance(self.store, MemoryQuotaStore) or not self._ledger_ok:
            return
        state = await rebuild_store(self.store, self.settings.ledger.dir, self.clock())
        log.info(
            "quota: rebuilt %d counters, %d leases, %d owned jobs from the ledger",
            len(state.counters), len(state.leases), len(state.owners),
        )  # fmt: skip

    def _ledger_writer(self) -> tuple[LedgerWriter, bool]:
        """The writer, and False when a configured signing key cannot be loaded (then it stays closed)."""
        s = self.settings.ledger
        signer = None
        if s.signing_key_file is not None:
            try:
                signer = load_signer(s.signing_key_file)
            except KeyFileError as exc:
                log.error("ledger signing key: %s; the ledger stays closed and job submissions are refused", exc)
        writer = LedgerWriter(
            s.dir,
            self.settings.instance_id,
            batch_window_s=s.batch_window_s,
            max_batch=s.max_batch,
            queue_limit=s.queue_limit,
            on_commit=self._on_commit,
            on_error=self.metrics.ledger_errors.inc,
            segment_max_bytes=s.segment_max_bytes,
            segment_max_age_s=s.segment_max_age_s,
            signer=signer,
            checkpoint_every_records=s.checkpoint_every_records,
            checkpoint_every_s=s.checkpoint_every_s,
            anchor_dir=s.anchor_dir,
            on_checkpoint=self._on_checkpoint,
            clock=self.clock,
            stall_after_s=s.stall_after_s,
        )
        return writer, signer is not None or s.signing_key_file is None

    def _on_checkpoint(self, record: dict[str, Any]) -> None:
        """Publish each checkpoint outside the ledger directory: a metric and a log line."""
        instance, seq, digest = str(record["instance"]), int(record["seq"]), str(record["hash"])
        self.metrics.ledger_head.labels(instance).info({"hash": digest, "seq": str(seq)})
        self.metrics.ledger_checkpoint_time.labels(instance).set(float(record["ts"]))
        log.info("ledger checkpoint: instance=%s seq=%d hash=%s key=%s", instance, seq, digest, record["key_id"])

    def _on_reload(self, result: str) -> None:
        self.metrics.config_reloads.labels(result).inc()
        if result == "ok":
            self._publish_policy()

    def _publish_policy(self) -> None:
        assert self.policy is not None
        pack = self.policy.pack
        self.metrics.policy_info.info({"pack": pack.name, "version": pack.version, "hash": pack.content_hash})

    def _on_commit(self, records: int, seconds: float) -> None:
        self.metrics.ledger_records.inc(records)
        self.metrics.ledger_commit_seconds.observe(seconds)

    async def _listen(self, app: web.Application, host: str, port: int, *, reuse_port: bool = False) -> None:
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.settings.shutdown.grace_s
        )
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse_port or None).start()
        self._runners.append(runner)

    async def _listen_guarded(self, app: web.Application, host: str, port: int, *, reuse_port: bool) -> None:
        """The proxy listener: connection cap, head deadline and idle keep-alive from `limits`."""
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=self.settings.shutdown.grace_s
        )
        await runner.setup()
        client_faults.install()  # aiohttp's own 400s and hang-ups: INFO lines, not ERROR tracebacks
        handler_args = {
            "access_log": None,
            "keepalive_timeout": self.settings.limits.idle_timeout_s,
            # Bodies pass as sent: the adapter decodes gzip once, bounded, and the upstream gets the same bytes.
            "auto_decompress": False,
            # After a refusal that leaves a body unread (413, 408), aiohttp reads and discards the rest
            # before closing so the client sees the answer, not a reset; bound it so a slow body cannot hold on.
            "lingering_time": LINGER_S,
        }
        await GuardedSite(runner, host, port, self.guard, reuse_port=reuse_port, handler_args=handler_args).start()
        self._runners.append(runner)

    async def drain(self) -> None:
        """SIGTERM: turn unready at once and keep serving for `shutdown.drain_s` while balancers notice."""
        self.draining = True
        log.info("draining: unready, serving for %.1f s before closing the listeners", self.settings.shutdown.drain_s)
        await asyncio.sleep(self.settings.shutdown.drain_s)

    async def reload(self) -> None:
        """SIGHUP: reload registry, pack and key sets; invalid files keep the last good ones."""
        if self.policy is not None:
            self.policy.reload()
        if self.auth is not None:
            await self.auth.reload()

    async def stop(self) -> None:
        """Close the listeners (in-flight requests get `shutdown.grace_s`), then the parts they used."""
        self.draining = True
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self.policy is not None:
            await self.policy.stop()
        for upstream in self.upstreams:
            await upstream.close()
        if self.auth is not None:
            await self.auth.close()
        if self.store is not None:
            await self.store.close()
        if self.ledger is not None and self._ledger_ok:
            await self.ledger.close()


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads."""
    server = Server(settings)
    await server.start()
    log.info(
        "exportgate listening on %s:%d (admin %s:%d)",
        settings.listen_host,
        settings.listen_port,
        settings.admin_host,
        settings.admin_port,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task[None]] = set()  # keep a reference until each reload finishes

    def on_sighup() -> None:
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await stop.wait()
        loop.remove_signal_handler(signal.SIGTERM)  # a second SIGTERM must not restart the drain
        await server.drain()
    finally:
        started = time.monotonic()
        await server.stop()
        log.info("stopped in %.1f s after the drain", time.monotonic() - started)
