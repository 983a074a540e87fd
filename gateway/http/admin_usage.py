"""Who holds what, on the admin API: tenants, one tenant, countries and leases, read from the live store.

Each call reads the store's holdings once (`QuotaStore.holdings`) and lays them out with
gateway.core.usage against the pack and registry serving now; a tenant's recent decisions come
from the ledger's tail (adapters/decision_tail.py). Query parameters are checked before anything
is read: an unknown or repeated parameter, or a value outside its form, is 400 `request_malformed`.
"""

import asyncio
import functools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.adapters.decision_tail import recent_decisions
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.config.admin import AdminToken
from gateway.core.codes import Code
from gateway.core.usage import (
    LEASE_STATES,
    QUERY_TEXT,
    Holdings,
    countries_report,
    leases_report,
    tenant_report,
    tenants_report,
)
from gateway.http.problems import refusal

DEFAULT_LEASES = 1000
MAX_LEASES = 10_000
RECENT = 20  # a tenant's recent decisions shown


class BadQuery(ValueError):
    pass


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LEASES:
        raise BadQuery(f"limit: a whole number from 1 to {MAX_LEASES}")
    return int(text)


def _id(name: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not QUERY_TEXT.match(text):
            raise BadQuery(f"{name}: 1 to 128 of A-Z a-z 0-9 . _ : @ / # + -")
        return text

    return check


def _state(text: str) -> str:
    if text not in LEASE_STATES:
        raise BadQuery(f"state: one of {', '.join(LEASE_STATES)}")
    return text


LEASE_QUERY: Mapping[str, Callable[[str], Any]] = {
    "tenant": _id("tenant"),
    "upstream": _id("upstream"),
    "state": _state,
    "limit": _limit,
}


def read_query(request: web.Request, allowed: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The query's parameters, each checked once; raises BadQuery naming the first problem."""
    out: dict[str, Any] = {}
    for name in request.query:
        if name not in allowed:
            raise BadQuery(f"{name[:64]!r}: unknown query parameter; known: {', '.join(sorted(allowed)) or 'none'}")
        values = request.query.getall(name)
        if len(values) > 1:
            raise BadQuery(f"{name}: given more than once")
        out[name] = allowed[name](values[0])
    return out


def _malformed(exc: BadQuery) -> web.Response:
    return refusal(Code.REQUEST_MALFORMED, str(exc), "admin")


class UsageApi:
    """The usage routes; every answer names the instant it was read at."""

    def __init__(
        self, store: QuotaStore, policy: PolicyFiles | None, ledger_dir: Path | None, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.policy = policy
        self.ledger_dir = ledger_dir
        self.clock = clock

    async def _holdings(self) -> Holdings | web.Response:
        """The store's holdings, indexed off the event loop (the proxy shares it: 10,000 leases take ~70 ms)."""
        try:
            state = await self.store.holdings(self.clock())
        except BackendUnavailable as exc:
            return refusal(Code.BACKEND_UNAVAILABLE, str(exc), "admin")
        return await asyncio.to_thread(Holdings.of, state)

    def _context(self, h: Holdings) -> tuple[PolicyFiles, datetime, dict[str, Any]]:
        assert self.policy is not None
        now = datetime.fromtimestamp(h.now, UTC)
        meta = {"read_at": now.isoformat().replace("+00:00", "Z"), "registry": self.policy.registry.version,
                "policy": {"name": self.policy.pack.name, "version": self.policy.pack.version}}  # fmt: skip
        return self.policy, now, meta

    async def tenants(self, request: web.Request, who: AdminToken) -> web.Response:
        try:
            read_query(request, {})
        except BadQuery as exc:
            return _malformed(exc)
        h = await self._holdings()
        if isinstance(h, web.Response):
            return h
        policy, now, meta = self._context(h)
        rows = await asyncio.to_thread(tenants_report, policy.registry, policy.pack, now, h)
        return web.json_response(meta | {"tenants": rows})

    async def tenant(self, request: web.Request, who: AdminToken) -> web.Response:
        tenant_id = request.match_info["tenant_id"]
        try:
            read_query(request, {})
            _id("tenant id")(tenant_id)
        except BadQuery as exc:
            return _malformed(exc)
        h = await self._holdings()
        if isinstance(h, web.Response):
            return h
        policy, now, meta = self._context(h)
        report = await asyncio.to_thread(tenant_report, tenant_id, policy.registry, policy.pack, now, h)
        if report is None:
            return refusal(Code.ROUTE_NOT_ALLOWED, "no tenant of this id is registered or holds a lease", "admin")
        recent: list[dict[str, Any]] = []
        if self.ledger_dir is not None:
            recent = await asyncio.to_thread(recent_decisions, self.ledger_dir, tenant_id, limit=RECENT)
        return web.json_response(meta | report | {"recent_decisions": recent})

    async def countries(self, request: web.Request, who: AdminToken) -> web.Response:
        try:
            read_query(request, {})
        except BadQuery as exc:
            return _malformed(exc)
        h = await self._holdings()
        if isinstance(h, web.Response):
            return h
        policy, now, meta = self._context(h)
        rows = await asyncio.to_thread(countries_report, policy.registry, policy.pack, now, h)
        return web.json_response(meta | {"countries": rows})

    async def leases(self, request: web.Request, who: AdminToken) -> web.Response:
        try:
            query = read_query(request, LEASE_QUERY)
        except BadQuery as exc:
            return _malformed(exc)
        h = await self._holdings()
        if isinstance(h, web.Response):
            return h
        _, _, meta = self._context(h)
        chosen = functools.partial(leases_report, h, tenant=query.get("tenant"), upstream=query.get("upstream"),
                                   state=query.get("state"), limit=query.get("limit", DEFAULT_LEASES))  # fmt: skip
        report = await asyncio.to_thread(chosen)
        return web.json_response(meta | report)
