"""A real nginx with the configuration `exportgate nginx-config` writes, in front of the stand-in Slurm.

Reads are decided by the gateway's decision listener (`auth_request`) and go straight to the
scheduler; submissions go through the full proxy; refusals reach the client with their real status
and problem+json body. The ledger says which entry decided each request.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.cli.nginx_config import NginxConfigError, Targets, default_targets, render
from tests.decision_table import table_config
from tests.harness import (
    E2E_TENANTS,
    JOB,
    RAY_ENTRYPOINT,
    SUBMIT,
    Stack,
    ledger_records,
    ray_job,
    running_stack,
    wait_for_record,
)
from tests.nginx_kit import Nginx, running_nginx
from tests.redis_server import free_port
from tests.test_tls import tls_yaml
from tests.tls_kit import Ca

PING = "/slurm/v0.0.38/ping"
Headers = dict[str, str] | None


@dataclass
class Front:
    stack: Stack
    nginx: Nginx

    async def send(
        self, method: str, path: str, sub: str | None = None, *, payload: Any = None, headers: Headers = None
    ) -> tuple[int, Any, dict[str, str]]:
        sent = {**(self.stack.auth(sub) if sub else {}), **(headers or {})}
        url = URL(self.nginx.url + path, encoded=True)
        async with aiohttp.ClientSession() as client, client.request(method, url, json=payload, headers=sent) as resp:
            raw = await resp.read()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            return resp.status, body, dict(resp.headers)

    def record(self, decision_id: str) -> dict[str, Any]:
        return next(r for r in ledger_records(self.stack) if r.get("decision_id") == decision_id)


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[Front]:
    async with running_stack(tmp_path, extra=table_config()) as stack:
        port = free_port()
        targets = default_targets(stack.settings, f"127.0.0.1:{port}")
        site = render(stack.settings, Targets(targets.listen, targets.proxy, targets.decision))
        with running_nginx(tmp_path / "nginx", site, port) as nginx:
            yield Front(stack, nginx)
            assert "[alert]" not in nginx.errors() and "[emerg]" not in nginx.errors()


async def _submit(front: Front, sub: str = "acme-us") -> str:
    status, body, headers = await front.send("POST", SUBMIT, sub, payload=JOB)
    assert status == 200, body
    record = front.record(headers["X-Exportgate-Decision-Id"])
    assert (record["entry"], record["route_kind"], record["decision"]) == ("proxy", "submit", "allow")
    return str(body["job_id"])


async def test_read_is_decided_by_the_gateway_and_served_by_the_scheduler(front: Front) -> None:
    """A plain read: decided at /v1/nginx, forwarded by nginx with the gateway's headers, recorded as entry nginx."""
    status, body, headers = await front.send("GET", PING, "acme-us", headers={"X-SLURM-USER-NAME": "root"})
    assert status == 200 and body["pings"], body
    decision_id = headers["X-Exportgate-Decision-Id"]
    seen = front.stack.standin.requests[-1]["headers"]
    assert seen["X-Exportgate-Tenant"] == "acme-us" and seen["X-Exportgate-Tier"] == "1"
    assert seen["X-Exportgate-Decision-Id"] == decision_id
    assert seen["X-SLURM-USER-NAME"] == "acme"  # the tenant's own Slurm user, never the client's claim
    assert seen["X-SLURM-USER-TOKEN"] == "gateway-held-slurm-token"
    assert "Authorization" not in seen
    record = await wait_for_record(front.stack, "access", decision_id=decision_id)
    assert (record["entry"], record["decision"], record["route"]) == ("nginx", "allow", "slurm.ping")
    assert record["client_ip"] == "127.0.0.1" and record["method"] == "GET" and record["path"] == PING


async def test_submit_goes_through_the_proxy_and_reads_of_its_job_through_nginx(front: Front) -> None:
    """Submission via the full proxy (priced, reserved, settled); its owner reads it, another tenant cannot."""
    job = await _submit(front)
    status, body, headers = await front.send("GET", f"/slurm/v0.0.38/job/{job}", "acme-us")
    assert status == 200 and body["jobs"][0]["job_id"] == int(job)
    record = await wait_for_record(front.stack, "access", decision_id=headers["X-Exportgate-Decision-Id"])
    assert (record["entry"], record["route_kind"]) == ("nginx", "read")
    before = len(front.stack.standin.requests)
    status, body, headers = await front.send("GET", f"/slurm/v0.0.38/job/{job}", "nordlys-se")
    assert (status, body["code"]) == (404, "job_not_owned")
    assert headers["Content-Type"] == "application/problem+json"
    assert body["decision_id"] == headers["X-Exportgate-Decision-Id"]
    assert len(front.stack.standin.requests) == before  # nothing reached the scheduler
    record = front.record(body["decision_id"])
    assert (record["entry"], record["decision"], record["code"]) == ("nginx", "deny", "job_not_owned")


async def test_cancel_and_listing_go_through_the_proxy(front: Front) -> None:
    """A cancel releases its lease (the proxy sees the scheduler's answer); a listing is cut to the tenant's jobs."""
    mine, theirs = await _submit(front), await _submit(front, "nordlys-se")
    status, body, headers = await front.send("GET", "/slurm/v0.0.38/jobs", "acme-us")
    assert status == 200 and [j["job_id"] for j in body["jobs"]] == [int(mine)], (theirs, body)
    listing = await wait_for_record(front.stack, "access", decision_id=headers["X-Exportgate-Decision-Id"])
    assert listing["entry"] == "proxy"  # a listing's record is an access record: written without being waited for
    status, _, headers = await front.send("DELETE", f"/slurm/v0.0.38/job/{mine}", "acme-us")
    assert status == 200
    record = front.record(headers["X-Exportgate-Decision-Id"])
    assert (record["entry"], record["route_kind"]) == ("proxy", "cancel")
    await wait_for_record(front.stack, "release", decision_id=headers["X-Exportgate-Decision-Id"])


REFUSALS = [
    ("tier3", "GET", PING, "harbour-hk", 451, "tier3_embargoed"),
    ("tier3-submit", "POST", SUBMIT, "harbour-hk", 451, "tier3_embargoed"),
    ("no-token", "GET", PING, None, 401, "auth_missing"),
    ("unknown-route", "GET", "/slurmdb/v0.0.38/accounts", "acme-us", 404, "route_not_allowed"),
    ("not-normal-form", "GET", "/slurm/v0.0.38/%70ing", "acme-us", 404, "route_not_allowed"),
    ("kyc-rejected", "GET", PING, "refused-mx", 403, "kyc_not_verified"),
]


@pytest.mark.parametrize(("case", "method", "path", "sub", "status", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_refusals_reach_the_client_with_their_real_status(
    front: Front, case: str, method: str, path: str, sub: str | None, status: int, code: str
) -> None:
    """auth_request knows only 401/403; the client still gets the real status and the problem+json body."""
    got, body, headers = await front.send(method, path, sub, payload=JOB if method == "POST" else None)
    assert (got, body["code"], body["status"]) == (status, code, status), body
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["X-Exportgate-Decision-Id"] == body["decision_id"]
    assert headers["Cache-Control"] == "no-store"
    assert front.stack.standin.requests == []
    record = front.record(body["decision_id"])
    assert record["code"] == code and record["decision"] == "deny"
    assert record["entry"] == ("proxy" if method == "POST" else "nginx")  # submissions go to the proxy
    if code == "auth_missing":
        assert headers.get("WWW-Authenticate") == 'Bearer realm="exportgate"'


async def test_method_not_allowed_carries_allow(front: Front) -> None:
    got, body, headers = await front.send("PUT", PING, "acme-us")
    assert (got, body["code"]) == (405, "method_not_allowed")
    assert headers["Allow"] == "GET, HEAD"
    assert front.record(body["decision_id"])["entry"] == "nginx"


async def test_the_auth_location_is_internal(front: Front) -> None:
    """A client cannot ask nginx's auth location for a decision (nor read credentials off it)."""
    got, _, headers = await front.send("GET", "/.exportgate/auth", "acme-us")
    assert got == 404
    assert "X-Exportgate-Tenant" not in headers and "X-SLURM-USER-TOKEN" not in headers


async def test_ray_under_a_stripped_prefix(tmp_path: Path) -> None:
    """strip_prefix: nginx sends the scheduler its own path, as the gateway does; submissions still go to the proxy."""
    headers = f'\n    headers:\n      Authorization: {{file: {tmp_path / "slurm.token"}, prefix: "Bearer "}}\n'
    extra = RAY_ENTRYPOINT + "\n    prefix: /ray/\n    strip_prefix: true"
    ray = running_stack(
        tmp_path, registry=E2E_TENANTS, scheduler="ray", headers=headers, upstream_extra=extra, extra=table_config()
    )
    async with ray as stack:
        port = free_port()
        site = render(stack.settings, default_targets(stack.settings, f"127.0.0.1:{port}"))
        with running_nginx(tmp_path / "nginx", site, port) as nginx:
            front = Front(stack, nginx)
            status, body, headers_ = await front.send("POST", "/ray/api/jobs/", "us-one", payload=ray_job("mine"))
            assert (status, body["job_id"]) == (200, "mine")
            assert front.record(headers_["X-Exportgate-Decision-Id"])["entry"] == "proxy"
            for path in ("/ray/api/jobs/mine", "/ray/api/jobs/mine?x=1"):
                status, body, headers_ = await front.send("GET", path, "us-one")
                assert status == 200 and body["submission_id"] == "mine", body
                seen = stack.standin.requests[-1]
                assert seen["path"] == path.removeprefix("/ray")  # the prefix is taken off, the query kept
                assert seen["headers"]["Authorization"] == "Bearer gateway-held-slurm-token"  # the gateway's own
                record = await wait_for_record(stack, "access", decision_id=headers_["X-Exportgate-Decision-Id"])
                assert (record["entry"], record["route_kind"], record["path"]) == ("nginx", "read", path.split("?")[0])
            status, body, _ = await front.send("GET", "/ray/api/jobs/mine", "us-two")
            assert (status, body["code"]) == (404, "job_not_owned")


async def test_nginx_reaches_a_tls_decision_listener_with_its_client_certificate(tmp_path: Path) -> None:
    """A decision listener that terminates TLS and asks for client certificates: nginx-config's location
    verifies it against the gateway's CA and presents nginx's certificate; reads are decided there."""
    ca = Ca(tmp_path / "pki")
    served, nginx_cert = ca.issue("gateway"), ca.issue("nginx", client=True)
    listener = f"{{host: 127.0.0.1, port: {free_port()}, tls: {tls_yaml(served, ca.path)}}}"
    async with running_stack(tmp_path, extra=f"decision: {listener}\n") as stack:
        port = free_port()
        found = default_targets(stack.settings, f"127.0.0.1:{port}")
        with pytest.raises(NginxConfigError, match="--gateway-tls-name"):  # nginx cannot check an IP address
            render(stack.settings, Targets(found.listen, found.proxy, found.decision))
        with pytest.raises(NginxConfigError, match="--client-cert and --client-key"):
            render(stack.settings, Targets(found.listen, found.proxy, found.decision, gateway_tls_name="localhost"))
        site = render(
            stack.settings,
            Targets(found.listen, found.proxy, found.decision, gateway_ca_file=str(ca.path),
                    client_cert=str(nginx_cert.cert), client_key=str(nginx_cert.key), gateway_tls_name="localhost"),
        )  # fmt: skip
        assert "proxy_pass https://eg_decision" in site and "proxy_ssl_verify on;" in site
        with running_nginx(tmp_path / "nginx", site, port) as nginx:
            front = Front(stack, nginx)
            status, body, headers = await front.send("GET", PING, "acme-us")
            assert status == 200, (body, nginx.errors())
            record = await wait_for_record(stack, "access", decision_id=headers["X-Exportgate-Decision-Id"])
            assert (record["entry"], record["tenant"]) == ("nginx", "acme-us")
            status, body, _ = await front.send("GET", PING, "harbour-hk")  # Tier 3: refused at the decision listener
            assert (status, body["code"]) == (451, "tier3_embargoed")
        assert "[alert]" not in nginx.errors() and "[emerg]" not in nginx.errors()
    # With a certificate another CA signed, the listener does not answer nginx: the read fails closed.
    (tmp_path / "again").mkdir()
    async with running_stack(tmp_path / "again", extra=f"decision: {listener}\n") as stack:
        port = free_port()
        found = default_targets(stack.settings, f"127.0.0.1:{port}")
        stranger = Ca(tmp_path / "other", "other-ca").issue("nginx", client=True)
        site = render(
            stack.settings,
            Targets(found.listen, found.proxy, found.decision, gateway_ca_file=str(ca.path),
                    client_cert=str(stranger.cert), client_key=str(stranger.key), gateway_tls_name="localhost"),
        )  # fmt: skip
        with running_nginx(tmp_path / "nginx-again", site, port) as nginx:
            status, _, _ = await Front(stack, nginx).send("GET", PING, "acme-us")
            assert status == 500  # nginx's answer when its auth subrequest fails: nothing reaches the scheduler
