"""One table of read and refusal cases, and the entry points that ask them: every entry must decide alike.

An `Entry` asks one case of a running Stack the way its caller would (the proxy as a client does,
the nginx endpoint as nginx's `auth_request` does, Envoy's HTTP and gRPC services as Envoy does) and reports
what it saw as a `Seen`: the status the client gets, the refusal code and the decision id.
tests/test_decision_table.py runs every case through every entry of `ENTRIES` and asserts that the
decisions are identical and that the ledger records each one with its entry. An entry point of
its own joins by appending an `Entry` here, and its listener's configuration to
`table_config`.
"""

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from tests.envoy_kit import check, check_request
from tests.harness import SUBMIT, Stack
from tests.redis_server import free_port

PING = "/slurm/v0.0.38/ping"
JOB = "/slurm/v0.0.38/job/{job}"  # {job}: the job acme-us submitted through the proxy before the table runs
OWNER = "acme-us"
GARBAGE_TOKEN = "Bearer not.a.jwt"


@dataclass(frozen=True, slots=True)
class Case:
    """One request and the decision every entry must reach: `code` None means allowed."""

    name: str
    sub: str | None  # the token's subject; None: no Authorization (or `authorization` as written)
    method: str
    path: str
    status: int
    code: str | None
    authorization: str | None = None


CASES = [
    Case("plain-read", OWNER, "GET", PING, 200, None),
    Case("plain-read-head", OWNER, "HEAD", PING, 200, None),
    Case("owned-read", OWNER, "GET", JOB, 200, None),
    Case("owned-read-query", OWNER, "GET", JOB + "?flags=x", 200, None),
    Case("another-tenants-job", "nordlys-se", "GET", JOB, 404, "job_not_owned"),
    Case("unknown-job", OWNER, "GET", "/slurm/v0.0.38/job/999999", 404, "job_not_owned"),
    Case("no-token", None, "GET", PING, 401, "auth_missing"),
    Case("garbage-token", None, "GET", PING, 401, "auth_invalid", authorization=GARBAGE_TOKEN),
    Case("unmapped-subject", "nobody-registered", "GET", PING, 403, "tenant_unknown"),
    Case("tier3", "harbour-hk", "GET", PING, 451, "tier3_embargoed"),
    Case("tier3-parent", "fjord-se-cn", "GET", PING, 451, "tier3_embargoed"),
    Case("tier3-submit", "harbour-hk", "POST", SUBMIT, 451, "tier3_embargoed"),
    Case("kyc-rejected", "refused-mx", "GET", PING, 403, "kyc_not_verified"),
    Case("missing-hq-country", "unplaced", "GET", PING, 403, "tenant_country_unknown"),
    Case("unknown-route", OWNER, "GET", "/slurmdb/v0.0.38/accounts", 404, "route_not_allowed"),
    Case("method-not-allowed", OWNER, "PUT", PING, 405, "method_not_allowed"),
    Case("not-normal-form", OWNER, "GET", "/slurm/v0.0.38/%70ing", 404, "route_not_allowed"),
    Case("dot-segment", OWNER, "GET", "/slurm/v0.0.38/x/../ping", 404, "route_not_allowed"),
]


@dataclass(frozen=True, slots=True)
class Seen:
    """What the client (through this entry) gets: status, refusal code (None when allowed), decision id."""

    status: int
    code: str | None
    decision_id: str
    allow: str | None = None  # the Allow header of a 405


Ask = Callable[[Stack, Case, str], Awaitable[Seen]]  # (stack, case, path with {job} filled in)


@dataclass(frozen=True, slots=True)
class Entry:
    name: str  # the ledger record's `entry`
    ask: Ask


def table_config() -> str:
    """Top-level gateway.yaml for the listeners the entries ask (running_stack's `extra`)."""
    decision = f"decision: {{host: 127.0.0.1, port: {free_port()}}}\n"
    return decision + f"envoy_grpc: {{host: 127.0.0.1, port: {free_port()}}}\n"


def decision_url(stack: Stack) -> str:
    decision = stack.settings.decision
    assert decision is not None, "the stack runs without a decision listener (see table_config)"
    return f"http://127.0.0.1:{decision.port}"


def client_headers(stack: Stack, case: Case) -> dict[str, str]:
    """The client's own headers: its Authorization as the case says."""
    if case.authorization is not None:
        return {"Authorization": case.authorization}
    return stack.auth(case.sub) if case.sub else {}


async def _send(method: str, url: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    """`method url` with the path sent exactly as written (no client-side normalisation)."""
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, URL(url, encoded=True), headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.read(), dict(resp.headers)


def _code(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed.get("code") if isinstance(parsed, dict) else None


async def via_proxy(stack: Stack, case: Case, path: str) -> Seen:
    status, body, headers = await _send(case.method, stack.url + path, client_headers(stack, case))
    code = None if status == 200 else _code(body)
    return Seen(status, code, headers["X-Exportgate-Decision-Id"], headers.get("Allow"))


async def via_nginx_endpoint(stack: Stack, case: Case, path: str) -> Seen:
    """As nginx's auth subrequest asks: GET /v1/nginx with the original method and URI in headers."""
    headers = {**client_headers(stack, case), "X-Original-URI": path, "X-Original-Method": case.method}
    status, _, got = await _send("GET", decision_url(stack) + "/v1/nginx", headers)
    if status == 200:
        return Seen(200, None, got["X-Exportgate-Decision-Id"])
    assert status in (401, 403), f"auth_request understands 2xx, 401 and 403 only; got {status}"
    real = int(got["X-Exportgate-Status"])
    return Seen(real, got["X-Exportgate-Code"], got["X-Exportgate-Decision-Id"], got.get("X-Exportgate-Allow"))


async def via_envoy_http(stack: Stack, case: Case, path: str) -> Seen:
    """As Envoy's HTTP ext_authz client asks: the original method, path_prefix + the original path."""
    url = decision_url(stack) + "/v1/envoy" + path
    status, body, headers = await _send(case.method, url, client_headers(stack, case))
    code = None if status == 200 else _code(body)
    return Seen(status, code, headers["X-Exportgate-Decision-Id"], headers.get("Allow"))


async def via_envoy_grpc(stack: Stack, case: Case, path: str) -> Seen:
    """As Envoy's gRPC ext_authz client asks: a CheckRequest over gRPC (tests/envoy_kit.py)."""
    envoy_grpc = stack.settings.envoy_grpc
    assert envoy_grpc is not None, "the stack runs without an envoy_grpc listener (see table_config)"
    request = check_request(case.method, path, client_headers(stack, case))
    if case.method in ("POST", "PUT", "PATCH"):
        request.attributes.request.http.size = -1  # a body Envoy did not buffer (no with_request_body): size unknown
    got = await check(envoy_grpc.port, request)
    if got.allowed:
        return Seen(200, None, got.headers["x-exportgate-decision-id"])
    code = got.body.get("code") if isinstance(got.body, dict) else None
    return Seen(got.status, code, got.headers["x-exportgate-decision-id"], got.headers.get("allow"))


ENTRIES: list[Entry] = [
    Entry("proxy", via_proxy),
    Entry("nginx", via_nginx_endpoint),
    Entry("envoy_http", via_envoy_http),
    Entry("envoy_grpc", via_envoy_grpc),
]
