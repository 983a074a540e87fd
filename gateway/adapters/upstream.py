"""Upstream schedulers: one aiohttp ClientSession each, route table and credential headers."""

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jwt

from gateway.adapters.tls_files import ClientTls
from gateway.config.secrets import SecretError, read_secret
from gateway.config.upstreams import HeaderSource, UpstreamSettings
from gateway.core.routes import Route
from gateway.core.tenants import Tenant
from gateway.schedulers import SchedulerAdapter


class CredentialError(Exception):
    """A configured credential could not be read; the upstream cannot be called safely."""


class UpstreamUnreadable(Exception):
    """An upstream's answer to the gateway's own GET was not a 200 with a JSON body."""


def read_static(name: str, source: HeaderSource, env: Mapping[str, str]) -> str | None:
    """Secrets from a file or the environment, read once at start (never logged), as every secret in
    gateway.yaml is read; a header value also loses surrounding white space (HTTP ignores it)."""
    if source.secret is None:
        return None
    try:
        value = read_secret(source.secret, env).strip()
    except SecretError as exc:
        raise CredentialError(f"header {name}: {exc}") from exc
    if "\n" in value or "\r" in value:  # aiohttp would refuse it on every request
        raise CredentialError(f"header {name}: the value holds a line break")
    return source.prefix + value


def read_key(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"header {name}: cannot read {path}: {exc.strerror}") from exc


class SlurmTokens:
    """Mints slurmrestd JWTs (HS256, claim `sun`) for mapped users with the cluster's key."""

    def __init__(self, key: bytes, lifespan_s: float) -> None:
        if len(key) < 16:
            raise CredentialError("the Slurm JWT key is shorter than 16 bytes")
        self._key = key
        self._lifespan = lifespan_s
        self._cache: dict[str, tuple[str, float]] = {}

    def token(self, user: str, now: float) -> str:
        """A token for `user`, reused until half its life has passed."""
        cached = self._cache.get(user)
        if cached is not None and now < cached[1]:
            return cached[0]
        issued = int(now)
        token = jwt.encode({"sun": user, "iat": issued, "exp": issued + int(self._lifespan)}, self._key, "HS256")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[user] = (token, now + self._lifespan / 2)
        return token


@dataclass
class Upstream:
    """A scheduler endpoint the gateway forwards to, with the credentials it holds for it."""

    settings: UpstreamSettings
    routes: tuple[Route, ...]
    adapter: SchedulerAdapter | None = None
    static_headers: dict[str, str] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None
    clock: Callable[[], float] = time.time
    _minters: dict[str, "SlurmTokens"] = field(default_factory=dict)
    tls: ClientTls | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    async def start(self, env: Mapping[str, str] | None = None, tls_reload_s: float | None = None) -> None:
        """Read the credentials and open the session; with `tls_reload_s`, a renewed client certificate is
        looked for that often. Raises CredentialError (and TlsFilesError for the `tls` files)."""
        env = dict(os.environ) if env is None else env
        for name, source in self.settings.headers.items():
            if source.slurm_jwt_key_file is not None:
                self._minters[name] = SlurmTokens(read_key(name, source.slurm_jwt_key_file), source.lifespan_s)
                continue
            value = read_static(name, source, env)
            if value is not None:
                self.static_headers[name] = value
        self.tls = client_tls(self.settings)
        if self.tls is not None and tls_reload_s is not None:
            self.tls.watch(tls_reload_s)
        # The connector's own default (the system trust store) unless `tls` names a CA bundle or client pair.
        ssl_context = self.tls.context if self.tls is not None else True
        self.session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.settings.connect_timeout_s, sock_read=self.settings.timeout_s
            ),
            connector=aiohttp.TCPConnector(limit=256, enable_cleanup_closed=True, ssl=ssl_context),
        )

    async def close(self) -> None:
        if self.tls is not None:
            await self.tls.stop()
        if self.session is not None:
            await self.session.close()
            self.session = None

    def missing_identity(self, tenant: Tenant) -> list[str]:
        """The `upstream_identity` fields this upstream's headers need and the tenant lacks."""
        return sorted(
            {
                source.from_tenant
                for source in self.settings.headers.values()
                if source.from_tenant is not None and not tenant.upstream_identity.get(source.from_tenant)
            }
        )

    def credential_headers(self, tenant: Tenant) -> dict[str, str]:
        """Static secrets plus per-tenant identity headers (Slurm user, namespace, ...)."""
        out = dict(self.static_headers)
        for name, source in self.settings.headers.items():
            if source.from_tenant is not None:
                value = tenant.upstream_identity.get(source.from_tenant)
                if value is None:
                    continue
                minter = self._minters.get(name)
                out[name] = source.prefix + (minter.token(value, self.clock()) if minter else value)
        return out

    def service_headers(self, user: str) -> dict[str, str]:
        """The credentials the gateway itself uses as Slurm user `user` (e.g. to read the cluster's nodes):
        static secrets, and every per-tenant identity header filled with `user` (a minted JWT for it)."""
        out = dict(self.static_headers)
        for name, source in self.settings.headers.items():
            if source.from_tenant is not None:
                minter = self._minters.get(name)
                out[name] = source.prefix + (minter.token(user, self.clock()) if minter else user)
        return out

    async def get_json(self, path: str, headers: dict[str, str]) -> object:
        """The JSON body of the gateway's own `GET path` (not a tenant's request), sent with `headers`.

        Raises UpstreamUnreadable on any status but 200 or a body that is not JSON, naming the
        path without its query; aiohttp's ClientError and TimeoutError pass through.
        """
        session = self.session
        assert session is not None
        shown = path.partition("?")[0]
        async with session.get(self.url_for(path), headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise UpstreamUnreadable(f"GET {shown} answered {response.status}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise UpstreamUnreadable(f"GET {shown}: not JSON: {exc}") from None

    def url_for(self, raw_path_and_query: str) -> str:
        """The upstream URL of a path the scheduler knows (see `local_path`)."""
        return self.settings.url + raw_path_and_query

    def local_path(self, raw_path_and_query: str) -> str:
        """A client's path as the scheduler knows it: without the upstream's prefix when `strip_prefix` is set.

        Route matching and forwarding both use it, so `/ray/api/jobs/` reaches Ray as `/api/jobs/`.
        """
        if not self.settings.strip_prefix:
            return raw_path_and_query
        prefix = self.settings.prefix.rstrip("/")
        if raw_path_and_query == prefix or raw_path_and_query.startswith((prefix + "/", prefix + "?")):
            rest = raw_path_and_query[len(prefix) :]
            return rest if rest.startswith("/") else "/" + rest
        return raw_path_and_query


def client_tls(settings: UpstreamSettings) -> ClientTls | None:
    """The TLS context an upstream's `tls:` section asks for, or None; raises TlsFilesError (`check` calls it too)."""
    tls = settings.tls
    if tls is None:
        return None
    return ClientTls(tls.ca_file, tls.client_cert_file, tls.client_key_file, label=f"upstream {settings.name}")


def pick_upstream(upstreams: list[Upstream], path: str) -> Upstream:
    """The upstream with the longest prefix that contains `path`."""
    best = upstreams[0]
    best_len = -1
    for upstream in upstreams:
        prefix = upstream.settings.prefix
        if (path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/") or prefix == "/") and len(
            prefix
        ) > best_len:
            best, best_len = upstream, len(prefix)
    return best
