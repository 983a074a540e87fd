"""The `envoy_grpc:` section of gateway.yaml: the listener of Envoy's ext_authz gRPC service (off when absent)."""

from dataclasses import dataclass

from gateway.config.fields import Fields
from gateway.config.located import Node, Problem

WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True, slots=True)
class EnvoyGrpcSettings:
    """Where `envoy.service.auth.v3.Authorization/Check` is served (plaintext gRPC: keep it on a private network)."""

    host: str = "127.0.0.1"
    port: int = 9001


def load_envoy_grpc(node: Node | None, problems: list[Problem]) -> EnvoyGrpcSettings | None:
    """The `envoy_grpc:` section, or None when it is absent (no gRPC listener)."""
    if node is None or node.raw is None:
        return None
    d = EnvoyGrpcSettings()
    f = Fields(node, problems, ("host", "port"))
    host: str = f.text("host", d.host)
    port: int = f.integer("port", d.port)
    if not 0 < port < 65536:
        f.problem("port", "must be 1..65535")
    return EnvoyGrpcSettings(host, port)


def grpc_clash(grpc: EnvoyGrpcSettings, listen: tuple[str, int], admin: tuple[str, int], workers: int) -> str | None:
    """Why the gRPC listener cannot bind beside the proxy and the admin listeners (one admin port per worker)."""

    def shared(host: str) -> bool:
        return host == grpc.host or host in WILDCARD_HOSTS or grpc.host in WILDCARD_HOSTS

    if shared(listen[0]) and grpc.port == listen[1]:
        return f"the proxy and envoy_grpc both use port {grpc.port}"
    last = admin[1] + max(workers, 1) - 1
    if shared(admin[0]) and admin[1] <= grpc.port <= last:
        return f"the admin listener and envoy_grpc both use port {grpc.port}"
    return None
