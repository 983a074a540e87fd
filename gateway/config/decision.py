"""The `decision:` section of gateway.yaml: the listener of the HTTP decision entries (off when absent).

nginx's `auth_request` and Envoy's ext_authz HTTP service ask it about requests they forward
themselves. Its answers to allowed requests carry the upstream credentials the gateway holds, and
it believes its callers' `X-Forwarded-For`: only the front proxies may reach it (with `tls`, and
`tls.client_ca_file` to hold them to their client certificates, when it is not on loopback).
"""

from dataclasses import dataclass
from pathlib import Path

from gateway.config.fields import Fields
from gateway.config.listener import ListenerTls, host_port, load_tls, port_clash
from gateway.config.located import Node, Problem


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    """Where the HTTP decision entries are served (plain HTTP unless `tls`): keep it on loopback or a private net."""

    host: str = "127.0.0.1"
    port: int = 9181
    tls: ListenerTls | None = None


def load_decision(node: Node | None, problems: list[Problem], base: Path = Path()) -> DecisionSettings | None:
    """The `decision:` section, or None when it is absent (no decision listener)."""
    if node is None or node.raw is None:
        return None
    d = DecisionSettings()
    f = Fields(node, problems, ("host", "port", "tls"))
    host, port = host_port(f, d.host, d.port)
    return DecisionSettings(host, port, load_tls(f.child("tls"), base, problems))


def decision_clash(decision: DecisionSettings, others: dict[str, tuple[str, int, int]]) -> str | None:
    """Why the decision listener cannot bind beside the others (`name: (host, first port, last port)`)."""
    return port_clash((decision.host, decision.port), "the decision listener", others)
