"""Readiness follows the quota store, and SIGTERM drains: unready at once, in-flight work finishes, exit bounded."""

import asyncio
import contextlib
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
from tests.harness import (
    E2E_TENANTS,
    SUBMIT,
    Idp,
    Stack,
    call,
    ledger_records,
    metrics,
    running_stack,
    slurm_job,
    start_standin,
    wait_until,
    write_config,
)
from tests.ledger_kit import Keys
from tests.processes import GatewayProcess, wait_ready
from tests.redis_server import RedisProcess, free_port

ALL_READY = {"config": True, "keys": True, "ledger": True, "quota": True, "serving": True}


async def readyz(target: Stack | str) -> tuple[int, dict[str, Any]]:
    status, body, _ = await call(target, "GET", "/readyz", admin=True)
    return status, body


async def readyz_is(target: Stack | str, status: int) -> bool:
    return (await readyz(target))[0] == status


async def wait_for_quota(stack: Stack, up: bool, timeout_s: float = 5.0) -> tuple[int, dict[str, Any]]:
    """/readyz once its quota part reads `up` (or after `timeout_s`, for the caller to assert on)."""
    answers = [await readyz(stack)]

    async def quota_is_up() -> bool:
        answers.append(await readyz(stack))
        return answers[-1][1]["parts"]["quota"] is up

    with contextlib.suppress(AssertionError):
        await wait_until(quota_is_up, timeout_s, every=0.1)
    return answers[-1]


@pytest.fixture
async def redis_stack(
    tmp_path: Path, fresh_redis: RedisProcess, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    required = getattr(request, "param", True)
    quota = f"quota: {{store: redis, redis_url: '{fresh_redis.url}', required_for_ready: {str(required).lower()}}}"
    async with running_stack(tmp_path, registry=E2E_TENANTS, extra=quota) as s:
        yield s


@pytest.mark.parametrize(("redis_stack", "unready"), [(True, 503), (False, 200)], indirect=["redis_stack"],
                         ids=["required", "reported-only"])  # fmt: skip
async def test_readiness_reports_the_quota_store(redis_stack: Stack, fresh_redis: RedisProcess, unready: int) -> None:
    """With Redis gone, /readyz shows quota false within seconds (503 when required) and recovers with it."""
    assert await wait_for_quota(redis_stack, True) == (200, {"ready": True, "parts": ALL_READY})
    fresh_redis.kill()
    started = time.monotonic()
    status, body = await wait_for_quota(redis_stack, False)
    assert body["parts"]["quota"] is False and status == unready
    assert time.monotonic() - started < 4.0
    assert 'exportgate_ready_part{part="quota"} 0.0' in await metrics(redis_stack)
    fresh_redis.start()
    assert await wait_for_quota(redis_stack, True) == (200, {"ready": True, "parts": ALL_READY})


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
    listen, admin_port = free_port(), free_port()
    config = write_config(
        tmp_path, upstream, listen_port=listen, admin_port=admin_port, ledger_dir=ledger,
        signing_key_file=keys.private, timeout_s=10, shutdown="drain_s: 1.0, grace_s: 5.0",
    )  # fmt: skip
    proxy, admin = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin_port}"
    gateway = GatewayProcess.start(["--config", str(config)], tmp_path / "gateway.log")
    proc = gateway.proc
    headers = {"Authorization": f"Bearer {idp.token('us-two')}"}
    try:
        await asyncio.to_thread(wait_ready, [admin], [gateway])
        async with aiohttp.ClientSession() as client:
            slow = asyncio.create_task(client.post(proxy + SUBMIT, json=slurm_job(name="slow-me"), headers=headers))
            # until the submission is in flight at the scheduler
            await wait_until(lambda: any(b'"slow-me"' in r["body"] for r in state.requests), 10, every=0.02)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await wait_until(lambda: readyz_is(admin, 503), 3.0, every=0.02)  # at once, on a loaded machine
            status, body = await readyz(admin)
            assert status == 503 and body["parts"]["serving"] is False
            async with client.post(proxy + SUBMIT, json=slurm_job(name="train"), headers=headers) as resp:
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
    records = ledger_records(ledger, "test-gw")
    settles = [r for r in records if r.get("kind") == "settle"]
    assert len(settles) == 2 and all(r["settled"] for r in settles)
    assert records[-1]["kind"] == "checkpoint" and records[-1]["reason"] == "close"
    assert main(["ledger", "verify", str(ledger), "--public-key", str(keys.public)]) == 0


async def test_stop_with_a_request_stuck_upstream_stays_within_grace(tmp_path: Path) -> None:
    """A request still waiting on the scheduler when the listener closes is cut off within grace_s, not 2 x grace_s."""
    grace = "drain_s: 0, grace_s: 2"
    async with (
        running_stack(tmp_path, registry=E2E_TENANTS, timeout_s=30, shutdown=grace) as stack,
        aiohttp.ClientSession() as client,
    ):
        # The stand-in answers after 6 s: longer than twice grace_s, so only the cut-off ends the request.
        stuck = asyncio.create_task(client.get(stack.url + "/standin/hang?seconds=6", headers=stack.auth("us-two")))
        await wait_until(lambda: any(r["path"].startswith("/standin/hang") for r in stack.standin.requests))
        started = time.monotonic()
        await stack.server.stop()
        took = time.monotonic() - started
        with contextlib.suppress(aiohttp.ClientError):
            (await stuck).release()
    # aiohttp spends its shutdown timeout twice; the gateway gives it half of grace_s each time.
    assert took < 2.0 + 0.8, f"stop took {took:.1f} s"
