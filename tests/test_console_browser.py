"""The console in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) signs in with the
login form, loads each page against a gateway with real decisions, checks the numbers shown against the admin
API, runs the explain form, and saves a screenshot of each page under a directory it prints."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from playwright.async_api import Page, async_playwright

from gateway.http.console import number, percent
from tests.admin_kit import TOKENS, admin
from tests.console_kit import decided_stack
from tests.harness import SUBMIT, slurm_job

CHROMIUM = "/usr/bin/chromium"


def chromium() -> str | None:
    """Debian's Chromium, installed with apt-get when missing and root; None: let Playwright fetch its own."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=False, capture_output=True)
        if not Path(CHROMIUM).exists():
            subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True)
    if Path(CHROMIUM).exists():
        return CHROMIUM
    subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], check=True)
    return None


async def text(page: Page, selector: str) -> str:
    return (await page.locator(selector).inner_text()).strip()


async def test_console_in_chromium(tmp_path: Path) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"console screenshots: {shots}")
    async with decided_stack(tmp_path / "gw") as (stack, decided), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium(), headless=True)
        try:
            context = await browser.new_context(java_script_enabled=False, viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            base = stack.admin_url

            response = await page.goto(base + "/console/")
            assert response is not None and response.status == 401
            await page.get_by_label("Admin token").fill(TOKENS["read"])
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(base + "/console/")
            await page.screenshot(path=shots / "overview.png", full_page=True)
            assert await text(page, "#ready") == "The gateway is ready."
            for code, n in decided.refused.items():
                assert await text(page, f"#refusal-{code} td") == number(n)
            countries = (await admin(stack, "GET", "/admin/v1/countries"))[1]["countries"]
            for c in countries:
                assert await text(page, f"#country-{c['country']} td.held") == number(c["held"])

            await page.get_by_role("link", name="Tenants").click()
            await page.wait_for_url(base + "/console/tenants")
            await page.screenshot(path=shots / "tenants.png", full_page=True)
            for t in (await admin(stack, "GET", "/admin/v1/tenants"))[1]["tenants"]:
                assert await text(page, f"#tenant-{t['id']} td.held") == number(t["held_tpp"])
                assert await text(page, f"#tenant-{t['id']} td.leases") == number(t["live_leases"])

            await page.get_by_role("link", name="capped-ae").first.click()
            await page.wait_for_url(base + "/console/tenants/capped-ae")
            await page.screenshot(path=shots / "tenant-capped-ae.png", full_page=True)
            one = (await admin(stack, "GET", "/admin/v1/tenants/capped-ae"))[1]
            assert await text(page, "#held-tpp") == number(one["held_tpp"])
            assert await page.locator("#decisions td.outcome").all_inner_texts() == ["deny", "allow", "allow"]
            assert await page.locator("#access td.ip").all_inner_texts() == ["127.0.0.1"] * 3

            await page.get_by_role("link", name="Countries").click()
            await page.wait_for_url(base + "/console/countries")
            await page.screenshot(path=shots / "countries.png", full_page=True)
            for c in countries:
                assert await text(page, f"#country-{c['country']} td.used") == percent(c["used"])

            await page.get_by_role("link", name="Reports").click()
            await page.wait_for_url(base + "/console/reports")
            await page.get_by_label("Report").select_option("refusals-access")
            async with page.expect_navigation():
                await page.get_by_role("button", name="Make the report").click()
            await page.screenshot(path=shots / "report-refusals-access.png", full_page=True)
            enforced = page.locator("xpath=//dt[text()='refusals (enforced)']/following-sibling::dd[1]")
            assert (await enforced.inner_text()).strip() == number(sum(decided.refused.values()))
            assert await page.locator("figure svg").count() >= 1
            await page.go_back()

            await page.get_by_role("link", name="Explain").click()
            await page.wait_for_url(base + "/console/explain")
            await page.get_by_label("Tenant id").fill("capped-ae")
            await page.get_by_label("Method").select_option("POST")
            await page.get_by_label("Path (with its query)").fill(SUBMIT)
            await page.get_by_label("Body").fill(json.dumps(slurm_job()))
            async with page.expect_navigation():
                await page.get_by_role("button", name="Explain").click()
            await page.screenshot(path=shots / "explain.png", full_page=True)
            asked = {"tenant": "capped-ae", "method": "POST", "path": SUBMIT, "body": slurm_job()}
            expected = (await admin(stack, "POST", "/admin/v1/explain", payload=asked))[1]
            shown = (await text(page, "#decision"), await text(page, "#code"))
            assert shown == (expected["decision"], expected["code"])
        finally:
            await browser.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        "countries.png", "explain.png", "overview.png", "report-refusals-access.png", "tenant-capped-ae.png",
        "tenants.png"]  # fmt: skip
    assert all(p.stat().st_size > 10_000 for p in shots.iterdir())
