"""The pure token checks: which claims, headers and token shapes pass, which are refused, and why."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.core.claims import (
    MAX_TOKEN_BYTES,
    ClaimRefused,
    ClaimRules,
    Verified,
    bearer_token,
    check_aud,
    check_claims,
    check_exp,
    check_iat,
    check_iss,
    check_nbf,
    claims_object,
    header_alg,
    header_kid,
    numeric_date,
    subject,
)
from gateway.core.tenants import Identity

NOW = 1_750_000_000.0
LEEWAY = 30.0
ISS = "https://idp-a.example"
AUD = "exportgate"
RULES = ClaimRules(ISS, (AUD, "exportgate-admin"), "sub", LEEWAY)
DROP = object()


@dataclass(frozen=True)
class Refused:
    """The expected outcome of a check that refuses, with its detail."""

    detail: str


EXPIRED = Refused("token has expired")
NO_EXP = Refused("token has no exp claim")
EXP_NOT_NUMBER = Refused("token exp claim is not a number")
EXP_OUT_OF_RANGE = Refused("token exp claim is out of range")
NOT_YET_VALID = Refused("token is not yet valid")
ISSUED_IN_FUTURE = Refused("token was issued in the future")
WRONG_ISS = Refused("token issuer is not accepted")
WRONG_AUD = Refused("token audience is not accepted")
NO_AUD = Refused("token has no valid aud claim")
NO_SUB = Refused("token has no valid sub claim")
NOT_BEARER = Refused("Authorization must use the Bearer scheme with a token")
BAD_ALG = Refused("token algorithm is not allowed for its issuer")
MALFORMED = Refused("malformed token")
MALFORMED_CLAIMS = Refused("malformed token claims")
TOO_LONG = Refused(f"token longer than {MAX_TOKEN_BYTES} bytes")


def outcome(check: Callable[[], object]) -> object:
    """What a check returns, or Refused(detail) when it refuses."""
    try:
        return check()
    except ClaimRefused as refused:
        return Refused(refused.detail)


def claims(**overrides: object) -> dict[str, Any]:
    """Valid claims at NOW; an override of DROP removes the claim."""
    base: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "tenant-7", "iat": NOW, "exp": NOW + 600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not DROP}


def accepted(exp: float = NOW + 600, sub: str = "tenant-7") -> Verified:
    """What valid claims prove: the subject at ISS, until exp."""
    return Verified(Identity(ISS, sub), exp)


CLAIMS = [
    pytest.param(claims(), RULES, accepted(), id="valid"),
    # exp: the token is dead once exp is the leeway or more in the past.
    pytest.param(claims(exp=NOW - 3600), RULES, EXPIRED, id="expired"),
    pytest.param(claims(exp=NOW - LEEWAY), RULES, EXPIRED, id="exp-exactly-at-leeway-edge"),
    pytest.param(claims(exp=NOW - LEEWAY + 0.5), RULES, accepted(NOW - LEEWAY + 0.5), id="exp-just-inside-leeway"),
    pytest.param(claims(exp=NOW), RULES, accepted(NOW), id="exp-now-within-leeway"),
    pytest.param(claims(exp=NOW), ClaimRules(ISS, (AUD,), leeway_s=0), EXPIRED, id="exp-now-no-leeway"),
    pytest.param(claims(exp=DROP), RULES, NO_EXP, id="missing-exp"),
    pytest.param(claims(exp=None), RULES, NO_EXP, id="null-exp"),
    pytest.param(claims(exp=str(NOW + 600)), RULES, EXP_NOT_NUMBER, id="string-exp"),
    pytest.param(claims(exp=True), RULES, EXP_NOT_NUMBER, id="boolean-exp"),
    pytest.param(claims(exp=[NOW + 600]), RULES, EXP_NOT_NUMBER, id="list-exp"),
    pytest.param(claims(exp=float("nan")), RULES, EXP_OUT_OF_RANGE, id="nan-exp-never-expires"),
    pytest.param(claims(exp=float("inf")), RULES, EXP_OUT_OF_RANGE, id="infinite-exp"),
    pytest.param(claims(exp=10**400), RULES, EXP_OUT_OF_RANGE, id="huge-int-exp-overflows"),
    pytest.param(claims(exp=2_000_000_000), RULES, accepted(2_000_000_000.0), id="integer-exp"),
    # nbf: not usable before nbf, give or take the leeway.
    pytest.param(claims(nbf=NOW + 3600), RULES, NOT_YET_VALID, id="not-yet-valid"),
    pytest.param(claims(nbf=NOW + LEEWAY), RULES, accepted(), id="nbf-exactly-at-leeway-edge"),
    pytest.param(claims(nbf=NOW + LEEWAY + 0.5), RULES, NOT_YET_VALID, id="nbf-just-past-leeway"),
    pytest.param(claims(nbf="soon"), RULES, Refused("token nbf claim is not a number"), id="string-nbf"),
    # iat: a token issued in the future comes from a skewed or forged issuer.
    pytest.param(claims(iat=NOW + 3600), RULES, ISSUED_IN_FUTURE, id="iat-in-the-future"),
    pytest.param(claims(iat=NOW + LEEWAY), RULES, accepted(), id="iat-exactly-at-leeway-edge"),
    pytest.param(claims(iat=NOW + LEEWAY + 0.5), RULES, ISSUED_IN_FUTURE, id="iat-just-past-leeway"),
    pytest.param(claims(iat=DROP), RULES, accepted(), id="iat-optional"),
    pytest.param(claims(iat=False), RULES, Refused("token iat claim is not a number"), id="boolean-iat"),
    # iss: exactly the issuer whose key verified the token.
    pytest.param(claims(iss="https://idp-b.example"), RULES, WRONG_ISS, id="wrong-iss"),
    pytest.param(claims(iss=DROP), RULES, WRONG_ISS, id="missing-iss"),
    pytest.param(claims(iss=[ISS]), RULES, WRONG_ISS, id="list-iss"),
    # aud: a string or a list of strings naming at least one accepted audience.
    pytest.param(claims(aud="other-service"), RULES, WRONG_AUD, id="wrong-aud"),
    pytest.param(claims(aud=DROP), RULES, NO_AUD, id="missing-aud"),
    pytest.param(claims(aud=None), RULES, NO_AUD, id="null-aud"),
    pytest.param(claims(aud=["other", AUD]), RULES, accepted(), id="list-aud-containing-accepted"),
    pytest.param(claims(aud=["other", "another"]), RULES, WRONG_AUD, id="list-aud-without"),
    pytest.param(claims(aud=[]), RULES, WRONG_AUD, id="empty-list-aud"),
    pytest.param(claims(aud=[AUD, 7]), RULES, NO_AUD, id="list-aud-with-non-string"),
    pytest.param(claims(aud={"aud": AUD}), RULES, NO_AUD, id="object-aud"),
    pytest.param(claims(aud="exportgate-admin"), RULES, accepted(), id="second-configured-aud"),
    # subject: a non-empty string under the configured claim name.
    pytest.param(claims(sub=DROP), RULES, NO_SUB, id="missing-sub"),
    pytest.param(claims(sub=""), RULES, NO_SUB, id="empty-sub"),
    pytest.param(claims(sub=7), RULES, NO_SUB, id="integer-sub"),
    pytest.param(claims(sub=["tenant-7"]), RULES, NO_SUB, id="list-sub"),
    pytest.param(
        claims(email="ops@tenant.example"),
        ClaimRules(ISS, (AUD,), "email", LEEWAY),
        accepted(sub="ops@tenant.example"),
        id="configured-subject-claim",
    ),
    pytest.param(
        claims(),
        ClaimRules(ISS, (AUD,), "email", LEEWAY),
        Refused("token has no valid email claim"),
        id="missing-configured",
    ),
    # Order: the first failing claim names the refusal.
    pytest.param(claims(iss="x", aud="y", exp=0), RULES, WRONG_ISS, id="iss-checked-first"),
    pytest.param(claims(aud="y", exp=0), RULES, WRONG_AUD, id="aud-before-exp"),
]


@pytest.mark.parametrize(("given", "rules", "expected"), CLAIMS)
def test_check_claims(given: dict[str, Any], rules: ClaimRules, expected: Verified | Refused) -> None:
    """Verified claims prove an identity until exp, or are refused with the detail for their first bad claim."""
    assert outcome(lambda: check_claims(given, rules, NOW)) == expected


Check = Callable[[dict[str, Any]], object]

SINGLE = [
    pytest.param(lambda c: check_iss(c, ISS), claims(iss="x"), WRONG_ISS, id="iss"),
    pytest.param(lambda c: check_aud(c, (AUD,)), claims(aud=["x"]), WRONG_AUD, id="aud"),
    pytest.param(lambda c: check_exp(c, NOW, 0), claims(exp=NOW), EXPIRED, id="exp"),
    pytest.param(lambda c: check_nbf(c, NOW, 0), claims(nbf=NOW + 1), NOT_YET_VALID, id="nbf"),
    pytest.param(lambda c: check_iat(c, NOW, 0), claims(iat=NOW + 1), ISSUED_IN_FUTURE, id="iat"),
    pytest.param(lambda c: numeric_date(c, "exp"), claims(exp="1"), EXP_NOT_NUMBER, id="date"),
    pytest.param(lambda c: subject(c, "sub"), claims(sub=""), NO_SUB, id="subject"),
]


@pytest.mark.parametrize(("check", "given", "expected"), SINGLE)
def test_each_claim_check_stands_alone(check: Check, given: dict[str, Any], expected: Refused) -> None:
    """Each claim's own function refuses a bad value of its claim without help from the others."""
    assert outcome(lambda: check(given)) == expected


BEARER = [
    pytest.param(None, None, id="no-header"),
    pytest.param("", None, id="empty-header"),
    pytest.param("   ", None, id="blank-header"),
    pytest.param("Bearer a.b.c", "a.b.c", id="bearer"),
    pytest.param("bEaReR   a.b.c  ", "a.b.c", id="scheme-any-case-and-padding"),
    pytest.param("Basic dXNlcjpwdw==", NOT_BEARER, id="basic-scheme"),
    pytest.param("Bearer", NOT_BEARER, id="no-token"),
    pytest.param("a.b.c", NOT_BEARER, id="no-scheme"),
    pytest.param("Bearer a.b c", MALFORMED, id="inner-space"),
    pytest.param("Bearer a.b\u00e9.c", MALFORMED, id="non-ascii"),
    pytest.param("Bearer " + "a" * MAX_TOKEN_BYTES, "a" * MAX_TOKEN_BYTES, id="exactly-max-size"),
    pytest.param("Bearer " + "a" * (MAX_TOKEN_BYTES + 1), TOO_LONG, id="oversized-token"),
]


@pytest.mark.parametrize(("authorization", "expected"), BEARER)
def test_bearer_token(authorization: str | None, expected: str | Refused | None) -> None:
    """An Authorization header yields its Bearer token, None when absent, or a refusal for its shape."""
    assert outcome(lambda: bearer_token(authorization)) == expected


HEADERS = [
    pytest.param({"alg": "RS256"}, "RS256", id="pinned-alg"),
    pytest.param({"alg": "none"}, BAD_ALG, id="alg-none"),
    pytest.param({"alg": "HS256"}, BAD_ALG, id="alg-confusion-hs256"),
    pytest.param({}, BAD_ALG, id="missing-alg"),
    pytest.param({"alg": ["RS256"]}, BAD_ALG, id="list-alg"),
    pytest.param({"alg": "rs256"}, BAD_ALG, id="alg-case-differs"),
]


@pytest.mark.parametrize(("header", "expected"), HEADERS)
def test_header_alg(header: dict[str, Any], expected: str | Refused) -> None:
    """Only an algorithm the issuer pins is taken from the header; the token never picks another."""
    assert outcome(lambda: header_alg(header, ("RS256", "ES256"))) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param({}, None, id="no-kid"),
        pytest.param({"kid": "k1"}, "k1", id="kid"),
        pytest.param({"kid": 1}, Refused("malformed token kid"), id="integer-kid"),
        pytest.param({"kid": ["k1"]}, Refused("malformed token kid"), id="list-kid"),
    ],
)
def test_header_kid(header: dict[str, Any], expected: str | Refused | None) -> None:
    """A kid is a string when present; any other type is a malformed token."""
    assert outcome(lambda: header_kid(header)) == expected


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(b'{"sub": "t"}', {"sub": "t"}, id="object"),
        pytest.param('{"sub": "t"}', MALFORMED, id="not-bytes"),
        pytest.param(b"[1, 2]", MALFORMED_CLAIMS, id="json-array"),
        pytest.param(b'"sub"', MALFORMED_CLAIMS, id="json-string"),
        pytest.param(b"not json", MALFORMED_CLAIMS, id="not-json"),
        pytest.param(b"\xff\xfe\x00", MALFORMED_CLAIMS, id="not-utf8"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, MALFORMED_CLAIMS, id="nesting-bomb"),
    ],
)
def test_claims_object(payload: object, expected: dict[str, Any] | Refused) -> None:
    """A payload is a claims set only if it is bytes holding one JSON object."""
    assert outcome(lambda: claims_object(payload)) == expected
