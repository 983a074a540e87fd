"""The admission webhook's HTTPS application, built from the parts the proxy application opened."""

import ssl

from aiohttp import web

from gateway.adapters.tls_files import ServerTls
from gateway.http.headers import hide_server_software
from gateway.http.lifecycle import BASE, LEDGER, POLICY, STORE, UPSTREAMS
from gateway.http.webhook import AdmissionWebhook


def webhook_app(proxy: web.Application) -> tuple[web.Application, ssl.SSLContext]:
    """The webhook's application and the TLS context its listener serves (raises TlsFilesError).

    The certificate files are looked at again every `reload.interval_s` and a renewed pair is
    used for new connections; the application's cleanup stops that.
    """
    base = proxy[BASE]
    settings = base.settings.admission_webhook
    assert settings is not None
    upstream = next(u for u in proxy[UPSTREAMS] if u.name == settings.upstream)  # checked when the config loaded
    tls = ServerTls(settings.cert_file, settings.key_file, label="admission webhook")
    hook = AdmissionWebhook(
        settings,
        policy=proxy[POLICY],
        store=proxy[STORE],
        ledger=proxy[LEDGER],
        metrics=base.metrics,
        upstream=upstream,
        limits=base.settings.limits,
        clock=base.clock,
    )
    app = web.Application()
    app.router.add_post(settings.path, hook.handle)
    app.on_response_prepare.append(hide_server_software)

    async def watch(_: web.Application) -> None:
        tls.watch(base.settings.reload_interval_s)

    async def stop(_: web.Application) -> None:
        await tls.stop()

    app.on_startup.append(watch)
    app.on_cleanup.append(stop)
    return app, tls.context
