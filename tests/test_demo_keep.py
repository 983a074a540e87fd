"""`exportgate demo --keep DIR`: the demo's config, registry, keys and signed ledger stay in DIR, and every command
it suggests runs on them; without --keep nothing is left behind."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.processes import ROOT


def demo(*args: str, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run([sys.executable, "-m", "gateway", "demo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


def test_kept_demo_leaves_files_and_commands_that_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tmp").mkdir()
    kept = tmp_path / "kept demo"  # a space: the printed commands quote their paths
    result = demo("--keep", str(kept), tmpdir=tmp_path / "tmp")
    assert result.returncode == 0, result.stderr
    names = {p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()}
    assert {"gateway.yaml", "tenants.yaml", "jwks.json", "job.json", "keys/ledger.pem", "keys/ledger.pub.pem",
            "keys/issuer.pem", "ledger/demo/000001.jsonl"} <= names  # fmt: skip
    assert (kept / "keys" / "issuer.pem").stat().st_mode & 0o077 == 0
    assert "tenants.yaml" in (kept / "gateway.yaml").read_text()
    commands = [line.strip() for line in result.stdout.splitlines() if line.startswith("  exportgate ")]
    assert {shlex.split(c)[1] for c in commands} >= {"ledger", "replay", "report", "explain"}
    outputs = {}
    for command in commands:
        code = main(shlex.split(command)[1:])
        out, err = capsys.readouterr()
        assert code == 0, (command, err)
        outputs[shlex.split(command)[1]] = out
    assert "ok: 1 chains, 20 records verified" in outputs["ledger"]
    assert "quota_tenant_tpp" in outputs["explain"]  # the 256-H100 job falcon-sg was refused
    assert "<svg" in (kept / "compute-held.html").read_text()
    assert list((tmp_path / "tmp").iterdir()) == []  # the kept demo used no temporary directory


def test_demo_without_keep_cleans_up(tmp_path: Path) -> None:
    result = demo(tmpdir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "kept in" not in result.stdout and list(tmp_path.iterdir()) == []


def test_keep_refuses_a_directory_with_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "something").write_text("mine")
    assert main(["demo", "--keep", str(tmp_path)]) == 1
    assert "--keep needs a new or empty directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["something"]
