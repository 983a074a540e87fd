"""The admin listener: /metrics, /healthz and /readyz, never on the proxy's port; with admin tokens, the operator
API (/admin/v1) and the console (/console/)."""

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gateway.adapters.metrics import Metrics
from gateway.core.codes import Code
from gateway.http.admin_api import AdminApi
from gateway.http.console import Console
from gateway.http.headers import hide_server_software
from gateway.http.problems import refusal

Readiness = Callable[[], tuple[bool, dict[str, bool]]]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problems_for_http_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Unknown paths and wrong methods answer problem+json like every other refusal, not aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = refusal(Code.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use {allowed}", "admin")
        response.headers["Allow"] = allowed
        return response
    except web.HTTPNotFound:
        return refusal(Code.ROUTE_NOT_ALLOWED, "no such admin endpoint", "admin")


def admin_app(metrics: Metrics, ready: Readiness, api: AdminApi | None = None) -> web.Application:
    """`ready` reports each part (config, keys, ledger, quota, serving) and whether they add up to ready."""

    async def metrics_handler(request: web.Request) -> web.Response:
        """Prometheus text, or OpenMetrics when the scraper's Accept asks for it (`application/openmetrics-text`)."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(metrics.registry), headers={"Content-Type": content_type, "Vary": "Accept"})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok, parts = ready()
        return web.json_response({"ready": ok, "parts": parts}, status=200 if ok else 503)

    app = web.Application(middlewares=[problems_for_http_errors])
    app.on_response_prepare.append(hide_server_software)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if api is not None:
        api.add_routes(app)
        Console(api, ready, api.clock).add_routes(app)  # the read-only HTML console, behind the same tokens
    return app
