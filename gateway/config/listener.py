"""A listener's `host` and `port`, and whether it can bind beside the gateway's other listeners."""

from collections.abc import Mapping

from gateway.config.fields import Fields
from gateway.config.located import Node, Problem

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def host_port(f: Fields, host: str, port: int) -> tuple[str, int]:
    """The section's `host` and `port` (1..65535), each defaulting to the value given."""
    host = f.text("host", host)
    port = f.integer("port", port)
    if not 0 < port < 65536:
        f.problem("port", "must be 1..65535")
    return host, port


def load_listener(node: Node | None, problems: list[Problem], host: str, port: int) -> tuple[str, int] | None:
    """A section of only `host` and `port`, or None when it is absent (that listener is off)."""
    if node is None or node.raw is None:
        return None
    return host_port(Fields(node, problems, ("host", "port")), host, port)


def port_clash(mine: tuple[str, int], label: str, others: Mapping[str, tuple[str, int, int]]) -> str | None:
    """Why listener `label` at `mine` cannot bind beside the others (`name: (host, first port, last port)`)."""
    host, port = mine
    for name, (other, first, last) in others.items():
        shared = other == host or other in WILDCARD_HOSTS or host in WILDCARD_HOSTS
        if shared and first <= port <= last:
            return f"the {name} and {label} both use port {port}"
    return None
