"""The decision listener: nginx's `auth_request` and Envoy's ext_authz HTTP service ask the decision core.

Both entries describe the request they are about to forward and get the core's answer:

* `/v1/nginx` (entry `nginx`): the original request in `X-Original-Method` and `X-Original-URI`
  (nginx's `$request_method` and `$request_uri`), the client's headers as nginx passes them. An
  allow is 200 with the headers nginx sets upstream (`auth_request_set`). `auth_request` knows only
  2xx, 401 and 403 (anything else is a 500 to the client), so a refusal is 401 (a token refusal,
  with its `WWW-Authenticate`) or 403, and carries the real answer in headers for the configuration
  `exportgate nginx-config` writes to return: `X-Exportgate-Status`, `-Code`, `-Decision-Id`,
  `-Problem` (the body), `-Content-Type`, `-Allow` and `-Retry-After`.
* `/v1/envoy/<original path>` (entry `envoy_http`; Envoy's `path_prefix: /v1/envoy`): Envoy sends
  the original method, the prefixed original path and the allowed headers. An allow is 200 with
  the headers to copy upstream (`allowed_upstream_headers`) and `x-envoy-auth-headers-to-remove`
  naming the client's credential headers the proxy would strip; a refusal is the core's status,
  headers and body (Envoy passes any status but 200 to the client).

The client address is the rightmost `X-Forwarded-For` hop (else `X-Real-IP`) that is not a trusted
proxy: the caller itself is a front proxy and is believed. Anything else on this listener is 404.
"""

import functools
import ipaddress
from collections.abc import Iterable

from aiohttp import web

from gateway.adapters.ids import new_decision_id
from gateway.config.limits import Limits
from gateway.core.codes import Code
from gateway.http.body import BodyTooLarge, BodyTooSlow, ClientClosed, Pace, read_limited
from gateway.http.decision import Answer, Asked, DecisionService
from gateway.http.headers import METHOD_TOKEN, IPNetwork, client_ip, envoy_removed, hide_server_software
from gateway.http.problems import refusal

NGINX_PATH = "/v1/nginx"
ENVOY_PREFIX = "/v1/envoy"
# What nginx's generated configuration reads back from a refusal (`$upstream_http_x_exportgate_*`).
NGINX_CARRIED = ("Content-Type", "Allow", "Retry-After")
ENVOY_REMOVE = "x-envoy-auth-headers-to-remove"
PARTIAL_BODY = "x-envoy-auth-partial-body"  # Envoy's own: "true" when it sent only part of the body


@functools.lru_cache(maxsize=256)
def _believed(peer: str | None, trusted: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    """`trusted` and the asking front proxy itself (a handful of peers: parsed once each)."""
    try:
        return (*trusted, ipaddress.ip_network(peer)) if peer else trusted
    except ValueError:  # not an IP peer: nothing more to believe
        return trusted


def asked_client_ip(request: web.Request, trusted: tuple[IPNetwork, ...]) -> str:
    """The client behind the asking front proxy: its forwarded chain is believed, trusted proxies skipped."""
    peer = request.remote
    chain = request.headers.getall("X-Forwarded-For", []) or request.headers.getall("X-Real-IP", [])
    return client_ip(peer, chain, _believed(peer, trusted))


def _malformed(detail: str) -> web.Response:
    """A decision request the front proxy's configuration got wrong: 400, never recorded (no client request)."""
    return refusal(Code.REQUEST_MALFORMED, detail, new_decision_id())


def nginx_response(answer: Answer) -> web.Response:
    """The core's answer as `auth_request` takes it: 200, else 401/403 with the real answer in headers."""
    if answer.allowed:
        return web.Response(status=200, headers=answer.headers)
    status = 401 if answer.status == 401 else 403
    headers = {
        "X-Exportgate-Status": str(answer.status),
        "X-Exportgate-Code": answer.code or "",
        "X-Exportgate-Decision-Id": answer.decision_id,
        # The body rides in a header for nginx's `return`: JSON text, one line, ASCII (json.dumps escapes the rest).
        "X-Exportgate-Problem": answer.body.decode("ascii", errors="replace"),
        "Cache-Control": "no-store",
    }
    for name in NGINX_CARRIED:
        if name in answer.headers:
            headers[f"X-Exportgate-{name}"] = answer.headers[name]
    if status == 401 and "WWW-Authenticate" in answer.headers:  # nginx passes a 401's challenge to the client
        headers["WWW-Authenticate"] = answer.headers["WWW-Authenticate"]
    return web.Response(status=status, headers=headers, body=answer.body)


def envoy_response(asked: Asked, answer: Answer) -> web.Response:
    """The core's answer as Envoy's HTTP ext_authz client takes it."""
    if not answer.allowed:
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)
    headers = dict(answer.headers)
    remove = envoy_removed(asked.headers, answer.headers)
    if remove:
        headers[ENVOY_REMOVE] = ", ".join(remove)  # as Envoy documents it: a comma separated list
    return web.Response(status=200, headers=headers)


class DecisionEntries:
    """The listener's one handler: the path names the entry."""

    def __init__(self, service: DecisionService, trusted_proxies: Iterable[IPNetwork], limits: Limits) -> None:
        self.service = service
        self.trusted = tuple(trusted_proxies)
        self.limits = limits

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path
        if raw == NGINX_PATH or raw.startswith(NGINX_PATH + "?"):
            return await self.nginx(request)
        if raw.startswith(ENVOY_PREFIX + "/"):
            return await self.envoy(request, raw[len(ENVOY_PREFIX) :])
        detail = f"the decision listener serves {NGINX_PATH} (nginx) and {ENVOY_PREFIX}/... (Envoy ext_authz HTTP)"
        return refusal(Code.ROUTE_NOT_ALLOWED, detail, new_decision_id())

    async def nginx(self, request: web.Request) -> web.Response:
        uri, method = request.headers.get("X-Original-URI"), request.headers.get("X-Original-Method")
        if not uri or not method:
            return _malformed("nginx must send X-Original-URI and X-Original-Method (see exportgate nginx-config)")
        if not METHOD_TOKEN.fullmatch(method):  # header text, not a method nginx parsed: held to the token rule
            return _malformed("X-Original-Method is not an HTTP method")
        asked = Asked("nginx", method, uri, request.headers, asked_client_ip(request, self.trusted))
        return nginx_response(await self.service.check(asked))

    async def envoy(self, request: web.Request, original: str) -> web.Response:
        """Envoy's HTTP ext_authz request; with `with_request_body` it carries the client's buffered body."""
        if request.headers.get(PARTIAL_BODY, "").lower() == "true":
            detail = "Envoy sent part of the body (over with_request_body.max_request_bytes)"
            return refusal(Code.BODY_TOO_LARGE, detail, new_decision_id())
        body: bytes | None = None
        if request.body_exists:
            limits = self.limits
            try:
                body = await read_limited(
                    request, limits.max_body_bytes, Pace(limits.body_timeout_s, limits.body_min_rate_bytes_s)
                )
            except BodyTooLarge:
                return refusal(
                    Code.BODY_TOO_LARGE, f"the body exceeds {limits.max_body_bytes} bytes", new_decision_id()
                )
            except BodyTooSlow:
                return refusal(Code.REQUEST_TIMEOUT, "the body arrived too slowly", new_decision_id())
            except ClientClosed:
                return web.Response(status=499, reason="Client Closed Request")  # never delivered
        asked = Asked(
            "envoy_http", request.method, original, request.headers, asked_client_ip(request, self.trusted), body
        )
        return envoy_response(asked, await self.service.check(asked))


def decision_app(
    service: DecisionService, trusted_proxies: Iterable[IPNetwork], limits: Limits | None = None
) -> web.Application:
    """The decision listener's application: nginx sends no body; Envoy sends the client's when it buffers it."""
    entries = DecisionEntries(service, trusted_proxies, limits or Limits())
    app = web.Application(client_max_size=entries.limits.max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", entries.handle)
    app.on_response_prepare.append(hide_server_software)
    return app
