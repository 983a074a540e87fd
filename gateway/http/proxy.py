"""Assemble the proxy application: each part built once, the pipeline its one handler."""

import time
from collections.abc import Callable

from aiohttp import web

from gateway.adapters.auth import Authenticator
from gateway.adapters.ledger.writer import LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import QuotaStore
from gateway.adapters.upstream import Upstream
from gateway.config.settings import Settings
from gateway.http.job_body import BodyReader
from gateway.http.owned import OwnedJobs
from gateway.http.pipeline import Pipeline
from gateway.http.reads import Reads
from gateway.http.relay import Relay
from gateway.http.responder import Responder
from gateway.http.settle import Settler
from gateway.http.submit import Submissions

PIPELINE = web.AppKey("pipeline", Pipeline)


def build_pipeline(
    settings: Settings,
    policy: PolicyFiles,
    auth: Authenticator,
    ledger: LedgerWriter,
    metrics: Metrics,
    upstreams: list[Upstream],
    store: QuotaStore,
    clock: Callable[[], float] = time.time,
) -> Pipeline:
    """Wire the stages: each receives the responder and the parts it uses, never the pipeline."""
    responder = Responder(ledger, metrics, policy, clock)
    relay = Relay(settings.trusted_proxies, metrics)
    settler = Settler(store, responder, clock)
    reads = Reads(store, responder, relay)
    owned = OwnedJobs(store, responder, reads, settler)
    reader = BodyReader(settings.limits, metrics)
    submissions = Submissions(
        policy, store, responder, reader=reader, relay=relay, reads=reads, owned=owned, settler=settler
    )
    return Pipeline(settings, auth, policy, upstreams, responder, (reads, owned, submissions), clock)


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[PIPELINE].handle(request)


def proxy_app(pipeline: Pipeline, max_body_bytes: int) -> web.Application:
    """The proxy listener's application: every path and method goes through the pipeline."""
    app = web.Application(client_max_size=max_body_bytes)
    app[PIPELINE] = pipeline
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app
