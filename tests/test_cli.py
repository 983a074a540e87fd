"""The exportgate command: check prints located problems, demo prints the decision table."""

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from tests.harness import POLICIES, write_config

BAD_CONFIGS = [
    (
        "unknown-key",
        "upstreams:\n  - url: http://x\n    colour: blue\n",
        "gateway.yaml:3: upstreams[0].colour: unknown key",
    ),
    ("bad-url", "upstreams:\n  - url: ftp://x\n", "gateway.yaml:2: upstreams[0].url: 'ftp://x' is not an http(s) URL"),
    (
        "bad-port",
        "listen: {port: 70000}\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: listen.port: must be 1..65535",
    ),
    ("duplicate-key", "upstreams: []\nupstreams: []\n", "gateway.yaml:2: upstreams: duplicate key"),
    ("no-upstreams", "listen: {port: 8080}\n", "gateway.yaml:1: upstreams: required"),
    (
        "hs256-without-secret",
        "auth:\n  issuers:\n    - {issuer: i, audiences: [a], algorithms: [HS256], jwks_file: k}\n"
        "upstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:3: auth.issuers[0].algorithms: HS256 needs hs256_secret_file (or hs256_secret)",
    ),
    (
        "jwks-file-and-url",
        "auth:\n  issuers:\n    - {issuer: i, audiences: [a], jwks_file: k, jwks_url: 'https://x/j'}\n"
        "upstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:3: auth.issuers[0]: issuer 'i': set jwks_file or jwks_url, not both",
    ),
    (
        "slurm-jwt-needs-user",
        "upstreams:\n  - url: 'http://x'\n    headers:\n      X-SLURM-USER-TOKEN: {file: t, slurm_jwt_key_file: k}\n",
        "gateway.yaml:4: upstreams[0].headers.X-SLURM-USER-TOKEN: slurm_jwt_key_file mints a token for a user",
    ),
    (
        "zero-workers",
        "workers: 0\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: workers: must be at least 1",
    ),
    (
        "admin-on-proxy-port",
        "listen: {port: 9000}\nadmin: {port: 9000}\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:2: admin.port: the proxy and the admin listener both use port 9000",
    ),
    (
        "prefix-with-hash-tag",
        "quota: {store: redis, redis_url: 'redis://x', prefix: '{eg}'}\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: quota.prefix: must not contain",
    ),
    (
        "bad-trusted-proxy-reported",
        "trusted_proxies: ['not-a-net']\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: trusted_proxies[0]: 'not-a-net' is not an IP network",
    ),
    (
        "negative-batch-window",
        "ledger: {batch_window_ms: -1}\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: ledger.batch_window_ms: must be 0..1000",
    ),
    ("yaml-syntax", "upstreams: [\n", "gateway.yaml:2: (syntax):"),
    (
        "workers-need-redis",
        "workers: 4\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: workers: more than one worker needs quota.store: redis",
    ),
    # Each problem names its field's own line, not line 1 "(top)" or its section's first line.
    (
        "reload-interval-own-line",
        "upstreams: [{url: 'http://x'}]\nreload:\n  interval_s: -5\n",
        "gateway.yaml:3: reload.interval_s: must be positive",
    ),
    ("workers-own-line", "upstreams: [{url: 'http://x'}]\nworkers: 0\n", "gateway.yaml:2: workers: must be at least 1"),
    (
        "admin-port-own-line",
        "upstreams: [{url: 'http://x'}]\nlisten: {port: 9000}\nadmin:\n  host: 0.0.0.0\n  port: 9000\n",
        "gateway.yaml:5: admin.port: the proxy and the admin listener both use port 9000",
    ),
    (
        "worker-admin-ports-cover-proxy-port",
        "quota: {store: redis, redis_url: 'redis://x'}\nworkers: 3\nlisten: {port: 9181}\nadmin:\n  port: 9180\n"
        "upstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:5: admin.port: the 3 workers' admin listeners use ports 9180..9182, "
        "which include the proxy's 9181",
    ),
    (
        "url-own-line",
        "upstreams:\n  - name: a\n    url: ftp://x\n",
        "gateway.yaml:3: upstreams[0].url: 'ftp://x' is not an http(s) URL",
    ),
    (
        "redis-url-named",
        "quota:\n  store: redis\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:2: quota.redis_url: required when store is redis",
    ),
    (
        "duplicate-upstream-name-at-second",
        "upstreams:\n  - {name: a, url: 'http://x', prefix: /a/}\n  - {name: a, url: 'http://y'}\n",
        "gateway.yaml:3: upstreams[1].name: 'a': upstream names must be unique",
    ),
    # Siblings: values `serve` would trip over that loading accepted.
    (
        "duplicate-issuer",
        "auth:\n  issuers:\n    - {issuer: i, audiences: [a], jwks_url: 'https://x/j'}\n"
        "    - {issuer: i, audiences: [a], jwks_url: 'https://y/j'}\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:4: auth.issuers[1].issuer: 'i' is configured twice",
    ),
    (
        "tokens-file-not-a-string",
        "admin: {tokens_file: 5}\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: admin.tokens_file: must be a string, not int",
    ),
    (
        "instance-id-parent-dir",
        "instance_id: '..'\nupstreams: [{url: 'http://x'}]\n",
        "gateway.yaml:1: instance_id: '..' cannot name the ledger chain's directory",
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_check_reports_file_line_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, text: str, expected: str
) -> None:
    """Each bad gateway.yaml is reported as `file:line: field: problem` with exit 1."""
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().err  # problems go to standard error
    assert f"{tmp_path}/{expected}" in out, out


BAD_PACKS = [
    ("non-iso-tier3", "tiers.yaml", "  - MO\n", "  - XX\n", "tier3[22]: 'XX' is not an ISO 3166-1 code"),
    ("norway-unquoted", "tiers.yaml", '"NO"', "NO", "tier1[13]: must be a string, not bool"),
    ("bad-date", "tiers.yaml", "until: 2026-02-03", "until: someday", "tier3[3].until: must be a date"),
    (
        "unknown-rule",
        "pack.yaml",
        "  kyc:\n    # The",
        "  kyx:\n    enforced_from: null\n  kyc:\n    # The",
        "rules.kyx: unknown rule",
    ),
    (
        "missing-enforced-from",
        "pack.yaml",
        '    enforced_from: 2025-05-15\n    citation: "90 FR 4544, 15 CFR',
        '    citation: "90 FR 4544, 15 CFR',
        "rules.tenant_cap.enforced_from: required",
    ),
]


@pytest.mark.parametrize(("case", "file", "old", "new", "expected"), BAD_PACKS, ids=[c[0] for c in BAD_PACKS])
def test_check_reports_pack_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, file: str, old: str, new: str, expected: str
) -> None:
    """A broken policy pack is reported with the pack file, line and field."""
    pack = tmp_path / "pack"
    pack.mkdir()
    for source in (POLICIES / "ai-diffusion-2025").glob("*.yaml"):
        (pack / source.name).write_text(source.read_text())
    target = pack / file
    assert old in target.read_text()
    target.write_text(target.read_text().replace(old, new, 1))
    config = write_config(tmp_path, "http://127.0.0.1:1", pack=pack)
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().err  # problems go to standard error
    assert f"{target}:" in out and expected in out, out


def test_check_reports_registry_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Duplicate identities and bad KYC statuses in the registry are located problems."""
    config = write_config(tmp_path, "http://127.0.0.1:1")
    (tmp_path / "tenants.yaml").write_text(
        "tenants:\n"
        "  - {id: a, identities: [{issuer: i, subject: s}], location: US, headquarters: US,\n"
        "     parent_headquarters: US, kyc: {status: verified, verified_at: 2025-01-01}}\n"
        "  - {id: b, identities: [{issuer: i, subject: s}], location: US, headquarters: US,\n"
        "     parent_headquarters: US, kyc: {status: maybe}}\n"
    )
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().err  # problems go to standard error
    assert f"{tmp_path}/tenants.yaml:4: tenants[1].identities: (i, s) already maps to 'a'" in out
    assert f"{tmp_path}/tenants.yaml:5: tenants[1].kyc.status: 'maybe' is not one of" in out


def test_check_passes_on_bundled_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    """The embedded defaults validate, with a warning naming the example tenant's missing headquarters field."""
    assert main(["check"]) == 0
    captured = capsys.readouterr()
    out = captured.err  # warnings go to standard error, the ok line to standard output
    example = POLICIES / "tenants.example.yaml"
    line = example.read_text().splitlines().index("    headquarters: null") + 1
    assert captured.out.startswith("ok:")
    assert (
        f"warning: {example}:{line}: tenants[9].headquarters: missing: "
        "tenant 'unplaced' is refused tenant_country_unknown until it is recorded"
    ) in out


def test_demo_prints_the_decision_table() -> None:
    """`exportgate demo` runs a gateway and a stand-in and prints one row per example tenant."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    table, _, ledger = result.stdout.partition("\n\n")
    lines = [line.split() for line in table.splitlines()[2:] if line.strip()]
    assert "ok: 1 chains, 20 records verified" in ledger
    rows = {(cells[0], cells[3]): cells for cells in lines}
    assert rows[("acme-us", "8")][1:7] == ["1", "verified", "8", "x", "H100", "200"]
    assert rows[("fjord-se-cn", "8")][-3:] == ["451", "deny", "tier3_embargoed"]
    assert rows[("selva-br", "8")][-1] == "kyc_not_verified"
    assert rows[("lapsed-in", "8")][-1] == "kyc_expired"
    assert rows[("unplaced", "8")][-1] == "tenant_country_unknown"
    assert rows[("acme-us", "4096")][-2:] == ["200", "allow"]  # Tier 1: metered, not capped
    assert rows[("falcon-ae", "1600")][-2:] == ["200", "allow"]
    assert rows[("falcon-sg", "256")][-3:] == ["429", "deny", "quota_tenant_tpp"]  # the group's shared cap
