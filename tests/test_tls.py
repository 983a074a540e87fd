"""TLS where there is no ingress: the listeners terminate it (1.2 or later, renewed certificates served without
a restart, mutual TLS on request) and each upstream has its own CA bundle and client certificate."""

import asyncio
import json
import ssl
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.adapters.tls_files import ClientTls
from gateway.cli.preflight import preflight
from gateway.config.located import ConfigError
from gateway.config.settings import Settings, load_settings
from gateway.demo.standin import StandinState, standin_app
from gateway.http.app import Server
from tests.harness import SLURM_ROUTES, Idp, write_config
from tests.redis_server import free_port
from tests.tls_kit import Ca, Issued, client_context, peer_serial, replace_file

BIG = "/standin/big?bytes=10"  # a plain_read route of the stand-in (harness SLURM_ROUTES)


@asynccontextmanager
async def gateway(
    workdir: Path,
    upstream_url: str = "http://127.0.0.1:9",
    *,
    listen_tls: str = "",
    admin_tls: str = "",
    upstream_tls: str = "",
    extra: str = "",
) -> AsyncIterator[tuple[Server, Settings, Idp]]:
    """A gateway whose listeners get the `tls:` flow mappings given (YAML text), its upstream the `tls:` one."""
    idp = Idp()
    (workdir / "jwks.json").write_text(json.dumps(idp.jwks()))
    upstream_extra = SLURM_ROUTES + (f"    tls: {upstream_tls}\n" if upstream_tls else "")
    path = write_config(workdir, upstream_url, upstream_extra=upstream_extra, extra=extra)
    text = path.read_text()
    if listen_tls:
        text = text.replace("listen: {", f"listen: {{tls: {listen_tls}, ", 1)
    if admin_tls:
        text = text.replace("admin: {", f"admin: {{tls: {admin_tls}, ", 1)
    path.write_text(text)
    settings = load_settings(path, env={})
    server = Server(settings, env={})
    await server.start()
    try:
        yield server, settings, idp
    finally:
        await server.stop()


def tls_yaml(pair: Issued, client_ca: Path | None = None) -> str:
    client = f", client_ca_file: {client_ca}" if client_ca is not None else ""
    return f"{{cert_file: {pair.cert}, key_file: {pair.key}{client}}}"


async def get(url: str, context: ssl.SSLContext | None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(url, ssl=context if context is not None else True, headers=headers) as response,
    ):
        raw = await response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw


async def test_the_proxy_serves_tls_1_2_or_later_and_refuses_tls_1_1(tmp_path: Path) -> None:
    """A client trusting the CA gets answers over HTTPS; one speaking only TLS 1.1 is refused in the handshake
    (the same client completes a TLS 1.1 handshake with a server that allows it, so the refusal is the gateway's)."""
    ca = Ca(tmp_path / "pki")
    pair = ca.issue("gateway")
    async with gateway(tmp_path, listen_tls=tls_yaml(pair)) as (_, settings, _idp):
        port = settings.listen_port
        status, body = await get(f"https://127.0.0.1:{port}{BIG}", client_context(ca.path))
        assert status == 401 and body["code"] == "auth_missing"  # an HTTP answer, over TLS
        assert await peer_serial(port, client_context(ca.path)) == pair.serial
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1 itself
            old = client_context(ca.path, version=ssl.TLSVersion.TLSv1_1)
            loose = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            loose.set_ciphers("DEFAULT:@SECLEVEL=0")
            loose.minimum_version = ssl.TLSVersion.TLSv1
        loose.load_cert_chain(pair.cert, pair.key)
        control = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=loose)
        try:
            control_port = control.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", control_port, ssl=old)
            assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
            writer.close()
        finally:
            control.close()
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=old)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            assert await peer_serial(port, client_context(ca.path, version=version)) == pair.serial
        with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port gets no answer
            await get(f"http://127.0.0.1:{port}{BIG}", None)


async def serials_until(port: int, context: ssl.SSLContext, serial: int, within_s: float = 5.0) -> list[int]:
    """The serials new connections were served, one connection every 0.1 s, until `serial` (or time is up)."""
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + within_s
    while not seen or (seen[-1] != serial and asyncio.get_running_loop().time() < deadline):
        seen.append(await peer_serial(port, context))
        if seen[-1] != serial:
            await asyncio.sleep(0.1)
    return seen


async def test_a_renewed_certificate_is_served_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The certificate and key files are replaced: new connections see the new certificate (another serial)
    within a few reload intervals; a pair that does not match keeps the last good one in use, not a broken one."""
    ca = Ca(tmp_path / "pki")
    first = ca.issue("gateway")
    live = Issued(tmp_path / "tls.crt", tmp_path / "tls.key", first.serial)
    live.cert.write_bytes(first.cert.read_bytes())
    live.key.write_bytes(first.key.read_bytes())
    trusting = client_context(ca.path)
    async with gateway(tmp_path, listen_tls=tls_yaml(live)) as (_, settings, _idp):
        port = settings.listen_port
        assert await peer_serial(port, trusting) == first.serial
        kept_open = await asyncio.open_connection("127.0.0.1", port, ssl=trusting)

        second = ca.issue("gateway-renewed", directory=tmp_path / "renewed")
        replace_file(live.key, second.key.read_bytes())
        replace_file(live.cert, second.cert.read_bytes())
        seen = await serials_until(port, trusting, second.serial)
        assert seen[0] == first.serial or seen[0] == second.serial  # the swap may already have been seen
        assert seen[-1] == second.serial != first.serial, seen
        # The connection opened before the renewal is still served.
        kept_open[1].write(f"GET {BIG} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
        assert (await kept_open[0].readline()).startswith(b"HTTP/1.1 401")
        kept_open[1].close()

        stray = ca.issue("stray", directory=tmp_path / "stray")  # a certificate without its key
        replace_file(live.cert, stray.cert.read_bytes())
        await asyncio.sleep(0.5)  # five reload intervals
        assert await peer_serial(port, trusting) == second.serial
        assert any("keeping the previous certificate" in r.getMessage() for r in caplog.records)

        third = ca.issue("gateway-third", directory=tmp_path / "third")
        replace_file(live.key, third.key.read_bytes())
        replace_file(live.cert, third.cert.read_bytes())
        assert (await serials_until(port, trusting, third.serial))[-1] == third.serial


async def test_admin_and_decision_listeners_hold_clients_to_their_certificates(tmp_path: Path) -> None:
    """With `client_ca_file` a client without a certificate, or with one another CA signed, gets no answer;
    one the CA signed does (the admin's /healthz, the decision listener's problem+json)."""
    ca = Ca(tmp_path / "pki")
    other = Ca(tmp_path / "other", "other-ca")
    served = ca.issue("gateway")
    operator = ca.issue("operator", client=True)
    stranger = other.issue("stranger", client=True)
    decision_port = free_port()
    decision = f"decision: {{host: 127.0.0.1, port: {decision_port}, tls: {tls_yaml(served, ca.path)}}}\n"
    async with gateway(tmp_path, admin_tls=tls_yaml(served, ca.path), extra=decision) as (_, settings, _idp):
        admin = f"https://127.0.0.1:{settings.admin_port}/healthz"
        status, _ = await get(admin, client_context(ca.path, operator))
        assert status == 200
        for refused in (client_context(ca.path), client_context(ca.path, stranger)):
            with pytest.raises(aiohttp.ClientError):
                await get(admin, refused)
        status, body = await get(f"https://127.0.0.1:{decision_port}/", client_context(ca.path, operator))
        assert (status, body["code"]) == (404, "route_not_allowed")
        with pytest.raises(aiohttp.ClientError):
            await get(f"https://127.0.0.1:{decision_port}/", client_context(ca.path))
        with pytest.raises(aiohttp.ClientError):  # the admin listener no longer answers plain HTTP
            await get(f"http://127.0.0.1:{settings.admin_port}/healthz", None)


@asynccontextmanager
async def mtls_scheduler(ca: Ca, directory: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """The stand-in scheduler over HTTPS, requiring a client certificate the CA signed; yields its URL and the
    common names of the client certificates its requests came with."""
    pair = ca.issue("scheduler", directory=directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert, pair.key)
    context.load_verify_locations(ca.path)
    context.verify_mode = ssl.CERT_REQUIRED
    clients: list[str] = []

    @web.middleware
    async def who(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        clients.append(dict(item[0] for item in peer["subject"])["commonName"] if peer else "")
        response: web.StreamResponse = await handler(request)
        return response

    app = standin_app(StandinState())
    app.middlewares.append(who)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{port}", clients
    finally:
        await runner.cleanup()


async def test_an_upstream_is_called_with_its_client_certificate_and_its_own_ca(tmp_path: Path) -> None:
    """The scheduler requires mutual TLS: the gateway forwards with its client certificate, verifying the
    scheduler against the upstream's `ca_file` (a private CA the system trust store does not hold)."""
    ca = Ca(tmp_path / "pki")
    me = ca.issue("exportgate-gateway", client=True)
    async with mtls_scheduler(ca, tmp_path / "scheduler") as (url, clients):
        upstream_tls = f"{{ca_file: {ca.path}, client_cert_file: {me.cert}, client_key_file: {me.key}}}"
        async with gateway(tmp_path, url, upstream_tls=upstream_tls) as (_, settings, idp):
            headers = {"Authorization": f"Bearer {idp.token('acme-us')}"}
            status, body = await get(f"http://127.0.0.1:{settings.listen_port}{BIG}", None, headers)
    assert (status, body) == (200, b"x" * 10)
    assert clients == ["exportgate-gateway"]


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("another-ca", "the scheduler's TLS certificate is not trusted (see the upstream's tls.ca_file)"),
        ("no-client-certificate", None),
    ],
)
async def test_an_upstream_tls_failure_is_a_clean_502(tmp_path: Path, case: str, detail: str | None) -> None:
    """A scheduler whose certificate the upstream's CA did not sign, or that wants a client certificate the
    gateway does not have, is a problem+json 502 `upstream_unreachable`, and the scheduler saw no request."""
    ca = Ca(tmp_path / "pki")
    other = Ca(tmp_path / "other", "other-ca")
    me = ca.issue("exportgate-gateway", client=True)
    if case == "another-ca":
        upstream_tls = f"{{ca_file: {other.path}, client_cert_file: {me.cert}, client_key_file: {me.key}}}"
    else:
        upstream_tls = f"{{ca_file: {ca.path}}}"
    async with (
        mtls_scheduler(ca, tmp_path / "scheduler") as (url, clients),
        gateway(tmp_path, url, upstream_tls=upstream_tls) as (_, settings, idp),
        aiohttp.ClientSession() as client,
    ):
        headers = {"Authorization": f"Bearer {idp.token('acme-us')}"}
        async with client.get(f"http://127.0.0.1:{settings.listen_port}{BIG}", headers=headers) as response:
            body = await response.json(content_type=None)
            content_type = response.headers["Content-Type"]
    assert (response.status, body["code"], content_type) == (502, "upstream_unreachable", "application/problem+json")
    if detail is not None:
        assert body["detail"] == detail
    assert clients == []


async def test_a_renewed_client_certificate_is_used_by_new_connections(tmp_path: Path) -> None:
    """An upstream's client pair is replaced: the context in use presents the new certificate once the pair
    loads; a mismatched pair is not loaded and the last good one stays in use."""
    ca = Ca(tmp_path / "pki")
    first = ca.issue("client-one", client=True)
    live = Issued(tmp_path / "client.crt", tmp_path / "client.key", first.serial)
    live.cert.write_bytes(first.cert.read_bytes())
    live.key.write_bytes(first.key.read_bytes())
    tls = ClientTls(ca.path, live.cert, live.key, label="upstream test")
    async with mtls_scheduler(ca, tmp_path / "scheduler") as (url, clients):

        async def ask() -> None:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.context)) as client,
                client.get(f"{url}/slurm/v0.0.38/ping") as response,
            ):
                assert response.status == 200

        await ask()
        assert tls.reload_if_changed() is False  # nothing changed
        second = ca.issue("client-two", client=True, directory=tmp_path / "two")
        replace_file(live.key, second.key.read_bytes())
        replace_file(live.cert, second.cert.read_bytes())
        assert tls.reload_if_changed() is True
        await ask()
        replace_file(live.cert, ca.issue("client-stray", client=True, directory=tmp_path / "stray").cert.read_bytes())
        assert tls.reload_if_changed() is False
        await ask()
    assert clients == ["client-one", "client-two", "client-two"]


BASE_YAML = """\
listen: {{host: 127.0.0.1, port: {listen}{listen_tls}}}
admin: {{host: 127.0.0.1, port: {admin}}}
upstreams:
  - name: slurm
    url: {url}
    scheduler: slurm
{upstream_tls}"""


def settings_of(tmp_path: Path, *, listen_tls: str = "", upstream_tls: str = "", url: str = "https://s:1") -> Settings:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        BASE_YAML.format(
            listen=free_port(), admin=free_port(), listen_tls=listen_tls, url=url,
            upstream_tls=f"    tls: {upstream_tls}\n" if upstream_tls else "",
        )
    )  # fmt: skip
    return load_settings(path, env={})


def test_tls_sections_are_checked(tmp_path: Path) -> None:
    """The sections' form is checked at load; the files they name are read by `check`, each problem at its field."""
    path = tmp_path / "gateway.yaml"
    with pytest.raises(ConfigError) as caught:
        settings_of(tmp_path, listen_tls=", tls: {cert_file: a.crt}", upstream_tls="{client_cert_file: c.crt}",
                    url="http://s:1")  # fmt: skip
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:1: listen.tls.key_file: required",
        f"{path}:7: upstreams[0].tls.client_key_file: required with client_cert_file",
        f"{path}:7: upstreams[0].tls: needs an https url",
    ]
    ca = Ca(tmp_path / "pki")
    good, other = ca.issue("gateway"), ca.issue("other")
    me = ca.issue("me", client=True)
    listen = f", tls: {{cert_file: {good.cert}, key_file: {other.key}, client_ca_file: {tmp_path / 'none.crt'}}}"
    nowhere = good.cert.with_name("nowhere.crt")
    upstream = f"{{ca_file: {nowhere}, client_cert_file: {me.cert}, client_key_file: {me.key}}}"
    settings = settings_of(tmp_path, listen_tls=listen, upstream_tls=upstream)
    problems = {p.field: str(p) for p in preflight(settings, {}).problems if "tls" in p.field}
    assert set(problems) == {"listen.tls.cert_file", "listen.tls.client_ca_file", "upstreams[0].tls"}
    assert problems["listen.tls.cert_file"].startswith(f"{path}:1: listen.tls.cert_file: cannot load {good.cert} with")
    assert f"cannot load the CA bundle {tmp_path / 'none.crt'}" in problems["listen.tls.client_ca_file"]
    assert problems["upstreams[0].tls"].startswith(f"{path}:7: upstreams[0].tls: cannot load the CA bundle")
    fine = f"{{ca_file: {ca.path}, client_cert_file: {me.cert}, client_key_file: {me.key}}}"
    settings = settings_of(tmp_path, listen_tls=f", tls: {tls_yaml(good, ca.path)}", upstream_tls=fine)
    assert not [p for p in preflight(settings, {}).problems if "tls" in p.field]
