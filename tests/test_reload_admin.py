"""Hot reload of registry and pack, the admin listener, and the metrics it exports."""

from pathlib import Path

import aiohttp

from tests.harness import JOB, SUBMIT, call, metrics, running_stack, wait_for_metric
from tests.redis_server import free_port


async def test_registry_change_is_picked_up(tmp_path: Path) -> None:
    """Verifying a pending tenant's KYC in the file lets its next submission through."""
    async with running_stack(tmp_path) as stack:
        assert (await call(stack, "POST", SUBMIT, "selva-br", payload=JOB))[0] == 403
        registry = tmp_path / "tenants.yaml"
        registry.write_text(
            registry.read_text().replace(
                "kyc: {status: pending}", "kyc: {status: verified, verified_at: 2025-06-01, expires_at: 2030-06-01}"
            )
        )
        text = await wait_for_metric(stack, 'exportgate_config_reloads_total{result="ok"} 1.0')
        assert 'exportgate_config_reloads_total{result="ok"} 1.0' in text
        assert (await call(stack, "POST", SUBMIT, "selva-br", payload=JOB))[0] == 200
        assert "exportgate_ready 1.0" in text  # computed at scrape time, not only when /readyz is asked


async def test_invalid_registry_keeps_last_good(tmp_path: Path) -> None:
    """A broken registry file is refused with a metric; the previous registry keeps serving."""
    async with running_stack(tmp_path) as stack:
        (tmp_path / "tenants.yaml").write_text("tenants:\n  - id: x\n    bogus_key: 1\n")
        text = await wait_for_metric(stack, 'exportgate_config_reloads_total{result="error"} 1.0')
        assert 'exportgate_config_reloads_total{result="error"} 1.0' in text
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[0] == 200


async def test_sighup_style_reload(tmp_path: Path) -> None:
    """Server.reload() (what SIGHUP calls) reloads the registry at once."""
    async with running_stack(tmp_path) as stack:
        registry = tmp_path / "tenants.yaml"
        registry.write_text(registry.read_text().replace("location: US", "location: RU", 1))
        await stack.server.reload()
        status, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
        assert (status, body["code"]) == (451, "tier3_embargoed")


async def test_admin_endpoints(tmp_path: Path) -> None:
    """healthz and readyz answer on the admin port, and the required metrics are exported."""
    async with running_stack(tmp_path) as stack:
        await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
        await call(stack, "POST", SUBMIT, "harbour-hk", payload=JOB)
        assert (await call(stack, "GET", "/healthz", admin=True))[0] == 200
        status, body, _ = await call(stack, "GET", "/readyz", admin=True)
        assert status == 200, body
        assert (await call(stack, "GET", "/metrics"))[0] == 401  # the proxy port does not serve admin endpoints
        text = await metrics(stack)
        for name in (
            "exportgate_requests_total",
            "exportgate_decisions_total",
            "exportgate_request_duration_seconds",
            "exportgate_upstream_duration_seconds",
            "exportgate_ledger_records_total",
            "exportgate_ledger_commit_seconds",
            "exportgate_jwks_refresh_total",
            "exportgate_config_reloads_total",
            "exportgate_policy_info",
        ):
            assert name in text, name
        assert 'exportgate_decisions_total{code="",decision="allow",tier="1"} 1.0' in text
        assert 'exportgate_decisions_total{code="tier3_embargoed",decision="deny",tier="3"} 1.0' in text
        assert "acme-us" not in text  # no tenant ids as label values


async def test_not_ready_without_an_issuer(tmp_path: Path) -> None:
    """With no token issuer configured nothing can authenticate, so /readyz says so."""
    from gateway.config.settings import load_settings
    from gateway.http.app import Server

    env = {
        "EXPORTGATE_LEDGER_DIR": str(tmp_path / "ledger"),
        "EXPORTGATE_LISTEN_PORT": str(free_port()),
        "EXPORTGATE_ADMIN_PORT": str(free_port()),
    }
    settings = load_settings(None, env)
    server = Server(settings, env=env)
    await server.start()
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"http://127.0.0.1:{settings.admin_port}/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["parts"] == {
                    "config": True,
                    "keys": False,
                    "ledger": True,
                    "quota": True,
                    "serving": True,
                }
            async with client.get(f"http://127.0.0.1:{settings.admin_port}/metrics") as resp:
                assert "exportgate_ready 0.0" in await resp.text()
            async with client.post(f"http://127.0.0.1:{settings.listen_port}/slurm/v0.0.38/job/submit") as resp:
                assert resp.status == 401
    finally:
        await server.stop()
