"""The one place that records, counts and answers: refusals, ledger records, metrics and replies."""

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.core.codes import Code
from gateway.core.decide import Decision, refuse
from gateway.core.quota import country_of_key
from gateway.core.records import decision_body, followup_body
from gateway.http.body import close_after
from gateway.http.call import Call, Refused
from gateway.http.problems import Dialect, refusal
from gateway.http.quota_headers import set_quota_headers
from gateway.http.record_templates import RecordTemplates, varying

log = logging.getLogger(__name__)
requests_log = logging.getLogger("gateway.request")  # one event per request, at its end (2xx/3xx: DEBUG)
access_log = logging.getLogger("gateway.access")  # with `log.access: true`, one access line per request
# The `status_class` of requests whose client went away before its answer (nginx logs these as 499).
CLIENT_CLOSED = "client_closed"
CLIENT_CLOSED_STATUS = 499  # as the request's log event shows it (nginx's code; never sent)
STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


class Responder:
    """Refuses, records, counts and replies for every stage; no stage writes to the ledger itself."""

    def __init__(
        self,
        ledger: LedgerWriter,
        metrics: Metrics,
        policy: PolicyFiles,
        clock: Callable[[], float],
        *,
        access: bool = False,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self.policy = policy
        self.clock = clock
        self.access = access
        self.templates = RecordTemplates()

    # -- answers --------------------------------------------------------------------------

    def reply(
        self, call: Call, code: Code, detail: str, *, citation: str = "", retry_after: int | None = None
    ) -> web.Response:
        """A refusal in the upstream scheduler's dialect when it has one, else problem+json."""
        adapter = call.upstream.adapter
        call.refusal = code.value  # for the request's log event
        dialect: Dialect | None = adapter.refusal if adapter is not None else None
        if call.dialect is not None:  # an S3 client's: its XML errors, the citation in the message
            own = call.dialect

            def dialect(c: str, _status: int, _title: str, d: str, i: str) -> tuple[str, bytes] | None:
                return own(c, d, i, citation)

        return refusal(
            code,
            detail,
            call.decision_id,
            citation=citation,
            retry_after=retry_after,
            dialect=dialect,
        )

    async def refused(self, call: Call, refused: Refused) -> web.Response:
        """A stage's refusal; after an unread body the connection closes, so its rest is never a next request."""
        response = await self.refuse(call, refused.decision, allow=refused.allow)
        if refused.close:
            close_after(response)
        return response

    async def refuse(self, call: Call, decision: Decision, *, allow: str | None = None) -> web.Response:
        """Record the refusal durably (best effort if the ledger is down), then answer."""
        code = decision.code or Code.BACKEND_UNAVAILABLE
        self.count(decision)
        try:
            await self.ledger.append(self.record(call, decision), wait=True)
        except LedgerUnavailable:
            self.metrics.backend_errors.labels("ledger").inc()
        reason = next((r for r in decision.reasons if r.enforced), None)
        response = self.reply(
            call,
            code,
            reason.detail if reason else code.value,
            citation=reason.citation if reason else "",
            retry_after=decision.quota.retry_after_s if decision.quota is not None else None,
        )
        if allow is not None:
            response.headers["Allow"] = allow
        set_quota_headers(response.headers, decision)  # a priced job: its cost and the room left now
        return response

    def backend_down(self, call: Call, decision: Decision, backend: str, detail: str) -> web.Response:
        """Nothing was forwarded: a backend could not serve or record this decision."""
        self.backend_error(backend)
        log.error("refusing %s: %s unavailable: %s", call.shown, backend, detail)
        down = refuse(
            Code.BACKEND_UNAVAILABLE, f"the {backend} cannot record this decision; nothing was forwarded", decision.tier
        )
        self.count(down)
        return self.reply(call, Code.BACKEND_UNAVAILABLE, down.reasons[0].detail)

    # -- records --------------------------------------------------------------------------

    async def commit(self, call: Call, decision: Decision, *, wait: bool = True) -> web.Response | None:
        """Record an admitted decision (durably when `wait`) and count it; the refusal if the ledger is down."""
        kind = "decision" if wait else "access"
        try:
            prepared = None
            if not wait:  # an access record: encoded from its template, when one serves
                pack, registry = self.policy.pack, self.policy.registry.version
                prepared = self.templates.prepared(
                    call, decision, kind, pack, registry, lambda: self._record(call, decision, kind)
                )
            await self.ledger.append(prepared or self.record(call, decision, kind=kind), wait=wait)
        except LedgerUnavailable as exc:
            return self.backend_down(call, decision, "ledger", str(exc))
        self.count(decision)
        return None

    async def followup(self, kind: str, call: Call, **fields: Any) -> None:
        """Settle, refund, release and replay records reference the decision; they do not wait."""
        body = followup_body(kind, call.decision_id, self.clock(), tenant=call.tenant.id if call.tenant else None,
                             upstream=call.upstream.name, **fields)  # fmt: skip
        try:
            await self.ledger.append(body, wait=False)
        except LedgerUnavailable:
            self.backend_error("ledger")
            log.error("ledger: %s record of %s could not be queued", kind, call.decision_id)

    def record(self, call: Call, decision: Decision, kind: str = "decision") -> dict[str, Any]:
        body = self._record(call, decision, kind)
        if call.record_extra:
            body.update(call.record_extra)
        return body

    def _record(self, call: Call, decision: Decision, kind: str) -> dict[str, Any]:
        return decision_body(
            **varying(call),
            tenant=call.tenant,
            identity=call.identity,
            route=call.match.route.name if call.match else None,
            route_kind=call.kind.value if call.kind else None,
            upstream=call.upstream.name,
            decision=decision,
            pack=self.policy.pack,
            registry_version=self.policy.registry.version,
            job=call.job,
            kind=kind,
            entry=call.entry,
        )

    # -- counting -------------------------------------------------------------------------

    def count(self, decision: Decision) -> None:
        tier = str(int(decision.tier)) if decision.tier is not None else "none"
        code = decision.code.value if decision.code else ""
        self.metrics.child(self.metrics.decisions, decision.outcome.value, code, tier).inc()

    def backend_error(self, backend: str) -> None:
        self.metrics.backend_errors.labels(backend).inc()

    def observe_countries(self, decision: Decision) -> None:
        """The country allocations a reservation left, for the per-country gauges."""
        counters = decision.quota.counters if decision.quota is not None else None
        for key, use in (counters or {}).items():
            country = country_of_key(key)
            if country is not None:
                self.metrics.country_tpp_held.labels(country).set(use.after)
                if use.cap is not None:
                    self.metrics.country_tpp_cap.labels(country).set(use.cap)

    def finished(self, call: Call, status: int) -> None:
        """Count the request and log its event (and its access line)."""
        kind = call.kind.value if call.kind else "none"
        seconds = time.perf_counter() - call.started
        metrics = self.metrics
        metrics.child(metrics.requests, kind, STATUS_CLASSES.get(status // 100) or f"{status // 100}xx").inc()
        metrics.child(metrics.request_seconds, kind).observe(seconds)
        self._log_request("request", call, kind, status, seconds)

    def client_closed(self, call: Call, why: str) -> None:
        """Count and log a request its client abandoned: a status class of its own, never ERROR."""
        kind = call.kind.value if call.kind else "none"
        seconds = time.perf_counter() - call.started
        self.metrics.child(self.metrics.requests, kind, CLIENT_CLOSED).inc()
        self.metrics.child(self.metrics.request_seconds, kind).observe(seconds)
        self._log_request("client closed", call, kind, CLIENT_CLOSED_STATUS, seconds, why=why[:200])

    def _log_request(self, message: str, call: Call, kind: str, status: int, seconds: float, **more: str) -> None:
        """The request's one event: who, which route kind, what answer, how long; client text only in `why`
        (bounded here, quoted or escaped by the log format). With `log.access`, its access line too."""
        duration_ms = round(seconds * 1000, 3)
        # Refusals, failures and abandoned requests are INFO; an answered request is DEBUG, so the hot path
        # pays for no log line by default (a JSON line costs about 13 us; `log.access` gives one per request).
        level = logging.INFO if status >= 400 else logging.DEBUG
        if requests_log.isEnabledFor(level):
            fields: dict[str, object] = {
                "decision_id": call.decision_id,
                "tenant": call.tenant.id if call.tenant else None,
                "route_kind": kind,
                "status": status,
                "duration_ms": duration_ms,
                "code": call.refusal,
                "upstream": call.upstream.name,
                "entry": call.entry,
            }
            requests_log.log(level, message, extra=fields | more)
        if self.access and access_log.isEnabledFor(logging.INFO):
            access = {
                "decision_id": call.decision_id,
                "client_ip": call.client_ip,
                "method": call.method[:16],
                "path": call.path[:256],
                "status": status,
                "duration_ms": duration_ms,
                "user_agent": call.headers.get("User-Agent", "")[:128],
            }
            access_log.info("access", extra=access)
