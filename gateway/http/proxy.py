"""Assemble the proxy application: each part built once, the pipeline its one handler."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from gateway.adapters.auth import Authenticator
from gateway.adapters.ledger.writer import LedgerWriter
from gateway.adapters.metrics import Metrics
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import QuotaStore
from gateway.adapters.upstream import Upstream
from gateway.config.settings import Settings
from gateway.http.decision import DecisionService
from gateway.http.front_submit import FrontSubmissions
from gateway.http.job_body import BodyReader
from gateway.http.objects import Objects, open_store
from gateway.http.owned import OwnedJobs
from gateway.http.packages import Packages
from gateway.http.pipeline import Pipeline
from gateway.http.reads import Reads
from gateway.http.relay import Relay
from gateway.http.responder import Responder
from gateway.http.settle import Settler
from gateway.http.submit import Submissions

PIPELINE = web.AppKey("pipeline", Pipeline)
DECISIONS = web.AppKey("decisions", DecisionService)  # the decision core every decision entry asks


@dataclass(frozen=True)
class Parts:
    """The long-lived parts the pipeline's stages are built from, opened before the listener."""

    settings: Settings
    policy: PolicyFiles
    auth: Authenticator
    ledger: LedgerWriter
    metrics: Metrics
    upstreams: list[Upstream]
    store: QuotaStore
    clock: Callable[[], float]
    env: Mapping[str, str] = field(default_factory=dict)  # where `{env: NAME}` secrets are read (S3 credentials)


def build_pipeline(parts: Parts) -> Pipeline:
    """Wire the stages: each receives the responder and the parts it uses, never the pipeline."""
    settings, policy, store, metrics, clock = parts.settings, parts.policy, parts.store, parts.metrics, parts.clock
    responder = Responder(parts.ledger, metrics, policy, clock, access=settings.log.access)
    # A client that stops reading an answer gets the same pause allowance as a slow request body.
    relay = Relay(settings.trusted_proxies, metrics, settings.limits.body_timeout_s)
    settler = Settler(store, responder, clock)
    reads = Reads(store, responder, relay)
    owned = OwnedJobs(store, responder, reads, settler)
    reader = BodyReader(settings.limits, metrics)
    packages = Packages(store, responder, reads, relay, reader, settings.limits)
    submissions = Submissions(
        policy, store, responder, reader=reader, relay=relay, reads=reads, owned=owned, settler=settler,
        packages=packages,
    )  # fmt: skip
    flows = (reads, owned, submissions, reader, packages)
    stores = [s for s in (open_store(u, parts.env) for u in parts.upstreams) if s is not None]  # raises CredentialError
    write_timeout = settings.limits.body_timeout_s
    objects = Objects(stores, parts.auth, policy, store, responder, write_timeout, clock) if stores else None
    return Pipeline(settings, parts.auth, policy, parts.upstreams, responder, flows, clock, objects=objects)


def build_decisions(parts: Parts) -> DecisionService:
    """The decision core the decision entries share: the pipeline's admission stages, its responder's records."""
    responder = Responder(parts.ledger, parts.metrics, parts.policy, parts.clock)
    priced = FrontSubmissions(parts.policy, parts.store, responder, parts.clock)  # submissions sent with their body
    return DecisionService(
        parts.auth, parts.policy, parts.upstreams, parts.store, responder, clock=parts.clock, job_changes=priced
    )


async def _handle(request: web.Request) -> web.StreamResponse:
    return await request.app[PIPELINE].handle(request)


def proxy_app(max_body_bytes: int) -> web.Application:
    """The proxy listener's application: every path and method goes through the pipeline.

    The pipeline is not here yet: whoever runs the application sets PIPELINE while it starts
    (a cleanup_ctx step), once the parts it is built from are open.
    """
    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app
