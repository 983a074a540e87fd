"""Helpers for the ledger tests: keys made at test time, writers filled with records, the CLI run in-process."""

from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.ledger.signing import PublicKey, Signer, generate, load_public_key, load_signer
from gateway.adapters.ledger.writer import LedgerWriter
from gateway.cli import main


class Keys:
    """A ledger signing key pair written under `directory` (outside any ledger)."""

    def __init__(self, directory: Path) -> None:
        self.private = directory / "ledger.pem"
        self.public = directory / "ledger.pub.pem"
        generate(self.private, self.public)
        self.signer: Signer = load_signer(self.private)
        self.verifier: PublicKey = load_public_key(self.public)


async def fill(root: Path, instance: str, count: int, *, start: int = 0, **options: Any) -> LedgerWriter:
    """Open a writer, append `count` decision-like records one batch at a time, close it."""
    writer = LedgerWriter(root, instance, batch_window_s=0, **options)
    await writer.open()
    for i in range(start, start + count):
        ts = writer.clock()
        await writer.append(
            {"kind": "decision", "decision_id": f"{instance}-{i:04d}", "ts": ts, "pad": "x" * 80}, wait=True
        )
    await writer.close()
    return writer


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run `exportgate ARGS` in this process; return the exit status, stdout and stderr."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
