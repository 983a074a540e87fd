"""Record, then forward: plain reads stream through; listings and owned fetches come back buffered."""

from aiohttp import web

from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.core.decide import Decision
from gateway.http import forward
from gateway.http.call import Admitted, JobCall
from gateway.http.relay import LISTING_LIMIT, Relay, answer
from gateway.http.responder import Responder


class Reads:
    """The record and forward stages for requests that reserve nothing."""

    def __init__(self, store: QuotaStore, responder: Responder, relay: Relay) -> None:
        self.store = store
        self.responder = responder
        self.relay = relay

    async def access(self, a: Admitted) -> web.StreamResponse:
        """Append the access record to the next batch without waiting, then stream the answer."""
        refused = await self.responder.commit(a.call, a.admission, wait=False)
        if refused is not None:
            return refused
        try:
            return await self.relay.stream(a, a.admission)
        except forward.UpstreamFailure as exc:
            return self.responder.reply(a.call, exc.code, exc.detail)

    async def fetch_recorded(
        self,
        a: Admitted,
        decision: Decision,
        body: bytes | None,
        *,
        wait: bool = True,
        limit: int = LISTING_LIMIT,
        target: str | None = None,
    ) -> forward.Buffered | web.Response:
        """Record (waiting for job-changing routes), then fetch; a refusal response on failure."""
        refused = await self.responder.commit(a.call, decision, wait=wait)
        if refused is not None:
            return refused
        try:
            return await self.relay.fetch(a, decision, body, limit, target)
        except forward.UpstreamFailure as exc:
            return self.responder.reply(a.call, exc.code, exc.detail)

    async def listing(self, job: JobCall) -> web.StreamResponse:
        """Listings are read whole and cut down to the tenant's own jobs."""
        a = job.admitted
        try:
            owned = await self.store.owned_jobs(a.upstream.name, a.tenant.id)
        except BackendUnavailable as exc:
            return self.responder.backend_down(a.call, a.admission, "quota", str(exc))
        result = await self.fetch_recorded(a, a.admission, None, wait=False)
        if isinstance(result, web.StreamResponse):
            return result
        body = result.body
        if 200 <= result.status < 300:
            body = job.adapter.filter_listing(a.match, result.body, owned.__contains__)
        return answer(forward.Buffered(result.status, result.headers, body), a.decision_id)
