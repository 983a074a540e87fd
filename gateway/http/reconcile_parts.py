"""What reconciliation's stages share: the quota store, the ledger, the policy, metrics, the clock, and one way to
ask a scheduler something as a tenant (`Reconciler._send`)."""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.adapters.ledger.writer import LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import QuotaStore
from gateway.adapters.upstream import Upstream
from gateway.core.tenants import Tenant

log = logging.getLogger("gateway.http.reconcile")

# (upstream, tenant, method, path) -> (status, body), or None when the scheduler could not be asked.
Send = Callable[[Upstream, Tenant, str, str], Awaitable[tuple[int, bytes] | None]]


@dataclass(frozen=True, slots=True)
class ReconcileParts:
    store: QuotaStore
    ledger: LedgerWriter
    policy: PolicyFiles
    metrics: Metrics
    clock: Callable[[], float]
    send: Send

    def backend_error(self, backend: str, what: str) -> None:
        """A store or ledger failure in a round: counted and logged; the round goes on."""
        self.metrics.backend_errors.labels(backend).inc()
        log.error("reconcile: %s", what)
