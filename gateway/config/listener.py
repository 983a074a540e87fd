"""A listener's `host`, `port` and optional `tls`, and whether it can bind beside the gateway's other listeners."""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config.fields import Fields, resolve_path
from gateway.config.located import Node, Problem

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def host_port(f: Fields, host: str, port: int) -> tuple[str, int]:
    """The section's `host` and `port` (1..65535), each defaulting to the value given."""
    host = f.text("host", host)
    port = f.integer("port", port)
    if not 0 < port < 65536:
        f.problem("port", "must be 1..65535")
    return host, port


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """A listener that terminates TLS itself (1.2 or later) with a certificate and key file pair, reloaded when
    renewed; with `client_ca_file` every client must present a certificate that CA signed (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


def load_tls(node: Node | None, base: Path, problems: list[Problem]) -> ListenerTls | None:
    """A listener's `tls: {cert_file, key_file, client_ca_file}`, or None when absent (plain HTTP).

    The files are read when `serve` starts (and by `check`); this checks the section's form."""
    if node is None or node.raw is None:
        return None
    f = Fields(node, problems, ("cert_file", "key_file", "client_ca_file"))
    cert = resolve_path(base, f.text("cert_file", required=True))
    key = resolve_path(base, f.text("key_file", required=True))
    client_ca = resolve_path(base, f.text("client_ca_file"))
    if cert is None or key is None:
        return None
    return ListenerTls(cert, key, client_ca)


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
