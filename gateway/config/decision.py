"""The `decision:` section of gateway.yaml: the listener of the HTTP decision entries (off when absent).

nginx's `auth_request` and Envoy's ext_authz HTTP service ask it about requests they forward
themselves. Its answers to allowed requests carry the upstream credentials the gateway holds, and
it believes its callers' `X-Forwarded-For`: only the front proxies may reach it.
"""

from dataclasses import dataclass

from gateway.config.listener import load_listener, port_clash
from gateway.config.located import Node, Problem


@dataclass(frozen=True, slots=True)
class DecisionSettings:
    """Where the HTTP decision entries are served (plain HTTP: keep it on loopback or a private network)."""

    host: str = "127.0.0.1"
    port: int = 9181


def load_decision(node: Node | None, problems: list[Problem]) -> DecisionSettings | None:
    """The `decision:` section, or None when it is absent (no decision listener)."""
    d = DecisionSettings()
    loaded = load_listener(node, problems, d.host, d.port)
    return None if loaded is None else DecisionSettings(*loaded)


def decision_clash(decision: DecisionSettings, others: dict[str, tuple[str, int, int]]) -> str | None:
    """Why the decision listener cannot bind beside the others (`name: (host, first port, last port)`)."""
    return port_clash((decision.host, decision.port), "the decision listener", others)
