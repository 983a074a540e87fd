"""A real gRPC client for exportgate's ext_authz service, speaking Envoy's published messages (xds-protos)."""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from envoy.service.auth.v3.external_auth_pb2_grpc import AuthorizationStub

CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
OK, PERMISSION_DENIED, UNAUTHENTICATED = 0, 7, 16


def check_request(
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    body: bytes | None = None,
    pack_as_bytes: bool = True,
    source: str = "203.0.113.7",
    authority: str = "gpu.example.com",
    raw_headers: bool = False,
) -> Any:
    """A CheckRequest as Envoy builds one: pseudo-headers in the header map, the body when it buffered one."""
    request = CheckRequest()
    request.attributes.source.address.socket_address.address = source
    request.attributes.source.address.socket_address.port_value = 40000
    http = request.attributes.request.http
    http.id = "1234"
    http.method = method
    http.path = path
    http.host = authority
    http.scheme = "https"
    http.protocol = "HTTP/1.1"
    sent = {":authority": authority, ":method": method, ":path": path, ":scheme": "https", **(headers or {})}
    sent = {name.lower(): value for name, value in sent.items()}
    if raw_headers:  # encode_raw_headers: each header as raw bytes in header_map
        for name, value in sent.items():
            item = http.header_map.headers.add()
            item.key = name
            item.raw_value = value.encode()
    else:
        http.headers.update(sent)
    http.size = len(body) if body is not None else 0
    if body is not None:
        if pack_as_bytes:
            http.raw_body = body
        else:
            http.body = body.decode()
    return request


@dataclass(frozen=True)
class Checked:
    """A CheckResponse read back: allowed or denied, with what Envoy would do."""

    rpc_code: int
    status: int  # 200 when allowed, else the denied HTTP status
    headers: dict[str, str]  # allowed: set upstream; denied: sent to the client (lower-case names)
    removed: list[str]  # allowed: removed upstream
    client_headers: dict[str, str]  # allowed: added to the client's response
    body: Any  # denied: the problem+json body, parsed
    raw: Any

    @property
    def allowed(self) -> bool:
        return self.rpc_code == OK


def read(response: Any) -> Checked:
    def pairs(options: Any) -> dict[str, str]:
        return {o.header.key.lower(): o.header.value for o in options}

    if response.status.code == OK:
        ok = response.ok_response
        return Checked(
            OK, 200, pairs(ok.headers), list(ok.headers_to_remove), pairs(ok.response_headers_to_add), None, response
        )
    denied = response.denied_response
    body = json.loads(denied.body) if denied.body else None
    return Checked(response.status.code, denied.status.code, pairs(denied.headers), [], {}, body, response)


async def check(port: int, request: Any, *, timeout_s: float = 5.0) -> Checked:
    """One Check over loopback with a fresh channel."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return read(await AuthorizationStub(channel).Check(request, timeout=timeout_s))


async def check_raw(port: int, payload: bytes, *, timeout_s: float = 5.0) -> Checked:
    """One Check whose request bytes are sent as given (not necessarily a CheckRequest)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, Any] = channel.unary_unary(
            CHECK_PATH, response_deserializer=CheckResponse.FromString
        )
        return read(await call(payload, timeout=timeout_s))
