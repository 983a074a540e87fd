"""Settling submissions a front proxy forwarded: adopt the job into its placeholder, or release what never came.

A submission priced for a front proxy (http/front_submit.py) holds its lease under a placeholder
owner, `p<ms>.<decision id>` in `<upstream>#front`, because the scheduler's answer (the job id)
went to the client, not to the gateway. The sweep for jobs the gateway never admitted
(http/unadmitted.py) lists each scheduler identity's live GPU jobs once a pass; before it counts
an unowned one as submitted around the gateway it offers it here:

* **adopt**: the oldest placeholder of a tenant of that identity takes the job. A `settle` record
  names the job and the placeholder (`adopted_from_upstream`, `adopted_from_job_id`) and is
  written before ownership moves; the job is then reconciled like one the proxy settled (held
  while it lives, released when it ends). Quota rebuilds move ownership the same way.
* **release**: after a complete listing of the identity, a placeholder older than twice the
  upstream's connect plus read timeout was not adopted: the scheduler refused the job, Envoy
  never sent it, or it ended before any listing saw it. Its held capacity is released (a
  `release` record, `disowned: true`, first); its cumulative counts stay, as a finished job's do.

Matching is by scheduler identity and age, not by content: the listing does not say what a job
was submitted with. A tenant submitting around the gateway while its own front-proxy submission
is still unadopted may see the wrong one of the two adopted; one lease still covers one job, and
the other is flagged as unadmitted as it would be without a front proxy.
"""

import logging

from gateway.adapters.ledger.writer import LedgerUnavailable
from gateway.adapters.quota import BackendUnavailable
from gateway.adapters.upstream import Upstream
from gateway.core.jobs import IDEMPOTENCY_KEY
from gateway.core.records import followup_body
from gateway.core.tenants import Tenant
from gateway.http.front_submit import PLACED, placed_at, placeholder_scope
from gateway.http.reconcile_parts import ReconcileParts
from gateway.schedulers.base import LiveJob, shown

log = logging.getLogger("gateway.http.reconcile")


def adoption_window_s(upstream: Upstream) -> float:
    """How long a placeholder waits for its job: twice the time the front proxy may take to deliver it."""
    return 2 * (upstream.settings.connect_timeout_s + upstream.settings.timeout_s)


class Placeholders:
    """Adopts unowned live jobs into placeholders and releases placeholders no job came for."""

    def __init__(self, parts: ReconcileParts) -> None:
        self.parts = parts

    async def _waiting(self, scope: str, tenants: tuple[Tenant, ...]) -> list[tuple[float, str, str]]:
        """(placed at, tenant id, placeholder id) of the tenants' placeholders, oldest first."""
        found = []
        for tenant in tenants:
            for job_id in await self.parts.store.owned_jobs(scope, tenant.id):
                placed = placed_at(job_id)
                if placed is not None:
                    found.append((placed, tenant.id, job_id))
        return sorted(found)

    async def adopt(self, upstream: Upstream, tenants: tuple[Tenant, ...], job: LiveJob) -> bool:
        """Give `job` the oldest waiting placeholder of `tenants`; False when none waits (or the store is down)."""
        store, scope = self.parts.store, placeholder_scope(upstream.name)
        if not IDEMPOTENCY_KEY.match(job.job_id):
            return False  # an id no submission through the gateway has: the sweep records it bounded, as unadmitted
        try:
            for _, tenant_id, placeholder in await self._waiting(scope, tenants):
                owner = await store.owner_of(scope, placeholder)
                if owner is None:
                    continue  # lapsed or moved since it was listed
                now = self.parts.clock()
                body = followup_body("settle", owner.lease.lease_id, now, tenant=tenant_id, upstream=upstream.name,
                                     job_id=job.job_id, settled=True, adopted_from_upstream=scope,
                                     adopted_from_job_id=placeholder)  # fmt: skip
                try:
                    await self.parts.ledger.append(body, wait=True)
                except LedgerUnavailable as exc:
                    self.parts.backend_error("ledger", f"adopting {shown(job.job_id)} on {upstream.name}: {exc}")
                    return False
                await store.complete(owner.lease, upstream=upstream.name, job_id=job.job_id, response=PLACED, now=now)
                await store.disown(scope, placeholder)
                log.info("reconcile: job %s on %s adopted into front-proxy submission %s (tenant %s)",
                         shown(job.job_id), upstream.name, owner.lease.lease_id, tenant_id)  # fmt: skip
                return True
        except BackendUnavailable as exc:
            self.parts.backend_error("quota", f"adopting {shown(job.job_id)} on {upstream.name}: {exc}")
        return False

    async def release_stale(self, upstream: Upstream, tenants: tuple[Tenant, ...]) -> int:
        """Release the tenants' placeholders older than the adoption window; how many were released."""
        store, scope = self.parts.store, placeholder_scope(upstream.name)
        window, released = adoption_window_s(upstream), 0
        try:
            for placed, tenant_id, placeholder in await self._waiting(scope, tenants):
                now = self.parts.clock()
                if now - placed < window:
                    break  # oldest first: the rest are younger
                owner = await store.owner_of(scope, placeholder)
                if owner is None:
                    continue
                body = followup_body("release", owner.lease.lease_id, now, tenant=tenant_id, upstream=scope,
                                     job_id=placeholder, reason="never_adopted", disowned=True)  # fmt: skip
                try:
                    await self.parts.ledger.append(body, wait=True)
                except LedgerUnavailable as exc:
                    self.parts.backend_error("ledger", f"releasing placeholder {placeholder}: {exc}")
                    return released
                await store.release_job(scope, placeholder, now)
                await store.disown(scope, placeholder)
                released += 1
                log.warning("reconcile: front-proxy submission %s on %s (tenant %s) was never seen on the "
                            "scheduler; its held capacity is released", owner.lease.lease_id, upstream.name,
                            tenant_id)  # fmt: skip
        except BackendUnavailable as exc:
            self.parts.backend_error("quota", f"releasing placeholders on {upstream.name}: {exc}")
        return released
