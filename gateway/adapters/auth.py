"""Bearer-token authentication: a JWT verified with its issuer's pinned algorithms and keys."""

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
from jwt import PyJWK, PyJWS, PyJWTError

from gateway.adapters.jwks import (
    FETCH_TIMEOUT_S,
    SUPPORTED_ALGORITHMS,
    Hs256Secret,
    Hs256SecretFile,
    JwksError,
    JwksFile,
    JwksUrl,
    KeySet,
    KeySource,
    merge,
)
from gateway.config.auth import IssuerConfig as IssuerConfig
from gateway.core.claims import MAX_TOKEN_BYTES as MAX_TOKEN_BYTES
from gateway.core.claims import (
    ClaimRefused,
    ClaimRules,
    bearer_token,
    check_claims,
    claims_object,
    header_alg,
    header_kid,
)
from gateway.core.codes import Code
from gateway.core.tenants import Identity

log = logging.getLogger(__name__)


class RefreshResult(StrEnum):
    """How one key-set refresh ended; the `result` label of exportgate_jwks_refresh_total."""

    OK = "ok"
    UNCHANGED = "unchanged"
    ERROR = "error"
    SKIPPED_COOLDOWN = "skipped_cooldown"


class AuthError(Exception):
    """A request that cannot be authenticated; `detail` is safe to show and never the token."""

    def __init__(self, code: Code, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _invalid(detail: str) -> AuthError:
    return AuthError(Code.AUTH_INVALID, detail)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class VerifiedTokenCache:
    """Identities of verified tokens by the token's SHA-256; least recently used go first."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._entries: OrderedDict[bytes, tuple[Identity, float]] = OrderedDict()

    def get(self, token: str, now: float) -> Identity | None:
        """The identity a token proved, while its entry lives."""
        key = _digest(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, token: str, identity: Identity, exp: float, now: float) -> None:
        """Remember a verified token until its exp, and for at most `ttl_s` from now."""
        expires_at = min(exp, now + self._ttl_s)
        if self._size <= 0 or expires_at <= now:
            return
        key = _digest(token)
        self._entries[key] = (identity, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True, eq=False)
class _Issuer:
    """One issuer's live state: its sources, last good key set and refetch bookkeeping."""

    config: IssuerConfig
    rules: ClaimRules
    sources: tuple[KeySource, ...] = ()
    keys: KeySet | None = None
    last_unknown_kid_fetch: float | None = None
    inflight: asyncio.Task[RefreshResult] | None = None


class Authenticator:
    """Verifies bearer JWTs from configured issuers and keeps their key sets fresh."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        clock: Callable[[], float] = time.time,
        on_refresh: Callable[[str], None] = lambda result: None,
        cache_size: int = 10_000,
        cache_ttl_s: float = 300.0,
    ) -> None:
        names = [c.issuer for c in issuers]
        if len(set(names)) != len(names):
            raise ValueError("each issuer may be configured only once")
        self._issuers = {
            c.issuer: _Issuer(c, ClaimRules(c.issuer, c.audiences, c.subject_claim, c.leeway_s)) for c in issuers
        }
        self._clock = clock
        self._on_refresh = on_refresh
        self._cache = VerifiedTokenCache(cache_size, cache_ttl_s)
        # Restricting the registry too means no code path can reach another algorithm.
        self._jws = PyJWS(algorithms=sorted(SUPPORTED_ALGORITHMS))
        self._session: aiohttp.ClientSession | None = None
        self._refreshers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open the HTTP session, load every key set once and start periodic refreshes."""
        if self._session is not None:
            raise RuntimeError("Authenticator already started")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))
        for state in self._issuers.values():
            state.sources = _sources(state.config, self._session)
        await self.reload()
        self._refreshers = [asyncio.create_task(self._refresh_periodically(state)) for state in self._issuers.values()]

    async def close(self) -> None:
        """Stop refreshing and close the HTTP session; later refetches report "error"."""
        for state in self._issuers.values():
            state.sources = ()
        tasks: list[asyncio.Task[Any]] = [*self._refreshers]
        tasks += [s.inflight for s in self._issuers.values() if s.inflight is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refreshers = []
        if self._session is not None:
            await self._session.close()

    @property
    def ready(self) -> bool:
        """Whether every issuer has a usable key set."""
        return all(state.keys is not None for state in self._issuers.values())

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens the cache holds."""
        return len(self._cache)

    async def reload(self) -> None:
        """Refetch every key set now; failures keep the last good set."""
        await asyncio.gather(*(asyncio.shield(self._shared_refresh(s)) for s in self._issuers.values()))

    async def authenticate(self, authorization: str | None) -> Identity:
        """The identity a request's Authorization header proves; raises AuthError."""
        try:
            return await self._authenticate(authorization)
        except ClaimRefused as refused:
            raise _invalid(refused.detail) from None

    async def _authenticate(self, authorization: str | None) -> Identity:
        token = bearer_token(authorization)
        if token is None:
            raise AuthError(Code.AUTH_MISSING, "send 'Authorization: Bearer <token>'")
        cached = self._cache.get(token, self._clock())
        if cached is not None:
            return cached
        header, unverified = self._unverified(token)
        state = self._issuer_for(unverified)
        alg = header_alg(header, state.config.algorithms)
        kid = header_kid(header)
        if state.keys is None or (kid is not None and not state.keys.has_kid(kid)):
            await self._refetch_for_unknown_kid(state)
        if state.keys is None:
            raise _invalid("the token issuer's keys are unavailable")
        candidates = state.keys.candidates(kid, alg)
        if not candidates:
            raise _invalid(_no_key_reason(state.keys, kid))
        claims = self._verified_claims(token, candidates, state.config.algorithms)
        # No await between verifying and caching: a key-set flush cannot fall in between.
        now = self._clock()
        verified = check_claims(claims, state.rules, now)
        self._cache.put(token, verified.identity, verified.exp, now)
        return verified.identity

    def _unverified(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims, for routing only: nothing here is trusted yet."""
        try:
            decoded = self._jws.decode_complete(token, options={"verify_signature": False})
        except PyJWTError:
            raise _invalid("malformed token") from None
        header: dict[str, Any] = decoded["header"]
        return header, claims_object(decoded["payload"])

    def _issuer_for(self, unverified: Mapping[str, Any]) -> _Issuer:
        iss = unverified.get("iss")
        state = self._issuers.get(iss) if isinstance(iss, str) else None
        if state is None:
            raise _invalid("token issuer is not accepted")
        return state

    def _verified_claims(self, token: str, keys: Sequence[PyJWK], algorithms: Sequence[str]) -> dict[str, Any]:
        for key in keys:
            try:
                decoded = self._jws.decode_complete(
                    token,
                    key=key,
                    algorithms=list(algorithms),
                    options={"verify_signature": True, "enforce_minimum_key_length": True},
                )
            except (PyJWTError, ValueError, TypeError):
                continue
            return claims_object(decoded["payload"])
        raise _invalid("token signature is not valid")

    async def _refetch_for_unknown_kid(self, state: _Issuer) -> None:
        """Refetch once for an unknown kid: join a fetch under way, else respect the cooldown."""
        if state.inflight is None:
            now = self._clock()
            last = state.last_unknown_kid_fetch
            if last is not None and now - last < state.config.refetch_cooldown_s:
                self._on_refresh(RefreshResult.SKIPPED_COOLDOWN)
                return
            state.last_unknown_kid_fetch = now
        await asyncio.shield(self._shared_refresh(state))

    def _shared_refresh(self, state: _Issuer) -> asyncio.Task[RefreshResult]:
        """The issuer's refresh under way, started if there is none (single flight)."""
        if state.inflight is None:
            state.inflight = asyncio.create_task(self._refresh(state))
        return state.inflight

    async def _refresh(self, state: _Issuer) -> RefreshResult:
        try:
            result = await self._load(state)
        finally:
            state.inflight = None
        self._on_refresh(result)
        return result

    async def _load(self, state: _Issuer) -> RefreshResult:
        if not state.sources:
            log.warning("issuer %s: key set not loaded: authenticator not running", state.config.issuer)
            return RefreshResult.ERROR
        try:
            new = merge([await source.load() for source in state.sources])
        except JwksError as error:
            log.warning(
                "issuer %s: key set refresh failed, keeping the last good set: %s",
                state.config.issuer,
                error,
            )
            return RefreshResult.ERROR
        if state.keys is not None and state.keys.digest == new.digest:
            return RefreshResult.UNCHANGED
        state.keys = new
        # Tokens verified by a key that has since gone must not outlive the old set.
        self._cache.clear()
        log.info("issuer %s: key set loaded, %d keys", state.config.issuer, len(new.keys))
        return RefreshResult.OK

    async def _refresh_periodically(self, state: _Issuer) -> None:
        while True:
            await asyncio.sleep(state.config.refresh_interval_s)
            await asyncio.shield(self._shared_refresh(state))


def _sources(config: IssuerConfig, session: aiohttp.ClientSession) -> tuple[KeySource, ...]:
    sources: list[KeySource] = []
    if config.jwks_file is not None:
        sources.append(JwksFile(config.jwks_file))
    if config.jwks_url is not None:
        sources.append(JwksUrl(config.jwks_url, session))
    if config.hs256_secret_file is not None:
        sources.append(Hs256SecretFile(config.hs256_secret_file))
    if config.hs256_secret is not None:
        sources.append(Hs256Secret(f"environment variable {config.hs256_secret_env}", config.hs256_secret))
    return tuple(sources)


def _no_key_reason(keys: KeySet, kid: str | None) -> str:
    if kid is None and len(keys.keys) > 1:
        return "token has no kid and its issuer has several keys"
    if kid is not None and not keys.has_kid(kid):
        return "token kid is not one of its issuer's keys"
    return "the issuer's key for this token does not accept its alg"
