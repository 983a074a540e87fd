"""`serve --workers N`: Redis required, per-worker instance ids and admin ports, restarts, signals, no leftovers."""

import asyncio
import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main
from gateway.cli.workers import with_workers, worker_settings
from gateway.config.settings import QuotaSettings, Settings, load_settings
from tests.envoy_kit import check, check_request
from tests.harness import POLICIES, Idp, gateway_yaml, ledger_records, upstream_yaml, wait_until
from tests.processes import GatewayProcess, children, free_ports, ready, wait_ready
from tests.redis_server import RedisProcess, free_port


def workers_config(
    workdir: Path, *, admin_port: int, store: str = "memory", redis_url: str = "", idp: Idp | None = None,
    extra: str = "",
) -> Path:
    """A gateway.yaml whose upstream is never called; readiness needs only config, keys and ledger."""
    (workdir / "jwks.json").write_text(json.dumps((idp or Idp()).jwks()))
    quota = f'store: redis, redis_url: "{redis_url}", prefix: "workers-{time.monotonic_ns()}:"'
    path = workdir / "gateway.yaml"
    path.write_text(gateway_yaml(
        workdir, instance_id="sup", admin_port=admin_port, pack=None, registry=POLICIES / "tenants.example.yaml",
        quota=quota if store == "redis" else "store: memory", upstreams=upstream_yaml("http://127.0.0.1:9"),
        extra=extra,
    ))  # fmt: skip
    return path


def test_more_than_one_worker_refuses_the_memory_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--workers 2` over an in-memory store exits 1 before starting anything."""
    config = workers_config(tmp_path, admin_port=free_port())
    assert main(["serve", "--config", str(config), "--workers", "2"]) == 1
    assert "--workers 2: more than one worker needs quota.store: redis" in capsys.readouterr().err
    assert not (tmp_path / "ledger").exists()


def test_workers_below_one_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--workers 0` is a configuration error, not a gateway that serves nothing."""
    config = workers_config(tmp_path, admin_port=free_port())
    assert main(["serve", "--config", str(config), "--workers", "0"]) == 1
    assert "--workers 0: must be at least 1" in capsys.readouterr().err


WORKER_SETTINGS = [
    ("single-keeps-its-names", 1, 0, "gw", 9180),
    ("first-of-four", 4, 0, "gw-w0", 9180),
    ("third-of-four", 4, 2, "gw-w2", 9182),
]


@pytest.mark.parametrize(
    ("case", "workers", "index", "instance", "admin_port"), WORKER_SETTINGS, ids=[c[0] for c in WORKER_SETTINGS]
)
def test_worker_settings(tmp_path: Path, case: str, workers: int, index: int, instance: str, admin_port: int) -> None:
    """Worker i of several is instance `<id>-w<i>` with its admin listener on admin_port + i."""
    base = load_settings(workers_config(tmp_path, admin_port=9180), env={})
    settings: Settings = replace(base, instance_id="gw", quota=QuotaSettings("redis", "redis://127.0.0.1:1/0"))
    settings, refusal = with_workers(settings, workers)
    assert refusal is None
    got = worker_settings(settings, index)
    assert (got.instance_id, got.admin_port, got.listen_port) == (instance, admin_port, base.listen_port)


async def supervise(
    workdir: Path, redis_url: str, workers: int, *, idp: Idp | None = None, extra: str = ""
) -> tuple[GatewayProcess, list[str]]:
    """A supervisor of `workers` workers, all ready; returns it and the workers' admin URLs."""
    admin = free_ports(workers)
    config = workers_config(workdir, admin_port=admin, store="redis", redis_url=redis_url, idp=idp, extra=extra)
    sup = GatewayProcess.start(["--config", str(config), "--workers", str(workers)], workdir / "serve.log")
    admins = [f"http://127.0.0.1:{admin + i}" for i in range(workers)]
    try:
        wait_ready(admins, [sup])
        await wait_until(lambda: len(children(sup.proc.pid)) == workers, 20, every=0.1)
    except BaseException:
        sup.stop()
        raise
    return sup, admins


async def test_supervisor_restarts_a_dead_worker_forwards_sighup_and_stops_cleanly(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    """A killed worker comes back, SIGHUP restarts nothing, and SIGTERM ends every process with exit 0."""
    sup, admins = await supervise(tmp_path, redis_server.url, 2)
    try:
        first = children(sup.proc.pid)
        assert {p.name for p in (tmp_path / "ledger").iterdir()} == {"sup-w0", "sup-w1"}
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await wait_until(
            lambda: len(children(sup.proc.pid) - first) == 1 and all(ready(url) for url in admins), 20, every=0.1
        )
        second = children(sup.proc.pid)
        assert victim not in second and len(second) == 2
        sup.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)  # nothing to wait for: SIGHUP must not restart anything in this window
        assert children(sup.proc.pid) == second and all(ready(url) for url in admins)
        assert "exited with -9; restarting" in sup.output()
    finally:
        code = sup.stop()
    assert code == 0, sup.output()
    assert not sup.group_alive()


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path, redis_server: RedisProcess) -> None:
    """Workers whose supervisor died without a word drain and exit instead of serving on as orphans."""
    sup, _ = await supervise(tmp_path, redis_server.url, 2)
    try:
        os.kill(sup.proc.pid, signal.SIGKILL)
        sup.proc.wait()
        await wait_until(lambda: not sup.group_alive(), 15, every=0.1)
    finally:
        sup.stop()


@pytest.mark.parametrize(
    ("section", "workers", "refused"),
    [
        ("decision: {host: 127.0.0.1, port: 9182}", 2, None),
        (
            "decision: {host: 127.0.0.1, port: 9182}",
            3,
            "the admin listener and the decision listener both use port 9182",
        ),
        ("envoy_grpc: {host: 0.0.0.0, port: 9181}", 2, "the admin listener and envoy_grpc both use port 9181"),
    ],
)
def test_a_workers_override_checks_every_listener_again(
    tmp_path: Path, section: str, workers: int, refused: str | None
) -> None:
    """`--workers N` moves the admin ports to admin..admin+N-1: a decision or gRPC listener the file placed
    beside one worker's admin port must refuse the start, not fail a worker's bind."""
    config = workers_config(tmp_path, admin_port=9180)
    config.write_text(config.read_text() + section + "\n")
    base = load_settings(config, env={})
    settings = replace(base, quota=QuotaSettings("redis", "redis://127.0.0.1:1/0"))
    _, problem = with_workers(settings, workers)
    assert problem == (None if refused is None else f"--workers {workers}: {refused}")


async def test_decision_entries_are_served_by_every_worker(tmp_path: Path, redis_server: RedisProcess) -> None:
    """With `--workers 2` both workers bind the decision listener and the Envoy gRPC listener (SO_REUSEPORT):
    nginx's checks on fresh connections are answered by both, each recorded in its own worker's chain, and a
    gRPC Check is answered too."""
    idp = Idp()
    decision_port, grpc_port = free_port(), free_port()
    extra = f"decision: {{host: 127.0.0.1, port: {decision_port}}}\n"
    extra += f"envoy_grpc: {{host: 127.0.0.1, port: {grpc_port}}}\n"
    sup, _ = await supervise(tmp_path, redis_server.url, 2, idp=idp, extra=extra)
    try:
        token = {"Authorization": f"Bearer {idp.token('acme-us')}"}
        asked = {**token, "X-Original-URI": "/slurm/v0.0.38/ping", "X-Original-Method": "GET", "Connection": "close"}
        statuses = []
        for _ in range(40):  # a new connection each: the kernel spreads them over the two listening sockets
            async with aiohttp.ClientSession() as client, client.get(
                f"http://127.0.0.1:{decision_port}/v1/nginx", headers=asked
            ) as resp:
                statuses.append(resp.status)
        assert statuses == [200] * 40
        checked = await check(grpc_port, check_request("GET", "/slurm/v0.0.38/ping", token))
        assert checked.allowed
        ledger = tmp_path / "ledger"

        def answered_by_both() -> bool:
            counts = [
                sum(1 for r in ledger_records(ledger, w, committed_only=True) if r.get("entry") == "nginx")
                for w in ("sup-w0", "sup-w1")
            ]
            return sum(counts) == 40 and min(counts) > 0

        await wait_until(answered_by_both, 10, every=0.1)
    finally:
        code = sup.stop()
    assert code == 0, sup.output()
