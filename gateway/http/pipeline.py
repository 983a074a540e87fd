"""The proxy handler: one request through its stages in order, and the last line of defence around them."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.adapters.auth import Authenticator
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.upstream import Upstream
from gateway.config.settings import Settings
from gateway.core.codes import Code
from gateway.core.decide import refuse
from gateway.core.routes import RouteKind
from gateway.http.admission import admit, authenticate, match_request, resolve_tenant
from gateway.http.body import ClientClosed, client_gone
from gateway.http.call import Admitted, Call, JobCall, Refused
from gateway.http.headers import client_ip
from gateway.http.job_body import BodyReader
from gateway.http.objects import Objects
from gateway.http.owned import OwnedJobs
from gateway.http.packages import Packages
from gateway.http.reads import Reads
from gateway.http.responder import Responder
from gateway.http.submit import Submissions

log = logging.getLogger(__name__)
JobFlow = Callable[[JobCall], Awaitable[web.StreamResponse]]


class Pipeline:
    """authenticate -> resolve tenant -> match route -> decide -> the route kind's flow; one responder answers."""

    def __init__(
        self,
        settings: Settings,
        auth: Authenticator,
        policy: PolicyFiles,
        upstreams: list[Upstream],
        responder: Responder,
        flows: tuple[Reads, OwnedJobs, Submissions, BodyReader, Packages],
        clock: Callable[[], float] = time.time,
        objects: Objects | None = None,
    ) -> None:
        self.settings = settings
        self.objects = objects  # the object-store flow of `s3` upstreams (model weights)
        self.auth = auth
        self.policy = policy
        self.upstreams = upstreams
        self.responder = responder
        self.reads, owned, submissions, self.reader, self.packages = flows
        self.job_flows: dict[RouteKind, JobFlow] = {
            RouteKind.SUBMIT: submissions.submit,
            RouteKind.UPDATE: submissions.update,
            RouteKind.CANCEL: owned.cancel,
            RouteKind.READ: owned.read,
            RouteKind.LIST: self.reads.listing,
        }
        self.clock = clock

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.raw_path.split("?", 1)[0]
        trusted = self.settings.trusted_proxies
        call = Call.begin(
            request,
            request.method,
            request.headers,
            clock=self.clock,
            client_ip=client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), trusted),
            upstreams=self.upstreams,
            path=raw_path,
        )
        respond = self.responder
        try:
            response = await self._run(call)
        except asyncio.CancelledError:
            # aiohttp cancels the handler of a vanished client only with handler_cancellation on.
            if client_gone(request):
                respond.client_closed(call, "cancelled")
            raise
        except Exception as exc:
            if isinstance(exc, ClientClosed) or (isinstance(exc, ConnectionError) and client_gone(request)):
                # The client's fault (hung up mid-body, or before its answer could be written): no 5xx.
                respond.client_closed(call, str(exc) or type(exc).__name__)
                return web.Response(status=499, reason="Client Closed Request")  # never delivered
            # The last line of defence: a bug answers problem+json, never a traceback or a 500.
            # It counts as a 5xx even if the client has left too: the fault is the gateway's.
            log.exception("unexpected error on %s (decision %s)", call.shown, call.decision_id)
            response = respond.reply(call, Code.BACKEND_UNAVAILABLE, "the gateway could not complete this request")
        else:
            if client_gone(request):  # answered, but nobody is left to read it (nginx's 499)
                respond.client_closed(call, "before the answer was written")
                return response
        respond.finished(call, response.status)
        return response

    async def _run(self, call: Call) -> web.StreamResponse:
        if self.objects is not None and self.objects.serves(call.upstream):  # S3: bearer or SigV4, weights rules
            return await self.objects.handle(call)
        identity = await authenticate(self.auth, call)
        if isinstance(identity, Refused):
            return await self.responder.refused(call, identity)
        call.identity = identity
        tenant = resolve_tenant(self.policy, call, identity)
        if isinstance(tenant, Refused):
            return await self.responder.refused(call, tenant)
        call.tenant = tenant
        match = match_request(call)
        if isinstance(match, Refused):
            return await self.responder.refused(call, match)
        call.match = match
        admitted = admit(self.policy, call, tenant, match)
        if isinstance(admitted, Refused):
            return await self.responder.refused(call, admitted)
        return await self._flow(admitted)

    async def _flow(self, a: Admitted) -> web.StreamResponse:
        kind = a.match.route.kind
        if self.packages.handles(a):  # reads a package upload within its own size limit
            return await self.packages.handle(a)
        if not kind.changes_jobs and a.request.body_exists:
            # Routes that are not priced still carry a body now and then: it is read within the same
            # size and pace limits before anything goes upstream, so a slow or endless body cannot hold
            # an upstream connection.
            body = await self.reader.read(a.request, a.admission.tier)
            if isinstance(body, Refused):
                return await self.responder.refused(a.call, body)
            a.call.body = body
        if kind is RouteKind.PLAIN_READ:
            return await self.reads.access(a)
        adapter = a.upstream.adapter
        if adapter is None:  # the config loader allows only plain reads without one
            return await self.responder.refuse(a.call, refuse(Code.ROUTE_NOT_ALLOWED, "no scheduler adapter"))
        return await self.job_flows[kind](JobCall(a, adapter))
