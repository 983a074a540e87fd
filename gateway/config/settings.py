"""Process settings from gateway.yaml and EXPORTGATE_* environment variables."""

import ipaddress
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.config.admission_webhook import WebhookSettings, load_webhook, webhook_clash, webhook_mismatches
from gateway.config.auth import IssuerConfig, load_issuers
from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.decision import DecisionSettings, decision_clash, load_decision
from gateway.config.envoy_grpc import EnvoyGrpcSettings, grpc_clash, load_envoy_grpc
from gateway.config.fields import Fields, as_str, field_where, resolve_path
from gateway.config.ledger import LedgerSettings, load_ledger_settings
from gateway.config.limits import Limits, Shutdown, load_limits, load_shutdown
from gateway.config.listener import WILDCARD_HOSTS, ListenerTls, host_port, load_tls, port_clash
from gateway.config.located import ConfigError, Node, Problem, Where, load_file, load_text
from gateway.config.logs import LogSettings, load_log_settings
from gateway.config.reconcile import ReconcileSettings, load_reconcile_settings
from gateway.config.secrets import resolve_secret
from gateway.config.upstreams import UpstreamSettings, load_upstreams


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    store: str = "memory"
    # Read at load from EXPORTGATE_REDIS_URL, `{env: NAME}`, `{file: PATH}` or the literal; never printed.
    redis_url: str | None = field(default=None, repr=False)
    cluster: bool = False
    timeout_s: float = 0.25
    prefix: str = "eg:"
    # Whether an unreachable store makes /readyz answer 503 (it is always reported as a part).
    required_for_ready: bool = True
    # The URL is written in gateway.yaml itself (`check` warns when it holds a password).
    redis_url_inline: bool = field(default=False, repr=False)


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
    reload_interval_s: float = 2.0
    workers: int = 1
    admin_tokens_file: Path | None = None
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    limits: Limits = field(default_factory=Limits)
    shutdown: Shutdown = field(default_factory=Shutdown)
    log: LogSettings = field(default_factory=LogSettings)  # `log:` with EXPORTGATE_LOG_FORMAT/_LEVEL over it
    envoy_grpc: EnvoyGrpcSettings | None = None  # Envoy ext_authz gRPC listener; None: off
    decision: DecisionSettings | None = None  # the HTTP decision entries' listener (nginx, Envoy HTTP); None: off
    admission_webhook: WebhookSettings | None = None  # the Kubernetes admission webhook's HTTPS listener; None: off
    listen_tls: ListenerTls | None = None  # the proxy terminates TLS itself; None: plain HTTP
    admin_tls: ListenerTls | None = None  # the admin listener(s) likewise
    # Where each value came from, by field path ("auth.issuers[0].jwks_file"): a file line or a variable.
    origins: Mapping[str, Where] = field(default_factory=dict, compare=False, repr=False)

    def where(self, path: str) -> Where:
        """Where field `path` came from; an absent field is placed at its nearest present parent."""
        probe = path
        while probe:
            found = self.origins.get(probe)
            if found is not None:
                return found if probe == path or not found.file else Where(found.file, found.line, path)
            probe = probe[: probe.rindex("[")] if probe.endswith("]") else probe.rpartition(".")[0]
        return Where(self.source, 1, path)


# Variables that win over a gateway.yaml field (file or embedded defaults), by the field's path.
ENV_FIELDS = {
    "listen.host": "EXPORTGATE_LISTEN_HOST",
    "listen.port": "EXPORTGATE_LISTEN_PORT",
    "admin.host": "EXPORTGATE_ADMIN_HOST",
    "admin.port": "EXPORTGATE_ADMIN_PORT",
    "instance_id": "EXPORTGATE_INSTANCE_ID",
    "log.format": "EXPORTGATE_LOG_FORMAT",
    "log.level": "EXPORTGATE_LOG_LEVEL",
    "quota.redis_url": "EXPORTGATE_REDIS_URL",
}


def _host_port(
    fields: Fields, key: str, host: str, port: int, env: Mapping[str, str], extra: tuple[str, ...] = ()
) -> tuple[str, int]:
    """`listen` or `admin`: the file's host and port, then EXPORTGATE_<KEY>_HOST/_PORT over them, all checked."""
    node = fields.child(key)
    if node is not None:
        host, port = host_port(Fields(node, fields.problems, ("host", "port", *extra)), host, port)
    host_var, port_var = ENV_FIELDS[f"{key}.host"], ENV_FIELDS[f"{key}.port"]
    if host_var in env:
        if env[host_var].strip():
            host = env[host_var]
        else:
            fields.problems.append(Where.env(host_var).problem(f"must not be empty (unset it to use {key}.host)"))
    if port_var in env:
        raw = env[port_var]
        if re.fullmatch(r"[0-9]{1,5}", raw) and 0 < int(raw) < 65536:
            port = int(raw)
        else:
            fields.problems.append(Where.env(port_var).problem(f"{raw!r} is not a port (1..65535)"))
    return host, port


def listener_clash(listen: tuple[str, int], admin: tuple[str, int], workers: int) -> str | None:
    """Why the admin listeners (admin port, plus one port per further worker) cannot bind beside the proxy."""
    last = admin[1] + max(workers, 1) - 1
    if last > 65535:
        return f"{workers} workers need admin ports {admin[1]}..{last}, past 65535"
    shared = listen[0] == admin[0] or listen[0] in WILDCARD_HOSTS or admin[0] in WILDCARD_HOSTS
    if not shared or not admin[1] <= listen[1] <= last:
        return None
    if workers <= 1:
        return f"the proxy and the admin listener both use port {listen[1]}"
    return f"the {workers} workers' admin listeners use ports {admin[1]}..{last}, which include the proxy's {listen[1]}"


def listeners_clash(settings: "Settings") -> str | None:
    """The first clash among every listener `settings` opens, with one admin port per worker: what a
    `--workers` override must check again, since the file's own check counted the file's workers."""
    listen, admin = (settings.listen_host, settings.listen_port), (settings.admin_host, settings.admin_port)
    clash = listener_clash(listen, admin, settings.workers)
    if clash is not None:
        return clash
    taken = {
        "proxy": (listen[0], listen[1], listen[1]),
        "admin listener": (admin[0], admin[1], admin[1] + settings.workers - 1),
    }
    optional = (
        ("envoy_grpc listener", "envoy_grpc", settings.envoy_grpc),
        ("decision listener", "the decision listener", settings.decision),
        ("admission webhook", "the admission webhook", settings.admission_webhook),
    )
    for name, label, section in optional:
        if section is None:
            continue
        clash = port_clash((section.host, section.port), label, taken)
        if clash is not None:
            return clash
        taken[name] = (section.host, section.port, section.port)
    return None


def _tls(fields: Fields, key: str, base: Path) -> ListenerTls | None:
    """The `tls:` of the `listen` or `admin` section (its other keys are read by _host_port)."""
    node = fields.child(key)
    child = node.raw.get("tls") if node is not None and isinstance(node.raw, dict) else None
    return load_tls(child, base, fields.problems)


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(qf: Fields, base: Path, env: Mapping[str, str]) -> tuple[str | None, bool]:
    """`quota.redis_url` read now, EXPORTGATE_REDIS_URL over it: (the URL, whether gateway.yaml holds it itself).

    Problems name where the value came from and never the value (it may hold a password)."""
    variable = ENV_FIELDS["quota.redis_url"]
    node = qf.child("redis_url")
    if variable in env:
        url, inline, where = env[variable], False, Where.env(variable)
        if not url:
            qf.problems.append(where.problem("must not be empty (unset it to use quota.redis_url)"))
            return None, False
    elif node is not None:
        before = len(qf.problems)
        read, inline = resolve_secret(node, base, env, qf.problems)
        if not read or len(qf.problems) > before:  # an empty literal is as good as none: `required` says so
            return None, False
        url, where = read, node.where()
    else:
        return None, False
    if url.partition("://")[0].lower() not in REDIS_SCHEMES or "://" not in url:
        qf.problems.append(where.problem("must be a redis://, rediss:// or unix:// URL (the value is not shown)"))
        return None, inline
    return url, inline


def _clash_where(origins: Mapping[str, Where], root: Node) -> Where:
    """Where a listener clash is reported: a variable that set a port first, then the file's admin port."""
    set_by_env = [origins[p] for p in ("admin.port", "listen.port") if p in origins and not origins[p].file]
    in_file = [origins[p] for p in ("admin.port", "listen.port") if p in origins]
    return (set_by_env or in_file or [Where(root.file, root.line, "admin.port")])[0]


def _webhook(
    fields: Fields,
    base: Path,
    upstreams: tuple[UpstreamSettings, ...],
    issuers: tuple[IssuerConfig, ...],
    others: dict[str, tuple[str, int, int]],
) -> WebhookSettings | None:
    """The `admission_webhook:` section, checked against the upstream and issuer it names and the other listeners
    (`name: (host, first port, last port)`)."""
    webhook = load_webhook(fields.child("admission_webhook"), base, fields.problems)
    if webhook is None:
        return None
    section = fields.child("admission_webhook")
    assert section is not None  # it loaded
    known = {u.name: u.scheduler for u in upstreams}
    for key, message in webhook_mismatches(webhook, known, tuple(i.issuer for i in issuers)):
        fields.problems.append(field_where(section, key).problem(message))
    clash = webhook_clash(webhook, others)
    if clash is not None:
        fields.problems.append(field_where(section, "port").problem(clash))
    return webhook


def _proxies(fields: Fields) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    node = fields.child("trusted_proxies")
    values: list[str] = fields.texts("trusted_proxies", [])
    out = []
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            assert node is not None and isinstance(node.raw, list)
            fields.problems.append(node.raw[i].problem(f"{value!r} is not an IP network"))
    return tuple(out)


EMBEDDED = "<embedded defaults>"


def _env_defaults(env: Mapping[str, str]) -> tuple[str, dict[int, str]]:
    """The embedded default gateway.yaml, filled from EXPORTGATE_* variables, and which variable
    each of its lines holds (values are JSON strings, which YAML reads as written)."""
    lines: list[str] = []
    variables: dict[int, str] = {}

    def put(text: str, variable: str | None = None, default: str = "") -> None:
        if variable is not None:
            text += json.dumps(env.get(variable, default))
            variables[len(lines) + 1] = variable
        lines.append(text)

    put("upstreams:")
    put("  - scheduler: ", "EXPORTGATE_SCHEDULER", "slurm")  # problems of the upstream as a whole name it
    put("    url: ", "EXPORTGATE_UPSTREAM", "http://127.0.0.1:6820")
    put("    name: default")
    jwks = env.get("EXPORTGATE_JWKS", "")
    if jwks:
        put("auth:")
        put("  issuers:")
        put("    - issuer: ", "EXPORTGATE_ISSUER", "https://idp.example.com")
        put("      audiences: [")
        lines[-1] += json.dumps(env.get("EXPORTGATE_AUDIENCE", "exportgate")) + "]"
        variables[len(lines)] = "EXPORTGATE_AUDIENCE"
        put(f"      {'jwks_url' if jwks.startswith(('http://', 'https://')) else 'jwks_file'}: ", "EXPORTGATE_JWKS")
    return "\n".join(lines) + "\n", variables


def _from_variables(where: Where, variables: Mapping[int, str]) -> Where:
    """A place in the embedded defaults as the variable that filled it, if one did."""
    variable = variables.get(where.line) if where.file == EMBEDDED else None
    return where if variable is None else Where.env(variable)


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Load gateway.yaml (or the embedded defaults when `path` is None) and apply env overrides.

    Problems in the embedded defaults name the variable that filled the value."""
    env = dict(os.environ) if env is None else env
    if path is not None:
        return parse_settings(load_file(path), path.resolve().parent, env)
    text, variables = _env_defaults(env)
    try:
        settings = parse_settings(load_text(text, EMBEDDED), Path.cwd(), env)
    except ConfigError as exc:
        renamed = []
        for p in exc.problems:
            where = _from_variables(Where(p.file, p.line, p.field), variables)
            renamed.append(where.problem(f"{p.field}: {p.message}") if p.file and not where.file else p)
        raise ConfigError(renamed) from None
    origins = {path: _from_variables(where, variables) for path, where in settings.origins.items()}
    return replace(settings, origins=origins)


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
            "shutdown",
            "log",
            "decision",
            "envoy_grpc",
            "admission_webhook",
        ),
    )
    # Where every value came from; a variable that overrides a field is its origin from here on.
    origins = {node.path: node.where() for node in root.walk() if node.path}
    origins.update({path: Where.env(name) for path, name in ENV_FIELDS.items() if env.get(name)})
    listen = _host_port(fields, "listen", "0.0.0.0", 8080, env, ("tls",))
    admin = _host_port(fields, "admin", "127.0.0.1", 9180, env, ("tokens_file", "tls"))
    listen_tls, admin_tls = (_tls(fields, key, base) for key in ("listen", "admin"))
    admin_node = fields.child("admin")
    tokens_node = None
    if admin_node is not None and isinstance(admin_node.raw, dict):
        tokens_node = admin_node.raw.get("tokens_file")
    tokens_file = None
    if tokens_node is not None and tokens_node.raw is not None:
        try:
            tokens_file = resolve_path(base, as_str(tokens_node))
        except ValueError as exc:
            problems.append(tokens_node.problem(str(exc)))
    policy = Fields(fields.child("policy") or Node({}, root.file, root.line, "policy"), problems, ("pack", "registry"))
    for key in ("pack", "registry"):
        if policy.child(key) is None and env.get("EXPORTGATE_POLICY_DIR"):
            origins[f"policy.{key}"] = Where.env("EXPORTGATE_POLICY_DIR")
    if "ledger.dir" not in origins and env.get("EXPORTGATE_LEDGER_DIR"):
        origins["ledger.dir"] = Where.env("EXPORTGATE_LEDGER_DIR")
    pack_dir = (
        resolve_path(base, policy.text("pack"))
        or Path(env.get("EXPORTGATE_POLICY_DIR", str(BUNDLED_POLICIES))) / "ai-diffusion-2025"
    )
    registry = (
        resolve_path(base, policy.text("registry"))
        or Path(env.get("EXPORTGATE_POLICY_DIR", str(BUNDLED_POLICIES))) / "tenants.example.yaml"
    )
    ledger_node = fields.child("ledger") or Node({}, root.file, root.line, "ledger")
    ledger = load_ledger_settings(ledger_node, base, env, problems)
    quota_node = fields.child("quota") or Node({}, root.file, root.line, "quota")
    qf = Fields(quota_node, problems, ("store", "redis_url", "cluster", "timeout_ms", "prefix", "required_for_ready"))
    before_redis = len(problems)
    redis_url, inline = _redis_url(qf, base, env)
    quota = QuotaSettings(
        qf.choice("store", ("memory", "redis"), "memory"),
        redis_url,
        qf.flag("cluster", False),
        qf.number("timeout_ms", 250.0) / 1000,
        qf.text("prefix", "eg:"),
        qf.flag("required_for_ready", True),
        inline,
    )
    if quota.store == "redis" and not quota.redis_url and len(problems) == before_redis:
        qf.problem("redis_url", "required when store is redis")
    auth_node = fields.child("auth")
    issuers: tuple[IssuerConfig, ...] = ()
    if auth_node is not None:
        af = Fields(auth_node, problems, ("issuers",))
        issuers = load_issuers(af.child("issuers"), base, problems, env)
    upstreams = load_upstreams(fields.child("upstreams"), base, problems)
    if fields.child("upstreams") is None:
        fields.missing("upstreams")
    limits = load_limits(fields.child("limits"), problems)
    shutdown = load_shutdown(fields.child("shutdown"), problems)
    log_settings = load_log_settings(fields.child("log"), env, problems)
    reload = Fields(fields.child("reload") or Node({}, root.file, root.line, "reload"), problems, ("interval_s",))
    workers: int = fields.integer("workers", 1)
    if workers < 1:
        fields.problem("workers", "must be at least 1")
    if workers > 1 and quota.store != "redis":
        fields.problem("workers", "more than one worker needs quota.store: redis")
    if "{" in quota.prefix or "}" in quota.prefix:
        qf.problem("prefix", "must not contain '{' or '}' (keys carry their own hash tag)")
    clash = listener_clash(listen, admin, workers)
    if clash is not None:
        problems.append(_clash_where(origins, root).problem(clash))
    envoy_grpc = load_envoy_grpc(fields.child("envoy_grpc"), problems)
    grpc_problem = grpc_clash(envoy_grpc, listen, admin, workers) if envoy_grpc is not None else None
    if grpc_problem is not None:
        problems.append((origins.get("envoy_grpc.port") or fields.where("envoy_grpc")).problem(grpc_problem))
    # The listeners bound so far (`name: (host, first port, last port)`), which each further one must avoid.
    taken = {
        "proxy": (listen[0], listen[1], listen[1]),
        "admin listener": (admin[0], admin[1], admin[1] + workers - 1),
    }
    if envoy_grpc is not None:
        taken["envoy_grpc listener"] = (envoy_grpc.host, envoy_grpc.port, envoy_grpc.port)
    decision = load_decision(fields.child("decision"), problems, base)
    decision_problem = decision_clash(decision, taken) if decision is not None else None
    if decision_problem is not None:
        problems.append((origins.get("decision.port") or fields.where("decision")).problem(decision_problem))
    if decision is not None:
        taken["decision listener"] = (decision.host, decision.port, decision.port)
    webhook = _webhook(fields, base, upstreams, issuers, taken)
    proxies = _proxies(fields)
    reload_s: float = reload.number("interval_s", 2.0)
    if reload_s <= 0:
        reload.problem("interval_s", "must be positive")
    reconcile = load_reconcile_settings(fields.child("reconcile"), problems)
    instance = env.get("EXPORTGATE_INSTANCE_ID") or fields.text("instance_id") or socket.gethostname()
    if instance in (".", ".."):
        where = origins.get("instance_id") or Where(root.file, root.line, "instance_id")
        problems.append(where.problem(f"{instance!r} cannot name the ledger chain's directory"))
    if problems:
        raise ConfigError(problems)
    return Settings(
        source=root.file,
        listen_host=listen[0],
        listen_port=listen[1],
        admin_host=admin[0],
        admin_port=admin[1],
        instance_id=instance,
        pack_dir=pack_dir,
        registry_file=registry,
        ledger=ledger,
        quota=quota,
        issuers=issuers,
        upstreams=upstreams,
        trusted_proxies=proxies,
        reload_interval_s=reload_s,
        workers=workers,
        admin_tokens_file=tokens_file,
        reconcile=reconcile,
        limits=limits,
        shutdown=shutdown,
        log=log_settings,
        decision=decision,
        envoy_grpc=envoy_grpc,
        admission_webhook=webhook,
        listen_tls=listen_tls,
        admin_tls=admin_tls,
        origins=origins,
    )


def _listener_tls(settings: Settings) -> tuple[tuple[str, ListenerTls | None], ...]:
    decision = settings.decision.tls if settings.decision is not None else None
    return ("listen", settings.listen_tls), ("admin", settings.admin_tls), ("decision", decision)


def describe(settings: Settings) -> dict[str, Any]:
    """A secret-free summary for logs."""
    return {
        "listen": f"{settings.listen_host}:{settings.listen_port}",
        "admin": f"{settings.admin_host}:{settings.admin_port}",
        "decision": f"{settings.decision.host}:{settings.decision.port}" if settings.decision else None,
        "instance": settings.instance_id,
        "pack": str(settings.pack_dir),
        "registry": str(settings.registry_file),
        "ledger": str(settings.ledger.dir),
        "ledger_signed": settings.ledger.signing_key_file is not None,
        "tls": [name for name, tls in _listener_tls(settings) if tls is not None],
        "quota": settings.quota.store,
        "upstreams": [f"{u.name}={u.url} ({u.scheduler})" for u in settings.upstreams],
    }
