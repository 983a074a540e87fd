"""Assemble the gateway from Settings and run its two listeners (proxy and admin).

The long-lived parts belong to the proxy application: its cleanup_ctx opens them before the
proxy listener opens and closes them after it has closed (see gateway.http.lifecycle). The
admin listener opens after the proxy one and closes before it, so every part outlives both.
"""

import asyncio
import gc
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from gateway.adapters.auth import Authenticator
from gateway.adapters.ledger.writer import LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import QuotaStore
from gateway.adapters.tls_files import ServerTls
from gateway.config.admin import load_admin_tokens
from gateway.config.listener import ListenerTls
from gateway.config.settings import Settings
from gateway.http import client_faults
from gateway.http.admin import admin_app
from gateway.http.admin_api import AdminApi
from gateway.http.connections import Guard, GuardedSite
from gateway.http.decision_http import decision_app
from gateway.http.explain import Explainer
from gateway.http.headers import hide_server_software
from gateway.http.lifecycle import (
    AUTH,
    BASE,
    ENVOY_GRPC,
    LEDGER,
    LEDGER_OPEN,
    PARTS,
    POLICY,
    PROBE,
    RECONCILER,
    STORE,
    UPSTREAMS,
    Base,
)
from gateway.http.proxy import DECISIONS, proxy_app
from gateway.http.reconcile import Reconciler
from gateway.http.webhook_app import webhook_app

log = logging.getLogger(__name__)
LINGER_S = 2.0
GC_THRESHOLDS = (10_000, 5, 10)  # young allocations, young passes per middle, middle per full (default 700, 10, 10)
PARTS_CLOSE_S = 10.0  # beyond shutdown.grace_s, for the parts to close (the ledger's closing checkpoint)


class Server:
    """The running gateway: start() binds both listeners, stop() drains and closes."""

    def __init__(
        self, settings: Settings, *, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.env = dict(os.environ) if env is None else dict(env)
        self.clock = clock
        self.metrics = Metrics()
        self.draining = False
        self.guard = Guard(
            settings.limits,
            on_open=self.metrics.connections_open.set,
            on_refused=lambda reason: self.metrics.connections_refused.labels(reason).inc(),
        )
        self.app = proxy_app(settings.limits.max_body_bytes)
        self.app[BASE] = Base(settings, self.env, clock, self.metrics)
        self.app.cleanup_ctx.extend(PARTS)
        self.app.on_response_prepare.append(self._close_when_draining)
        self.app.on_response_prepare.append(hide_server_software)
        self._runners: list[web.AppRunner] = []
        self._tls: list[ServerTls] = []  # the listeners' certificates, each reloaded when renewed

    # The parts, once start() has opened them (KeyError before).
    @property
    def policy(self) -> PolicyFiles:
        return self.app[POLICY]

    @property
    def auth(self) -> Authenticator:
        return self.app[AUTH]

    @property
    def ledger(self) -> LedgerWriter:
        return self.app[LEDGER]

    @property
    def store(self) -> QuotaStore:
        return self.app[STORE]

    @property
    def reconciler(self) -> Reconciler:
        return self.app[RECONCILER]

    def ready(self) -> dict[str, bool]:
        """Each part of readiness; `quota` is reported even when it is not required."""
        auth, ledger, probe = self.app.get(AUTH), self.app.get(LEDGER), self.app.get(PROBE)
        return {
            "config": POLICY in self.app,
            "keys": bool(self.settings.issuers) and auth is not None and auth.ready,
            "ledger": self.app.get(LEDGER_OPEN, False) and ledger is not None and ledger.healthy,
            "quota": probe is not None and probe.ok,
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
        """Open the parts and the proxy listener, then the admin one; on failure close what opened."""
        s = self.settings
        self.metrics.ready.set_function(self._publish_readiness)
        try:
            # Several workers share the proxy port; the kernel spreads connections among them.
            proxy_tls = self._server_tls("proxy", s.listen_tls)
            await self._listen_guarded(self.app, s.listen_host, s.listen_port, reuse_port=s.workers > 1, tls=proxy_tls)
            admin_tls = self._server_tls("admin", s.admin_tls)
            await self._listen(self.admin_application(), s.admin_host, s.admin_port, ssl_context=admin_tls)
            if s.decision is not None:  # nginx auth_request and Envoy ext_authz HTTP ask here
                entries = decision_app(self.app[DECISIONS], s.trusted_proxies, s.limits)
                await self._listen(entries, s.decision.host, s.decision.port, reuse_port=s.workers > 1,
                                   ssl_context=self._server_tls("decision", s.decision.tls))  # fmt: skip
            if s.admission_webhook is not None:  # the Kubernetes API server asks here, over HTTPS
                hook, tls = webhook_app(self.app)
                w = s.admission_webhook
                await self._listen(hook, w.host, w.port, reuse_port=s.workers > 1, ssl_context=tls)
        except BaseException:
            await self.stop()
            raise

    def _server_tls(self, label: str, tls: ListenerTls | None) -> ssl.SSLContext | None:
        """A listener's TLS context (None: plain HTTP), its files looked at again every `reload.interval_s`."""
        if tls is None:
            return None
        served = ServerTls(tls.cert_file, tls.key_file, tls.client_ca_file, label=label)  # raises TlsFilesError
        served.watch(self.settings.reload_interval_s)
        self._tls.append(served)
        return served.context

    def admin_application(self) -> web.Application:
        """The admin listener's application: metrics, health, and the operator API when tokens are configured."""
        return admin_app(self.metrics, self.readiness, self._admin_api())

    def _admin_api(self) -> AdminApi | None:
        s = self.settings
        if s.admin_tokens_file is None:
            return None
        tokens = load_admin_tokens(s.admin_tokens_file)
        explainer = Explainer(self.policy, self.app[UPSTREAMS], self.store, s.limits, auth=self.auth, clock=self.clock)
        return AdminApi(
            tokens, self.store, self.ledger, [u.name for u in s.upstreams], self.clock, policy=self.policy,
            explainer=explainer, ledger_dir=s.ledger.dir, reload=self.reload,
        )  # fmt: skip

    async def _close_when_draining(self, request: web.Request, response: web.StreamResponse) -> None:
        """While draining, every answer closes its connection so clients reconnect to a pod that stays."""
        if self.draining:  # aiohttp has computed the headers by now: set both the header and the state
            response.force_close()
            response.headers["Connection"] = "close"

    def _runner(self, app: web.Application) -> web.AppRunner:
        """A runner kept for stop() before its setup, so a start-up that fails halfway still closes its parts."""
        runner = web.AppRunner(
            # aiohttp spends its shutdown timeout twice (waiting for handlers, then after cancelling
            # them): half of grace_s each keeps the whole stop within grace_s.
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.settings.shutdown.grace_s / 2,
        )
        self._runners.append(runner)
        return runner

    async def _listen(
        self, app: web.Application, host: str, port: int, *, reuse_port: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        runner = self._runner(app)
        await runner.setup()
        reuse = reuse_port or None
        await web.TCPSite(runner, host, port, reuse_address=True, reuse_port=reuse, ssl_context=ssl_context).start()

    async def _listen_guarded(
        self, app: web.Application, host: str, port: int, *, reuse_port: bool, tls: ssl.SSLContext | None
    ) -> None:
        """The proxy listener: connection cap, head deadline and idle keep-alive from `limits`."""
        runner = self._runner(app)
        await runner.setup()  # enters the cleanup_ctx: every part is open once this returns
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
        site = GuardedSite(runner, host, port, self.guard, reuse_port=reuse_port, handler_args=handler_args,
                           ssl_context=tls)  # fmt: skip
        await site.start()

    async def drain(self) -> None:
        """SIGTERM: turn unready at once and keep serving for `shutdown.drain_s` while balancers notice."""
        self.draining = True
        log.info("draining: unready, serving for %.1f s before closing the listeners", self.settings.shutdown.drain_s)
        await asyncio.sleep(self.settings.shutdown.drain_s)

    async def reload(self) -> bool:
        """SIGHUP (and the admin API's reload): registry, pack and key sets; invalid files keep the last good ones.

        False when the registry or pack was refused."""
        accepted = True
        if (policy := self.app.get(POLICY)) is not None:
            accepted = policy.reload()
        if (auth := self.app.get(AUTH)) is not None:
            await auth.reload()
        return accepted

    async def stop(self) -> None:
        """Close the admin listener, then the proxy one (in-flight requests get `shutdown.grace_s`).

        Closing the proxy runner leaves its cleanup_ctx: the parts close in reverse, the ledger
        with its closing checkpoint after everything that could still record.
        """
        self.draining = True
        if (grpc := self.app.get(ENVOY_GRPC)) is not None:  # its port closes now; its parts step awaits the rest
            grpc.begin_stop(self.settings.shutdown.grace_s / 2)
        while self._runners:
            await self._runners.pop().cleanup()
        while self._tls:
            await self._tls.pop().stop()


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads."""
    server = Server(settings)
    await server.start()
    settle_garbage_collector()
    log.info(
        "exportgate listening on %s://%s:%d (admin %s://%s:%d)",
        "https" if settings.listen_tls else "http",
        settings.listen_host,
        settings.listen_port,
        "https" if settings.admin_tls else "http",
        settings.admin_host,
        settings.admin_port,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task[bool]] = set()  # keep a reference until each reload finishes

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
        deadline = settings.shutdown.grace_s + PARTS_CLOSE_S
        stopping = asyncio.ensure_future(server.stop())
        done, _ = await asyncio.wait({stopping}, timeout=deadline)
        if not done:
            _give_up(deadline)
        stopping.result()
        log.info("stopped in %.1f s after the drain", time.monotonic() - started)


def settle_garbage_collector() -> None:
    """Keep full collections off the request path once the gateway is up.

    CPython's full collections scan every tracked object; a serving gateway holds many (its
    policy, key sets, and the memory store's leases and ownership records), and a busy one made
    garbage cycles fast enough for a 90-150 ms full pass every couple of seconds, which set its
    p99. What start-up built is frozen out of every later collection, and the young generation
    is collected less often, so fewer objects are promoted into the old one.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    if not any(isinstance(cb, FreezeSurvivors) for cb in gc.callbacks):
        gc.callbacks.append(FreezeSurvivors())


class FreezeSurvivors:
    """After a full collection, freeze what survived it, so the next full pass scans only what came since.

    The state a busy gateway holds grows with its live leases: a memory store with 35,000 took a
    150-200 ms full pass, every few seconds at 1,000 submissions/s. Survivors of middle passes are
    frozen as well: after a burst of 25,000 submissions the first full pass scanned them all
    (160-285 ms, in the middle of the reads that came next); frozen a middle pass at a time, it
    took 19-39 ms (bench/peers_bench.py, submit then paced-read). Frozen objects are still
    freed by reference counting when dropped (a lease that ends, an expired idempotency record);
    a reference cycle among them is not, so every `thaw_every`-th full pass first thaws them all
    and collects the whole heap once, bounding what such cycles can hold.
    """

    def __init__(self, thaw_every: int = 20) -> None:
        self.thaw_every = thaw_every
        self.passes = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        generation = info.get("generation")
        if generation == 2 and phase == "start":
            self.passes += 1
            if self.passes % self.thaw_every == 0:
                gc.unfreeze()  # this pass scans everything: cycles among the frozen are collected
        elif generation in (1, 2) and phase == "stop":
            # Survivors of a middle pass are frozen too: a burst of submissions (thousands of new leases)
            # is then frozen a middle pass at a time, and never met by one full pass of hundreds of ms.
            gc.freeze()


def _give_up(deadline: float) -> None:
    """A stop that outlives its deadline: say where each task is stuck, then exit 1 rather than hang.

    The ledger has already written and flushed every record a decision waited for; what is lost
    is the closing checkpoint, which `exportgate ledger verify` reports as an unclosed segment.
    """
    stacks = []
    for task in asyncio.all_tasks():
        frames = "".join(f"\n    {f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}" for f in task.get_stack())
        stacks.append(f"  {task.get_name()}:{frames}")
    log.error("stop did not finish within %.1f s; exiting 1. Tasks still running:\n%s", deadline, "\n".join(stacks))
    logging.shutdown()
    os._exit(1)  # the loop's own teardown would wait on the same stuck tasks
