"""Upstream schedulers: one aiohttp ClientSession each, route table and credential headers."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp

from gateway.config.settings import HeaderSource, UpstreamSettings
from gateway.core.routes import Route
from gateway.core.tenants import Tenant
from gateway.schedulers import SchedulerAdapter


class CredentialError(Exception):
    """A configured credential could not be read; the upstream cannot be called safely."""


def read_static(name: str, source: HeaderSource, env: Mapping[str, str]) -> str | None:
    """Secrets from a file or the environment, read once at start (never logged)."""
    if source.file is not None:
        try:
            return source.prefix + source.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialError(f"header {name}: cannot read {source.file}: {exc.strerror}") from exc
    if source.env is not None:
        value = env.get(source.env)
        if value is None:
            raise CredentialError(f"header {name}: environment variable {source.env} is not set")
        return source.prefix + value
    return None


@dataclass
class Upstream:
    """A scheduler endpoint the gateway forwards to, with the credentials it holds for it."""

    settings: UpstreamSettings
    routes: tuple[Route, ...]
    adapter: SchedulerAdapter | None = None
    static_headers: dict[str, str] = field(default_factory=dict)
    session: aiohttp.ClientSession | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    async def start(self, env: Mapping[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        for name, source in self.settings.headers.items():
            value = read_static(name, source, env)
            if value is not None:
                self.static_headers[name] = value
        self.session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.settings.connect_timeout_s, sock_read=self.settings.timeout_s
            ),
            connector=aiohttp.TCPConnector(limit=256, enable_cleanup_closed=True),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def credential_headers(self, tenant: Tenant) -> dict[str, str]:
        """Static secrets plus per-tenant identity headers (Slurm user, namespace, ...)."""
        out = dict(self.static_headers)
        for name, source in self.settings.headers.items():
            if source.from_tenant is not None:
                value = tenant.upstream_identity.get(source.from_tenant)
                if value is not None:
                    out[name] = source.prefix + value
        return out

    def url_for(self, raw_path_and_query: str) -> str:
        return self.settings.url + raw_path_and_query


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
