"""The `admission_webhook:` section of gateway.yaml: the Kubernetes admission webhook's listener (off when absent).

The API server calls admission webhooks over HTTPS only, so the listener always serves TLS from a
certificate and key file pair (cert-manager writes `tls.crt` and `tls.key` into a Secret). The
files are read when `serve` starts (and by `check`); the config loader checks the section's form.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from gateway.config.fields import Fields, resolve_path
from gateway.config.listener import host_port, port_clash
from gateway.config.located import Node, Problem

# The API server's default request timeout is 60 s: an object it persists does so within that of its review.
MIN_GRACE_S = 60.0
DEFAULT_PATH = "/k8s/validate"
DEFAULT_ISSUER = "kubernetes"
DEFAULT_GRACE_S = 120.0
_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where AdmissionReviews are answered, which upstream's adapter prices them, and who the users are.

    `upstream` names a `scheduler: kubernetes` upstream: its adapter prices the objects, its API
    server is where reconciliation reads them back, and its name scopes their leases. A Kubernetes
    user is the registry identity `{issuer: <issuer>, subject: <userInfo.username>}`. `controllers`
    are the usernames of controllers that create objects for others (the Job controller's pods,
    KubeRay's clusters): what they create under a leased owner is covered by it, anything else is
    priced for the tenant whose namespace it is in. `proxy_users` are the users the gateway's own
    upstream credentials authenticate as: what they create went through the full proxy, which priced,
    recorded and holds it, so it is allowed unpriced. An allowed object the API server has not
    persisted `unpersisted_grace_s` after reconciliation first missed it is released.
    """

    cert_file: Path
    key_file: Path
    upstream: str
    host: str = "0.0.0.0"
    port: int = 8443
    path: str = DEFAULT_PATH
    issuer: str = DEFAULT_ISSUER
    controllers: tuple[str, ...] = ()
    proxy_users: tuple[str, ...] = ()
    unpersisted_grace_s: float = DEFAULT_GRACE_S


KEYS = (
    "host", "port", "path", "cert_file", "key_file", "upstream", "issuer", "controllers", "proxy_users",
    "unpersisted_grace_s",
)  # fmt: skip


def load_webhook(node: Node | None, base: Path, problems: list[Problem]) -> WebhookSettings | None:
    """The `admission_webhook:` section, or None when it is absent (no webhook listener)."""
    if node is None or node.raw is None:
        return None
    f = Fields(node, problems, KEYS)
    if not f.ok:
        return None
    host, port = host_port(f, "0.0.0.0", 8443)
    path: str = f.text("path", DEFAULT_PATH)
    if not _PATH.match(path) or "//" in path or "/./" in path + "/" or "/../" in path + "/":
        f.problem("path", f"{path!r}: an absolute path in normal form of letters, digits and . _ ~ - /")
    cert = resolve_path(base, f.text("cert_file", required=True))
    key = resolve_path(base, f.text("key_file", required=True))
    upstream: str = f.text("upstream", "", required=True)
    issuer: str = f.text("issuer", DEFAULT_ISSUER)
    if not issuer.strip():
        f.problem("issuer", "must not be empty")
    controllers = _users(f, "controllers", problems)
    proxy_users = _users(f, "proxy_users", problems)
    for name in sorted(set(controllers) & set(proxy_users)):
        f.problem("proxy_users", f"{name!r} is also a controller: the proxy's requests are priced by the proxy")
    grace: float = f.number("unpersisted_grace_s", DEFAULT_GRACE_S)
    if grace < MIN_GRACE_S:
        message = f"must be at least {MIN_GRACE_S:g}: the API server may persist an object that long after its review"
        f.problem("unpersisted_grace_s", message)
    if cert is None or key is None:
        return None
    return WebhookSettings(cert, key, upstream, host, port, path, issuer, controllers, proxy_users, grace)


def _users(f: Fields, key: str, problems: list[Problem]) -> tuple[str, ...]:
    """A list of Kubernetes user names: none empty, none twice."""
    names: list[str] = f.texts(key, [])
    for i, name in enumerate(names):
        if not name.strip():
            problems.append(_element(f, key, i).problem("must not be empty"))
        elif names.index(name) != i:
            problems.append(_element(f, key, i).problem(f"{name!r} is listed twice"))
    return tuple(names)


def _element(f: Fields, key: str, index: int) -> Node:
    child = f.child(key)
    assert child is not None and isinstance(child.raw, list)
    element: Node = child.raw[index]
    return element


def webhook_clash(webhook: WebhookSettings, others: dict[str, tuple[str, int, int]]) -> str | None:
    """Why the webhook listener cannot bind beside the others (`name: (host, first port, last port)`)."""
    return port_clash((webhook.host, webhook.port), "the admission webhook", others)


def webhook_mismatches(
    webhook: WebhookSettings, upstreams: dict[str, str], issuers: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(field, problem) for what the section names elsewhere: its upstream (`name: scheduler`) and issuer."""
    out: list[tuple[str, str]] = []
    scheduler = upstreams.get(webhook.upstream)
    if scheduler is None:
        known = ", ".join(sorted(upstreams)) or "none"
        out.append(("upstream", f"{webhook.upstream!r} names no upstream (upstreams: {known})"))
    elif scheduler != "kubernetes":
        message = f"{webhook.upstream!r} is a {scheduler} upstream; the webhook needs scheduler: kubernetes"
        out.append(("upstream", message))
    if webhook.issuer in issuers:
        message = f"{webhook.issuer!r} is also a token issuer: a token's subject could then pass for a Kubernetes user"
        out.append(("issuer", message))
    return out
