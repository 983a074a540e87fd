"""Key sets: parsing, fetching over real HTTP, rotation, single-flight refetch and cooldown."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.adapters.auth import Authenticator, IssuerConfig
from gateway.adapters.jwks import MAX_JWKS_BYTES, MAX_KEYS, JwksError, JwksUrl, parse_jwks
from gateway.core.codes import Code
from gateway.core.tenants import Identity
from tests.auth_kit import (
    AUD,
    ISS_A,
    Clock,
    Factory,
    SigningKey,
    claims,
    ec_key,
    ed_key,
    refused,
    rsa_key,
    write_jwks,
)

COOLDOWN_S = 30.0
FAILURES = ("http-500", "server-down", "not-json", "no-usable-keys", "oversized-body", "redirect")


class JwksServer:
    """A loopback JWKS endpoint whose keys and failure mode a test switches mid-test."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.mode = "ok"
        self.fetches = 0
        self.url = ""
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        """Stop listening: later fetches find nobody at the address."""
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _jwks(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.mode == "http-500":
            return web.Response(status=500, text="upstream exploded")
        if self.mode == "not-json":
            return web.Response(text="<html>maintenance</html>")
        if self.mode == "no-usable-keys":
            return web.json_response({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
        if self.mode == "oversized-body":
            return web.Response(body=b" " * (MAX_JWKS_BYTES + 1), content_type="application/json")
        if self.mode == "redirect":
            raise web.HTTPFound("/elsewhere")
        if self.mode == "slow":
            await asyncio.wait_for(self.release.wait(), timeout=5)
        return web.json_response({"keys": self.keys})


@pytest.fixture
async def server() -> AsyncIterator[JwksServer]:
    """A JWKS server on a free loopback port."""
    jwks = JwksServer()
    await jwks.start()
    yield jwks
    await jwks.stop()


@pytest.fixture
def clock() -> Clock:
    """The test's clock; refetch cooldowns are stepped past with it, never slept through."""
    return Clock()


@pytest.fixture
async def make_auth(clock: Clock) -> AsyncIterator[Factory]:
    """A factory of started Authenticators, all closed at teardown."""
    factory = Factory(clock)
    yield factory
    for auth in factory.made:
        await auth.close()


@pytest.fixture(scope="module")
def key_a() -> SigningKey:
    return ec_key("key-a")


@pytest.fixture(scope="module")
def key_b() -> SigningKey:
    return ec_key("key-b")


def url_issuer(server: JwksServer, **options: Any) -> IssuerConfig:
    """Issuer A, pinning ES256, its keys at the test server, refreshed hourly unless told."""
    fields: dict[str, Any] = {"refetch_cooldown_s": COOLDOWN_S, "refresh_interval_s": 3600}
    return IssuerConfig(ISS_A, (AUD,), ("ES256",), jwks_url=server.url, **{**fields, **options})


def bearer(key: SigningKey, sub: str = "tenant-7", kid: str | None = "") -> str:
    return f"Bearer {key.sign(claims(sub=sub), kid=kid)}"


async def started(make_auth: Factory, server: JwksServer, refreshes: list[str], **options: Any) -> Authenticator:
    return await make_auth([url_issuer(server, **options)], on_refresh=refreshes.append)


# -- loading --------------------------------------------------------------------------------


async def test_start_loads_each_key_set_once(server: JwksServer, make_auth: Factory, key_a: SigningKey) -> None:
    """start() fetches the key set once, reports "ok" and makes the authenticator ready."""
    server.keys = [key_a.public_jwk()]
    refreshes: list[str] = []
    auth = await started(make_auth, server, refreshes)
    assert auth.ready
    assert server.fetches == 1
    assert refreshes == ["ok"]
    assert await auth.authenticate(bearer(key_a)) == Identity(ISS_A, "tenant-7")


async def test_idp_down_at_start_then_recovers(
    server: JwksServer, make_auth: Factory, clock: Clock, key_a: SigningKey
) -> None:
    """An issuer whose keys never loaded is not ready, refuses tokens, and recovers on refetch."""
    server.keys = [key_a.public_jwk()]
    server.mode = "http-500"
    refreshes: list[str] = []
    auth = await started(make_auth, server, refreshes)
    assert not auth.ready
    assert (await refused(auth, bearer(key_a))).code == Code.AUTH_INVALID
    assert refreshes == ["error", "error"]
    server.mode = "ok"
    clock.advance(COOLDOWN_S)
    assert await auth.authenticate(bearer(key_a)) == Identity(ISS_A, "tenant-7")
    assert auth.ready
    assert refreshes == ["error", "error", "ok"]


# -- rotation -------------------------------------------------------------------------------


async def test_new_key_accepted_after_exactly_one_refetch(
    server: JwksServer, make_auth: Factory, key_a: SigningKey, key_b: SigningKey
) -> None:
    """A token signed by a newly published key is accepted after exactly one refetch."""
    server.keys = [key_a.public_jwk()]
    refreshes: list[str] = []
    auth = await started(make_auth, server, refreshes)
    server.keys = [key_a.public_jwk(), key_b.public_jwk()]
    assert await auth.authenticate(bearer(key_b)) == Identity(ISS_A, "tenant-7")
    assert server.fetches == 2
    assert await auth.authenticate(bearer(key_b, sub="other")) == Identity(ISS_A, "other")
    assert server.fetches == 2
    assert refreshes == ["ok", "ok"]


async def test_concurrent_requests_with_new_kid_share_one_fetch(
    server: JwksServer, make_auth: Factory, key_a: SigningKey, key_b: SigningKey
) -> None:
    """Fifty concurrent tokens with a new kid wait on one shared fetch and are all accepted."""
    server.keys = [key_a.public_jwk()]
    refreshes: list[str] = []
    auth = await started(make_auth, server, refreshes)
    server.keys = [key_a.public_jwk(), key_b.public_jwk()]
    identities = await asyncio.gather(*(auth.authenticate(bearer(key_b, sub=f"t{i}")) for i in range(50)))
    assert identities == [Identity(ISS_A, f"t{i}") for i in range(50)]
    assert server.fetches == 2
    assert refreshes == ["ok", "ok"]


async def test_flood_of_unknown_kids_fetches_at_most_once_per_cooldown(
    server: JwksServer, make_auth: Factory, clock: Clock, key_a: SigningKey
) -> None:
    """Fifty concurrent unknown kids cause one fetch; more within the cooldown cause none."""
    server.keys = [key_a.public_jwk()]
    refreshes: list[str] = []
    auth = await started(make_auth, server, refreshes)
    flood = [auth.authenticate(bearer(key_a, kid=f"bogus-{i}")) for i in range(50)]
    outcomes = await asyncio.gather(*flood, return_exceptions=True)
    assert all(getattr(o, "code", None) == Code.AUTH_INVALID for o in outcomes)
    assert server.fetches == 2
    assert refreshes == ["ok", "unchanged"]

    clock.advance(COOLDOWN_S - 1)
    for i in range(20):
        await refused(auth, bearer(key_a, kid=f"later-{i}"))
    assert server.fetches == 2
    assert refreshes == ["ok", "unchanged"] + ["skipped_cooldown"] * 20

    clock.advance(1)
    await refused(auth, bearer(key_a, kid="after-cooldown"))
    assert server.fetches == 3


@pytest.mark.parametrize("trigger", ["reload", "unknown-kid-refetch"])
async def test_removed_key_rejected_once_set_changes(
    server: JwksServer,
    make_auth: Factory,
    key_a: SigningKey,
    key_b: SigningKey,
    trigger: str,
) -> None:
    """A cached token signed by a key since removed is refused once the set changes."""
    server.keys = [key_a.public_jwk(), key_b.public_jwk()]
    auth = await started(make_auth, server, [])
    old = bearer(key_a)
    assert await auth.authenticate(old) == Identity(ISS_A, "tenant-7")
    assert auth.cached_tokens == 1
    key_c = ec_key("key-c")
    server.keys = [key_b.public_jwk(), key_c.public_jwk()]
    if trigger == "reload":
        await auth.reload()
    else:
        assert await auth.authenticate(bearer(key_c, sub="c")) == Identity(ISS_A, "c")
    assert auth.cached_tokens <= 1
    error = await refused(auth, old)
    assert "kid is not one of its issuer's keys" in error.detail


async def test_unchanged_set_keeps_the_cache(server: JwksServer, make_auth: Factory, key_a: SigningKey) -> None:
    """A refresh that finds the same keys reports "unchanged" and leaves the cache alone."""
    server.keys = [key_a.public_jwk()]
    refreshes: list[str] = []
    auth = await started(make_auth, server, refreshes)
    await auth.authenticate(bearer(key_a))
    # The same key with its members in another order is the same set.
    server.keys = [dict(reversed(key_a.public_jwk().items()))]
    await auth.reload()
    assert refreshes == ["ok", "unchanged"]
    assert auth.cached_tokens == 1


@pytest.mark.parametrize("failure", FAILURES)
async def test_fetch_error_keeps_last_good_keys(
    server: JwksServer,
    make_auth: Factory,
    clock: Clock,
    key_a: SigningKey,
    key_b: SigningKey,
    failure: str,
) -> None:
    """When a refetch fails the last good key set keeps serving and on_refresh sees "error"."""
    server.keys = [key_a.public_jwk()]
    refreshes: list[str] = []
    auth = await started(make_auth, server, refreshes)
    if failure == "server-down":
        await server.stop()
    else:
        server.mode = failure
        server.keys = [key_b.public_jwk()]
    await auth.reload()
    assert refreshes == ["ok", "error"]
    clock.advance(COOLDOWN_S)
    await refused(auth, bearer(key_b))
    assert refreshes == ["ok", "error", "error"]
    assert auth.ready
    assert await auth.authenticate(bearer(key_a, sub="fresh")) == Identity(ISS_A, "fresh")


async def test_periodic_refresh_picks_up_new_keys(
    server: JwksServer, make_auth: Factory, key_a: SigningKey, key_b: SigningKey
) -> None:
    """The background refresh loads a rotated set without any request asking for it."""
    server.keys = [key_a.public_jwk()]
    changed = asyncio.Event()

    def on_refresh(result: str) -> None:
        if result == "ok" and server.keys[0]["kid"] == key_b.kid:
            changed.set()

    auth = await make_auth([url_issuer(server, refresh_interval_s=0.02)], on_refresh=on_refresh)
    server.keys = [key_b.public_jwk()]
    async with asyncio.timeout(3):
        await changed.wait()
    fetches = server.fetches
    assert await auth.authenticate(bearer(key_b)) == Identity(ISS_A, "tenant-7")
    assert server.fetches - fetches <= 1  # at most a periodic tick, never an unknown-kid fetch
    assert "kid is not one of" in (await refused(auth, bearer(key_a, sub="x"))).detail


async def test_file_key_set_rotates_on_reload(
    make_auth: Factory, tmp_path: Path, key_a: SigningKey, key_b: SigningKey
) -> None:
    """A JWKS file rewritten in place is picked up by reload (SIGHUP)."""
    jwks = write_jwks(tmp_path / "jwks.json", [key_a.public_jwk()])
    refreshes: list[str] = []
    auth = await make_auth(
        [IssuerConfig(ISS_A, (AUD,), ("ES256",), jwks_file=jwks, refetch_cooldown_s=3600)],
        on_refresh=refreshes.append,
    )
    write_jwks(jwks, [key_b.public_jwk()])
    await auth.reload()
    assert refreshes == ["ok", "ok"]
    assert await auth.authenticate(bearer(key_b)) == Identity(ISS_A, "tenant-7")
    await refused(auth, bearer(key_a, sub="x"))
    jwks.unlink()
    await auth.reload()
    assert refreshes[-1] == "error"
    assert await auth.authenticate(bearer(key_b, sub="y")) == Identity(ISS_A, "y")


async def test_url_fetch_is_bounded_in_time(server: JwksServer, key_a: SigningKey) -> None:
    """A JWKS endpoint that does not answer in time is a JwksError, not a hang."""
    server.keys = [key_a.public_jwk()]
    server.mode = "slow"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(JwksError, match="TimeoutError"):
            await JwksUrl(server.url, session, timeout_s=0.1).load()
    server.release.set()


async def test_url_in_logs_has_no_credentials_or_query() -> None:
    """A JWKS URL is named in logs without its user info and query string."""
    async with aiohttp.ClientSession() as session:
        source = JwksUrl("https://user:pw@idp.example/jwks?token=secret", session)
        assert source.name == "https://idp.example/jwks"


async def test_authenticator_not_running_refuses_tokens(server: JwksServer, clock: Clock, key_a: SigningKey) -> None:
    """Before start and after close, tokens are refused as auth_invalid and nothing is fetched."""
    server.keys = [key_a.public_jwk()]
    refreshes: list[str] = []
    auth = Authenticator([url_issuer(server)], clock=clock, on_refresh=refreshes.append)
    assert not auth.ready
    assert (await refused(auth, bearer(key_a))).code == Code.AUTH_INVALID
    await auth.start()
    try:
        assert await auth.authenticate(bearer(key_a)) == Identity(ISS_A, "tenant-7")
    finally:
        await auth.close()
    clock.advance(COOLDOWN_S)
    await refused(auth, bearer(key_a, kid="rotated"))
    assert refreshes == ["error", "ok", "error"]
    assert server.fetches == 1


# -- parsing --------------------------------------------------------------------------------


def jwks_bytes(*keys: object) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


@pytest.mark.parametrize(
    ("member", "why"),
    [
        pytest.param({"kty": "oct", "k": "c2VjcmV0c2VjcmV0"}, "symmetric", id="symmetric-key"),
        pytest.param({"d": "AAAA"}, "private key material", id="private-key-material"),
        pytest.param({"use": "enc"}, "not a signing key", id="encryption-key"),
        pytest.param({"key_ops": ["encrypt"]}, "key_ops", id="key-ops-without-verify"),
        pytest.param({"alg": "RS256"}, "unsupported", id="alg-does-not-fit-kty"),
        pytest.param({"alg": "ES512"}, "unsupported", id="alg-unsupported"),
        pytest.param({"crv": "P-384"}, "unsupported", id="curve-does-not-fit"),
        pytest.param({"kid": 7}, "wrong type", id="kid-not-a-string"),
        pytest.param({"x": 12}, "wrong type", id="coordinate-not-a-string"),
        pytest.param({"x": "AAAA"}, "malformed", id="coordinate-wrong-length"),
    ],
)
def test_unusable_keys_are_skipped(
    key_a: SigningKey, member: dict[str, Any], why: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A key that may not or cannot verify is skipped with a reason; the others still load."""
    bad = {**ec_key("bad").public_jwk(), **member}
    keys = parse_jwks(jwks_bytes(bad, key_a.public_jwk()), "test")
    assert [k.kid for k in keys.keys] == ["key-a"]
    assert "keys[0] skipped: " in caplog.text
    assert why in caplog.text


def test_short_rsa_key_is_skipped() -> None:
    """An RSA key under 2048 bits is skipped."""
    short = SigningKey("short", "RS256", rsa.generate_private_key(65537, 1024))
    with pytest.raises(JwksError, match="no usable keys"):
        parse_jwks(jwks_bytes(short.public_jwk()), "test")


def test_rsa_key_without_alg_verifies_rs256_and_ps256() -> None:
    """An RSA key that names no alg is bound for both RS256 and PS256; with alg, only that."""
    key = rsa_key("r")
    (loose,) = parse_jwks(jwks_bytes(key.public_jwk()), "test").keys
    (pinned,) = parse_jwks(jwks_bytes(key.public_jwk(alg="PS256")), "test").keys
    assert sorted(loose.by_alg) == ["PS256", "RS256"]
    assert sorted(pinned.by_alg) == ["PS256"]
    (okp,) = parse_jwks(jwks_bytes(ed_key("e").public_jwk()), "test").keys
    assert sorted(okp.by_alg) == ["EdDSA"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
        pytest.param(b"[1]", '"keys" list', id="array"),
        pytest.param(b'{"keys": {}}', '"keys" list', id="keys-not-a-list"),
        pytest.param(b'{"keys": []}', "no usable keys", id="empty"),
        pytest.param(b'{"keys": [1, "x", null]}', "no usable keys", id="members-not-objects"),
        pytest.param(jwks_bytes(*[{}] * (MAX_KEYS + 1)), f"more than {MAX_KEYS}", id="too-many"),
        pytest.param(b"[" * 100_000, "not JSON", id="deeply-nested"),
    ],
)
def test_bad_key_set_documents(body: bytes, message: str) -> None:
    """A document that is not a usable JWKS is a JwksError naming its source."""
    with pytest.raises(JwksError, match=f"^idp: .*{message}"):
        parse_jwks(body, "idp")
