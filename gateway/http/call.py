"""What one request has shown so far (`Call`), and the typed request once it is admitted (`Admitted`)."""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.adapters.ids import new_decision_id
from gateway.adapters.upstream import Upstream, pick_upstream
from gateway.core.decide import Decision
from gateway.core.routes import RouteKind, RouteMatch
from gateway.core.tenants import Identity, Tenant
from gateway.schedulers import SchedulerAdapter


@dataclass(slots=True)
class Call:
    """One request as the ledger and the metrics see it; each stage fills in what it learnt."""

    request: web.Request | None  # None: a decision entry asks about a request the gateway never receives
    method: str
    headers: Mapping[str, str]  # the client's request headers, case-insensitive (a CIMultiDictProxy or CIMultiDict)
    decision_id: str
    started: float
    now: float
    client_ip: str
    upstream: Upstream
    path: str
    identity: Identity | None = None
    tenant: Tenant | None = None
    match: RouteMatch | None = None
    job: Mapping[str, Any] | None = None  # the job as the ledger keeps it, once its body is parsed
    body: bytes | None = None  # a non-job route's body, read within the limits before it is forwarded
    entry: str = "proxy"  # who asked: the proxy itself, or a decision entry (nginx, envoy_http, ...)
    refusal: str | None = None  # the code of the refusal answered, for the request's log event
    # An S3 (SigV4) client's error dialect: (code, detail, decision id, citation) -> (content type, body).
    dialect: Callable[[str, str, str, str], tuple[str, bytes]] | None = None
    record_extra: Mapping[str, Any] | None = None  # fields a flow adds to the request's ledger record (weights)

    @classmethod
    def begin(
        cls,
        request: web.Request | None,
        method: str,
        headers: Mapping[str, str],
        *,
        clock: Callable[[], float],
        client_ip: str,
        upstreams: list[Upstream],
        path: str,
        entry: str = "proxy",
    ) -> "Call":
        """A request just come in: a new decision id, started now, on the upstream its path (no query) picks."""
        decision_id, started, now = new_decision_id(), time.perf_counter(), clock()
        upstream = pick_upstream(upstreams, path)
        return cls(request, method, headers, decision_id, started, now, client_ip, upstream, path, entry=entry)

    @property
    def kind(self) -> RouteKind | None:
        return self.match.route.kind if self.match else None

    @property
    def shown(self) -> str:
        """Method and path as a log line may show them: client text, so quoted and cut short."""
        return f"{self.method[:16]!r} {self.path[:256]!r}"

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request past authentication, routing and admission: nothing about it is unknown any more."""

    call: Call
    tenant: Tenant
    match: RouteMatch
    admission: Decision

    @property
    def request(self) -> web.Request:
        """The client's request; only the proxy's own flows read it, and only the proxy has one."""
        request = self.call.request
        assert request is not None, "a decision-only call reached a proxy flow"
        return request

    @property
    def upstream(self) -> Upstream:
        return self.call.upstream

    @property
    def decision_id(self) -> str:
        return self.call.decision_id

    def whole_job(self, job_id: str | None) -> bool:
        """Whether the route names the whole owned job, not one part of it (Slurm's `12_3`, `12+1`)."""
        return self.match.job_id is None or self.match.job_id == job_id


@dataclass(frozen=True, slots=True)
class JobCall:
    """An admitted request on a job route, with the scheduler adapter that reads it."""

    admitted: Admitted
    adapter: SchedulerAdapter


@dataclass(frozen=True, slots=True)
class Refused:
    """A stage's refusal, for the responder to record and answer (`allow` for a 405, `close` for an unread body)."""

    decision: Decision
    allow: str | None = None
    close: bool = False
