"""The ext_authz gRPC listener's translation, over real gRPC on loopback, against a recording decision service.

The end-to-end cases with the gateway's own decision service are in test_e2e_envoy_grpc.py.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from gateway.config.envoy_grpc import EnvoyGrpcSettings
from gateway.config.located import ConfigError
from gateway.config.settings import load_settings
from gateway.http.decision import Answer, Asked
from gateway.http.envoy_check import MAX_HEADER_BYTES, MAX_HEADERS
from gateway.http.ext_authz_grpc import HEADER_ALLOWANCE, ExtAuthzServer
from tests.envoy_kit import OK, PERMISSION_DENIED, UNAUTHENTICATED, check, check_raw, check_request

READ = "/slurm/v0.0.38/job/42?details=true"
PROBLEM = json.dumps({"code": "tier3_embargoed", "status": 451, "decision_id": "d-451"}).encode()


@dataclass
class Recorder:
    """A decision service that answers what it is told and keeps what it was asked."""

    answer: Answer = field(default_factory=lambda: Answer(200, {"X-Exportgate-Tenant": "acme-us"}, b"", "d-1", None))
    asked: list[Asked] = field(default_factory=list)
    fail: bool = False

    async def check(self, asked: Asked) -> Answer:
        self.asked.append(asked)
        if self.fail:
            raise RuntimeError("a bug in the decision")
        return self.answer


@pytest.fixture
async def served() -> AsyncIterator[tuple[ExtAuthzServer, Recorder]]:
    recorder = Recorder()
    server = ExtAuthzServer(recorder, "127.0.0.1", 0, max_body_bytes=65536)
    await server.start()
    yield server, recorder
    await server.stop(1.0)


async def test_a_check_reaches_the_core_as_the_request_envoy_saw(served: tuple[ExtAuthzServer, Recorder]) -> None:
    """Method, path with query, headers (any case, no pseudo-headers), client address and entry are passed on."""
    server, recorder = served
    sent = {"Authorization": "Bearer t0ken", "X-Request-Id": "r-1"}
    result = await check(server.port, check_request("GET", READ, sent, source="198.51.100.9"))
    assert result.allowed
    (asked,) = recorder.asked
    assert (asked.entry, asked.method, asked.path, asked.client_ip) == ("envoy_grpc", "GET", READ, "198.51.100.9")
    assert asked.headers["authorization"] == asked.headers["AUTHORIZATION"] == "Bearer t0ken"
    assert asked.headers["Host"] == "gpu.example.com"
    assert not [name for name in asked.headers if name.startswith(":")]
    assert asked.body == b""  # Envoy sized the body at 0: an empty body, not an unseen one


async def test_raw_headers_and_repeated_values(served: tuple[ExtAuthzServer, Recorder]) -> None:
    """`encode_raw_headers` sends each header as raw bytes; a repeated header is one comma-joined value."""
    server, recorder = served
    request = check_request("GET", READ, {"Authorization": "Bearer t0ken"}, raw_headers=True)
    item = request.attributes.request.http.header_map.headers.add()
    item.key, item.raw_value = "authorization", b"Bearer other"
    assert (await check(server.port, request)).allowed
    assert recorder.asked[0].headers["authorization"] == "Bearer t0ken,Bearer other"


@pytest.mark.parametrize(("pack_as_bytes", "body"), [(True, b'{"job": {}, "x": "\xff"}'), (False, b'{"job": {}}')])
async def test_a_buffered_body_is_passed(
    served: tuple[ExtAuthzServer, Recorder], pack_as_bytes: bool, body: bytes
) -> None:
    """with_request_body: raw_body (any bytes) with pack_as_bytes, else the UTF-8 body."""
    server, recorder = served
    await check(server.port, check_request("POST", "/slurm/v0.0.38/job/submit", body=body, pack_as_bytes=pack_as_bytes))
    assert recorder.asked[0].body == body


async def test_a_body_envoy_did_not_buffer_is_unseen(served: tuple[ExtAuthzServer, Recorder]) -> None:
    """A request with a body Envoy did not send (no with_request_body on the route) reaches the core as None."""
    server, recorder = served
    request = check_request("POST", "/slurm/v0.0.38/job/submit")
    request.attributes.request.http.size = 512
    await check(server.port, request)
    assert recorder.asked[0].body is None


async def test_an_allow_sets_the_core_headers_and_drops_the_client_credentials(
    served: tuple[ExtAuthzServer, Recorder],
) -> None:
    """Allowed: OK, the core's headers overwrite the client's, its own credentials and assertions are removed."""
    server, recorder = served
    recorder.answer = Answer(200, {"X-SLURM-USER-TOKEN": "held", "X-Exportgate-Decision-Id": "d-7"}, b"", "d-7", None)
    sent = {"Authorization": "Bearer t0ken", "Cookie": "c=1", "X-Slurm-User-Name": "root", "X-Slurm-User-Token": "x",
            "Impersonate-User": "admin", "Accept": "application/json"}  # fmt: skip
    result = await check(server.port, check_request("GET", READ, sent))
    assert result.rpc_code == OK
    assert result.headers == {"x-slurm-user-token": "held", "x-exportgate-decision-id": "d-7"}
    assert all(o.append_action == o.OVERWRITE_IF_EXISTS_OR_ADD for o in result.raw.ok_response.headers)
    assert sorted(result.removed) == ["authorization", "cookie", "impersonate-user", "x-slurm-user-name"]
    assert result.client_headers == {"x-exportgate-decision-id": "d-7"}


@pytest.mark.parametrize(
    ("status", "rpc"), [(401, UNAUTHENTICATED), (451, PERMISSION_DENIED), (404, PERMISSION_DENIED)]
)
async def test_a_refusal_is_a_denied_http_response(
    served: tuple[ExtAuthzServer, Recorder], status: int, rpc: int
) -> None:
    """The core's status (451 too, outside Envoy's enum), headers (not its framing) and body reach the client."""
    server, recorder = served
    headers = {"Content-Type": "application/problem+json", "X-Exportgate-Decision-Id": "d-451", "Content-Length": "9"}
    recorder.answer = Answer(status, headers, PROBLEM, "d-451", "tier3_embargoed")
    result = await check(server.port, check_request("GET", READ))
    assert (result.rpc_code, result.status) == (rpc, status)
    assert result.raw.status.message == "tier3_embargoed"
    assert result.headers == {"content-type": "application/problem+json", "x-exportgate-decision-id": "d-451"}
    assert result.body == json.loads(PROBLEM)


def _malformed_requests() -> dict[str, bytes]:
    no_http = CheckRequest()
    no_http.attributes.source.address.socket_address.address = "203.0.113.7"
    too_many = check_request("GET", READ, {f"x-h{i}": "v" for i in range(MAX_HEADERS + 1)})
    too_big = check_request("GET", READ, {"x-big": "v" * (MAX_HEADER_BYTES + 1)})
    raw_not_utf8 = check_request("GET", READ, {"authorization": "Bearer PLACE"}, raw_headers=True)
    for item in raw_not_utf8.attributes.request.http.header_map.headers:
        if item.key == "authorization":
            item.raw_value = b"Bearer \xff\xfe"
    # A header value in the UTF-8 map that is not UTF-8: a string field protobuf itself refuses to parse.
    not_utf8 = check_request("GET", READ, {"authorization": "Bearer PLACE"}).SerializeToString()
    return {
        "not a CheckRequest": b"\xff\xff\xff\xff",
        "no HTTP attributes": no_http.SerializeToString(),
        "no method": check_request("", READ).SerializeToString(),
        "method not a token": check_request("GET /x", READ).SerializeToString(),
        "absolute-form path": check_request("GET", "http://evil.example/x").SerializeToString(),
        "too many headers": too_many.SerializeToString(),
        "headers too large": too_big.SerializeToString(),
        "raw header not UTF-8": raw_not_utf8.SerializeToString(),
        "header not UTF-8": not_utf8.replace(b"PLACE", b"\xff\xfe\xfd\xfc\xfb"),
    }


MALFORMED = _malformed_requests()


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_check_is_denied_not_crashed(served: tuple[ExtAuthzServer, Recorder], case: str) -> None:
    """What is no readable HTTP request gets a 400 problem+json denial; the core is not asked."""
    server, recorder = served
    result = await check_raw(server.port, MALFORMED[case])
    assert (result.rpc_code, result.status) == (PERMISSION_DENIED, 400)
    assert result.headers["content-type"] == "application/problem+json"
    assert result.body["code"] == "request_malformed"
    assert result.body["decision_id"] == result.headers["x-exportgate-decision-id"]
    assert recorder.asked == []


async def test_a_body_envoy_cut_short_is_refused(served: tuple[ExtAuthzServer, Recorder]) -> None:
    """Envoy marks a body it sent only part of (allow_partial_message): never priced, 413."""
    server, recorder = served
    request = check_request("POST", "/slurm/v0.0.38/job/submit", {"x-envoy-auth-partial-body": "true"}, body=b"{")
    result = await check(server.port, request)
    assert (result.status, result.body["code"]) == (413, "body_too_large")
    assert recorder.asked == []


async def test_a_failing_decision_is_a_503_denial(served: tuple[ExtAuthzServer, Recorder]) -> None:
    """The last line of defence: a bug in the decision denies with backend_unavailable, never a gRPC error."""
    server, recorder = served
    recorder.fail = True
    result = await check(server.port, check_request("GET", READ))
    assert (result.rpc_code, result.status, result.body["code"]) == (PERMISSION_DENIED, 503, "backend_unavailable")


async def test_stop_lets_an_in_flight_check_finish() -> None:
    """Stopping closes the port at once and the Check already being decided still gets its answer."""
    release = asyncio.Event()

    class Slow(Recorder):
        async def check(self, asked: Asked) -> Answer:
            await release.wait()
            return await super().check(asked)

    server = ExtAuthzServer(Slow(), "127.0.0.1", 0, max_body_bytes=1024)
    await server.start()
    pending = asyncio.ensure_future(check(server.port, check_request("GET", READ)))
    await asyncio.sleep(0.2)
    server.begin_stop(5.0)
    await asyncio.sleep(0.1)
    release.set()
    assert (await pending).allowed
    await server.stop(5.0)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await check(server.port, check_request("GET", READ), timeout_s=1.0)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_taken_port_fails_start() -> None:
    """Two listeners on one port (no workers sharing it): the second start fails instead of sharing it."""
    first = ExtAuthzServer(Recorder(), "127.0.0.1", 0, max_body_bytes=1024)
    port = await first.start()
    second = ExtAuthzServer(Recorder(), "127.0.0.1", port, max_body_bytes=1024)
    try:
        with pytest.raises(OSError, match="cannot listen"):
            await second.start()
    finally:
        await first.stop(1.0)
        await second.stop(1.0)


UPSTREAM = "upstreams: [{url: 'http://127.0.0.1:6820', scheduler: slurm}]\n"
BAD_CONFIG = [
    ("port-text", "  port: nine", "envoy_grpc.port: must be an integer"),
    ("port-range", "  port: 70000", "envoy_grpc.port: must be 1..65535"),
    ("unknown-key", "  tls: true", "envoy_grpc.tls: unknown key"),
    ("proxy-port", "  port: 8080", "envoy_grpc.port: the proxy and envoy_grpc both use port 8080"),
    ("admin-port", "  port: 9180", "envoy_grpc.port: the admin listener and envoy_grpc both use port 9180"),
]


@pytest.mark.parametrize(("case", "line", "problem"), BAD_CONFIG, ids=[c[0] for c in BAD_CONFIG])
def test_a_bad_envoy_grpc_section_is_located(tmp_path: Path, case: str, line: str, problem: str) -> None:
    """Each problem names the file, the field's own line and the field."""
    config = tmp_path / "gateway.yaml"
    config.write_text(f"envoy_grpc:\n{line}\n" + UPSTREAM)
    with pytest.raises(ConfigError) as raised:
        load_settings(config, env={})
    assert f"{config}:2: {problem}" in [str(p) for p in raised.value.problems]


def test_the_listener_is_off_unless_configured(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(UPSTREAM)
    assert load_settings(config, env={}).envoy_grpc is None
    config.write_text("envoy_grpc: {}\n" + UPSTREAM)
    assert load_settings(config, env={}).envoy_grpc == EnvoyGrpcSettings("127.0.0.1", 9001)


async def test_workers_share_the_port() -> None:
    """With several workers (reuse_port) each worker's listener binds the same port, as the proxy's do."""
    first = ExtAuthzServer(Recorder(), "127.0.0.1", 0, max_body_bytes=1024, reuse_port=True)
    port = await first.start()
    second = ExtAuthzServer(Recorder(), "127.0.0.1", port, max_body_bytes=1024, reuse_port=True)
    try:
        assert await second.start() == port
        await first.stop(1.0)
        assert (await check(port, check_request("GET", READ))).allowed  # the second one answers alone
    finally:
        await first.stop(1.0)
        await second.stop(1.0)


async def test_a_check_over_the_message_limit_is_an_error_envoy_denies(served: tuple[ExtAuthzServer, Recorder]) -> None:
    """A message past max_body_bytes plus the header allowance is refused by gRPC itself (RESOURCE_EXHAUSTED),
    which Envoy, with failure_mode_allow false, answers with status_on_error; the listener keeps serving."""
    server, recorder = served
    huge = check_request("POST", "/slurm/v0.0.38/job/submit", body=b"x" * (65536 + HEADER_ALLOWANCE + 1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await check(server.port, huge)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert recorder.asked == []
    assert (await check(server.port, check_request("GET", READ))).allowed
