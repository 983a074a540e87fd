"""Readiness follows the quota store, and SIGTERM drains: unready at once, in-flight work finishes, exit bounded."""

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import main
from gateway.demo.standin import StandinState
from tests.harness import E2E_TENANTS, Idp, Stack, run_stack, start_standin, write_config
from tests.ledger_kit import Keys
from tests.processes import GatewayProcess, wait_ready
from tests.redis_server import RedisProcess

SUBMIT = "/slurm/v0.0.38/job/submit"
ALL_READY = {"config": True, "keys": True, "ledger": True, "quota": True, "serving": True}


def job(name: str = "train") -> dict[str, Any]:
    return {"job": {"name": name, "partition": "gpu", "time_limit": 60, "gpus": "h100:1",
                    "environment": {"PATH": "/usr/bin"}}, "script": "#!/bin/bash\ntrue"}  # fmt: skip


async def readyz(admin_url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as client, client.get(admin_url + "/readyz") as resp:
        return resp.status, await resp.json()


async def wait_for_quota(admin_url: str, up: bool, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """/readyz once its quota part reads `up` (or after `timeout_s`, for the caller to assert on)."""
    for _ in range(int(timeout_s / 0.1)):
        status, body = await readyz(admin_url)
        if body["parts"]["quota"] is up:
            break
        await asyncio.sleep(0.1)
    return status, body


@pytest.fixture
async def redis_stack(
    tmp_path: Path, fresh_redis: RedisProcess, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    required = getattr(request, "param", True)
    quota = f"quota: {{store: redis, redis_url: '{fresh_redis.url}', required_for_ready: {str(required).lower()}}}"
    async for s in run_stack(tmp_path, registry=E2E_TENANTS, extra=quota):
        yield s


@pytest.mark.parametrize(("redis_stack", "unready"), [(True, 503), (False, 200)], indirect=["redis_stack"],
                         ids=["required", "reported-only"])  # fmt: skip
async def test_readiness_reports_the_quota_store(redis_stack: Stack, fresh_redis: RedisProcess, unready: int) -> None:
    """With Redis gone, /readyz shows quota false within seconds (503 when required) and recovers with it."""
    assert await wait_for_quota(redis_stack.admin_url, True) == (200, {"ready": True, "parts": ALL_READY})
    fresh_redis.kill()
    started = time.monotonic()
    status, body = await wait_for_quota(redis_stack.admin_url, False)
    assert body["parts"]["quota"] is False and status == unready
    assert time.monotonic() - started < 4.0
    async with aiohttp.ClientSession() as client, client.get(redis_stack.admin_url + "/metrics") as resp:
        assert 'exportgate_ready_part{part="quota"} 0.0' in await resp.text()
    fresh_redis.start()
    assert await wait_for_quota(redis_stack.admin_url, True) == (200, {"ready": True, "parts": ALL_READY})


async def test_sigterm_drains_then_exits_within_its_bound(tmp_path: Path) -> None:
    """On SIGTERM: /readyz 503 at once, new requests served during drain_s, an in-flight submission completes
    and is settled, a closing checkpoint is signed, and the process exits within drain_s + grace_s."""
    keys = Keys(tmp_path / "keys")
    idp = Idp()
    (tmp_path / "jwks.json").write_text(json.dumps(idp.jwks()))
    (tmp_path / "tenants.yaml").write_text(E2E_TENANTS)
    state = StandinState(slow_s=1.5)
    runner, upstream = await start_standin(state)
    ledger = tmp_path / "ledger"
    config = write_config(tmp_path, upstream, ledger_dir=ledger, timeout_s=10,
                          shutdown="drain_s: 1.0, grace_s: 5.0")  # fmt: skip
    text = config.read_text().replace(f"ledger: {{dir: {ledger}}}",
                                      f"ledger: {{dir: {ledger}, signing_key_file: {keys.private}}}")  # fmt: skip
    config.write_text(text)
    ports = {line.split(":")[0]: line for line in text.splitlines() if line.startswith(("listen:", "admin:"))}
    proxy = "http://127.0.0.1:" + ports["listen"].split("port: ")[1].rstrip("}")
    admin = "http://127.0.0.1:" + ports["admin"].split("port: ")[1].split(",")[0].rstrip("}")
    gateway = GatewayProcess.start(["--config", str(config)], tmp_path / "gateway.log")
    proc = gateway.proc
    headers = {"Authorization": f"Bearer {idp.token('us-two')}"}
    try:
        await asyncio.to_thread(wait_ready, [admin], [gateway])
        async with aiohttp.ClientSession() as client:
            slow = asyncio.create_task(client.post(proxy + SUBMIT, json=job("slow-me"), headers=headers))
            for _ in range(500):  # until the submission is in flight at the scheduler
                if any(b'"slow-me"' in r["body"] for r in state.requests):
                    break
                await asyncio.sleep(0.02)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            status, body = await readyz(admin)
            assert status == 503 and body["parts"]["serving"] is False
            async with client.post(proxy + SUBMIT, json=job(), headers=headers) as resp:
                assert resp.status == 200, await resp.text()  # still served while draining
                assert resp.headers.get("Connection", "").lower() == "close"
            resp = await slow
            assert resp.status == 200, await resp.text()
            resp.release()
        code = await asyncio.to_thread(proc.wait, 15)
        elapsed = time.monotonic() - signalled
    finally:
        gateway.stop(timeout=1)
        await runner.cleanup()
    assert code == 0, gateway.output()
    assert 1.0 <= elapsed < 1.0 + 5.0 + 3.0, f"exit took {elapsed:.1f} s"
    segments = sorted((ledger / "test-gw").glob("*.jsonl"))
    records = [json.loads(line) for seg in segments for line in seg.read_text().splitlines()]
    settles = [r for r in records if r.get("kind") == "settle"]
    assert len(settles) == 2 and all(r["settled"] for r in settles)
    assert records[-1]["kind"] == "checkpoint" and records[-1]["reason"] == "close"
    assert main(["ledger", "verify", str(ledger), "--public-key", str(keys.public)]) == 0
