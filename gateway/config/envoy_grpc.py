"""The `envoy_grpc:` section of gateway.yaml: the listener of Envoy's ext_authz gRPC service (off when absent)."""

from dataclasses import dataclass

from gateway.config.listener import load_listener, port_clash
from gateway.config.located import Node, Problem


@dataclass(frozen=True, slots=True)
class EnvoyGrpcSettings:
    """Where `envoy.service.auth.v3.Authorization/Check` is served (plaintext gRPC: keep it on a private network)."""

    host: str = "127.0.0.1"
    port: int = 9001


def load_envoy_grpc(node: Node | None, problems: list[Problem]) -> EnvoyGrpcSettings | None:
    """The `envoy_grpc:` section, or None when it is absent (no gRPC listener)."""
    d = EnvoyGrpcSettings()
    loaded = load_listener(node, problems, d.host, d.port)
    return None if loaded is None else EnvoyGrpcSettings(*loaded)


def grpc_clash(grpc: EnvoyGrpcSettings, listen: tuple[str, int], admin: tuple[str, int], workers: int) -> str | None:
    """Why the gRPC listener cannot bind beside the proxy and the admin listeners (one admin port per worker)."""
    others = {
        "proxy": (listen[0], listen[1], listen[1]),
        "admin listener": (admin[0], admin[1], admin[1] + max(workers, 1) - 1),
    }
    return port_clash((grpc.host, grpc.port), "envoy_grpc", others)
