"""The `decision:` section of gateway.yaml: the listener of the HTTP decision entries (off when absent).

nginx's `auth_request` and Envoy's ext_authz HTTP service ask it about requests they forward
themselves. Its answers to allowed requests carry the upstream credentials the gateway holds, and
it believes its callers' `X-Forwarded-For`: only the front proxies may reach it.
"""

from dataclasses import dataclass

from gateway.config.fields import Fields
from gateway.config.located import Node, Problem

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    """Where the HTTP decision entries are served (plain HTTP: keep it on loopback or a private network)."""

    host: str = "127.0.0.1"
    port: int = 9181


def load_decision(node: Node | None, problems: list[Problem]) -> DecisionSettings | None:
    """The `decision:` section, or None when it is absent (no decision listener)."""
    if node is None or node.raw is None:
        return None
    d = DecisionSettings()
    f = Fields(node, problems, ("host", "port"))
    host: str = f.text("host", d.host)
    port: int = f.integer("port", d.port)
    if not 0 < port < 65536:
        f.problem("port", "must be 1..65535")
    return DecisionSettings(host, port)


def decision_clash(decision: DecisionSettings, others: dict[str, tuple[str, int, int]]) -> str | None:
    """Why the decision listener cannot bind beside the others (`name: (host, first port, last port)`)."""

    def shared(host: str) -> bool:
        return host == decision.host or host in WILDCARD_HOSTS or decision.host in WILDCARD_HOSTS

    for name, (host, first, last) in others.items():
        if shared(host) and first <= decision.port <= last:
            return f"the {name} and the decision listener both use port {decision.port}"
    return None
