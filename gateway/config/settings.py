"""Process settings from gateway.yaml and EXPORTGATE_* environment variables."""

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.adapters.auth import IssuerConfig
from gateway.config.fields import Fields
from gateway.config.ledger import LedgerSettings, load_ledger_settings
from gateway.config.located import ConfigError, Node, Problem, load_file, load_text
from gateway.config.reconcile import ReconcileSettings, load_reconcile_settings
from gateway.config.schedulers import load_scheduler_options
from gateway.core.routes import Route, RouteKind
from gateway.schedulers import SchedulerOptions

BUNDLED_POLICIES = Path(__file__).resolve().parent.parent.parent / "policies"
SCHEDULERS = ("slurm", "kubernetes", "ray", "generic", "none")
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA", "HS256")


@dataclass(frozen=True, slots=True)
class HeaderSource:
    """Where an upstream credential header's value comes from; secrets are read at start."""

    file: Path | None = None
    env: str | None = None
    from_tenant: str | None = None
    prefix: str = ""
    slurm_jwt_key_file: Path | None = None
    lifespan_s: float = 600.0


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


# Path parameters a tenant may only fill with its own identity, per scheduler (overridable).
DEFAULT_BIND_PARAMS: dict[str, dict[str, str]] = {"kubernetes": {"ns": "k8s_namespace"}}


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    store: str = "memory"
    redis_url: str | None = None
    cluster: bool = False
    timeout_s: float = 0.25
    prefix: str = "eg:"


@dataclass(frozen=True, slots=True)
class Settings:
    source: str
    listen_host: str
    listen_port: int
    admin_host: str
    admin_port: int
    instance_id: str
    pack_dir: Path
    registry_file: Path
    ledger: LedgerSettings
    quota: QuotaSettings
    issuers: tuple[IssuerConfig, ...]
    upstreams: tuple[UpstreamSettings, ...]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = 1 << 20
    reload_interval_s: float = 2.0
    workers: int = 1
    admin_tokens_file: Path | None = None
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def _host_port(fields: Fields, key: str, host: str, port: int, extra: tuple[str, ...] = ()) -> tuple[str, int]:
    node = fields.child(key)
    if node is None:
        return host, port
    sub = Fields(node, fields.problems, ("host", "port", *extra))
    got_port: int = sub.integer("port", port)
    if not 0 < got_port < 65536:
        fields.problems.append(node.problem("port: must be 1..65535"))
    return sub.text("host", host), got_port


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
            problems.append(item.problem(f"path: {exc}"))
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
        source = HeaderSource(
            _resolve(base, fields.text("file")),
            fields.text("env"),
            fields.text("from_tenant"),
            fields.text("prefix", ""),
            _resolve(base, fields.text("slurm_jwt_key_file")),
            fields.number("lifespan_s", 600.0),
        )
        if sum(x is not None for x in (source.file, source.env, source.from_tenant)) != 1:
            problems.append(child.problem("exactly one of file, env, from_tenant"))
        if source.slurm_jwt_key_file is not None and source.from_tenant is None:
            problems.append(child.problem("slurm_jwt_key_file mints a token for a user: set from_tenant"))
        if not 30 <= source.lifespan_s <= 86400:
            problems.append(child.problem("lifespan_s: must be 30..86400"))
        out[name] = source
    return out


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


def _upstreams(node: Node | None, base: Path, problems: list[Problem]) -> tuple[UpstreamSettings, ...]:
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
            ),
        )
        url: str = fields.text("url", "", required=True)
        parts = urlsplit(url)
        if url and (parts.scheme not in ("http", "https") or not parts.hostname):
            problems.append(item.problem(f"url: {url!r} is not an http(s) URL"))
        prefix: str = fields.text("prefix", "/")
        scheduler: str = fields.choice("scheduler", SCHEDULERS, "none")
        if not prefix.startswith("/"):
            problems.append(item.problem("prefix: must start with '/'"))
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
            )
        )
    for upstream, item in zip(out, node.elements(), strict=True):
        if upstream.scheduler == "none" and any(r.kind is not RouteKind.PLAIN_READ for r in upstream.routes):
            problems.append(item.problem("routes: without a scheduler adapter only plain_read routes are allowed"))
    names = [u.name for u in out]
    if len(set(names)) != len(names):
        problems.append(node.problem("upstream names must be unique"))
    return tuple(out)


def _issuers(node: Node | None, base: Path, problems: list[Problem]) -> tuple[IssuerConfig, ...]:
    if node is None or node.raw is None:
        return ()
    if not isinstance(node.raw, list):
        problems.append(node.problem("must be a list of issuers"))
        return ()
    out = []
    for item in node.elements():
        before = len(problems)
        fields = Fields(
            item,
            problems,
            (
                "issuer",
                "audiences",
                "algorithms",
                "jwks_file",
                "jwks_url",
                "hs256_secret_file",
                "subject_claim",
                "leeway_s",
                "refetch_cooldown_s",
                "refresh_interval_s",
            ),
        )
        secret = _resolve(base, fields.text("hs256_secret_file"))
        default_algs = (
            ["HS256"]
            if secret is not None and fields.child("jwks_file") is None and fields.child("jwks_url") is None
            else ["RS256", "PS256", "ES256", "EdDSA"]
        )
        algorithms: list[str] = fields.texts("algorithms", default_algs)
        for alg in algorithms:
            if alg not in ALGORITHMS:
                problems.append(item.problem(f"algorithms: {alg!r} is not one of {', '.join(ALGORITHMS)}"))
        if "HS256" in algorithms and secret is None:
            problems.append(item.problem("algorithms: HS256 needs hs256_secret_file"))
        jwks_file = _resolve(base, fields.text("jwks_file"))
        jwks_url = fields.text("jwks_url")
        if jwks_file is None and jwks_url is None and secret is None:
            problems.append(item.problem("one of jwks_file, jwks_url, hs256_secret_file is required"))
        audiences: list[str] = fields.texts("audiences", [], required=True)
        issuer: str = fields.text("issuer", "", required=True)
        if len(problems) > before:
            continue
        try:
            out.append(
                IssuerConfig(
                    issuer=issuer,
                    audiences=tuple(audiences),
                    algorithms=tuple(algorithms),
                    jwks_file=jwks_file,
                    jwks_url=jwks_url,
                    hs256_secret_file=secret,
                    subject_claim=fields.text("subject_claim", "sub"),
                    leeway_s=fields.number("leeway_s", 30.0),
                    refetch_cooldown_s=fields.number("refetch_cooldown_s", 30.0),
                    refresh_interval_s=fields.number("refresh_interval_s", 300.0),
                )
            )
        except ValueError as exc:
            problems.append(item.problem(str(exc)))
    return tuple(out)


def _proxies(fields: Fields) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    node = fields.child("trusted_proxies")
    values: list[str] = fields.texts("trusted_proxies", [])
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            assert node is not None
            fields.problems.append(node.problem(f"{value!r} is not an IP network"))
    return tuple(out)


def _env_defaults(env: Mapping[str, str]) -> str:
    """The embedded default gateway.yaml, filled from EXPORTGATE_* variables."""
    upstream = env.get("EXPORTGATE_UPSTREAM", "http://127.0.0.1:6820")
    scheduler = env.get("EXPORTGATE_SCHEDULER", "slurm")
    issuer = env.get("EXPORTGATE_ISSUER", "https://idp.example.com")
    jwks = env.get("EXPORTGATE_JWKS", "")
    jwks_line = ""
    if jwks.startswith(("http://", "https://")):
        jwks_line = f"jwks_url: {jwks!r}"
    elif jwks:
        jwks_line = f"jwks_file: {jwks!r}"
    auth = ""
    if jwks_line:
        auth = f"""auth:
  issuers:
    - issuer: {issuer!r}
      audiences: [{env.get("EXPORTGATE_AUDIENCE", "exportgate")!r}]
      {jwks_line}
"""
    return f"""
upstreams:
  - name: default
    url: {upstream!r}
    scheduler: {scheduler}
{auth}"""


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load gateway.yaml (or the embedded defaults when `path` is None) and apply env overrides."""
    env = dict(os.environ) if env is None else env
    if path is None:
        root = load_text(_env_defaults(env), "<embedded defaults>")
        base = Path.cwd()
    else:
        root = load_file(path)
        base = path.resolve().parent
    return parse_settings(root, base, env)


def parse_settings(root: Node, base: Path, env: Mapping[str, str]) -> Settings:
    problems: list[Problem] = []
    fields = Fields(
        root,
        problems,
        (
            "listen",
            "admin",
            "instance_id",
            "policy",
            "ledger",
            "quota",
            "auth",
            "upstreams",
            "trusted_proxies",
            "limits",
            "reload",
            "workers",
            "reconcile",
        ),
    )
    listen = _host_port(fields, "listen", "0.0.0.0", 8080)
    admin = _host_port(fields, "admin", "127.0.0.1", 9180, ("tokens_file",))
    admin_node = fields.child("admin")
    tokens_file = None
    if admin_node is not None and isinstance(admin_node.raw, dict) and "tokens_file" in admin_node.raw:
        tokens_file = _resolve(base, Fields(admin_node, [], ("host", "port", "tokens_file")).text("tokens_file"))
    policy = Fields(fields.child("policy") or Node({}, root.file, root.line, "policy"), problems, ("pack", "registry"))
    pack_dir = (
        _resolve(base, policy.text("pack"))
        or Path(env.get("EXPORTGATE_POLICY_DIR", str(BUNDLED_POLICIES))) / "ai-diffusion-2025"
    )
    registry = (
        _resolve(base, policy.text("registry"))
        or Path(env.get("EXPORTGATE_POLICY_DIR", str(BUNDLED_POLICIES))) / "tenants.example.yaml"
    )
    ledger_node = fields.child("ledger") or Node({}, root.file, root.line, "ledger")
    ledger = load_ledger_settings(ledger_node, base, env, problems)
    quota_node = fields.child("quota") or Node({}, root.file, root.line, "quota")
    qf = Fields(quota_node, problems, ("store", "redis_url", "cluster", "timeout_ms", "prefix"))
    quota = QuotaSettings(
        qf.choice("store", ("memory", "redis"), "memory"),
        qf.text("redis_url"),
        qf.flag("cluster", False),
        qf.number("timeout_ms", 250.0) / 1000,
        qf.text("prefix", "eg:"),
    )
    if quota.store == "redis" and not quota.redis_url:
        problems.append(quota_node.problem("redis_url: required when store is redis"))
    auth_node = fields.child("auth")
    issuers: tuple[IssuerConfig, ...] = ()
    if auth_node is not None:
        af = Fields(auth_node, problems, ("issuers",))
        issuers = _issuers(af.child("issuers"), base, problems)
    upstreams = _upstreams(fields.child("upstreams"), base, problems)
    if fields.child("upstreams") is None:
        problems.append(root.problem("upstreams: required"))
    limits = Fields(fields.child("limits") or Node({}, root.file, root.line, "limits"), problems, ("max_body_bytes",))
    reload = Fields(fields.child("reload") or Node({}, root.file, root.line, "reload"), problems, ("interval_s",))
    workers: int = fields.integer("workers", 1)
    if workers < 1:
        problems.append(root.problem("workers: must be at least 1"))
    if workers > 1 and quota.store != "redis":
        problems.append(root.problem("workers: more than one worker needs quota.store: redis"))
    if "{" in quota.prefix or "}" in quota.prefix:
        problems.append(quota_node.problem("prefix: must not contain '{' or '}' (keys carry their own hash tag)"))
    if (listen[1] == admin[1]) and (listen[0] == admin[0] or "0.0.0.0" in (listen[0], admin[0])):
        problems.append(root.problem("admin: port: must differ from the proxy's listen port"))
    proxies = _proxies(fields)
    max_body: int = limits.integer("max_body_bytes", 1 << 20)
    if max_body <= 0:
        problems.append(root.problem("limits: max_body_bytes: must be positive"))
    reload_s: float = reload.number("interval_s", 2.0)
    if reload_s <= 0:
        problems.append(root.problem("reload: interval_s: must be positive"))
    reconcile = load_reconcile_settings(fields.child("reconcile"), problems)
    instance = env.get("EXPORTGATE_INSTANCE_ID") or fields.text("instance_id") or socket.gethostname()
    if problems:
        raise ConfigError(problems)
    return Settings(
        source=root.file,
        listen_host=env.get("EXPORTGATE_LISTEN_HOST", listen[0]),
        listen_port=int(env.get("EXPORTGATE_LISTEN_PORT", listen[1])),
        admin_host=env.get("EXPORTGATE_ADMIN_HOST", admin[0]),
        admin_port=int(env.get("EXPORTGATE_ADMIN_PORT", admin[1])),
        instance_id=instance,
        pack_dir=pack_dir,
        registry_file=registry,
        ledger=ledger,
        quota=quota,
        issuers=issuers,
        upstreams=upstreams,
        trusted_proxies=proxies,
        max_body_bytes=max_body,
        reload_interval_s=reload_s,
        workers=workers,
        admin_tokens_file=tokens_file,
        reconcile=reconcile,
    )


def describe(settings: Settings) -> dict[str, Any]:
    """A secret-free summary for logs."""
    return {
        "listen": f"{settings.listen_host}:{settings.listen_port}",
        "admin": f"{settings.admin_host}:{settings.admin_port}",
        "instance": settings.instance_id,
        "pack": str(settings.pack_dir),
        "registry": str(settings.registry_file),
        "ledger": str(settings.ledger.dir),
        "ledger_signed": settings.ledger.signing_key_file is not None,
        "quota": settings.quota.store,
        "upstreams": [f"{u.name}={u.url} ({u.scheduler})" for u in settings.upstreams],
    }
