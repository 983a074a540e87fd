"""The Authenticator: which bearer tokens prove an identity, which are refused, and why."""

import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.adapters.auth import (
    MAX_TOKEN_BYTES,
    Authenticator,
    AuthError,
    IssuerConfig,
    VerifiedTokenCache,
)
from gateway.core.codes import Code
from gateway.core.tenants import Identity
from tests.auth_kit import (
    AUD,
    DROP,
    HS_SECRET,
    ISS_A,
    ISS_B,
    ISS_C,
    NOW,
    Clock,
    Factory,
    SigningKey,
    b64,
    claims,
    compact,
    ec_key,
    ed_key,
    hmac_signed,
    refused,
    rsa_key,
    write_jwks,
)


@dataclass(frozen=True)
class Keys:
    """Every key the table needs, generated once per module."""

    rsa1: SigningKey
    rsa2: SigningKey
    ec_a: SigningKey
    ec_b: SigningKey
    ed_b: SigningKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Fresh keys for this module: two RSA, two P-256, one Ed25519."""
    return Keys(rsa_key("rsa-1"), rsa_key("rsa-2"), ec_key("ec-a"), ec_key("ec-b"), ed_key("ed-b"))


@pytest.fixture
def clock() -> Clock:
    """The test's clock, at NOW."""
    return Clock()


@pytest.fixture
async def make_auth(clock: Clock) -> AsyncIterator[Factory]:
    """A factory of started Authenticators, all closed at teardown."""
    factory = Factory(clock)
    yield factory
    for auth in factory.made:
        await auth.close()


@dataclass(frozen=True)
class World:
    """Three issuers: A (RS256, ES256), B (EdDSA, ES256), C (RS256 and an HS256 secret)."""

    keys: Keys
    auth: Authenticator


@pytest.fixture
async def world(keys: Keys, make_auth: Factory, tmp_path: Path) -> World:
    """The three standard issuers, loaded from files, with a one-hour refetch cooldown."""
    secret = tmp_path / "c.secret"
    secret.write_bytes(HS_SECRET + b"\n")
    sym = {"kty": "oct", "kid": "sym", "k": b64(b"k" * 48)}
    issuers = [
        IssuerConfig(
            ISS_A,
            (AUD,),
            ("RS256", "ES256"),
            jwks_file=write_jwks(tmp_path / "a.json", [keys.rsa1.public_jwk(), keys.ec_a.public_jwk(), sym]),
            refetch_cooldown_s=3600,
        ),
        IssuerConfig(
            ISS_B,
            (AUD, "other-gateway"),
            ("EdDSA", "ES256"),
            jwks_file=write_jwks(tmp_path / "b.json", [keys.ed_b.public_jwk(), keys.ec_b.public_jwk()]),
        ),
        IssuerConfig(
            ISS_C,
            (AUD,),
            ("RS256", "HS256"),
            jwks_file=write_jwks(tmp_path / "c.json", [keys.rsa2.public_jwk(), sym]),
            hs256_secret_file=secret,
        ),
    ]
    auth = await make_auth(issuers)
    assert auth.ready
    return World(keys, auth)


# -- the Authorization header ---------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme",
    [
        pytest.param("Bearer", id="Bearer"),
        pytest.param("bearer", id="lowercase"),
        pytest.param("BEARER", id="uppercase"),
    ],
)
async def test_bearer_scheme_is_case_insensitive(world: World, scheme: str) -> None:
    """The Bearer scheme is matched without regard to case."""
    token = world.keys.rsa1.sign(claims())
    assert await world.auth.authenticate(f"{scheme} {token}") == Identity(ISS_A, "tenant-7")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        pytest.param(None, Code.AUTH_MISSING, id="absent"),
        pytest.param("", Code.AUTH_MISSING, id="empty-header"),
        pytest.param("Basic dXNlcjpwYXNz", Code.AUTH_INVALID, id="basic-scheme"),
        pytest.param("Token {token}", Code.AUTH_INVALID, id="token-scheme"),
        pytest.param("Bearer{token}", Code.AUTH_INVALID, id="missing-space"),
        pytest.param("Bearer ", Code.AUTH_INVALID, id="empty-token"),
        pytest.param("Bearer", Code.AUTH_INVALID, id="scheme-only"),
        pytest.param("{token}", Code.AUTH_INVALID, id="no-scheme"),
        pytest.param("Bearer {token} extra", Code.AUTH_INVALID, id="two-tokens"),
    ],
)
async def test_token_in_the_wrong_scheme(world: World, header: str | None, code: Code) -> None:
    """Only `Bearer <token>` is read; no header is auth_missing, anything else auth_invalid."""
    token = world.keys.rsa1.sign(claims())
    error = await refused(world.auth, None if header is None else header.format(token=token))
    assert error.code == code
    assert token not in error.detail


# -- the refusal table ----------------------------------------------------------------------


def alg_none(k: Keys) -> str:
    """An unsigned token with alg "none" is refused."""
    return compact({"alg": "none", "typ": "JWT", "kid": k.rsa1.kid}, claims())


def hs256_signed_with_rsa_public_pem(k: Keys) -> str:
    """HS256 with the issuer's RSA public key (PEM) as the secret is refused (alg confusion)."""
    return hmac_signed({"alg": "HS256", "kid": k.rsa1.kid}, claims(), k.rsa1.public_pem())


def hs256_signed_with_rsa_public_pem_issuer_pins_hs256(k: Keys) -> str:
    """The alg-confusion token is refused even by an issuer that pins HS256 beside RS256."""
    return hmac_signed({"alg": "HS256", "kid": k.rsa2.kid}, claims(ISS_C), k.rsa2.public_pem())


def hs256_with_oct_key_from_jwks(k: Keys) -> str:
    """A symmetric key published in a JWKS never verifies anything; HS256 needs the secret file."""
    return hmac_signed({"alg": "HS256", "kid": "sym"}, claims(ISS_C), b"k" * 48)


def hs256_for_issuer_without_secret(k: Keys) -> str:
    """An HS256 token for an issuer that does not pin HS256 is refused."""
    return hmac_signed({"alg": "HS256", "kid": "sym"}, claims(), b"k" * 48)


def expired(k: Keys) -> str:
    """A token whose exp lies further in the past than the leeway is refused."""
    return k.rsa1.sign(claims(exp=NOW - 31, iat=NOW - 700))


def not_yet_valid_nbf(k: Keys) -> str:
    """A token whose nbf lies further in the future than the leeway is refused."""
    return k.rsa1.sign(claims(nbf=NOW + 31))


def issued_in_the_future(k: Keys) -> str:
    """A token whose iat lies further in the future than the leeway is refused."""
    return k.rsa1.sign(claims(iat=NOW + 3600))


def wrong_aud(k: Keys) -> str:
    """A token for another audience is refused."""
    return k.rsa1.sign(claims(aud="someone-else"))


def wrong_aud_list(k: Keys) -> str:
    """A token whose audience list does not name us is refused."""
    return k.rsa1.sign(claims(aud=["a", "b"]))


def wrong_iss_unconfigured_issuer(k: Keys) -> str:
    """A token from an unconfigured issuer is refused even when signed by a trusted key."""
    return k.rsa1.sign(claims("https://evil.example"))


def unknown_kid(k: Keys) -> str:
    """A token whose kid the issuer does not publish is refused after the one refetch."""
    return k.rsa1.sign(claims(), kid="no-such-kid")


def key_of_another_issuer(k: Keys) -> str:
    """A token claiming issuer A but signed with issuer B's key is refused."""
    return k.ec_b.sign(claims(ISS_A))


def signed_by_another_key_same_kid(k: Keys) -> str:
    """A token carrying a trusted kid but signed by a different key is refused."""
    return k.rsa2.sign(claims(), kid=k.rsa1.kid)


def ec_signature_under_rsa_kid(k: Keys) -> str:
    """An ES256 token pointing at an RSA key's kid is refused: the key's kty decides."""
    return k.ec_a.sign(claims(), kid=k.rsa1.kid)


def tampered_payload(k: Keys) -> str:
    """A signed token whose payload was swapped afterwards is refused."""
    header, _, signature = k.rsa1.sign(claims()).split(".")
    return f"{header}.{b64(json.dumps(claims(sub='admin')).encode())}.{signature}"


def no_kid_with_two_keys(k: Keys) -> str:
    """A token without kid is refused by an issuer that publishes several keys."""
    return k.rsa1.sign(claims(), kid=None)


def crit_unsupported(k: Keys) -> str:
    """A token with a critical header extension we do not implement is refused."""
    return k.rsa1.sign(claims(), extra_headers={"crit": ["x-magic"], "x-magic": 1})


def oversize(k: Keys) -> str:
    """A token over the size limit is refused before it is parsed."""
    return k.rsa1.sign(claims(pad="x" * MAX_TOKEN_BYTES))


def garbage_token(k: Keys) -> str:
    """Text that is not a JWT at all is refused."""
    return "not-a-jwt"


def garbage_base64(k: Keys) -> str:
    """Segments outside the base64url alphabet are refused."""
    return "!!!!.####.$$$$"


def non_ascii(k: Keys) -> str:
    """A token with non-ASCII characters is refused."""
    return "é.é.é"


def header_not_json(k: Keys) -> str:
    """A header that is not JSON is refused."""
    return compact(b"{nope", claims())


def header_json_array(k: Keys) -> str:
    """A header that is a JSON array is refused."""
    return compact(["RS256"], claims())


def alg_not_a_string(k: Keys) -> str:
    """A header whose alg is a list is refused."""
    return compact({"alg": ["RS256"], "kid": k.rsa1.kid}, claims(), b"x")


def kid_not_a_string(k: Keys) -> str:
    """A header whose kid is a number is refused."""
    return compact({"alg": "RS256", "kid": 7}, claims(), b"x")


def claims_json_array(k: Keys) -> str:
    """Claims that are a JSON array are refused."""
    return compact({"alg": "RS256", "kid": k.rsa1.kid}, [1, 2], b"x")


def claims_not_utf8(k: Keys) -> str:
    """Claims that are not UTF-8 are refused."""
    return compact({"alg": "RS256", "kid": k.rsa1.kid}, b"\xff\xfe\x00", b"x")


def signed_claims_not_object(k: Keys) -> str:
    """A correctly signed token whose claims are not an object is refused."""
    return jwt.api_jws.encode(b"[1]", k.rsa1.private, algorithm="RS256", headers={"kid": k.rsa1.kid})


def refusal(make_token: Callable[[Keys], str], why: str) -> Any:
    """A table row named after the attack its token builder carries out."""
    return pytest.param(make_token, why, id=make_token.__name__.replace("_", "-"))


def claim_case(name: str, doc: str, why: str, **overrides: object) -> Any:
    """A table row for a token signed by a trusted key whose claims are wrong."""

    def case(k: Keys) -> str:
        return k.rsa1.sign(claims(**overrides))

    case.__doc__ = doc
    return pytest.param(case, why, id=name)


ALG_NOT_ALLOWED = "algorithm is not allowed"
NO_KEY_FOR_ALG = "does not accept its alg"
UNKNOWN_KID = "kid is not one of its issuer's keys"
BAD_SIGNATURE = "signature is not valid"
MALFORMED = "malformed token"

REFUSED = [
    refusal(alg_none, ALG_NOT_ALLOWED),
    refusal(hs256_signed_with_rsa_public_pem, ALG_NOT_ALLOWED),
    refusal(hs256_signed_with_rsa_public_pem_issuer_pins_hs256, NO_KEY_FOR_ALG),
    refusal(hs256_with_oct_key_from_jwks, UNKNOWN_KID),
    refusal(hs256_for_issuer_without_secret, ALG_NOT_ALLOWED),
    refusal(expired, "expired"),
    refusal(not_yet_valid_nbf, "not yet valid"),
    refusal(issued_in_the_future, "issued in the future"),
    refusal(wrong_aud, "audience is not accepted"),
    refusal(wrong_aud_list, "audience is not accepted"),
    refusal(wrong_iss_unconfigured_issuer, "issuer is not accepted"),
    refusal(unknown_kid, UNKNOWN_KID),
    refusal(key_of_another_issuer, UNKNOWN_KID),
    refusal(signed_by_another_key_same_kid, BAD_SIGNATURE),
    refusal(ec_signature_under_rsa_kid, NO_KEY_FOR_ALG),
    refusal(tampered_payload, BAD_SIGNATURE),
    refusal(no_kid_with_two_keys, "no kid and its issuer has several keys"),
    refusal(crit_unsupported, MALFORMED),
    refusal(oversize, "longer than 8192 bytes"),
    refusal(garbage_token, MALFORMED),
    refusal(garbage_base64, MALFORMED),
    refusal(non_ascii, MALFORMED),
    refusal(header_not_json, MALFORMED),
    refusal(header_json_array, MALFORMED),
    refusal(alg_not_a_string, ALG_NOT_ALLOWED),
    refusal(kid_not_a_string, MALFORMED),
    refusal(claims_json_array, "malformed token claims"),
    refusal(claims_not_utf8, "malformed token claims"),
    refusal(signed_claims_not_object, "malformed token claims"),
    claim_case("missing-exp", "A token without exp is refused.", "no exp", exp=DROP),
    claim_case("missing-aud", "A token without aud is refused.", "no valid aud", aud=DROP),
    claim_case("missing-iss", "A token without iss is refused.", "issuer is not", iss=DROP),
    claim_case("missing-sub", "A token without a subject is refused.", "no valid sub", sub=DROP),
    claim_case("empty-sub", "A token with an empty subject is refused.", "no valid sub", sub=""),
    claim_case("sub-not-a-string", "A numeric subject is refused.", "no valid sub", sub=42),
    claim_case("iss-not-a-string", "A list iss is refused.", "issuer is not", iss=[ISS_A]),
    claim_case("aud-not-a-string", "A numeric aud is refused.", "no valid aud", aud=5),
    claim_case("exp-not-a-number", "A string exp is refused.", "not a number", exp="2099"),
    claim_case("exp-bool", "A boolean exp is refused.", "not a number", exp=True),
    claim_case("exp-infinite", "An exp of Infinity is refused.", "out of range", exp=float("inf")),
    claim_case("exp-huge", "An exp beyond a float is refused.", "out of range", exp=10**400),
    claim_case("nbf-not-a-number", "A string nbf is refused.", "not a number", nbf="now"),
]


@pytest.mark.parametrize(("make_token", "why"), REFUSED)
async def test_refused(world: World, make_token: Callable[[Keys], str], why: str) -> None:
    """Each token in the table is refused with auth_invalid for its reason, never otherwise."""
    token = make_token(world.keys)
    error = await refused(world.auth, f"Bearer {token}")
    assert error.code == Code.AUTH_INVALID
    assert why in error.detail
    assert token not in error.detail
    assert world.auth.cached_tokens == 0


A7 = Identity(ISS_A, "tenant-7")


@pytest.mark.parametrize(
    ("make_token", "identity"),
    [
        pytest.param(lambda k: k.rsa1.sign(claims()), A7, id="rs256"),
        pytest.param(lambda k: k.ec_a.sign(claims()), A7, id="es256"),
        pytest.param(lambda k: k.ed_b.sign(claims(ISS_B)), Identity(ISS_B, "tenant-7"), id="eddsa"),
        pytest.param(
            lambda k: k.ed_b.sign(claims(ISS_B, aud="other-gateway")),
            Identity(ISS_B, "tenant-7"),
            id="second-audience",
        ),
        pytest.param(lambda k: k.rsa1.sign(claims(aud=["x", AUD])), A7, id="aud-list"),
        pytest.param(lambda k: k.rsa1.sign(claims(exp=NOW - 29)), A7, id="exp-within-leeway"),
        pytest.param(lambda k: k.rsa1.sign(claims(nbf=NOW + 29)), A7, id="nbf-within-leeway"),
        pytest.param(lambda k: k.rsa1.sign(claims(iat=NOW + 29)), A7, id="iat-within-leeway"),
        pytest.param(lambda k: k.rsa1.sign(claims(exp=NOW + 60.5)), A7, id="float-exp"),
        pytest.param(lambda k: k.rsa1.sign(claims(iat=DROP)), A7, id="no-iat"),
    ],
)
async def test_accepted(world: World, make_token: Callable[[Keys], str], identity: Identity) -> None:
    """Each well-formed, correctly signed token proves its issuer and subject."""
    assert await world.auth.authenticate(f"Bearer {make_token(world.keys)}") == identity


# -- algorithms are pinned per issuer -------------------------------------------------------


def key_for(keys: Keys, alg: str) -> SigningKey:
    return {"RS256": keys.rsa1, "PS256": keys.rsa1, "ES256": keys.ec_a, "EdDSA": keys.ed_b}[alg]


def single_issuer(tmp_path: Path, keys: Keys, algorithms: tuple[str, ...]) -> IssuerConfig:
    """Issuer A publishing every test key, pinning `algorithms`."""
    jwks = [keys.rsa1.public_jwk(), keys.ec_a.public_jwk(), keys.ed_b.public_jwk()]
    return IssuerConfig(ISS_A, (AUD,), algorithms, jwks_file=write_jwks(tmp_path / "all.json", jwks))


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES256", "EdDSA"])
async def test_algorithm_accepted_when_pinned(keys: Keys, make_auth: Factory, tmp_path: Path, alg: str) -> None:
    """A token signed with an algorithm its issuer pins is accepted."""
    auth = await make_auth([single_issuer(tmp_path, keys, (alg,))])
    token = key_for(keys, alg).sign(claims(), alg=alg)
    assert await auth.authenticate(f"Bearer {token}") == Identity(ISS_A, "tenant-7")


@pytest.mark.parametrize(
    ("alg", "pinned"),
    [
        pytest.param("RS256", ("PS256",), id="rs256-issuer-pins-ps256"),
        pytest.param("PS256", ("RS256",), id="ps256-issuer-pins-rs256"),
        pytest.param("ES256", ("RS256", "EdDSA"), id="es256-issuer-pins-rs256-eddsa"),
        pytest.param("EdDSA", ("ES256",), id="eddsa-issuer-pins-es256"),
    ],
)
async def test_algorithm_refused_when_issuer_pins_another(
    keys: Keys, make_auth: Factory, tmp_path: Path, alg: str, pinned: tuple[str, ...]
) -> None:
    """A correctly signed token is refused when its alg is not one its issuer pins."""
    auth = await make_auth([single_issuer(tmp_path, keys, pinned)])
    token = key_for(keys, alg).sign(claims(), alg=alg)
    assert (await refused(auth, f"Bearer {token}")).code == Code.AUTH_INVALID


async def test_key_alg_binds_the_key(keys: Keys, make_auth: Factory, tmp_path: Path) -> None:
    """A JWK that declares alg RS256 does not verify PS256, even when the issuer pins both."""
    jwks = write_jwks(tmp_path / "k.json", [keys.rsa1.public_jwk(alg="RS256")])
    auth = await make_auth([IssuerConfig(ISS_A, (AUD,), ("RS256", "PS256"), jwks_file=jwks)])
    assert await auth.authenticate(f"Bearer {keys.rsa1.sign(claims())}")
    ps256 = keys.rsa1.sign(claims(sub="other"), alg="PS256")
    assert (await refused(auth, f"Bearer {ps256}")).code == Code.AUTH_INVALID


async def test_hs256_accepted_only_with_secret_file(make_auth: Factory, tmp_path: Path) -> None:
    """HS256 verifies with the configured secret file, and with nothing else."""
    secret = tmp_path / "hs.secret"
    secret.write_bytes(HS_SECRET)
    auth = await make_auth([IssuerConfig(ISS_C, (AUD,), ("HS256",), hs256_secret_file=secret)])
    good = hmac_signed({"alg": "HS256", "typ": "JWT"}, claims(ISS_C), HS_SECRET)
    assert await auth.authenticate(f"Bearer {good}") == Identity(ISS_C, "tenant-7")
    other = hmac_signed({"alg": "HS256"}, claims(ISS_C, sub="x"), b"t" * 48)
    assert (await refused(auth, f"Bearer {other}")).code == Code.AUTH_INVALID
    with pytest.raises(ValueError, match="HS256 must be pinned if and only if"):
        IssuerConfig(ISS_C, (AUD,), ("HS256",))


async def test_short_hs256_secret_is_not_loaded(make_auth: Factory, tmp_path: Path) -> None:
    """An HS256 secret shorter than 32 bytes is refused at load, leaving the issuer unready."""
    secret = tmp_path / "hs.secret"
    secret.write_bytes(b"short")
    refreshes: list[str] = []
    auth = await make_auth(
        [IssuerConfig(ISS_C, (AUD,), ("HS256",), hs256_secret_file=secret)],
        on_refresh=refreshes.append,
    )
    assert not auth.ready
    assert refreshes == ["error"]
    token = hmac_signed({"alg": "HS256"}, claims(ISS_C), b"short")
    assert (await refused(auth, f"Bearer {token}")).code == Code.AUTH_INVALID


async def test_no_kid_accepted_when_issuer_has_one_key(keys: Keys, make_auth: Factory, tmp_path: Path) -> None:
    """A token without kid is tried against the issuer's only key."""
    jwks = write_jwks(tmp_path / "one.json", [keys.ec_a.public_jwk()])
    auth = await make_auth([IssuerConfig(ISS_A, (AUD,), ("ES256",), jwks_file=jwks)])
    token = keys.ec_a.sign(claims(), kid=None)
    assert await auth.authenticate(f"Bearer {token}") == Identity(ISS_A, "tenant-7")


# -- identities -----------------------------------------------------------------------------


async def test_same_subject_from_two_issuers_is_two_identities(world: World) -> None:
    """The same subject string from two issuers maps to two different identities."""
    from_a = await world.auth.authenticate(f"Bearer {world.keys.rsa1.sign(claims(sub='alice'))}")
    from_b = await world.auth.authenticate(f"Bearer {world.keys.ed_b.sign(claims(ISS_B, sub='alice'))}")
    assert from_a == Identity(ISS_A, "alice")
    assert from_b == Identity(ISS_B, "alice")
    assert from_a != from_b


async def test_subject_claim_is_configurable(keys: Keys, make_auth: Factory, tmp_path: Path) -> None:
    """An issuer may name the claim that holds the subject; without it the token is refused."""
    jwks = write_jwks(tmp_path / "k.json", [keys.ec_a.public_jwk()])
    auth = await make_auth([IssuerConfig(ISS_A, (AUD,), ("ES256",), jwks_file=jwks, subject_claim="oid")])
    token = keys.ec_a.sign(claims(oid="0b7f"))
    assert await auth.authenticate(f"Bearer {token}") == Identity(ISS_A, "0b7f")
    assert (await refused(auth, f"Bearer {keys.ec_a.sign(claims())}")).code == Code.AUTH_INVALID


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"audiences": ()}, "audiences must be", id="no-audience"),
        pytest.param({"algorithms": ()}, "algorithms must be", id="no-algorithm"),
        pytest.param({"algorithms": ("none",)}, "algorithms must be", id="alg-none"),
        pytest.param({"algorithms": ("HS512",)}, "algorithms must be", id="alg-unsupported"),
        pytest.param({"algorithms": ("RS256", "HS256")}, "HS256 must be pinned", id="hs256-no-secret"),
        pytest.param({"hs256_secret_file": Path("s")}, "HS256 must be pinned", id="secret-unpinned"),
        pytest.param({"jwks_url": "https://idp/jwks"}, "not both", id="file-and-url"),
        pytest.param({"jwks_file": None}, "need a jwks_file or jwks_url", id="no-key-source"),
        pytest.param({"jwks_file": None, "jwks_url": "ftp://idp/jwks"}, "http(s) URL", id="url-scheme"),
        pytest.param({"subject_claim": ""}, "subject_claim", id="empty-subject-claim"),
        pytest.param({"leeway_s": -1.0}, "leeway_s", id="negative-leeway"),
        pytest.param({"refresh_interval_s": 0.0}, "refresh_interval_s", id="zero-refresh"),
    ],
)
def test_bad_issuer_config(options: dict[str, Any], message: str) -> None:
    """Each inconsistent issuer configuration is refused with a message naming the problem."""
    fields: dict[str, Any] = {
        "issuer": ISS_A,
        "audiences": (AUD,),
        "algorithms": ("RS256",),
        "jwks_file": Path("jwks.json"),
        **options,
    }
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        IssuerConfig(**fields)


def test_issuer_configured_twice() -> None:
    """Two configurations for one issuer are refused."""
    config = IssuerConfig(ISS_A, (AUD,), ("RS256",), jwks_file=Path("jwks.json"))
    with pytest.raises(ValueError, match="only once"):
        Authenticator([config, config])


# -- the verified-token cache ---------------------------------------------------------------


def test_cache_entry_lives_until_exp_or_ttl() -> None:
    """An entry lives until the earlier of the token's exp and its insert time plus the TTL."""
    cache = VerifiedTokenCache(size=10, ttl_s=300)
    who = Identity(ISS_A, "a")
    cache.put("short", who, exp=NOW + 60, now=NOW)
    cache.put("long", who, exp=NOW + 3600, now=NOW)
    assert cache.get("short", NOW + 59) == who
    assert cache.get("short", NOW + 60) is None
    assert cache.get("long", NOW + 299) == who
    assert cache.get("long", NOW + 300) is None
    assert len(cache) == 0


def test_cache_is_bounded_and_drops_least_recently_used() -> None:
    """Beyond its size the cache drops the entry used longest ago."""
    cache = VerifiedTokenCache(size=2, ttl_s=300)
    who = Identity(ISS_A, "a")
    cache.put("t1", who, exp=NOW + 600, now=NOW)
    cache.put("t2", who, exp=NOW + 600, now=NOW)
    assert cache.get("t1", NOW) == who
    cache.put("t3", who, exp=NOW + 600, now=NOW)
    assert len(cache) == 2
    assert cache.get("t2", NOW) is None
    assert cache.get("t1", NOW) == who
    assert cache.get("t3", NOW) == who


async def test_verified_token_is_cached_until_exp(world: World, clock: Clock) -> None:
    """A verified token is served from the cache, but not after its exp."""
    header = f"Bearer {world.keys.rsa1.sign(claims(exp=NOW + 60))}"
    assert await world.auth.authenticate(header) == Identity(ISS_A, "tenant-7")
    assert world.auth.cached_tokens == 1
    assert await world.auth.authenticate(header) == Identity(ISS_A, "tenant-7")
    clock.advance(60 + 31)
    assert (await refused(world.auth, header)).code == Code.AUTH_INVALID
    assert world.auth.cached_tokens == 0


async def test_cache_size_zero_disables_cache(keys: Keys, make_auth: Factory, tmp_path: Path) -> None:
    """With cache_size 0 every token is verified afresh."""
    jwks = write_jwks(tmp_path / "k.json", [keys.ec_a.public_jwk()])
    auth = await make_auth([IssuerConfig(ISS_A, (AUD,), ("ES256",), jwks_file=jwks)], cache_size=0)
    assert await auth.authenticate(f"Bearer {keys.ec_a.sign(claims())}")
    assert auth.cached_tokens == 0


# -- totality -------------------------------------------------------------------------------


async def test_mutated_tokens_raise_only_auth_error(world: World) -> None:
    """Randomly mutated tokens either verify or raise AuthError, never anything else."""
    rng = random.Random(20250515)
    token = world.keys.ec_a.sign(claims())
    alphabet = "ABCxyz019-_.=+/ \x00é"
    for _ in range(300):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(chars))
            action = rng.choice(("replace", "delete", "insert"))
            if action == "replace":
                chars[position] = rng.choice(alphabet)
            elif action == "delete":
                del chars[position]
            else:
                chars.insert(position, rng.choice(alphabet))
        mutated = "".join(chars)
        try:
            await world.auth.authenticate(f"Bearer {mutated}")
        except AuthError as error:
            assert error.code in (Code.AUTH_INVALID, Code.AUTH_MISSING)
