"""The forward stage: an admitted request goes upstream with its headers; the answer comes back."""

import ipaddress
from collections.abc import Callable

from aiohttp import web
from multidict import CIMultiDict

from gateway.adapters.metrics import Metrics
from gateway.core.decide import Decision
from gateway.http import forward
from gateway.http.call import Admitted
from gateway.http.headers import forwarded_headers, upstream_request_headers

LISTING_LIMIT = 32 * 1024 * 1024
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def answer(result: forward.Buffered, decision_id: str) -> web.Response:
    """A buffered upstream answer, passed on with the decision id."""
    response = web.Response(status=result.status, body=result.body, headers=result.headers)
    response.headers["X-Exportgate-Decision-Id"] = decision_id
    return response


def identity_headers(a: Admitted, decision: Decision) -> dict[str, str]:
    """What the gateway adds toward the upstream: its credentials for the tenant, the tenant, tier and decision id.

    The proxy sets them on what it forwards; a decision entry hands them to the front proxy that forwards.
    """
    headers = a.upstream.credential_headers(a.tenant)
    headers["X-Exportgate-Tenant"] = a.tenant.id
    headers["X-Exportgate-Tier"] = str(int(decision.tier)) if decision.tier is not None else ""
    headers["X-Exportgate-Decision-Id"] = a.decision_id
    return headers


class Relay:
    """Carries admitted requests upstream; raises `forward.UpstreamFailure` when the upstream fails."""

    def __init__(self, trusted_proxies: Networks, metrics: Metrics, write_timeout_s: float) -> None:
        self.trusted_proxies = trusted_proxies
        self.metrics = metrics
        self.write_timeout_s = write_timeout_s

    def observe(self, a: Admitted) -> Callable[[float], None]:
        return self.metrics.child(self.metrics.upstream_seconds, a.upstream.name).observe

    def headers(self, a: Admitted, decision: Decision) -> CIMultiDict[str]:
        request = a.request
        headers = upstream_request_headers(request.headers)
        headers.update(
            forwarded_headers(
                request.remote,
                request.headers.getall("X-Forwarded-For", []),
                self.trusted_proxies,
                request.scheme,
                request.host,
            )
        )
        headers.update(identity_headers(a, decision))
        return headers

    async def stream(self, a: Admitted, decision: Decision) -> web.StreamResponse:
        """Forward and stream the answer back (a WebSocket when the route allows and the client asks)."""
        request, session = a.request, a.upstream.session
        assert session is not None  # started with the server
        url = a.upstream.url_for(a.upstream.local_path(request.raw_path))  # already checked to be in normal form
        headers = self.headers(a, decision)
        observe = self.observe(a)
        if a.match.route.websocket and request.headers.get("Upgrade", "").lower() == "websocket":
            return await forward.websocket(request, session, url, headers)
        extra = {"X-Exportgate-Decision-Id": a.decision_id}
        return await forward.stream(request, session, url, headers, a.call.body, observe, extra, self.write_timeout_s)

    async def fetch(
        self, a: Admitted, decision: Decision, body: bytes | None, limit: int = LISTING_LIMIT, target: str | None = None
    ) -> forward.Buffered:
        """Forward and read the whole (bounded) answer, for answers the gateway must look at.

        `target` replaces the request's path and query (a cancel the adapter made sure ends the job).
        """
        session = a.upstream.session
        assert session is not None  # started with the server
        observe = self.observe(a)
        url = a.upstream.url_for(a.upstream.local_path(target or a.request.raw_path))
        body = a.call.body if body is None else body  # a non-job route's body, already read within the limits
        return await forward.fetch(a.request, session, url, self.headers(a, decision), body, observe, limit)
