"""`exportgate nginx-config`: nginx in front of the schedulers, exportgate deciding (`auth_request`).

For each upstream of gateway.yaml, nginx sends the routes only the full proxy serves (submit,
update, cancel, listings, Ray code packages: `gateway.http.decision.needs_proxy`) to the
exportgate proxy, and every other request through `auth_request` to the decision listener
(`/v1/nginx`) and then straight to the scheduler with the headers the decision returned (tenant,
tier, decision id and the gateway's credentials for that upstream). A refusal reaches the client
with its real status (401, 403, 404, 405, 429, 451, 503, ...), headers and problem+json body:
`auth_request` knows only 401 and 403, so the decision listener answers one of them with the real
answer in `X-Exportgate-*` headers and a named location returns it.

nginx chooses the upstream as the gateway does (longest prefix; a path under none goes to the first
upstream) and the route by the same table in the same order, on the normalised path; the decision
itself is taken on the raw request URI, and a path not in normal form is refused there. The output
is an `http {}`-level file (upstreams, maps, one server) and the same for the same gateway.yaml.
"""

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.listener import WILDCARD_HOSTS, ListenerTls
from gateway.config.located import ConfigError
from gateway.config.settings import Settings, load_settings
from gateway.config.upstreams import UpstreamSettings
from gateway.core.codes import CODES
from gateway.core.routes import Route
from gateway.http.decision import needs_proxy
from gateway.http.decision_http import NGINX_PATH
from gateway.http.headers import STRIPPED_EXACT, is_address
from gateway.http.lifecycle import adapter_for
from gateway.schedulers import RayAdapter, SchedulerAdapter

DEFAULT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's bundle: what https schedulers are checked against
AUTH_URI = "/.exportgate/auth"  # an internal location: a client asking for it gets nginx's 404
_PARAM = re.compile(r"\{[a-z_][a-z0-9_]*\}")
_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
# Client headers nginx clears toward the scheduler: the proxy's exact list (nginx sets its own X-Forwarded-*)
# and the credential and impersonation headers schedulers read; the gateway's own are set from the decision.
CLEARED = tuple(
    sorted(
        (STRIPPED_EXACT - {"host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
        | {"impersonate-user", "impersonate-group", "impersonate-uid", "x-slurm-user-name", "x-slurm-user-token"}
    )
)
GATEWAY_HEADERS = (
    ("X-Exportgate-Tenant", "eg_tenant"),
    ("X-Exportgate-Tier", "eg_tier"),
    ("X-Exportgate-Decision-Id", "eg_decision_id"),
)
REFUSAL_VARIABLES = ("status", "problem", "allow", "retry_after")


class NginxConfigError(Exception):
    """gateway.yaml holds something the generated configuration cannot express."""


@dataclass(frozen=True, slots=True)
class Targets:
    """Where nginx listens, and where it finds the exportgate proxy and decision listeners (host:port)."""

    listen: str
    proxy: str
    decision: str
    ca_file: str = DEFAULT_CA_FILE
    # Toward exportgate's own listeners when they terminate TLS: the CA nginx verifies them against (default
    # ca_file), and nginx's client certificate when they ask for one (`client_ca_file`).
    gateway_ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    gateway_tls_name: str | None = None  # the DNS name their certificates hold (default: the target's host)


@dataclass(frozen=True, slots=True)
class _Upstream:
    index: int
    settings: UpstreamSettings
    adapter: SchedulerAdapter | None
    routes: tuple[Route, ...]

    @property
    def name(self) -> str:
        return f"eg_u{self.index}"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _local(host: str) -> str:
    """A listener's address as a client on this host reaches it."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else host


def default_targets(settings: Settings, listen: str, *, needs_decision: bool = True) -> Targets:
    """The proxy and decision listeners of `settings`, as nginx on the same host reaches them."""
    if settings.decision is None and needs_decision:
        raise NginxConfigError("no `decision:` listener to ask: add the section, or name one with --decision")
    proxy = _address(_local(settings.listen_host), settings.listen_port)
    d = settings.decision
    return Targets(listen, proxy, _address(_local(d.host), d.port) if d is not None else "")


def _quote(text: str) -> str:
    """An nginx string in double quotes: nginx reads a backslash-escaped backslash or quote there as the character."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def route_regex(route: Route, prefix: str) -> str:
    """`METHODS PATH` of a route as one anchored PCRE over nginx's `"$request_method $uri"`."""
    methods = set(route.methods) | ({"HEAD"} if "GET" in route.methods else set())
    literal = _PARAM.split(route.pattern)
    path = "[^/]+".join(re.escape(part) for part in literal)
    return f"^(?:{'|'.join(sorted(methods))}) {re.escape(prefix)}{path}$"


def _via_map(u: _Upstream) -> list[str]:
    """`$eg_via<i>` is 1 for requests of this upstream only the proxy serves, by the first route that matches."""
    prefix = u.settings.prefix.rstrip("/") if u.settings.strip_prefix else ""
    lines = [f'map "$request_method $uri" $eg_via{u.index} {{', '  default "";']
    for route in u.routes:
        value = "1" if needs_proxy(u.adapter, route) else '""'
        lines.append(f"  {_quote('~' + route_regex(route, prefix))} {value};  # {route.name} ({route.kind.value})")
    return [*lines, "}"]


def _uri_map(u: _Upstream) -> list[str]:
    """`$eg_uri<i>`: the raw request URI as the scheduler sees it (without the prefix when `strip_prefix`)."""
    if not u.settings.strip_prefix:
        return []
    p = re.escape(u.settings.prefix.rstrip("/"))
    under, query = "~^" + p + "(/.*)$", "~^" + p + "(\\?.*)?$"
    return [
        f"map $request_uri $eg_uri{u.index} {{",
        "  default $request_uri;",
        f"  {_quote(under)} $1;",
        f"  {_quote(query)} /$1;",
        "}",
    ]


@dataclass(frozen=True, slots=True)
class _Url:
    scheme: str
    host: str
    address: str  # host:port, for `server`
    host_header: str  # as aiohttp sends it: the port only when it is not the scheme's
    base: str  # the URL's own path, before the request's


def _url(url: str) -> _Url:
    parts = urlsplit(url)
    scheme, host = parts.scheme, parts.hostname or ""
    default = 443 if scheme == "https" else 80
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    return _Url(scheme, host, _address(host, port), shown if port == default else f"{shown}:{port}", parts.path)


def _credentials(u: _Upstream) -> list[tuple[str, str]]:
    """(header name, nginx variable) of each credential header the decision returns for this upstream."""
    out = []
    for name in sorted(u.settings.headers, key=str.lower):
        if not _HEADER_NAME.fullmatch(name):
            raise NginxConfigError(f"upstream {u.settings.name}: header {name!r} cannot be named in nginx")
        out.append((name, "eg_h_" + name.lower().replace("-", "_")))
    return out


def _content_type(adapter: SchedulerAdapter | None) -> str:
    """The Content-Type of this upstream's refusals (the scheduler's dialect, else problem+json)."""
    rendered = adapter.refusal("route_not_allowed", 404, "t", "d", "0") if adapter is not None else None
    return rendered[0] if rendered is not None else "application/problem+json"


def _variable(header: str) -> str:
    """nginx's name for a response header of the decision: `$upstream_http_<name>`."""
    return "upstream_http_" + header.lower().replace("-", "_")


def _decided_location(u: _Upstream, max_body: int, ca_file: str) -> list[str]:
    url = _url(u.settings.url)
    uri = f"$eg_uri{u.index}" if u.settings.strip_prefix else "$request_uri"
    credentials = _credentials(u)
    set_names = {name.lower() for name, _ in credentials}
    lines = [
        f"    if ($eg_via{u.index}) {{ return 418; }}  # a route only the full proxy serves",
        "    error_page 418 = @eg_proxy;",
        f"    client_max_body_size {max_body};  # checked before the choice: the proxy's routes' largest",
        f"    auth_request {AUTH_URI};",
        *(f"    auth_request_set ${var} ${_variable(name)};" for name, var in (*GATEWAY_HEADERS, *credentials)),
        *(f"    auth_request_set $eg_{v} ${_variable('x-exportgate-' + v)};" for v in REFUSAL_VARIABLES),
        f"    error_page 401 403 = @eg_refused{u.index};",
        f"    proxy_pass {url.scheme}://{u.name}{url.base}{uri};",
        "    proxy_http_version 1.1;",
        "    proxy_buffering off;  # answers stream through as the gateway streams them",
        f"    proxy_connect_timeout {u.settings.connect_timeout_s:g}s;",
        f"    proxy_read_timeout {u.settings.timeout_s:g}s;",
        f"    proxy_set_header Host {_quote(url.host_header)};",
        "    proxy_set_header Connection $eg_connection;",
        "    proxy_set_header Upgrade $http_upgrade;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header X-Forwarded-Host $host;",
        *(f"    proxy_set_header {name} ${var};" for name, var in GATEWAY_HEADERS),
        *(f"    proxy_set_header {name} ${var};" for name, var in credentials),
        *(f'    proxy_set_header {name} "";' for name in CLEARED if name not in set_names),
        "    add_header X-Exportgate-Decision-Id $eg_decision_id always;",
    ]
    if url.scheme == "https":  # verified as the gateway verifies it (nginx does not by default)
        lines += [
            "    proxy_ssl_server_name on;",
            f"    proxy_ssl_name {_quote(url.host)};",
            "    proxy_ssl_verify on;",
            f"    proxy_ssl_trusted_certificate {_quote(ca_file)};",
        ]
    return lines


def _locations(u: _Upstream, heads: list[str], max_body: int, ca_file: str) -> list[str]:
    body = _decided_location(u, max_body, ca_file)
    out = []
    for head in heads:
        out += [f"  location {head} {{  # upstream {u.settings.name}", *body, "  }"]
    return out


def _prefix_heads(u: _Upstream) -> list[str]:
    """The locations of a prefix as `pick_upstream` reads it: the prefix itself and everything under it."""
    prefix = u.settings.prefix.rstrip("/")
    if not _SAFE_PATH.fullmatch(prefix):
        raise NginxConfigError(f"upstream {u.settings.name}: prefix {u.settings.prefix!r} cannot be an nginx location")
    return [f"= {prefix}", f"^~ {prefix}/"]


def _refused_location(u: _Upstream) -> list[str]:
    """The real refusal: status from `$eg_status`, body from `$eg_problem` (nginx's `return` takes a literal code)."""
    statuses = sorted({info.status for info in CODES.values()})
    return [
        f"  location @eg_refused{u.index} {{",
        "    types { }",
        f"    default_type {_content_type(u.adapter)};",
        "    add_header X-Exportgate-Decision-Id $eg_decision_id always;",
        "    add_header Cache-Control no-store always;",
        "    add_header Allow $eg_allow always;",
        "    add_header Retry-After $eg_retry_after always;",
        *(f"    if ($eg_status = {status}) {{ return {status} $eg_problem; }}" for status in statuses),
        "    return 403 $eg_problem;",
        "  }",
    ]


def _upstream_block(u: _Upstream) -> list[str]:
    address = _url(u.settings.url).address
    return [
        f"upstream {u.name} {{  # {u.settings.name}: {u.settings.url}",
        f"  server {address};",
        "  keepalive 64;",
        "}",
    ]


def _gateway_tls(name: str, tls: ListenerTls | None, address: str, targets: Targets) -> tuple[str, list[str]]:
    """The scheme nginx reaches one of exportgate's listeners with, and its TLS lines (verified, as the
    gateway verifies its schedulers; with nginx's client certificate where the listener asks for one)."""
    if tls is None:
        return "http", []
    host = targets.gateway_tls_name or urlsplit(f"//{address}").hostname or address
    if is_address(host):
        raise NginxConfigError(
            f"the {name} listener serves TLS at {address}, and nginx checks a certificate by DNS name, not IP "
            "address: give the name its certificate holds with --gateway-tls-name"
        )
    lines = [
        "    proxy_ssl_server_name on;",
        f"    proxy_ssl_name {_quote(host)};",
        "    proxy_ssl_verify on;",
        f"    proxy_ssl_trusted_certificate {_quote(targets.gateway_ca_file or targets.ca_file)};",
        "    proxy_ssl_session_reuse on;",
    ]
    if tls.client_ca_file is not None:
        if targets.client_cert is None or targets.client_key is None:
            raise NginxConfigError(
                f"the {name} listener asks for client certificates (tls.client_ca_file): "
                "give nginx's with --client-cert and --client-key"
            )
        lines += [
            f"    proxy_ssl_certificate {_quote(targets.client_cert)};",
            f"    proxy_ssl_certificate_key {_quote(targets.client_key)};",
        ]
    return "https", lines


def render(settings: Settings, targets: Targets) -> str:
    """The nginx configuration (an `http {}`-level file) for `settings`."""
    upstreams = []
    for i, s in enumerate(settings.upstreams):
        adapter = adapter_for(s)
        upstreams.append(_Upstream(i, s, adapter, (*(adapter.routes() if adapter else ()), *s.routes)))
    for u in upstreams:
        local = u.settings.prefix.rstrip("/") + AUTH_URI if u.settings.strip_prefix else AUTH_URI
        if any(route.regex.match(local) or route.regex.match(AUTH_URI) for route in u.routes):
            raise NginxConfigError(f"upstream {u.settings.name}: a route matches {AUTH_URI}, nginx's auth location")
    limits = settings.limits
    max_proxy_body = max(limits.max_body_bytes, limits.max_package_bytes)
    slowest = max(u.settings.timeout_s for u in upstreams)
    decision_tls = settings.decision.tls if settings.decision is not None else None
    decision_scheme, decision_ssl = _gateway_tls("decision", decision_tls, targets.decision, targets)
    proxy_scheme, proxy_ssl = _gateway_tls("proxy", settings.listen_tls, targets.proxy, targets)
    out = [
        f"# exportgate nginx-config for {settings.source}: include this file inside nginx's http {{}} block.",
        "# Routes only the full proxy serves (submit, update, cancel, listings, Ray code packages) go to the",
        "# exportgate proxy; every other request is decided by exportgate's decision listener (auth_request)",
        "# and sent straight to its scheduler. nginx's address must be in gateway.yaml's trusted_proxies.",
        "",
        f"upstream eg_proxy {{ server {targets.proxy}; keepalive 32; }}",
        f"upstream eg_decision {{ server {targets.decision}; keepalive 64; }}",
    ]
    for u in upstreams:
        out += _upstream_block(u)
    out += ["", 'map $http_upgrade $eg_connection { default upgrade; "" ""; }']
    for u in upstreams:
        out += _via_map(u) + _uri_map(u)
    out += [
        "",
        "server {",
        f"  listen {targets.listen};",
        "  server_tokens off;",
        f"  client_header_timeout {limits.head_timeout_s:g}s;",
        f"  client_body_timeout {limits.body_timeout_s:g}s;",
        f"  keepalive_timeout {limits.idle_timeout_s:g}s;",
        f"  client_max_body_size {limits.max_body_bytes};",
        "",
        f"  location = {AUTH_URI} {{",
        "    internal;",
        f"    proxy_pass {decision_scheme}://eg_decision{NGINX_PATH};",
        *decision_ssl,
        "    proxy_method GET;",
        "    proxy_http_version 1.1;",
        "    proxy_pass_request_body off;",
        "    proxy_buffer_size 16k;  # the decision's headers: credentials, a refusal's body",
        "    proxy_buffers 4 16k;",
        '    proxy_set_header Content-Length "";',
        '    proxy_set_header Connection "";',
        '    proxy_set_header Upgrade "";',
        "    proxy_set_header X-Original-URI $request_uri;",
        "    proxy_set_header X-Original-Method $request_method;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "  }",
        "",
        "  location @eg_proxy {",
        f"    client_max_body_size {max_proxy_body};",
        f"    proxy_pass {proxy_scheme}://eg_proxy;",
        *proxy_ssl,
        "    proxy_http_version 1.1;",
        "    proxy_buffering off;",
        f"    proxy_read_timeout {slowest + 10:g}s;",
        "    proxy_set_header Host $http_host;",
        "    proxy_set_header Connection $eg_connection;",
        "    proxy_set_header Upgrade $http_upgrade;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "  }",
    ]
    for u in upstreams:
        out += ["", *_refused_location(u)]
    for u in upstreams:
        max_body = max_proxy_body if isinstance(u.adapter, RayAdapter) else limits.max_body_bytes
        heads = [] if u.settings.prefix == "/" else _prefix_heads(u)
        # A path under no prefix goes to the upstream whose prefix is /, else to the first, as in the gateway.
        fallback = next((v for v in upstreams if v.settings.prefix == "/"), upstreams[0])
        heads += ["/"] if u is fallback else []
        out += ["", *_locations(u, heads, max_body, targets.ca_file)]
    return "\n".join([*out, "}", ""])


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    try:
        found = default_targets(settings, args.listen, needs_decision=not args.decision)
        targets = Targets(
            args.listen, args.proxy or found.proxy, args.decision or found.decision, args.ca_file,
            args.gateway_ca_file, args.client_cert, args.client_key, args.gateway_tls_name,
        )  # fmt: skip
        text = render(settings, targets)
    except NginxConfigError as exc:
        print(f"{settings.source}: {exc}", file=sys.stderr)
        return 1
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("nginx-config", help="write the nginx configuration that asks exportgate (auth_request)")
    p.add_argument("--config", type=Path, help="gateway.yaml (default: embedded defaults)")
    p.add_argument("--listen", default="80", help="nginx's listen parameter (default 80)")
    p.add_argument("--proxy", help="host:port of the exportgate proxy (default: gateway.yaml's listen)")
    p.add_argument("--decision", help="host:port of the decision listener (default: gateway.yaml's decision)")
    p.add_argument("--ca-file", default=DEFAULT_CA_FILE, help="CA bundle nginx verifies https schedulers against")
    p.add_argument(
        "--gateway-ca-file", help="CA nginx verifies exportgate's own TLS listeners against (default: --ca-file)"
    )
    p.add_argument(
        "--gateway-tls-name", help="the DNS name in exportgate's listener certificates (default: their host)"
    )
    p.add_argument("--client-cert", help="nginx's client certificate, for exportgate listeners that ask for one")
    p.add_argument("--client-key", help="the key of --client-cert")
    p.add_argument("--out", type=Path, help="file to write (default: standard output)")
    p.set_defaults(func=_run)
