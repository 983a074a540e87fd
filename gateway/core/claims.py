"""Pure checks of a bearer JWT's shape, header and claims, each claim in its own small function."""

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.tenants import Identity

MAX_TOKEN_BYTES = 8 * 1024
_SPACE = re.compile(r"\s")  # what str.isspace() calls space, found in C rather than per character


# Not a ValueError: the adapter catches ValueError from pyjwt while trying keys, and a
# refused claim must never be mistaken for "try the next key".
class ClaimRefused(Exception):
    """A token refused for one reason; `detail` is safe to show and never the token."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What one issuer's verified claims must satisfy."""

    issuer: str
    audiences: tuple[str, ...]
    subject_claim: str = "sub"
    leeway_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Verified:
    """The identity verified claims prove, and the time (exp) after which they prove nothing."""

    identity: Identity
    exp: float


def bearer_token(authorization: str | None) -> str | None:
    """The token of a `Bearer` Authorization header (scheme case-insensitive); None when there is no header."""
    if authorization is None or not authorization.strip():
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ClaimRefused("Authorization must use the Bearer scheme with a token")
    check_token_shape(token)
    return token


def check_token_shape(token: str) -> None:
    """Refuse a token too long to parse, or one that cannot be a compact JWT, before parsing it."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ClaimRefused(f"token longer than {MAX_TOKEN_BYTES} bytes")
    # A compact JWT is base64url and dots only; anything else is refused before parsing.
    if not token.isascii() or _SPACE.search(token):
        raise ClaimRefused("malformed token")


def claims_object(payload: object) -> dict[str, Any]:
    """A token's payload as its claims set, which must be a JSON object."""
    if not isinstance(payload, bytes):
        raise ClaimRefused("malformed token")
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        raise ClaimRefused("malformed token claims") from None
    if not isinstance(claims, dict):
        raise ClaimRefused("malformed token claims")
    return claims


def header_alg(header: Mapping[str, Any], algorithms: Sequence[str]) -> str:
    """The token's alg, only if its issuer pins it; the token never picks another."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise ClaimRefused("token algorithm is not allowed for its issuer")
    return alg


def header_kid(header: Mapping[str, Any]) -> str | None:
    """The token's key id, if it names one."""
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ClaimRefused("malformed token kid")
    return kid


def check_claims(claims: Mapping[str, Any], rules: ClaimRules, now: float) -> Verified:
    """The identity and expiry of verified claims, or ClaimRefused for the first claim that fails."""
    check_iss(claims, rules.issuer)
    check_aud(claims, rules.audiences)
    exp = check_exp(claims, now, rules.leeway_s)
    check_nbf(claims, now, rules.leeway_s)
    check_iat(claims, now, rules.leeway_s)
    return Verified(Identity(rules.issuer, subject(claims, rules.subject_claim)), exp)


def check_iss(claims: Mapping[str, Any], issuer: str) -> None:
    """The iss claim is exactly the issuer whose key verified the token."""
    if claims.get("iss") != issuer:
        raise ClaimRefused("token issuer is not accepted")


def check_aud(claims: Mapping[str, Any], audiences: Sequence[str]) -> None:
    """The aud claim, a string or a list of strings, names at least one accepted audience."""
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ClaimRefused("token has no valid aud claim")
    if not any(v in audiences for v in values):
        raise ClaimRefused("token audience is not accepted")


def numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim as a finite number, None when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ClaimRefused(f"token {name} claim is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise ClaimRefused(f"token {name} claim is out of range") from None
    if not math.isfinite(number):
        raise ClaimRefused(f"token {name} claim is out of range")
    return number


def check_exp(claims: Mapping[str, Any], now: float, leeway_s: float) -> float:
    """The exp claim is present and not more than the leeway in the past."""
    exp = numeric_date(claims, "exp")
    if exp is None:
        raise ClaimRefused("token has no exp claim")
    if exp <= now - leeway_s:
        raise ClaimRefused("token has expired")
    return exp


def check_nbf(claims: Mapping[str, Any], now: float, leeway_s: float) -> None:
    """The nbf claim, if present, is not more than the leeway in the future."""
    nbf = numeric_date(claims, "nbf")
    if nbf is not None and nbf > now + leeway_s:
        raise ClaimRefused("token is not yet valid")


def check_iat(claims: Mapping[str, Any], now: float, leeway_s: float) -> None:
    """The iat claim, if present, is not more than the leeway in the future."""
    iat = numeric_date(claims, "iat")
    if iat is not None and iat > now + leeway_s:
        raise ClaimRefused("token was issued in the future")


def subject(claims: Mapping[str, Any], claim: str) -> str:
    """The subject claim (configurable name) as a non-empty string."""
    value = claims.get(claim)
    if not isinstance(value, str) or not value:
        raise ClaimRefused(f"token has no valid {claim} claim")
    return value
