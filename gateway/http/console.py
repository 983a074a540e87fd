"""The console: read-only HTML pages on the admin listener under /console/, for people with a browser.

Every page is rendered on the server from what the admin API answers (the usage handlers' own JSON,
the explain endpoint's question reader and explainer) and the ledger's tail, read bounded; no script,
no external asset. A page needs an admin token of the `read` role, sent as `Authorization: Bearer`
or, from a browser, held in a cookie the login form sets (HttpOnly, SameSite=Strict, Secure over
TLS). A POST from the cookie session must carry the session's CSRF token (a hidden field, an HMAC of
the token under a key made at start) and, when the browser names one, an Origin of this listener.
"""

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.adapters.decision_tail import access_log, chain_head, refusals_since
from gateway.adapters.ledger import files
from gateway.adapters.ledger.reader import instance_dirs
from gateway.adapters.ledger.verified import first_and_last_ts
from gateway.adapters.quota import BackendUnavailable
from gateway.adapters.reports.verified import report_period, verified_report
from gateway.config.admin import AdminToken, Role
from gateway.core.explain import parse_at
from gateway.core.policy import RuleId
from gateway.core.reports.access import KycRecord
from gateway.core.reports.kinds import KINDS, Options, pack_thresholds
from gateway.core.reports.model import DAY_S
from gateway.http.admin_api import AdminApi
from gateway.http.admin_explain import Malformed, question
from gateway.http.admin_usage import BadQuery, read_query

COOKIE = "eg_console"
TEMPLATES = Path(__file__).parent / "templates" / "console"
RECENT = 20  # a tenant's recent decisions and access log entries shown
REFUSAL_WINDOW_S = 3600.0
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes a browser send `Origin: null` with the forms
}
REPORT_MAX_BYTES = 256 * 1024 * 1024  # a larger ledger is reported on with `exportgate report`, not here
REPORT_FORMATS = {"html": "text/html", "csv": "text/csv", "json": "application/json"}
Readiness = Callable[[], tuple[bool, dict[str, bool]]]
Page = Callable[[web.Request, AdminToken], Awaitable[web.StreamResponse]]


def number(value: Any) -> str:
    """How the console shows a number: thousands separated, whole numbers without decimals, operations in
    scientific notation, "-" for none."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if abs(value) >= 1e15:  # training operations: 7.121e+21, not twenty-two digits
        return f"{value:.4g}"
    if isinstance(value, int) or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def percent(value: Any) -> str:
    """A share as a percentage; one below 0.1% keeps two significant digits (0.002%, not 0.0%)."""
    if value is None:
        return "-"
    share = 100 * float(value)
    return f"{share:.2g}%" if 0 < abs(share) < 0.1 else f"{share:.1f}%"


def when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def chain_heads(root: Path) -> list[dict[str, Any]]:
    """Each chain's head (its last committed record) and last signed checkpoint: the last one in the chain's tail,
    else the one its manifest names (rewritten at each checkpoint)."""
    out = []
    for instance in instance_dirs(root):
        tail = chain_head(instance)
        if "checkpoint_seq" not in tail:
            manifest = files.read_json(instance / files.MANIFEST) or {}
            checkpoint = manifest.get("checkpoint") or {}
            tail |= {"checkpoint_seq": checkpoint.get("seq"), "checkpoint_hash": checkpoint.get("hash")}
        out.append({"instance": instance.name, "head_seq": tail.get("seq"), "head_hash": tail.get("hash"),
                    "head_ts": tail.get("ts"), "checkpoint_seq": tail.get("checkpoint_seq"),
                    "checkpoint_hash": tail.get("checkpoint_hash")})  # fmt: skip
    return out


def _kind(text: str) -> str:
    if text not in KINDS:
        raise BadQuery(f"kind: one of {', '.join(KINDS)}")
    return text


def _format(text: str) -> str:
    if text not in REPORT_FORMATS:
        raise BadQuery(f"format: one of {', '.join(REPORT_FORMATS)}")
    return text


def _day(name: str, *, end: bool = False) -> Callable[[str], float | None]:
    """A period bound: an ISO 8601 date or date-time (UTC); an end given as a date includes its whole day."""

    def read(text: str) -> float | None:
        if not text.strip():
            return None
        try:
            value = parse_at(text)
        except ValueError as exc:
            raise BadQuery(f"{name}: {exc}") from None
        return value + DAY_S if end and len(text.strip()) == 10 else value

    return read


REPORT_QUERY: dict[str, Callable[[str], Any]] = {
    "kind": _kind, "from": _day("from"), "to": _day("to", end=True), "format": _format,
}  # fmt: skip


def ledger_bytes(root: Path) -> int:
    return sum(p.stat().st_size for d in instance_dirs(root) for p in d.glob("*.jsonl"))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.filters |= {"num": number, "pct": percent, "when": when}
    return env


class Console:
    """The console's pages over an AdminApi (its auth, usage and explain parts) and the listener's readiness."""

    def __init__(self, api: AdminApi, ready: Readiness, clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.ready = ready
        self.clock = clock
        self.env = environment()
        self._csrf_key = secrets.token_bytes(32)  # a restart ends every session's CSRF token
        self._reporting = asyncio.Lock()  # one report at a time: each reads the whole ledger

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/console", self._to_console)
        app.router.add_get("/console/login", self.login_form)
        app.router.add_post("/console/login", self.login)
        app.router.add_post("/console/logout", self.logout)
        pages: dict[str, Page] = {"/console/": self.overview, "/console/explain": self.explain_form,
                                  "/console/reports": self.reports}  # fmt: skip
        if self.api.usage is not None:
            pages |= {"/console/tenants": self.tenants, "/console/tenants/{tenant_id}": self.tenant,
                      "/console/countries": self.countries}  # fmt: skip
        for path, page in pages.items():
            app.router.add_get(path, self._guarded(page))
        app.router.add_post("/console/explain", self._guarded(self.explain, post=True))

    # -- rendering and authentication ---------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        text = self.env.get_template(name).render(**context)
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)

    def csrf(self, who: AdminToken) -> str:
        return hmac.new(self._csrf_key, f"csrf:{who.sha256}".encode(), hashlib.sha256).hexdigest()

    def _session(self, request: web.Request) -> tuple[AdminToken | web.Response, bool]:
        """Who is asking (or the refusal) and whether they came with the cookie rather than a bearer header."""
        if "Authorization" in request.headers or COOKIE not in request.cookies:
            return self.api.auth.operator(request, Role.READ), False
        return self.api.auth.holder(request.cookies[COOKIE], Role.READ), True

    def _refused(self, request: web.Request, refusal: web.Response) -> web.Response:
        """A refusal as the login page (401) or a page saying the role is not enough (403)."""
        assert isinstance(refusal.body, bytes)
        detail = json.loads(refusal.body).get("detail", "")
        return self.render("login.html", refusal.status, who=None, error=detail, title="Sign in")

    def _guarded(self, page: Page, *, post: bool = False) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def run(request: web.Request) -> web.StreamResponse:
            who, by_cookie = self._session(request)
            if isinstance(who, web.Response):
                return self._refused(request, who)
            if post and by_cookie:
                refused = await self._cross_site(request, who)
                if refused is not None:
                    return refused
            return await page(request, who)

        return run

    async def _cross_site(self, request: web.Request, who: AdminToken) -> web.Response | None:
        """A cookie session's POST must come from this listener's own page: its Origin and its CSRF token."""
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return self._error(who, 403, "this form was posted from another site")
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(token, self.csrf(who)):
            return self._error(who, 403, "the form's CSRF token is missing or stale; load the page again")
        return None

    def _error(self, who: AdminToken | None, status: int, detail: str) -> web.Response:
        csrf = self.csrf(who) if who is not None else ""
        return self.render("error.html", status, who=who, csrf=csrf, title="Error", status_code=status, detail=detail)

    async def _to_console(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console/")

    async def login_form(self, request: web.Request) -> web.Response:
        return self.render("login.html", who=None, error=None, title="Sign in")

    async def login(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            return self._error(None, 403, "this form was posted from another site")
        form = await request.post()
        token = form.get("token")
        if not isinstance(token, str) or not token.strip():
            return self.render("login.html", 401, who=None, error="give an admin token", title="Sign in")
        who = self.api.auth.holder(token.strip(), Role.READ)
        if isinstance(who, web.Response):
            return self._refused(request, who)
        response = web.HTTPSeeOther("/console/")
        response.set_cookie(COOKIE, token.strip(), path="/console", httponly=True, samesite="Strict",
                            secure=request.secure)  # fmt: skip
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        who, by_cookie = self._session(request)
        if isinstance(who, web.Response):
            return self._refused(request, who)
        if by_cookie:
            refused = await self._cross_site(request, who)
            if refused is not None:
                return refused
        response = web.HTTPSeeOther("/console/login")
        response.del_cookie(COOKIE, path="/console")
        raise response

    def _page(self, name: str, who: AdminToken, title: str, status: int = 200, **context: Any) -> web.Response:
        return self.render(name, status, who=who, csrf=self.csrf(who), title=title, **context)

    async def _usage(self, handler: Page, request: web.Request, who: AdminToken) -> dict[str, Any] | web.Response:
        """What the admin API's usage handler answers, as data; its refusal as an error page."""
        answer = await handler(request, who)
        assert isinstance(answer, web.Response) and isinstance(answer.body, bytes)
        doc: dict[str, Any] = json.loads(answer.body)
        if answer.status != 200:
            return self._error(who, answer.status, str(doc.get("detail", "")))
        return doc

    def _citation(self, rule: Any) -> str:
        """A rule's citation in the pack serving now ("" for a rule it does not know)."""
        if self.api.policy is None or not isinstance(rule, str):
            return ""
        try:
            return self.api.policy.pack.rule(RuleId(rule)).citation
        except ValueError:
            return ""

    def _kyc_expiry(self, tenant_id: str) -> date | None:
        if self.api.policy is None:
            return None
        tenant = self.api.policy.registry.tenants.get(tenant_id)
        return tenant.kyc.expires_at if tenant is not None else None

    # -- pages ----------------------------------------------------------------------------------------

    async def overview(self, request: web.Request, who: AdminToken) -> web.Response:
        ok, parts = self.ready()
        ledger_dir = self.api.usage.ledger_dir if self.api.usage is not None else None
        chains: list[dict[str, Any]] = []
        refusals: dict[str, int] = {}
        complete = True
        since = self.clock() - REFUSAL_WINDOW_S
        if ledger_dir is not None:
            chains = await asyncio.to_thread(chain_heads, ledger_dir)
            refusals, complete = await asyncio.to_thread(refusals_since, ledger_dir, since)
        countries: list[dict[str, Any]] = []
        if self.api.usage is not None:
            doc = await self._usage(self.api.usage.countries, request, who)
            if isinstance(doc, web.Response):
                return doc
            countries = doc["countries"]
        return self._page("overview.html", who, "Overview", ready=ok, parts=parts, chains=chains, refusals=refusals,
                          refusals_complete=complete, since=since, countries=countries)  # fmt: skip

    async def tenants(self, request: web.Request, who: AdminToken) -> web.Response:
        assert self.api.usage is not None
        doc = await self._usage(self.api.usage.tenants, request, who)
        if isinstance(doc, web.Response):
            return doc
        expiry = {row["id"]: self._kyc_expiry(row["id"]) for row in doc["tenants"]}
        return self._page("tenants.html", who, "Tenants", doc=doc, expiry=expiry)

    async def tenant(self, request: web.Request, who: AdminToken) -> web.Response:
        assert self.api.usage is not None
        doc = await self._usage(self.api.usage.tenant, request, who)
        if isinstance(doc, web.Response):
            return doc
        accesses: list[dict[str, Any]] = []
        if self.api.usage.ledger_dir is not None:
            accesses = await asyncio.to_thread(access_log, self.api.usage.ledger_dir, doc["id"], limit=RECENT)
        decisions = [d | {"reasons": [r | {"citation": self._citation(r.get("rule"))} for r in d.get("reasons") or []]}
                     for d in doc["recent_decisions"]]  # fmt: skip
        return self._page("tenant.html", who, f"Tenant {doc['id']}", doc=doc, decisions=decisions,
                          accesses=accesses, expiry=self._kyc_expiry(doc["id"]))  # fmt: skip

    async def countries(self, request: web.Request, who: AdminToken) -> web.Response:
        assert self.api.usage is not None
        doc = await self._usage(self.api.usage.countries, request, who)
        if isinstance(doc, web.Response):
            return doc
        return self._page("countries.html", who, "Countries", doc=doc)

    async def explain_form(self, request: web.Request, who: AdminToken) -> web.Response:
        asked = {"method": "POST", "content_type": "application/json"}
        return self._page("explain.html", who, "Explain", asked=asked, methods=METHODS, answer=None, error=None)

    async def explain(self, request: web.Request, who: AdminToken) -> web.Response:
        """The form's question, read by the explain endpoint's own reader and answered by its explainer."""
        form = await request.post()
        fields = ("tenant", "method", "path", "body_text", "content_type", "idempotency_key", "at")
        asked = {k: v for k in fields if isinstance(v := form.get(k), str) and v.strip()}
        if self.api.explain_api is None:
            return self._error(who, 503, "this gateway has no explainer")
        try:
            answer = await self.api.explain_api.explainer.explain(question(asked))
        except Malformed as exc:
            return self._page("explain.html", who, "Explain", 400, asked=asked, methods=METHODS, answer=None,
                              error=str(exc))  # fmt: skip
        except BackendUnavailable as exc:
            return self._error(who, 503, str(exc))
        pretty = json.dumps(answer, indent=1, ensure_ascii=False, default=str)
        return self._page("explain.html", who, "Explain", asked=asked, methods=METHODS, answer=answer, pretty=pretty,
                          error=None)  # fmt: skip

    async def reports(self, request: web.Request, who: AdminToken) -> web.StreamResponse:
        """The report form; with `kind`, the report over the live ledger, verified with this gateway's key."""
        try:
            query = read_query(request, REPORT_QUERY)
        except BadQuery as exc:
            return self._page("reports.html", who, "Reports", 400, kinds=KINDS, asked={}, error=str(exc))
        asked = {k: v for k, v in request.query.items()}
        if "kind" not in query:
            return self._page("reports.html", who, "Reports", kinds=KINDS, asked=asked, error=None)
        root = self.api.usage.ledger_dir if self.api.usage is not None else None
        signer = self.api.ledger.signer
        if root is None or signer is None or self.api.policy is None:
            return self._error(who, 409, "reports need a signed ledger: this gateway writes no signed checkpoints")
        size = await asyncio.to_thread(ledger_bytes, root)
        if size > REPORT_MAX_BYTES:
            return self._error(who, 413, f"the ledger holds {size:,} bytes, more than the console reads "
                               f"({REPORT_MAX_BYTES:,}); run `exportgate report` on it")  # fmt: skip
        span = await asyncio.to_thread(first_and_last_ts, root)
        if span is None:
            return self._error(who, 409, "the ledger holds no record yet")
        start, end = query.get("from"), query.get("to")
        if start is not None and end is not None and end <= start:
            return self._page("reports.html", who, "Reports", 400, kinds=KINDS, asked=asked,
                              error="to: must come after from")  # fmt: skip
        pack, registry = self.api.policy.pack, self.api.policy.registry
        kyc = {t.id: KycRecord(t.kyc.status.value, t.kyc.expires_at) for t in registry.tenants.values()}
        options = Options(caps=pack.caps, pack_hash=pack.content_hash, thresholds=pack_thresholds(pack), registry=kyc,
                          registry_name=f"the serving registry {registry.version}")  # fmt: skip
        period = report_period(span, start, end, None)
        async with self._reporting:
            done = await asyncio.to_thread(verified_report, query["kind"], root, signer.public(), {}, period, options,
                                           pack, policy="the pack serving now")  # fmt: skip
        if done.problems:
            return self._error(who, 409, "the ledger did not verify: " + "; ".join(done.problems))
        fmt = query.get("format", "html")
        from gateway.adapters.reports.render import render  # matplotlib loads only when a report is drawn

        data = await asyncio.to_thread(render, done.report, fmt)
        return web.Response(body=data, content_type=REPORT_FORMATS[fmt], charset="utf-8", headers=HEADERS)
