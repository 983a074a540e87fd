"""Authenticator test kit: keys generated at test time, tokens signed or assembled by hand, started Authenticators."""

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.adapters.auth import Authenticator, AuthError, IssuerConfig

NOW = 1_750_000_000.0
ISS_A = "https://idp-a.example"
ISS_B = "https://idp-b.example"
ISS_C = "https://idp-c.example"
AUD = "exportgate"
HS_SECRET = b"s" * 48
DROP = object()

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class SigningKey:
    """A private key generated for the test, its kid and the algorithm it signs with."""

    kid: str
    alg: str
    private: PrivateKey

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        return {
            **algorithm.to_jwk(self.private.public_key(), as_dict=True),
            "kid": self.kid,
            **extra,
        }

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(
        self,
        payload: dict[str, Any],
        *,
        alg: str | None = None,
        kid: str | None = "",
        extra_headers: dict[str, Any] | None = None,
    ) -> str:
        """A token signed by this key; kid defaults to the key's own, None leaves it out."""
        headers = {**(extra_headers or {}), "kid": self.kid if kid == "" else kid}
        if headers["kid"] is None:
            del headers["kid"]
        # jws.encode, not jwt.encode: the table needs claims jwt.encode would refuse to sign.
        body = json.dumps(payload).encode()
        return jwt.api_jws.encode(body, self.private, algorithm=alg or self.alg, headers=headers)


def rsa_key(kid: str, bits: int = 2048) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=bits))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def ed_key(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def claims(iss: object = ISS_A, **overrides: object) -> dict[str, Any]:
    """Valid claims for `iss` at NOW; an override of DROP removes the claim."""
    base: dict[str, Any] = {"iss": iss, "aud": AUD, "sub": "tenant-7", "iat": NOW, "exp": NOW + 600}
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not DROP}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: object, payload: object, signature: bytes = b"") -> str:
    """A token assembled by hand, for shapes no JWT library would produce."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return f"{b64(h)}.{b64(p)}.{b64(signature)}"


def hmac_signed(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token signed with any bytes as the secret, PEM included."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def write_jwks(path: Path, jwks: Sequence[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"keys": list(jwks)}))
    return path


@dataclass
class Factory:
    """Builds started Authenticators that the fixture closes afterwards."""

    clock: Clock
    made: list[Authenticator] = field(default_factory=list)

    async def __call__(self, issuers: Sequence[IssuerConfig], **options: Any) -> Authenticator:
        auth = Authenticator(issuers, clock=self.clock, **options)
        self.made.append(auth)
        await auth.start()
        return auth


async def refused(auth: Authenticator, authorization: str | None) -> AuthError:
    with pytest.raises(AuthError) as caught:
        await auth.authenticate(authorization)
    return caught.value
