"""Reconciliation: ask each scheduler about the jobs the gateway holds leases on; release the finished ones."""

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable

import aiohttp
from yarl import URL

from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.upstream import Upstream
from gateway.config.reconcile import ReconcileSettings
from gateway.core.records import followup_body
from gateway.core.tenants import Tenant

log = logging.getLogger(__name__)
# A status answer longer than this (a huge array job) is not read: the job stays held.
MAX_STATUS_BYTES = 8 * 1024 * 1024
RESULTS = ("released", "finished", "running", "unknown", "error")


class Reconciler:
    """Rounds of status requests, `batch` jobs at a time, oldest queued first.

    A round takes jobs from a queue refilled from the store's ownership records once it runs
    dry, so every owned job is asked about once per pass however many rounds a pass takes.
    Jobs seen over are not asked about again by this process; their ownership records lapse
    on their own schedule. Every failure is logged and counted and the round goes on.
    """

    def __init__(
        self,
        settings: ReconcileSettings,
        upstreams: list[Upstream],
        store: QuotaStore,
        ledger: LedgerWriter,
        policy: PolicyFiles,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.upstreams = {u.name: u for u in upstreams}
        self.store = store
        self.ledger = ledger
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self._queue: deque[tuple[str, str, str]] = deque()  # (upstream, tenant id, job id)
        self._over: set[tuple[str, str]] = set()  # (upstream, job id) the scheduler said are over
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run rounds every `interval_s` in the background (nothing when it is 0)."""
        if self.settings.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="exportgate-reconcile")
            self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        last: str | None = None  # the cause last logged with its traceback
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.run_once()
                last = None
            except Exception as exc:  # supervision boundary: one failed round must not end reconciliation
                self.metrics.reconcile.labels("error").inc()
                if repr(exc) != last:
                    log.exception("reconcile: a round failed unexpectedly; the next round runs as usual")
                    last = repr(exc)
                else:
                    log.error("reconcile: a round failed again (%r)", exc)

    async def run_once(self) -> dict[str, int]:
        """One round: up to `batch` jobs asked about; returns how many ended in each result."""
        if not self._queue:
            await self._refill()
        counts: Counter[str] = Counter()
        for _ in range(min(self.settings.batch, len(self._queue))):
            result = await self._check(*self._queue.popleft())
            counts[result] += 1
            self.metrics.reconcile.labels(result).inc()
        return dict(counts)

    async def _refill(self) -> None:
        owned: set[tuple[str, str]] = set()
        tenants = self.policy.registry.tenants
        for upstream in self.upstreams.values():
            adapter = upstream.adapter
            if adapter is None or upstream.session is None:
                continue
            for tenant_id in sorted(tenants):
                if upstream.missing_identity(tenants[tenant_id]):
                    continue  # never ask with the gateway's own identity
                try:
                    jobs = await self.store.owned_jobs(upstream.name, tenant_id)
                except BackendUnavailable as exc:
                    self._error("quota", f"owned jobs of {tenant_id} on {upstream.name}: {exc}")
                    self.metrics.reconcile.labels("error").inc()
                    continue
                for job_id in sorted(jobs, key=lambda j: (len(j), j)):  # Slurm's numeric ids oldest first
                    owned.add((upstream.name, job_id))
                    if (upstream.name, job_id) not in self._over and adapter.status_path(job_id) is not None:
                        self._queue.append((upstream.name, tenant_id, job_id))
        self._over &= owned  # forget jobs whose ownership has lapsed

    async def _check(self, upstream_name: str, tenant_id: str, job_id: str) -> str:
        upstream = self.upstreams[upstream_name]
        tenant = self.policy.registry.tenants.get(tenant_id)
        path = upstream.adapter.status_path(job_id) if upstream.adapter is not None else None
        if tenant is None or path is None or upstream.missing_identity(tenant):
            return "unknown"  # the registry changed since the queue was filled
        assert upstream.adapter is not None
        fetched = await self._fetch(upstream, tenant, path)
        if fetched is None:
            return "error"
        finished = upstream.adapter.finished(*fetched)
        if finished is None and fetched[0] >= 500:
            log.warning("reconcile: %s on %s answered %d", path, upstream_name, fetched[0])
            return "error"
        if finished is None:
            return "unknown"
        if not finished:
            return "running"
        now = self.clock()
        try:
            owner = await self.store.owner_of(upstream_name, job_id)
            if owner is None or owner.tenant_id != tenant_id:
                return "unknown"  # ownership lapsed or moved since the queue was filled
            released = await self.store.release_job(upstream_name, job_id, now)
        except BackendUnavailable as exc:
            self._error("quota", f"release of {job_id} on {upstream_name}: {exc}")
            return "error"
        self._over.add((upstream_name, job_id))
        if not released:
            return "finished"  # its lease had already ended, been cancelled or released
        body = followup_body("release", owner.lease.lease_id, now, tenant=tenant_id, upstream=upstream_name,
                             job_id=job_id, released=True, whole_job=True, reason="reconciled")  # fmt: skip
        try:
            await self.ledger.append(body, wait=False)
        except LedgerUnavailable as exc:
            # The store gave the capacity back; a rebuild without this record holds it again (safe).
            self._error("ledger", f"release record of {job_id} on {upstream_name}: {exc}")
        log.info("reconcile: job %s on %s is over; released lease %s", job_id, upstream_name, owner.lease.lease_id)
        return "released"

    async def _fetch(self, upstream: Upstream, tenant: Tenant, path: str) -> tuple[int, bytes] | None:
        """(status, body) of the status request, or None when the scheduler could not be asked."""
        assert upstream.session is not None
        headers = {
            **upstream.credential_headers(tenant),
            "X-Exportgate-Tenant": tenant.id,
            "Accept": "application/json",
            "Accept-Encoding": "identity",  # the session does not decompress
        }
        timeout = aiohttp.ClientTimeout(
            total=upstream.settings.connect_timeout_s + upstream.settings.timeout_s,
            connect=upstream.settings.connect_timeout_s,
        )
        try:
            async with upstream.session.get(
                URL(upstream.url_for(path), encoded=True), headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_STATUS_BYTES:
                        return response.status, b""  # unreadable: finished() says unknown
                return response.status, bytes(body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("reconcile: %s on %s could not be asked: %s", path, upstream.name, type(exc).__name__)
            return None

    def _error(self, backend: str, what: str) -> None:
        self.metrics.backend_errors.labels(backend).inc()
        log.error("reconcile: %s", what)


def _report_crash(task: "asyncio.Task[None]") -> None:
    """Rounds catch their own failures; anything that still ends the task is said loudly, not silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("reconcile: the background task stopped", exc_info=task.exception())
