"""Who holds what, on the admin API: tenants, one tenant, countries and leases, read from the live store.

Each call reads the store's holdings once (`QuotaStore.holdings`) and lays them out with
gateway.core.usage against the pack and registry serving now; a tenant's recent decisions come
from the ledger's tail (adapters/decision_tail.py). Query parameters are checked before anything
is read: an unknown or repeated parameter, or a value outside its form, is 400 `request_malformed`.
"""

import asyncio
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.adapters.decision_tail import recent_decisions
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.config.admin import AdminToken
from gateway.core.codes import Code
from gateway.core.policy import Pack
from gateway.core.tenants import Registry
from gateway.core.usage import (
    LEASE_STATES,
    QUERY_TEXT,
    Holdings,
    countries_report,
    leases_report,
    report_meta,
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


NO_QUERY: Mapping[str, Callable[[str], Any]] = {}
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


@dataclass(frozen=True, slots=True)
class _Read:
    """What every usage call starts from: its query, the holdings, and the pack and registry serving now."""

    query: dict[str, Any]
    holdings: Holdings
    policy: PolicyFiles
    now: datetime
    meta: dict[str, Any]


class UsageApi:
    """The usage routes; every answer names the instant it was read at."""

    def __init__(
        self, store: QuotaStore, policy: PolicyFiles | None, ledger_dir: Path | None, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.policy = policy
        self.ledger_dir = ledger_dir
        self.clock = clock

    async def _read(
        self, request: web.Request, allowed: Mapping[str, Callable[[str], Any]] = NO_QUERY, tenant_id: str | None = None
    ) -> _Read | web.Response:
        """The call's checked query (and tenant id, if it names one) and the store's holdings, or the refusal."""
        try:
            query = read_query(request, allowed)
            if tenant_id is not None:
                _id("tenant id")(tenant_id)
        except BadQuery as exc:
            return _malformed(exc)
        try:
            state = await self.store.holdings(self.clock())
        except BackendUnavailable as exc:
            return refusal(Code.BACKEND_UNAVAILABLE, str(exc), "admin")
        # Indexed off the event loop (the proxy shares it: 10,000 leases take ~70 ms).
        h = await asyncio.to_thread(Holdings.of, state)
        assert self.policy is not None
        now = datetime.fromtimestamp(h.now, UTC)
        meta = report_meta(now, self.policy.registry, self.policy.pack)
        return _Read(query, h, self.policy, now, meta)

    async def _rows(
        self,
        request: web.Request,
        key: str,
        report: Callable[[Registry, Pack, datetime, Holdings], list[dict[str, Any]]],
    ) -> web.Response:
        """A listing of every tenant or country, under `key`."""
        read = await self._read(request)
        if isinstance(read, web.Response):
            return read
        rows = await asyncio.to_thread(report, read.policy.registry, read.policy.pack, read.now, read.holdings)
        return web.json_response(read.meta | {key: rows})

    async def tenants(self, request: web.Request, who: AdminToken) -> web.Response:
        return await self._rows(request, "tenants", tenants_report)

    async def countries(self, request: web.Request, who: AdminToken) -> web.Response:
        return await self._rows(request, "countries", countries_report)

    async def tenant(self, request: web.Request, who: AdminToken) -> web.Response:
        tenant_id = request.match_info["tenant_id"]
        read = await self._read(request, tenant_id=tenant_id)
        if isinstance(read, web.Response):
            return read
        registry, pack = read.policy.registry, read.policy.pack
        report = await asyncio.to_thread(tenant_report, tenant_id, registry, pack, read.now, read.holdings)
        if report is None:
            return refusal(Code.ROUTE_NOT_ALLOWED, "no tenant of this id is registered or holds a lease", "admin")
        recent: list[dict[str, Any]] = []
        if self.ledger_dir is not None:
            recent = await asyncio.to_thread(recent_decisions, self.ledger_dir, tenant_id, limit=RECENT)
        return web.json_response(read.meta | report | {"recent_decisions": recent})

    async def leases(self, request: web.Request, who: AdminToken) -> web.Response:
        read = await self._read(request, LEASE_QUERY)
        if isinstance(read, web.Response):
            return read
        query, h = read.query, read.holdings
        chosen = functools.partial(leases_report, h, tenant=query.get("tenant"), upstream=query.get("upstream"),
                                   state=query.get("state"), limit=query.get("limit", DEFAULT_LEASES))  # fmt: skip
        report = await asyncio.to_thread(chosen)
        return web.json_response(read.meta | report)
