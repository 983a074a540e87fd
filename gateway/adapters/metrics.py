"""Every Prometheus metric the gateway exports, in one registry per process.

No label is named `instance`: Prometheus gives every scraped series its own `instance` (the
target), and a metric's own would be renamed `exported_instance` on the way in. A ledger chain's
label is `ledger_instance`. No label value changes with every event either (a ledger head's seq or
hash would start a new series at each checkpoint): such values are a gauge's value or a log line.
"""

from typing import TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)

Labelled = TypeVar("Labelled", Counter, Histogram)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Bounded labels only: no tenant id, token or raw path is ever a label value."""

    def __init__(self) -> None:
        # The hot path's labelled series, found once: `labels()` takes a lock and checks its values each call.
        self._children: dict[tuple[int, tuple[str, ...]], Counter | Histogram] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        # The default collectors of prometheus_client's global registry, on this one: process_* (CPU, memory,
        # open files, start time), python_info, python_gc_*.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter(
            "exportgate_requests_total",
            "Proxied requests; status_class 2xx to 5xx, or client_closed when the client left before its answer.",
            ["route_kind", "status_class"],
            registry=r,
        )
        self.decisions = Counter(
            "exportgate_decisions_total",
            "Decisions taken, by outcome, refusal code and tier.",
            ["decision", "code", "tier"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "exportgate_request_duration_seconds",
            "Time from request to response headers.",
            ["route_kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "exportgate_upstream_duration_seconds",
            "Time the upstream took to answer.",
            ["upstream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_records = Counter("exportgate_ledger_records_total", "Ledger records made durable.", registry=r)
        self.ledger_commit_seconds = Histogram(
            "exportgate_ledger_commit_seconds",
            "Time to write and fsync one ledger batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ledger_errors = Counter(
            "exportgate_ledger_errors_total",
            "Ledger batches that failed to commit, records that could not be encoded, and writer task crashes.",
            registry=r,
        )
        self.ledger_writer_up = Gauge(
            "exportgate_ledger_writer_up", "1 while the ledger writer task runs; computed at each scrape.", registry=r
        )
        self.ledger_oldest_pending = Gauge(
            "exportgate_ledger_oldest_pending_seconds",
            "How long the oldest ledger record not yet durable has waited (0 when none is); computed at each scrape.",
            registry=r,
        )
        self.ledger_head_seq = Gauge(
            "exportgate_ledger_head_seq",
            "The seq of each ledger chain's latest signed checkpoint (its hash is in the checkpoint's log event).",
            ["ledger_instance"],
            registry=r,
        )
        self.ledger_checkpoint_time = Gauge(
            "exportgate_ledger_checkpoint_timestamp_seconds",
            "When each ledger chain's latest signed checkpoint was written.",
            ["ledger_instance"],
            registry=r,
        )
        self.backend_errors = Counter(
            "exportgate_backend_errors_total",
            "Quota store or ledger errors that refused requests.",
            ["backend"],
            registry=r,
        )
        self.jwks_refresh = Counter(
            "exportgate_jwks_refresh_total", "Key set refreshes by outcome.", ["result"], registry=r
        )
        self.config_reloads = Counter(
            "exportgate_config_reloads_total", "Registry and pack reloads by outcome.", ["result"], registry=r
        )
        self.policy_info = Info("exportgate_policy", "The active policy pack.", registry=r)
        self.country_tpp_held = Gauge(
            "exportgate_country_tpp_held", "TPP held at once against a country allocation.", ["country"], registry=r
        )
        self.country_tpp_cap = Gauge(
            "exportgate_country_tpp_cap", "A country's TPP allocation under the active pack.", ["country"], registry=r
        )
        self.reconcile = Counter(
            "exportgate_reconcile_total",
            "Jobs whose state reconciliation asked the scheduler for, by outcome.",
            ["result"],
            registry=r,
        )
        self.true_ups = Counter(
            "exportgate_true_ups_total",
            "Leases trued to what the scheduler allocated, by direction (up, down) and over-allocation action "
            "(none, alert, cancel).",
            ["direction", "action"],
            registry=r,
        )
        self.lease_holds = Counter(
            "exportgate_lease_holds_total",
            "Leases reconciliation held on: pending, running, unconfirmed (the scheduler could not say), "
            "walltime_stop (a job stopped for running past its walltime).",
            ["reason"],
            registry=r,
        )
        self.unadmitted_jobs = Counter(
            "exportgate_unadmitted_jobs_total",
            "Live GPU jobs of a tenant's scheduler identity that no lease covers (submitted around the gateway), "
            "once each, by what was done: alert, cancel, cancel_failed.",
            ["action"],
            registry=r,
        )
        self.unadmitted_errors = Counter(
            "exportgate_unadmitted_sweep_errors_total",
            "Failures of the sweep for jobs the gateway never admitted, by stage: list, quota, ledger, cancel.",
            ["stage"],
            registry=r,
        )
        self.ready = Gauge(
            "exportgate_ready", "1 when config, keys, ledger (and the quota store, if required) are ready.", registry=r
        )
        self.ready_part = Gauge(
            "exportgate_ready_part", "1 for each readiness part that is ready, 0 for one that is not.", ["part"],
            registry=r,
        )  # fmt: skip
        self.connections_open = Gauge(
            "exportgate_connections_open", "Client connections open on the proxy listener.", registry=r
        )
        self.connections_refused = Counter(
            "exportgate_connections_refused_total",
            "Client connections closed by a limit: max_connections, head_timeout or body_timeout.",
            ["reason"],
            registry=r,
        )

    def child(self, metric: Labelled, *values: str) -> Labelled:
        """`metric.labels(*values)`, remembered (label values are bounded, so is this)."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return cast(Labelled, found)
