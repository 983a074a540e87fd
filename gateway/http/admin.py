"""The admin listener: /metrics, /healthz and /readyz, never on the proxy's port."""

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.adapters.metrics import Metrics
from gateway.http.admin_api import AdminApi


def admin_app(metrics: Metrics, ready: Callable[[], dict[str, bool]], api: AdminApi | None = None) -> web.Application:
    """`ready` reports each part (config, keys, ledger); /readyz is 200 only when all are true."""

    async def metrics_handler(request: web.Request) -> web.Response:
        data = generate_latest(metrics.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        parts = ready()
        ok = all(parts.values())
        return web.json_response({"ready": ok, "parts": parts}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if api is not None:
        api.add_routes(app)
    return app
