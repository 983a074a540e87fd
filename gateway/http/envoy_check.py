"""Envoy ext_authz over gRPC: a CheckRequest as the decision core's `Asked`, its `Answer` as a CheckResponse.

Envoy sends `attributes.request.http`: the method, the path with its query, the headers (a map
of lower-case names whose repeated values Envoy joins with commas, or with `encode_raw_headers`
a list of raw values) and, with `with_request_body`, the body (`raw_body` with `pack_as_bytes`,
else the UTF-8 `body`); `attributes.source` is the client as Envoy saw it. What is not a
readable HTTP request (bytes that are no CheckRequest, no HTTP attributes, header bytes that are
not UTF-8, more headers than Envoy itself allows, a body Envoy cut short) is `Malformed`: it is
denied here with problem+json and never reaches the core.

An allow passes the core's headers upstream (overwriting the client's) and removes the client's
own credentials and identity assertions, which the full proxy strips too; Envoy keeps `Host` and
the `X-Forwarded-*` it manages itself. A refusal is Envoy's denied response: the core's status,
headers and problem+json body.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from google.protobuf.message import DecodeError
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.adapters.ids import new_decision_id
from gateway.core.codes import CODES, Code
from gateway.http.decision import Answer, Asked
from gateway.http.headers import HOP_BY_HOP, METHOD_TOKEN, envoy_removed
from gateway.http.problems import problem_body

ENTRY = "envoy_grpc"
SERVICE = "envoy.service.auth.v3.Authorization"  # CheckRequest's service, as Envoy names it in the call
METHOD = "Check"
# Beyond Envoy's own ceilings (100 headers, 60 KiB by default; `max_request_headers_kb` at most 8 MiB but
# never so in front of a job API): a request past either is not one a client sent through a configured Envoy.
MAX_HEADERS = 256
MAX_HEADER_BYTES = 96 * 1024
PARTIAL_BODY = "x-envoy-auth-partial-body"  # Envoy's own: "true" when it sent only part of the body
FRAMING = HOP_BY_HOP | {"content-length"}  # Envoy frames the denied response it sends itself
ALLOWED = 0  # google.rpc.Code.OK
DENIED_RPC = {401: 16, 429: 8, 503: 14}  # UNAUTHENTICATED, RESOURCE_EXHAUSTED, UNAVAILABLE
PERMISSION_DENIED = 7
OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(frozen=True, slots=True)
class Malformed:
    """A Check that carries no readable HTTP request: why, and the refusal it gets."""

    detail: str
    code: Code = Code.REQUEST_MALFORMED


def parse(raw: bytes) -> CheckRequest | Malformed:
    """The request deserializer: bytes that are no CheckRequest (or not UTF-8 where text is due) are Malformed."""
    try:
        return CheckRequest.FromString(raw)
    except (DecodeError, ValueError, UnicodeDecodeError) as exc:
        return Malformed(f"the Check request cannot be decoded ({type(exc).__name__})")


def asked(request: CheckRequest) -> Asked | Malformed:
    """The HTTP request Envoy asks about, as the decision core takes it."""
    if not request.HasField("attributes") or not request.attributes.request.HasField("http"):
        return Malformed("the Check request carries no HTTP request attributes")
    http = request.attributes.request.http
    headers = _headers(http)
    if isinstance(headers, Malformed):
        return headers
    method, path = http.method, http.path
    if not METHOD_TOKEN.fullmatch(method):
        return Malformed("the HTTP method is missing or not a token")
    if not path.startswith("/"):
        return Malformed("the HTTP path is missing or not an origin-form path")
    if headers.get(PARTIAL_BODY, "").lower() == "true":
        return Malformed("Envoy sent part of the body (over with_request_body.max_request_bytes)", Code.BODY_TOO_LARGE)
    body = _body(http)
    return Asked(entry=ENTRY, method=method, path=path, headers=headers, client_ip=_client_ip(request), body=body)


def _headers(http: Any) -> CIMultiDictProxy[str] | Malformed:
    """Envoy's header map (or raw header list) without pseudo-headers; `Host` from `:authority` when absent."""
    pairs: list[tuple[str, str]] = []
    raw = http.header_map.headers
    if raw:
        for item in raw:
            try:
                value = item.raw_value.decode() if item.raw_value else item.value
            except UnicodeDecodeError:
                return Malformed(f"header {item.key[:64]!r} is not UTF-8")
            pairs.append((item.key, value))
    else:
        pairs.extend(http.headers.items())
    if len(pairs) > MAX_HEADERS:
        return Malformed(f"{len(pairs)} headers; at most {MAX_HEADERS} are read")
    size = sum(len(name) + len(value) for name, value in pairs)
    if size > MAX_HEADER_BYTES:
        return Malformed(f"the headers take {size} bytes; at most {MAX_HEADER_BYTES} are read")
    out: CIMultiDict[str] = CIMultiDict()
    authority = ""
    for name, value in pairs:
        if not name or "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            return Malformed("a header name or value holds a line break or is empty")
        if name.startswith(":"):
            authority = value if name == ":authority" else authority
            continue
        if name in out:  # repeated headers: one comma-joined value, as Envoy's own header map has them
            out[name] = f"{out[name]},{value}"
        else:
            out[name] = value
    host = http.host or authority
    if host and "host" not in out:
        out["host"] = host
    return CIMultiDictProxy(out)


def _body(http: Any) -> bytes | None:
    """The buffered body (`raw_body` with pack_as_bytes, else `body`); None when Envoy sent none of a sized body."""
    if http.raw_body:
        return bytes(http.raw_body)
    if http.body:
        return str(http.body).encode()
    return b"" if http.size == 0 else None


def _client_ip(request: CheckRequest) -> str:
    address = request.attributes.source.address
    if address.HasField("socket_address") and address.socket_address.address:
        return str(address.socket_address.address)
    return "unknown"


def check_response(request: Asked, answer: Answer) -> CheckResponse:
    """The core's answer as Envoy takes it: OK with the headers to set upstream, or the denied HTTP response."""
    response = CheckResponse()
    if answer.status == 200:
        response.status.code = ALLOWED
        ok = response.ok_response
        ok.headers.extend(_options(answer.headers.items()))
        ok.headers_to_remove.extend(envoy_removed(request.headers, answer.headers))
        ok.response_headers_to_add.extend(_options([("X-Exportgate-Decision-Id", answer.decision_id)]))
        return response
    response.status.code = DENIED_RPC.get(answer.status, PERMISSION_DENIED)
    response.status.message = answer.code or f"denied with {answer.status}"
    denied = response.denied_response
    denied.status.code = answer.status
    denied.headers.extend(_options((k, v) for k, v in answer.headers.items() if k.lower() not in FRAMING))
    denied.body = answer.body.decode(errors="replace")
    return response


def denial(code: Code, detail: str) -> CheckResponse:
    """A denial made here, not by the core (a Check it cannot read, a fault): problem+json, nothing recorded."""
    decision_id = new_decision_id()
    response = CheckResponse()
    response.status.code = PERMISSION_DENIED
    response.status.message = code.value
    denied = response.denied_response
    denied.status.code = CODES[code].status
    headers = {
        "Content-Type": "application/problem+json",
        "Cache-Control": "no-store",
        "X-Exportgate-Decision-Id": decision_id,
    }
    denied.headers.extend(_options(headers.items()))
    denied.body = problem_body(code, detail, decision_id).decode()
    return response


def _options(headers: Iterable[tuple[str, str]]) -> list[HeaderValueOption]:
    out = []
    for name, value in headers:
        option = HeaderValueOption(append_action=OVERWRITE)
        option.header.key = name
        option.header.value = value
        out.append(option)
    return out
