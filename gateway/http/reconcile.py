"""Reconciliation: ask each scheduler about the jobs the gateway holds leases on; hold the live ones, release the over.

A lease lives as long as its job: a job the scheduler reports pending or running has its lease
held further ahead (a pending job keeps its whole walltime ahead of it), and so does a job the
scheduler cannot be asked about (counted as `unconfirmed` and logged). Only the scheduler
saying a job is over (or gone) releases its lease. On a scheduler that does not enforce
walltime (Ray) a job running past its walltime plus `walltime_grace_s` is stopped through the
scheduler's API, recorded first; its lease ends when the scheduler reports it stopped.
"""

import asyncio
import logging
import math
from collections import Counter, deque
from collections.abc import Callable

import aiohttp
from yarl import URL

from gateway.adapters.background import cancel_and_wait
from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.upstream import Upstream
from gateway.config.admission_webhook import WebhookSettings
from gateway.config.reconcile import ReconcileSettings
from gateway.core.records import followup_body
from gateway.core.shared_lease import REASON as SHARED
from gateway.core.tenants import Tenant
from gateway.http.cluster_lease import detach, siblings
from gateway.http.reconcile_parts import ReconcileParts
from gateway.http.trueup import TrueUp
from gateway.http.unadmitted import UnadmittedSweep
from gateway.http.webhook_objects import AdmittedObjects
from gateway.schedulers.status import JobView

log = logging.getLogger(__name__)
# A status answer longer than this (a huge array job) is not read: the job stays held.
MAX_STATUS_BYTES = 8 * 1024 * 1024
RESULTS = ("released", "finished", "running", "unknown", "error")
STOP_RETRY_S = 60.0  # a walltime stop is sent again only if the job still runs this long after


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
        webhook: WebhookSettings | None = None,
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
        self._held: dict[tuple[str, str], float] = {}  # (upstream, job id) -> the lease end last set
        self._stopping: dict[tuple[str, str], float] = {}  # (upstream, job id) -> when a walltime stop was sent
        self._pass_s = 0.0  # how long one pass over every owned job takes at `batch` jobs a round
        self._task: asyncio.Task[None] | None = None
        self.parts = ReconcileParts(store, ledger, policy, metrics, clock, self._send)
        self._error = self.parts.backend_error
        self.trueup = TrueUp(self.parts)
        self.unadmitted = UnadmittedSweep(upstreams, self.parts)
        # Objects the admission webhook allowed: owned apart, read at their own paths (see http/webhook_objects).
        self.admitted = AdmittedObjects(webhook.upstream, webhook.unpersisted_grace_s) if webhook else None

    def start(self) -> None:
        """Run rounds every `interval_s` in the background (nothing when it is 0)."""
        if self.settings.interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="exportgate-reconcile")
            self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
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
        counts: Counter[str] = Counter()
        if not self._queue:
            await self._refill()
            counts.update(await self.unadmitted.sweep())  # once a pass: jobs the gateway never admitted
        for _ in range(min(self.settings.batch, len(self._queue))):
            result = await self._check(*self._queue.popleft())
            counts[result] += 1
            self.metrics.reconcile.labels(result).inc()
        return dict(counts)

    def _scopes(self) -> list[tuple[str, Upstream]]:
        """(ownership scope, the upstream its jobs are asked about): each upstream, then the webhook's objects."""
        scopes = [(u.name, u) for u in self.upstreams.values() if u.adapter is not None and u.session is not None]
        real = self.upstreams.get(self.admitted.upstream) if self.admitted is not None else None
        if self.admitted is not None and real is not None and real.session is not None:
            scopes.append((self.admitted.owned, real))
        return scopes

    def _path(self, scope: str, upstream: Upstream, job_id: str) -> str | None:
        if self.admitted is not None and scope == self.admitted.owned:
            return self.admitted.path(job_id)
        return upstream.adapter.status_path(job_id) if upstream.adapter is not None else None

    async def _refill(self) -> None:
        owned: set[tuple[str, str]] = set()
        tenants = self.policy.registry.tenants
        for scope, upstream in self._scopes():
            for tenant_id in sorted(tenants):
                if upstream.missing_identity(tenants[tenant_id]):
                    continue  # never ask with the gateway's own identity
                try:
                    jobs = await self.store.owned_jobs(scope, tenant_id)
                except BackendUnavailable as exc:
                    self._error("quota", f"owned jobs of {tenant_id} on {scope}: {exc}")
                    self.metrics.reconcile.labels("error").inc()
                    continue
                for job_id in sorted(jobs, key=lambda j: (len(j), j)):  # Slurm's numeric ids oldest first
                    owned.add((scope, job_id))
                    if (scope, job_id) not in self._over and self._path(scope, upstream, job_id) is not None:
                        self._queue.append((scope, tenant_id, job_id))
        if self.admitted is not None:
            self.admitted.forget(owned)
        self._over &= owned  # forget jobs whose ownership has lapsed
        self._held = {job: end for job, end in self._held.items() if job in owned}
        self._stopping = {job: at for job, at in self._stopping.items() if job in owned}
        self.trueup.forget(owned)
        self._pass_s = math.ceil(len(self._queue) / self.settings.batch) * self.settings.interval_s

    def hold_s(self) -> float:
        """How far ahead a live job's lease is held: `hold_s`, or three passes when a pass takes longer."""
        return max(self.settings.hold_s, 3 * self._pass_s)

    async def _check(self, upstream_name: str, tenant_id: str, job_id: str) -> str:
        admitted = self.admitted if self.admitted is not None and upstream_name == self.admitted.owned else None
        upstream = self.upstreams[admitted.upstream if admitted is not None else upstream_name]
        tenant = self.policy.registry.tenants.get(tenant_id)
        path = self._path(upstream_name, upstream, job_id)
        if tenant is None or path is None or upstream.missing_identity(tenant):
            return "unknown"  # the registry changed since the queue was filled
        assert upstream.adapter is not None
        fetched = await self._send(upstream, tenant, "GET", path)
        if fetched is None:
            await self._hold(upstream_name, job_id, JobView(None), "unconfirmed")
            return "error"
        gone = False  # a webhook-admitted object not there past its grace: never stored, or deleted
        if admitted is not None:
            view, gone = admitted.view(job_id, *fetched, self.clock())
        else:
            view = upstream.adapter.job_view(*fetched)
        if view.over is None:
            await self._hold(upstream_name, job_id, view, "unconfirmed")
            if fetched[0] >= 500:
                log.warning("reconcile: %s on %s answered %d", path, upstream_name, fetched[0])
                return "error"
            return "unknown"
        if not view.over:
            await self._hold(upstream_name, job_id, view, "pending" if view.pending else "running")
            if admitted is None:  # the webhook's objects: Kubernetes reads back no allocation, enforces deadlines
                await self.trueup.check(upstream, tenant, job_id, view, self.hold_s())
                await self._stop_if_overdue(upstream, tenant, job_id, view)
            return "running"
        now = self.clock()
        try:
            owner = await self.store.owner_of(upstream_name, job_id)
            if owner is None or owner.tenant_id != tenant_id:
                return "unknown"  # ownership lapsed or moved since the queue was filled
            over = {j for u, j in self._over if u == upstream_name}
            held_for = await siblings(self.store, upstream_name, tenant_id, job_id, over) if (
                upstream.adapter.shares_cluster_lease()) else ()  # fmt: skip
            if held_for:
                await detach(self.store, upstream_name, job_id, now)  # known over, wherever it is asked about
            released = False if held_for else await self.store.release_job(upstream_name, job_id, now)
        except BackendUnavailable as exc:
            self._error("quota", f"release of {job_id} on {upstream_name}: {exc}")
            return "error"
        self._over.add((upstream_name, job_id))
        if held_for:  # its tenant's cluster lease is held while another of its jobs there is not known to be over
            await self._held_back(owner.lease.lease_id, tenant_id, upstream_name, job_id, held_for)
            return "finished"
        if not released:
            return "finished"  # its lease had already ended, been cancelled or released
        body = followup_body("release", owner.lease.lease_id, now, tenant=tenant_id, upstream=upstream_name,
                             job_id=job_id, released=True, whole_job=True,
                             reason="not_found" if gone else "reconciled")  # fmt: skip
        try:
            await self.ledger.append(body, wait=False)
        except LedgerUnavailable as exc:
            # The store gave the capacity back; a rebuild without this record holds it again (safe).
            self._error("ledger", f"release record of {job_id} on {upstream_name}: {exc}")
        log.info("reconcile: job %s on %s is over; released lease %s", job_id, upstream_name, owner.lease.lease_id)
        return "released"

    async def _held_back(self, lease_id: str, tenant_id: str, upstream_name: str, job_id: str,
                         held_for: tuple[str, ...]) -> None:  # fmt: skip
        body = followup_body("release", lease_id, self.clock(), tenant=tenant_id, upstream=upstream_name, job_id=job_id,
                             released=False, whole_job=True, reason=SHARED, held_for=list(held_for))  # fmt: skip
        try:
            await self.ledger.append(body, wait=False)
        except LedgerUnavailable as exc:
            self._error("ledger", f"held-back release record of {job_id} on {upstream_name}: {exc}")
        log.info("reconcile: job %s on %s is over; lease %s stays held for %s", job_id, upstream_name, lease_id,
                 ", ".join(held_for[:5]))  # fmt: skip

    async def _hold(self, upstream_name: str, job_id: str, view: JobView, reason: str) -> None:
        """Hold a live (or unconfirmed) job's lease ahead: recorded and counted whenever its end moves."""
        now, hold = self.clock(), self.hold_s()
        end = now + hold
        if view.walltime_s is not None and view.pending:
            end += view.walltime_s  # it may start any moment and then run its whole walltime
        elif view.walltime_s is not None and view.started is not None:
            end = max(end, view.started + view.walltime_s + hold)
        known = self._held.get((upstream_name, job_id))
        if known is not None and known >= end - hold / 2:
            return  # held far enough ahead still: no store write, no record
        try:
            owner = await self.store.owner_of(upstream_name, job_id)
            after = None if owner is None else await self.store.extend_job(upstream_name, job_id, end, now)
        except BackendUnavailable as exc:
            self._error("quota", f"holding the lease of {job_id} on {upstream_name}: {exc}")
            return
        if owner is None or after is None:
            self._held.pop((upstream_name, job_id), None)
            return  # no live lease: released, refunded or never owned
        self._held[(upstream_name, job_id)] = after
        self.metrics.lease_holds.labels(reason).inc()
        if reason == "unconfirmed":
            log.warning("reconcile: the state of job %s on %s is unknown; its lease is held until %.0f",
                        job_id, upstream_name, after)  # fmt: skip
        body = followup_body("extend", owner.lease.lease_id, now, tenant=owner.tenant_id, upstream=upstream_name,
                             job_id=job_id, end=after, reason=reason)  # fmt: skip
        try:
            await self.ledger.append(body, wait=False)
        except LedgerUnavailable as exc:
            # The store holds the lease; a rebuild without this record ends it at its earlier end.
            self._error("ledger", f"hold record of {job_id} on {upstream_name}: {exc}")

    async def _stop_if_overdue(self, upstream: Upstream, tenant: Tenant, job_id: str, view: JobView) -> None:
        """Stop a job running past its walltime and grace on a scheduler that does not; record it first."""
        assert upstream.adapter is not None
        stop = upstream.adapter.walltime_stop(job_id)
        if stop is None or view.started is None or view.walltime_s is None:
            return
        now = self.clock()
        overdue_s = now - (view.started + view.walltime_s)
        if overdue_s <= self.settings.walltime_grace_s:
            return
        asked = self._stopping.get((upstream.name, job_id))
        if asked is not None and now - asked < max(STOP_RETRY_S, self.settings.walltime_grace_s):
            return  # stopping takes the scheduler a moment; ask again only if it did not
        owner = await self.store.owner_of(upstream.name, job_id)
        if owner is None:
            return
        method, path = stop
        body = followup_body("walltime_stop", owner.lease.lease_id, now, tenant=tenant.id, upstream=upstream.name,
                             job_id=job_id, walltime_s=view.walltime_s, overdue_s=round(overdue_s, 3))  # fmt: skip
        try:
            await self.ledger.append(body, wait=True)
        except LedgerUnavailable as exc:
            self._error("ledger", f"walltime stop record of {job_id} on {upstream.name}: {exc}; not stopped")
            return
        self._stopping[(upstream.name, job_id)] = now
        answered = await self._send(upstream, tenant, method, path)
        self.metrics.lease_holds.labels("walltime_stop").inc()
        log.warning("reconcile: job %s on %s ran %.0f s past its walltime of %.0f s; %s %s answered %s",
                    job_id, upstream.name, overdue_s, view.walltime_s, method, path,
                    "nothing" if answered is None else answered[0])  # fmt: skip

    async def _send(self, upstream: Upstream, tenant: Tenant, method: str, path: str) -> tuple[int, bytes] | None:
        """(status, body) of a request as `tenant`, or None when the scheduler could not be asked."""
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
            async with upstream.session.request(
                method, URL(upstream.url_for(path), encoded=True), headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as response:  # fmt: skip
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_STATUS_BYTES:
                        return response.status, b""  # unreadable: finished() says unknown
                return response.status, bytes(body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning("reconcile: %s on %s could not be asked: %s", path, upstream.name, type(exc).__name__)
            return None



def _report_crash(task: "asyncio.Task[None]") -> None:
    """Rounds catch their own failures; anything that still ends the task is said loudly, not silently."""
    if not task.cancelled() and task.exception() is not None:
        log.error("reconcile: the background task stopped", exc_info=task.exception())
