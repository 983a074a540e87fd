"""The `upstreams:` section of gateway.yaml: each scheduler's URL, adapter, routes, credentials and bound parameters."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.fields import Fields, field_where, resolve_path
from gateway.config.located import Node, Problem
from gateway.config.schedulers import load_scheduler_options
from gateway.config.secrets import SecretRef, secret_ref
from gateway.core.routes import Route, RouteKind
from gateway.schedulers import SchedulerOptions

SCHEDULERS = ("slurm", "kubernetes", "ray", "generic", "s3", "none")


@dataclass(frozen=True, slots=True)
class HeaderSource:
    """Where an upstream credential header's value comes from; secrets are read at start."""

    file: Path | None = None
    env: str | None = None
    from_tenant: str | None = None
    prefix: str = ""
    slurm_jwt_key_file: Path | None = None
    lifespan_s: float = 600.0

    @property
    def secret(self) -> SecretRef | None:
        """Where a static value is read from (`file` or `env`); None for a tenant's identity."""
        return SecretRef(self.file, self.env) if self.file is not None or self.env is not None else None


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """TLS to an https upstream: the CA bundle its certificate is verified with (default: the system's
    trust store) and the client certificate the gateway presents (mutual TLS)."""

    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    name: str
    url: str
    prefix: str
    scheduler: str
    routes: tuple[Route, ...]
    options: SchedulerOptions | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    headers: Mapping[str, HeaderSource] = field(default_factory=dict)
    bind_params: Mapping[str, str] = field(default_factory=dict)
    # Take `prefix` off the path before route matching and forwarding: the scheduler sees its own paths
    # (a Ray dashboard mounted at /ray/ still gets /api/...).
    strip_prefix: bool = False
    tls: UpstreamTls | None = None


# Path parameters a tenant may only fill with its own identity, per scheduler (overridable).
DEFAULT_BIND_PARAMS: dict[str, dict[str, str]] = {"kubernetes": {"ns": "k8s_namespace"}}


def _routes(node: Node | None, problems: list[Problem]) -> tuple[Route, ...]:
    if node is None or node.raw is None:
        return ()
    if not isinstance(node.raw, list):
        problems.append(node.problem("must be a list of routes"))
        return ()
    out = []
    for i, item in enumerate(node.elements()):
        fields = Fields(item, problems, ("name", "methods", "path", "kind", "websocket"))
        methods: list[str] = fields.texts("methods", ["GET"])
        path: str = fields.text("path", "", required=True)
        kind = fields.choice("kind", [k.value for k in RouteKind], required=True)
        if not path or kind is None:
            continue
        try:
            out.append(
                Route.of(
                    fields.text("name", f"route{i}"), methods, path, RouteKind(kind), fields.flag("websocket", False)
                )
            )
        except ValueError as exc:
            fields.problem("path", str(exc))
    return tuple(out)


def _headers(node: Node | None, base: Path, problems: list[Problem]) -> dict[str, HeaderSource]:
    if node is None or node.raw is None:
        return {}
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be a mapping of header name to source"))
        return {}
    out = {}
    for name, child in node.items():
        fields = Fields(child, problems, ("file", "env", "from_tenant", "prefix", "slurm_jwt_key_file", "lifespan_s"))
        secret = secret_ref(fields, base)  # the one form of every secret in gateway.yaml (config/secrets.py)
        source = HeaderSource(
            secret.file if secret is not None else None,
            secret.env if secret is not None else None,
            fields.text("from_tenant"),
            fields.text("prefix", ""),
            resolve_path(base, fields.text("slurm_jwt_key_file")),
            fields.number("lifespan_s", 600.0),
        )
        if sum(x is not None for x in (source.file, source.env, source.from_tenant)) != 1:
            problems.append(child.problem("exactly one of file, env, from_tenant"))
        if source.slurm_jwt_key_file is not None and source.from_tenant is None:
            problems.append(child.problem("slurm_jwt_key_file mints a token for a user: set from_tenant"))
        if not 30 <= source.lifespan_s <= 86400:
            fields.problem("lifespan_s", "must be 30..86400")
        out[name] = source
    return out


def _tls(node: Node | None, url: str, base: Path, problems: list[Problem]) -> UpstreamTls | None:
    """`tls: {ca_file, client_cert_file, client_key_file}`; only for an https URL. The files are read at start."""
    if node is None or node.raw is None:
        return None
    fields = Fields(node, problems, ("ca_file", "client_cert_file", "client_key_file"))
    tls = UpstreamTls(
        resolve_path(base, fields.text("ca_file")),
        resolve_path(base, fields.text("client_cert_file")),
        resolve_path(base, fields.text("client_key_file")),
    )
    if tls.client_cert_file is not None and tls.client_key_file is None:
        fields.problem("client_key_file", "required with client_cert_file")
    if tls.client_key_file is not None and tls.client_cert_file is None:
        fields.problem("client_cert_file", "required with client_key_file")
    if url and urlsplit(url).scheme != "https":
        problems.append(node.problem("needs an https url"))
    return tls


def _bind_params(node: Node | None, scheduler: str, problems: list[Problem]) -> dict[str, str]:
    """`{path param: upstream_identity field}`; the scheduler's default when absent."""
    if node is None:
        return dict(DEFAULT_BIND_PARAMS.get(scheduler, {}))
    if node.raw is None:
        return {}
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be a mapping of path parameter to upstream_identity field"))
        return {}
    out = {}
    for param, child in node.items():
        if not isinstance(child.raw, str) or not child.raw:
            problems.append(child.problem("must name an upstream_identity field"))
            continue
        out[param] = child.raw
    return out


def load_upstreams(node: Node | None, base: Path, problems: list[Problem]) -> tuple[UpstreamSettings, ...]:
    if node is None or not isinstance(node.raw, list) or not node.raw:
        if node is not None:
            problems.append(node.problem("must be a non-empty list"))
        return ()
    out = []
    for item in node.elements():
        fields = Fields(
            item,
            problems,
            (
                "name",
                "url",
                "prefix",
                "scheduler",
                "scheduler_options",
                "routes",
                "timeout_s",
                "connect_timeout_s",
                "headers",
                "bind_params",
                "strip_prefix",
                "tls",
            ),
        )
        url: str = fields.text("url", "", required=True)
        parts = urlsplit(url)
        if url and (parts.scheme not in ("http", "https") or not parts.hostname):
            fields.problem("url", f"{url!r} is not an http(s) URL")
        prefix: str = fields.text("prefix", "/")
        scheduler: str = fields.choice("scheduler", SCHEDULERS, "none")
        if not prefix.startswith("/"):
            fields.problem("prefix", "must start with '/'")
        strip_prefix: bool = fields.flag("strip_prefix", False)
        if strip_prefix and prefix.rstrip("/") == "":
            fields.problem("strip_prefix", "needs a prefix other than '/'")
        out.append(
            UpstreamSettings(
                name=fields.text("name", "default"),
                url=url.rstrip("/"),
                prefix=prefix,
                scheduler=scheduler,
                routes=_routes(fields.child("routes"), problems),
                options=load_scheduler_options(scheduler, fields.child("scheduler_options"), problems, item),
                timeout_s=fields.number("timeout_s", 60.0),
                connect_timeout_s=fields.number("connect_timeout_s", 5.0),
                headers=_headers(fields.child("headers"), base, problems),
                bind_params=_bind_params(fields.child("bind_params"), scheduler, problems),
                strip_prefix=strip_prefix,
                tls=_tls(fields.child("tls"), url, base, problems),
            )
        )
    for upstream, item in zip(out, node.elements(), strict=True):
        if upstream.scheduler == "none" and any(r.kind is not RouteKind.PLAIN_READ for r in upstream.routes):
            message = "without a scheduler adapter only plain_read routes are allowed"
            problems.append(field_where(item, "routes").problem(message))
        if upstream.scheduler == "s3" and upstream.routes:  # S3 requests are read as S3 operations (docs/weights.md)
            problems.append(field_where(item, "routes").problem("an s3 upstream takes no routes"))
    seen: set[str] = set()
    for upstream, item in zip(out, node.elements(), strict=True):
        if upstream.name in seen:
            problems.append(field_where(item, "name").problem(f"{upstream.name!r}: upstream names must be unique"))
        seen.add(upstream.name)
    return tuple(out)
