"""Key-set sources: an issuer's verification keys loaded from a JWKS file, URL or secret file."""

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from jwt import PyJWK, PyJWTError
from yarl import URL

from gateway.config.auth import SUPPORTED_ALGORITHMS as SUPPORTED_ALGORITHMS

log = logging.getLogger(__name__)


FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 256 * 1024
MAX_KEYS = 64
MAX_SECRET_BYTES = 4096
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output.
MIN_HS256_SECRET_BYTES = 32

# Members that must be strings when present; checked first so that pyjwt only ever sees
# well-typed input and fails, if at all, with its own errors.
_STRING_MEMBERS = ("kty", "kid", "alg", "use", "crv", "n", "e", "x", "y")
# Private-key members: a published key set must never carry them.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")


class JwksError(Exception):
    """A key set could not be loaded; the message names the source, never key material."""


@dataclass(frozen=True, slots=True)
class Key:
    """One verification key, bound once for each algorithm it may verify."""

    kid: str | None
    by_alg: Mapping[str, PyJWK]


@dataclass(frozen=True, slots=True)
class KeySet:
    """An issuer's usable keys; two sets with the same digest hold the same key material."""

    keys: tuple[Key, ...]
    digest: str

    def has_kid(self, kid: str) -> bool:
        """Whether any key carries this key id."""
        return any(key.kid == kid for key in self.keys)

    def candidates(self, kid: str | None, alg: str) -> list[PyJWK]:
        """Keys that may verify a token with this kid and alg; no kid needs a single-key set."""
        keys: tuple[Key, ...]
        if kid is None:
            keys = self.keys if len(self.keys) == 1 else ()
        else:
            keys = tuple(key for key in self.keys if key.kid == kid)
        return [key.by_alg[alg] for key in keys if alg in key.by_alg]


def merge(sets: Sequence[KeySet]) -> KeySet:
    """One issuer's sources joined into a single set."""
    digest = hashlib.sha256("".join(s.digest for s in sets).encode()).hexdigest()
    return KeySet(tuple(key for s in sets for key in s.keys), digest)


class KeySource(Protocol):
    """Where one issuer's keys come from."""

    @property
    def name(self) -> str:
        """The source as it may appear in logs: a path or a URL without credentials."""
        ...

    async def load(self) -> KeySet:
        """The current key set; raises JwksError when it cannot be had."""
        ...


def _compatible_algorithms(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    """The pinnable algorithms this public key may verify, from its kty, crv and alg."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        by_type: tuple[str, ...] = ("RS256", "PS256")
    elif kty == "EC" and crv == "P-256":
        by_type = ("ES256",)
    elif kty == "OKP" and crv == "Ed25519":
        by_type = ("EdDSA",)
    else:
        by_type = ()
    alg = jwk.get("alg")
    if alg is None:
        return by_type
    return (alg,) if alg in by_type else ()


def _parse_key(raw: object) -> tuple[Key, dict[str, Any]] | str:
    """A key and its JSON form, or the reason it was skipped."""
    if not isinstance(raw, dict):
        return "not an object"
    if raw.get("kty") == "oct":
        return "symmetric keys are never taken from a key set"
    if any(m in raw and not isinstance(raw[m], str) for m in _STRING_MEMBERS):
        return "a member has the wrong type"
    if any(m in raw for m in _PRIVATE_MEMBERS):
        return "private key material in a public key set"
    if raw.get("use", "sig") != "sig":
        return "not a signing key"
    ops = raw.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return "key_ops does not allow verify"
    algorithms = _compatible_algorithms(raw)
    if not algorithms:
        return "unsupported kty, crv or alg"
    by_alg: dict[str, PyJWK] = {}
    for alg in algorithms:
        try:
            jwk = PyJWK(raw, algorithm=alg)
        except (PyJWTError, ValueError, TypeError, KeyError):
            return "malformed key"
        if jwk.Algorithm.check_key_length(jwk.key) is not None:
            return "key too short"
        by_alg[alg] = jwk
    return Key(raw.get("kid"), by_alg), raw


def parse_jwks(data: bytes, source: str) -> KeySet:
    """A JWKS document's usable keys; raises JwksError if it has none."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise JwksError(f"{source}: not JSON") from error
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError(f'{source}: expected an object with a "keys" list')
    members: list[object] = document["keys"]
    if len(members) > MAX_KEYS:
        raise JwksError(f"{source}: more than {MAX_KEYS} keys")
    keys: list[Key] = []
    accepted: list[dict[str, Any]] = []
    for index, raw in enumerate(members):
        parsed = _parse_key(raw)
        if isinstance(parsed, str):
            log.warning("%s: keys[%d] skipped: %s", source, index, parsed)
            continue
        keys.append(parsed[0])
        accepted.append(parsed[1])
    if not keys:
        raise JwksError(f"{source}: no usable keys")
    canonical = json.dumps(accepted, sort_keys=True, separators=(",", ":"))
    return KeySet(tuple(keys), hashlib.sha256(canonical.encode()).hexdigest())


def _read_limited(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a file; raises JwksError if it is longer."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise JwksError(f"{path}: {error.strerror or type(error).__name__}") from error
    if len(data) > limit:
        raise JwksError(f"{path}: larger than {limit} bytes")
    return data


def read_jwks_file(path: Path) -> KeySet:
    """A JWKS file's usable keys, read now; raises JwksError. `exportgate check` and the gateway share it."""
    return parse_jwks(_read_limited(path, MAX_JWKS_BYTES), str(path))


def read_hs256_secret(path: Path) -> KeySet:
    """A shared HS256 secret file as a key set, read now; raises JwksError (too short, unreadable)."""
    data = _read_limited(path, MAX_SECRET_BYTES)
    return hs256_key_set(data.removesuffix(b"\n").removesuffix(b"\r"), str(path))


def hs256_key_set(secret: bytes, name: str) -> KeySet:
    """A shared HS256 secret as a key set; raises JwksError when it is too short (`name` says where it came from)."""
    if len(secret) < MIN_HS256_SECRET_BYTES:
        raise JwksError(f"{name}: HS256 secret shorter than {MIN_HS256_SECRET_BYTES} bytes")
    k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    jwk = PyJWK({"kty": "oct", "k": k}, algorithm="HS256")
    digest = hashlib.sha256(b"hs256-secret:" + secret).hexdigest()
    return KeySet((Key(None, {"HS256": jwk}),), digest)


class JwksFile:
    """A JWKS document on disk (a mounted ConfigMap, say)."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def name(self) -> str:
        return str(self._path)

    async def load(self) -> KeySet:
        return await asyncio.to_thread(read_jwks_file, self._path)


class JwksUrl:
    """A JWKS document served over HTTP(S), fetched with a bounded time and body size."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        timeout_s: float = FETCH_TIMEOUT_S,
        max_bytes: int = MAX_JWKS_BYTES,
    ) -> None:
        self._url = url
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._name = str(URL(url).with_user(None).with_query(None).with_fragment(None))

    @property
    def name(self) -> str:
        return self._name

    async def load(self) -> KeySet:
        try:
            body = await self._fetch()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise JwksError(f"{self._name}: {type(error).__name__}") from error
        return parse_jwks(body, self._name)

    async def _fetch(self) -> bytes:
        # Redirects are not followed: a key set that moves is a configuration change.
        async with self._session.get(
            self._url,
            timeout=self._timeout,
            allow_redirects=False,
            headers={"Accept": "application/jwk-set+json, application/json"},
        ) as response:
            if response.status != 200:
                raise JwksError(f"{self._name}: HTTP {response.status}")
            length = response.content_length
            if length is not None and length > self._max_bytes:
                raise JwksError(f"{self._name}: larger than {self._max_bytes} bytes")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self._max_bytes:
                    raise JwksError(f"{self._name}: larger than {self._max_bytes} bytes")
            return bytes(body)


class Hs256SecretFile:
    """A shared HS256 secret in a file; one trailing newline is not part of it."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @property
    def name(self) -> str:
        return str(self._path)

    async def load(self) -> KeySet:
        return await asyncio.to_thread(read_hs256_secret, self._path)


class Hs256Secret:
    """A shared HS256 secret read when the configuration loaded (`hs256_secret: {env: NAME}`)."""

    def __init__(self, name: str, secret: bytes) -> None:
        self._name = name
        self._secret = secret

    @property
    def name(self) -> str:
        return self._name

    async def load(self) -> KeySet:
        return hs256_key_set(self._secret, self._name)
