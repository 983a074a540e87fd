"""The console over real HTTP on loopback: each page shows what the admin API answers after real decisions;
no token or an unknown one is 401; the login cookie is HttpOnly and SameSite=Strict; the explain form's POST
needs the session's CSRF token and runs the same explainer as POST /admin/v1/explain; everything is escaped."""

import json
import re
from pathlib import Path
from typing import Any

import aiohttp

from gateway.cli import main
from gateway.core.reports.kinds import KINDS
from gateway.http.console import COOKIE, number, percent
from tests.admin_kit import TOKENS, admin
from tests.console_kit import Decided, by_id, cell, decided_stack
from tests.harness import SUBMIT, Stack, call, ledger_records, slurm_job, wait_for_record

PING = "/slurm/v0.0.38/ping"

READ = {"Authorization": f"Bearer {TOKENS['read']}"}


async def page(stack: Stack, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as client, client.get(stack.admin_url + path, headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def api(stack: Stack, path: str) -> Any:
    status, body, _ = await admin(stack, "GET", path)
    assert status == 200, body
    return body


async def check_overview(stack: Stack, decided: Decided) -> None:
    status, text, headers = await page(stack, "/console/", READ)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    assert "<script" not in text and '<html lang="en">' in text
    assert by_id(text, "ready") == "The gateway is ready."
    for code, n in decided.refused.items():
        assert cell(text, f"refusal-{code}", "n") == number(n)
    records = ledger_records(stack, committed_only=True)
    instance = stack.settings.instance_id
    assert cell(text, f"chain-{instance}", "head-seq") == number(records[-1]["seq"])
    signed = [r["seq"] for r in records if r["kind"] == "checkpoint"]
    assert signed and cell(text, f"chain-{instance}", "checkpoint-seq") == number(signed[-1])
    for c in (await api(stack, "/admin/v1/countries"))["countries"]:
        assert cell(text, f"country-{c['country']}", "held") == number(c["held"])
        assert cell(text, f"country-{c['country']}", "cap") == number(c["cap"])


async def check_tenants(stack: Stack) -> None:
    status, text, _ = await page(stack, "/console/tenants", READ)
    assert status == 200
    rows = (await api(stack, "/admin/v1/tenants"))["tenants"]
    assert len(re.findall(r'<tr id="tenant-', text)) == len(rows)
    for t in rows:
        rid = f"tenant-{t['id']}"
        assert cell(text, rid, "held") == number(t["held_tpp"]), t["id"]
        assert cell(text, rid, "leases") == number(t["live_leases"])
        assert cell(text, rid, "kyc") == (t["kyc"] or "-")
        assert cell(text, rid, "tier") == str(t["tier"])
        for cap in t["caps"]:
            rid = f"cap-{t['id']}-{cap['cap_name']}"
            assert (cell(text, rid, "held"), cell(text, rid, "cap")) == (number(cap["held"]), number(cap["cap"]))
            assert cell(text, rid, "used") == percent(cap["used"])
    assert cell(text, "tenant-capped-ae", "held") == "31,664"  # two H100s, its whole cap


async def check_tenant(stack: Stack, decided: Decided) -> None:
    # A read: the access log lists it (an `access` record) beside the tenant's decisions.
    read_status, _, read_headers = await call(stack, "GET", PING, "capped-ae")
    assert read_status == 200
    await wait_for_record(stack, "access", decision_id=read_headers["X-Exportgate-Decision-Id"])
    status, text, _ = await page(stack, "/console/tenants/capped-ae", READ)
    assert status == 200
    one = await api(stack, "/admin/v1/tenants/capped-ae")
    assert by_id(text, "held-tpp") == number(one["held_tpp"]) and by_id(text, "live-leases") == "2"
    for lease in one["leases"]:
        assert cell(text, f"lease-{lease['lease_id']}", "held") == number(lease["held_tpp"])
        assert cell(text, f"lease-{lease['lease_id']}", "state") == lease["state"]
    outcomes = re.findall(r'<td class="outcome">(\w+)</td>', text)
    assert outcomes == [d["decision"] for d in one["recent_decisions"]] == ["deny", "allow", "allow"]
    # the refusal's reason, with the rule's citation from the pack serving now
    assert "<b>tenant_cap</b>" in text and "<cite>" in text
    ips = re.findall(r'<td class="ip">([^<]+)</td>', text)
    assert ips == ["127.0.0.1"] * 4
    requests = re.findall(r'<tr class="access">.*?<td>(\w+)</td><td>([^<]+)</td><td>(\w+)', text)
    assert requests[0] == ("proxy", f"GET {PING}", "allow")  # the newest: the read
    assert [r[1] for r in requests[1:]] == [f"POST {SUBMIT}"] * 3


async def check_countries(stack: Stack) -> None:
    status, text, _ = await page(stack, "/console/countries", READ)
    assert status == 200
    rows = (await api(stack, "/admin/v1/countries"))["countries"]
    assert rows and len(re.findall(r'<tr id="country-', text)) == len(rows)
    for c in rows:
        rid = f"country-{c['country']}"
        assert (cell(text, rid, "held"), cell(text, rid, "room"), cell(text, rid, "used")) == (
            number(c["held"]), number(c["room"]), percent(c["used"]))  # fmt: skip


async def test_pages_show_what_the_admin_api_answers(tmp_path: Path) -> None:
    async with decided_stack(tmp_path) as (stack, decided):
        await check_overview(stack, decided)
        await check_tenants(stack)
        await check_tenant(stack, decided)
        await check_countries(stack)
        status, text, _ = await page(stack, "/console/tenants/nobody", READ)
        assert status == 404 and "no tenant of this id" in text
        status, text, _ = await page(stack, "/console/tenants/%3Cscript%3E", READ)
        assert status == 400 and "<script>" not in text


async def test_without_a_token_the_console_asks_for_one(tmp_path: Path) -> None:
    """401 and the login page without a token, with an unknown one (header or cookie); any role reads."""
    async with decided_stack(tmp_path) as (stack, _):
        for path in ("/console/", "/console/tenants", "/console/tenants/capped-ae", "/console/countries",
                     "/console/explain"):  # fmt: skip
            status, text, _ = await page(stack, path)
            assert status == 401 and '<label for="token">' in text, path
            status, text, _ = await page(stack, path, {"Authorization": "Bearer not-a-token"})
            assert status == 401 and "unknown admin token" in text
            status, text, _ = await page(stack, path, {"Cookie": f"{COOKIE}=not-a-token"})
            assert status == 401 and "unknown admin token" in text
            for token in TOKENS.values():
                status, _, _ = await page(stack, path, {"Authorization": f"Bearer {token}"})
                assert status == 200, path
        status, _, _ = await page(stack, "/admin/v1/tenants", {"Cookie": f"{COOKIE}={TOKENS['read']}"})
        assert status == 401  # the cookie is the console's only: the API still needs the bearer header


async def test_login_cookie_csrf_and_explain(tmp_path: Path) -> None:
    """The login form sets an HttpOnly, SameSite=Strict cookie; the explain form needs its CSRF token and answers
    what POST /admin/v1/explain answers; a question with markup is shown escaped."""
    jar = aiohttp.CookieJar(unsafe=True)  # the listener is an IP address
    async with decided_stack(tmp_path) as (stack, _), aiohttp.ClientSession(cookie_jar=jar) as client:
        base = stack.admin_url
        async with client.post(base + "/console/login", data={"token": TOKENS["read"]}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/"
            set_cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Path=/console" in set_cookie
        assert "Secure" not in set_cookie  # plain HTTP here; over TLS the cookie is Secure
        async with client.get(base + "/console/explain") as r:
            assert r.status == 200
            form = await r.text()
        csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', form)
        assert csrf is not None
        body = json.dumps(slurm_job(gpus="h100:1"))
        asked = {"tenant": "capped-ae", "method": "POST", "path": SUBMIT, "body_text": body,
                 "content_type": "application/json"}  # fmt: skip
        async with client.post(base + "/console/explain", data=asked) as r:
            assert r.status == 403 and "CSRF token" in await r.text()
        async with client.post(base + "/console/explain", data=asked | {"csrf": "0" * 64}) as r:
            assert r.status == 403
        cross = {"Origin": "http://evil.example"}
        async with client.post(base + "/console/explain", data=asked | {"csrf": csrf[1]}, headers=cross) as r:
            assert r.status == 403 and "another site" in await r.text()
        async with client.post(base + "/console/explain", data=asked | {"csrf": csrf[1]}) as r:
            assert r.status == 200
            answered = await r.text()
        status, expected, _ = await admin(stack, "POST", "/admin/v1/explain",
                                          payload={k: v for k, v in asked.items() if k != "body_text"}
                                          | {"body": json.loads(body)})  # fmt: skip
        assert status == 200 and expected["decision"] == "deny"  # capped-ae holds its whole cap
        assert by_id(answered, "decision") == expected["decision"]
        assert by_id(answered, "code") == expected["code"]
        assert by_id(answered, "status") == str(expected["status"])
        marked = asked | {"csrf": csrf[1], "tenant": "<b>x</b>", "path": "nope"}
        async with client.post(base + "/console/explain", data=marked) as r:
            text = await r.text()
            assert r.status == 400 and "path: must start with /" in text
            assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
        async with client.post(base + "/console/logout", data={"csrf": csrf[1]}, allow_redirects=False) as r:
            assert r.status == 303 and f"{COOKIE}=" in r.headers["Set-Cookie"]
        async with client.get(base + "/console/") as r:
            assert r.status == 401
        async with client.post(base + "/console/login", data={"token": "wrong"}) as r:
            assert r.status == 401 and "unknown admin token" in await r.text()


async def test_reports_page_is_the_report_command_on_the_live_ledger(tmp_path: Path) -> None:
    """Each report kind over the live ledger, verified with the gateway's key, has the numbers `exportgate report`
    writes from the same ledger; the HTML is the report's own self-contained file; bad queries are 400."""
    async with decided_stack(tmp_path) as (stack, _):
        status, text, _ = await page(stack, "/console/reports", READ)
        assert status == 200 and '<label for="kind">' in text and "refusals-access" in text
        for kind in KINDS:
            status, text, _ = await page(stack, f"/console/reports?kind={kind}&from=&to=&format=json", READ)
            assert status == 200, text
            shown = json.loads(text)
            out = tmp_path / f"{kind}.json"
            args = ["report", kind, "--ledger", str(stack.settings.ledger.dir), "--public-key",
                    str(tmp_path / "keys" / "ledger.pub.pem"), "--out", str(out)]  # fmt: skip
            args += ["--registry", str(tmp_path / "tenants.yaml")] if kind == "refusals-access" else []
            assert main(args) == 0
            written = json.loads(out.read_text())
            assert shown["summary"] == written["summary"], kind
            assert shown["tables"].keys() == written["tables"].keys()
            for name, table in written["tables"].items():
                # a note may name the registry: its file for the command, its version for the console
                assert shown["tables"][name] | {"note": ""} == table | {"note": ""}, (kind, name)
            assert shown["meta"]["statement"] == written["meta"]["statement"]
        assert shown["summary"]["refusals (enforced)"] == 2  # the last kind: refusals-access
        status, text, headers = await page(stack, "/console/reports?kind=refusals-access&format=html", READ)
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<svg" in text and "from a ledger whose chains verified with key" in text and "<script" not in text
        for query, says in [("kind=nope", "kind: one of"), ("kind=veu&from=yesterday", "from:"),
                            ("kind=veu&bogus=1", "unknown query parameter"),
                            ("kind=veu&from=2026-02-01&to=2026-01-01", "to: must come after from")]:  # fmt: skip
            status, text, _ = await page(stack, f"/console/reports?{query}", READ)
            assert status == 400 and says in text, query
