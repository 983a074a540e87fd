"""CLI conventions: `--version` from the package metadata; every command's problem goes to standard error with
the exit code docs/cli.md's table gives it (1: a problem, 2: usage), never to standard output."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from gateway.adapters.ledger.signing import generate
from gateway.cli import main
from tests.harness import POLICIES
from tests.processes import ROOT

BAD_CONFIG = "workers: 0\nupstreams: [{url: 'http://x'}]\n"
CONFIG_PROBLEM = "gateway.yaml:1: workers: must be at least 1"

# (case, arguments ({d}: the test's directory), exit code, what standard error says)
FAILURES = [
    ("no-command", [], 2, "the following arguments are required: command"),
    ("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
    ("unknown-option", ["check", "--colour"], 2, "unrecognized arguments: --colour"),
    ("serve-bad-config", ["serve", "--config", "{d}/gateway.yaml"], 1, CONFIG_PROBLEM),
    ("serve-bad-workers", ["serve", "--config", "{d}/good.yaml", "--workers", "0"], 1,
     "--workers 0: must be at least 1"),
    ("check-bad-config", ["check", "--config", "{d}/gateway.yaml"], 1, CONFIG_PROBLEM),
    ("check-missing-config", ["check", "--config", "{d}/absent.yaml"], 1, "absent.yaml"),
    ("nginx-config-bad-config", ["nginx-config", "--config", "{d}/gateway.yaml"], 1, CONFIG_PROBLEM),
    ("ledger-verify-not-a-ledger", ["ledger", "verify", "{d}/absent", "--public-key", "{d}/k.pub.pem"], 2,
     "not a ledger directory"),
    ("ledger-verify-not-a-key", ["ledger", "verify", "{d}/ledger", "--public-key", "{d}/junk.pem"], 2,
     "not a PEM public key"),
    ("ledger-verify-missing-chain", ["ledger", "verify", "{d}/ledger", "--public-key", "{d}/k.pub.pem",
     "--expect-head", f"gw={'0' * 64}"], 1, "missing_chain"),
    ("ledger-prune-not-a-ledger", ["ledger", "prune", "{d}/absent", "--archive-dir", "{d}/archive",
     "--signing-key", "{d}/k.pem"], 2, "not a ledger directory"),
    ("keys-generate-no-target", ["keys", "generate"], 2, "give --out DIR, or --private FILE and --public FILE"),
    ("keys-generate-over-a-key", ["keys", "generate", "--private", "{d}/k.pem", "--public", "{d}/new.pub.pem"], 1,
     "k.pem"),
    ("keys-admin-token-no-name", ["keys", "admin-token"], 2, "the following arguments are required: --name"),
    ("quota-rebuild-cluster-without-redis", ["quota", "rebuild", "--ledger", "{d}/ledger", "--cluster"], 2,
     "--cluster needs --redis"),
    ("quota-rebuild-not-a-ledger", ["quota", "rebuild", "--ledger", "{d}/absent"], 1, "not a ledger directory"),
    ("quota-rebuild-not-a-key", ["quota", "rebuild", "--ledger", "{d}/ledger", "--public-key", "{d}/junk.pem"], 1,
     "junk.pem"),
    ("quota-snapshot-keep-zero", ["quota", "snapshot", "--ledger", "{d}/ledger", "--signing-key", "{d}/k.pem",
     "--keep", "0"], 2, "--keep: must be at least 1"),
    ("replay-not-a-ledger", ["replay", "--ledger", "{d}/absent", "--policy", str(POLICIES / "ai-diffusion-2025")], 1,
     "not a ledger directory"),
    ("replay-bad-pack", ["replay", "--ledger", "{d}/ledger", "--policy", "{d}"], 1, "pack.yaml"),
    ("replay-bad-format", ["replay", "--ledger", "{d}/ledger", "--policy", "{d}", "--format", "xml"], 2,
     "invalid choice: 'xml'"),
]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    """`exportgate ARGS` in this process: the exit status (argparse's SystemExit included), stdout, stderr."""
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("case", "args", "code", "problem"), FAILURES, ids=[f[0] for f in FAILURES])
def test_every_failure_goes_to_stderr_with_its_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, args: list[str], code: int, problem: str
) -> None:
    """The problem is on standard error, not on standard output, and the exit code is the documented one."""
    (tmp_path / "gateway.yaml").write_text(BAD_CONFIG)
    (tmp_path / "good.yaml").write_text("upstreams: [{url: 'http://x'}]\n")
    (tmp_path / "ledger").mkdir()
    (tmp_path / "junk.pem").write_text("not a key")
    generate(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    got, out, err = run(capsys, [a.replace("{d}", str(tmp_path)) for a in args])
    assert got == code, (out, err)
    assert problem in err, err
    assert problem not in out and "error" not in out.lower(), out


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    """`exportgate --version` prints the installed version (pyproject.toml's) on stdout and exits 0."""
    assert run(capsys, ["--version"]) == (0, f"exportgate {metadata.version('exportgate')}\n", "")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    assert (result.returncode, result.stdout, result.stderr) == (0, f"exportgate {version.group(1)}\n", "")


def test_docs_document_the_exit_codes() -> None:
    """docs/cli.md's exit-code table names 0, 1 and 2, the codes the failures above are held to."""
    page = (ROOT / "docs" / "cli.md").read_text()
    section = page.split("## Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\d+)` \|", section, re.M)
    assert rows == ["0", "1", "2"]
    assert {code for _, _, code, _ in FAILURES} == {1, 2}
