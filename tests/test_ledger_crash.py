"""Crashes never lose or rewrite a committed ledger record: torn tails after rotation, and SIGKILL under load."""

import asyncio
import hashlib
import itertools
import json
import os
import random
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.adapters.ledger.writer import LedgerUnavailable, LedgerWriter
from gateway.cli import main
from gateway.demo.standin import StandinState
from tests.harness import JOB, SUBMIT, Idp, ledger_records, start_standin, wait_until, write_config
from tests.ledger_kit import Keys, fill
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.jsonl"))}


@pytest.mark.parametrize(
    "newest", [b"", b'{"kind":"decision","seq":'], ids=["rotated-then-crashed", "torn-first-line-of-new-segment"]
)
async def test_a_crash_right_after_rotation_continues_the_chain(tmp_path: Path, newest: bytes) -> None:
    """Only the newest segment can be torn; the head then comes from the segment before, which stays untouched."""
    keys = Keys(tmp_path)
    ledger = tmp_path / "ledger"
    await fill(ledger, "gw", 20, segment_max_bytes=2000, signer=keys.signer)
    directory = ledger / "gw"
    before = digests(directory)
    last = sorted(directory.glob("*.jsonl"))[-1]
    (directory / f"{int(last.stem) + 1:06d}.jsonl").write_bytes(newest)  # the crash left this behind
    writer = LedgerWriter(ledger, "gw", batch_window_s=0, signer=keys.signer)
    await writer.open()
    await writer.append({"kind": "decision", "decision_id": "after"}, wait=True)
    await writer.close()
    assert {k: v for k, v in digests(directory).items() if k in before} == before  # committed bytes untouched
    records = ledger_records(ledger, "gw")
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    kinds = [r["kind"] for r in records[-4:]]
    assert kinds[-2:] == ["decision", "checkpoint"]
    assert ("repair" in kinds) == bool(newest)
    assert bool(list(directory.glob("*.torn-*"))) == bool(newest)
    assert main(["ledger", "verify", str(ledger), "--public-key", str(keys.public)]) == 0


async def test_a_writer_never_continues_a_chain_shorter_than_its_manifest(tmp_path: Path) -> None:
    """When committed records are missing (the newest segment deleted), the writer refuses to fork the chain."""
    await fill(tmp_path, "gw", 20, segment_max_bytes=2000)
    sorted((tmp_path / "gw").glob("*.jsonl"))[-1].unlink()
    with pytest.raises(LedgerUnavailable, match="committed records are missing"):
        await LedgerWriter(tmp_path, "gw").open()


# -- SIGKILL under load ---------------------------------------------------------------------

TENANTS = ["acme-us", "acme-us", "fjord-se-cn", "selva-br"]  # allowed, allowed, 451, 403


class Crash:
    """A gateway subprocess, clients hammering it, and what both sides saw."""

    def __init__(self, workdir: Path, config: Path, admin_url: str, url: str) -> None:
        self.workdir = workdir
        self.config = config
        self.admin_url = admin_url
        self.url = url
        self.answered: set[str] = set()  # decision ids of 2xx/4xx answers
        self.proc: asyncio.subprocess.Process | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}

    async def start(self) -> None:
        log = (self.workdir / "gateway.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", "--config", str(self.config),
            cwd=ROOT, env=self.env, stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        await wait_until(self.ready, 15, every=0.05, message="gateway not ready: " + self.log_tail())

    def log_tail(self) -> str:
        return (self.workdir / "gateway.log").read_text()[-3000:]

    async def ready(self) -> bool:
        """/readyz answers 200; fails at once, with the log, if the process has exited."""
        assert self.proc is not None and self.proc.returncode is None, self.log_tail()
        async with aiohttp.ClientSession() as client:
            try:
                async with client.get(self.admin_url + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

    async def lane(self, client: aiohttp.ClientSession, tokens: dict[str, str], offset: int) -> None:
        for sub in itertools.islice(itertools.cycle(TENANTS), offset, None):
            try:
                async with client.post(
                    self.url + SUBMIT, json=JOB, headers={"Authorization": f"Bearer {tokens[sub]}"}
                ) as resp:
                    await resp.read()
                    if resp.status < 500:
                        self.answered.add(resp.headers["X-Exportgate-Decision-Id"])
            except (TimeoutError, aiohttp.ClientError):
                return

    async def load_then_kill(self, tokens: dict[str, str], seconds: float) -> None:
        assert self.proc is not None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
            lanes = [asyncio.create_task(self.lane(client, tokens, i)) for i in range(16)]
            await asyncio.sleep(seconds)
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            await asyncio.gather(*lanes)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 20)


def ledger_state(ledger: Path) -> tuple[dict[tuple[str, int], str], set[str]]:
    """(instance, seq) -> hash of every committed line, and the decision ids of decision records."""
    lines: dict[tuple[str, int], str] = {}
    decisions: set[str] = set()
    for directory in sorted(p for p in ledger.iterdir() if p.is_dir()):
        for record in ledger_records(ledger, directory.name, committed_only=True):
            lines[(directory.name, record["seq"])] = record["hash"]
            if record["kind"] == "decision":
                decisions.add(record["decision_id"])
    return lines, decisions


async def test_sigkill_under_load_loses_no_decision(tmp_path: Path) -> None:
    """After each SIGKILL: the ledger verifies, answered and forwarded requests have decisions, nothing is rewritten."""
    keys = Keys(tmp_path / "keys")
    idp = Idp()
    (tmp_path / "jwks.json").write_text(json.dumps(idp.jwks()))
    state = StandinState()
    runner, upstream = await start_standin(state)
    ledger, anchors = tmp_path / "ledger", tmp_path / "anchors"
    listen, admin = free_port(), free_port()
    config = write_config(
        tmp_path, upstream, listen_port=listen, admin_port=admin, ledger_dir=ledger,
        ledger_options="segment_max_bytes: 40000, checkpoint_every_records: 40",
        signing_key_file=keys.private, anchor_dir=anchors,
    )  # fmt: skip
    crash = Crash(tmp_path, config, f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{listen}")
    tokens = {sub: idp.token(sub) for sub in set(TENANTS)}
    rng = random.Random(7)
    committed: dict[tuple[str, int], str] = {}
    try:
        for kill in range(4):
            await crash.start()
            verified = main(["ledger", "verify", str(ledger), "--public-key", str(keys.public),
                             "--expect-heads-from", str(anchors)]) if kill else 0  # fmt: skip
            assert verified == 0, f"after kill {kill}: see the verify output above"
            lines, decisions = ledger_state(ledger)
            assert {k: lines.get(k) for k in committed} == committed  # no committed record lost or rewritten
            committed = lines
            assert crash.answered <= decisions, crash.answered - decisions
            forwarded = {r["headers"]["X-Exportgate-Decision-Id"] for r in state.requests}
            assert forwarded <= decisions, forwarded - decisions
            if kill < 3:
                await crash.load_then_kill(tokens, rng.uniform(0.4, 0.8))
        await crash.stop()
        assert main(["ledger", "verify", str(ledger), "--public-key", str(keys.public),
                     "--expect-heads-from", str(anchors)]) == 0  # fmt: skip
    finally:
        if crash.proc is not None and crash.proc.returncode is None:
            crash.proc.kill()
            await crash.proc.wait()
        await runner.cleanup()
    lines, decisions = ledger_state(ledger)
    assert len(crash.answered) > 100 and len(state.requests) > 30
    assert crash.answered | {r["headers"]["X-Exportgate-Decision-Id"] for r in state.requests} <= decisions
    assert len(list((ledger / "test-gw").glob("*.jsonl"))) >= 2  # rotation happened under load
