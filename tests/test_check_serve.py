"""`check` catches what `serve` would die on (or never become ready with), and both say it the same way."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.adapters.ledger.signing import generate
from tests.harness import JOB, POLICIES, SUBMIT, Idp, call, running_stack, wait_for_metric
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
TIERS_MO_LINE = (POLICIES / "ai-diffusion-2025" / "tiers.yaml").read_text().splitlines().index("  - MO") + 1

# Line numbers below refer to this layout.
GATEWAY_YAML = """\
listen: {{host: 127.0.0.1, port: {listen}}}
admin:
  host: 127.0.0.1
  port: {admin}
  tokens_file: admin-tokens.yaml
instance_id: preflight
policy:
  pack: pack
  registry: tenants.yaml
ledger:
  dir: ledger
  signing_key_file: keys/ledger.pem
auth:
  issuers:
    - issuer: https://idp.example.com
      audiences: [exportgate]
      jwks_file: jwks.json
    - issuer: https://sso.example.com
      audiences: [exportgate]
      hs256_secret_file: hs256.secret
    - issuer: https://login.example.com
      audiences: [exportgate]
      jwks_url: https://login.example.com/jwks.json
upstreams:
  - name: slurm
    url: http://127.0.0.1:9
    scheduler: slurm
    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
      X-SLURM-USER-TOKEN: {{file: slurm.token}}
      X-Site-Key: {{env: EG_PREFLIGHT_SITE_KEY}}
  - name: slurm-jwt
    url: http://127.0.0.1:9
    prefix: /jwt/
    scheduler: slurm
    headers:
      X-SLURM-USER-TOKEN: {{from_tenant: slurm_user, slurm_jwt_key_file: slurm-jwt.key}}
"""


@cache
def jwks() -> str:
    """One IdP key set for every test here (generating RSA keys is slow)."""
    return json.dumps(Idp().jwks())


def complete_config(workdir: Path, listen: int | None = None, admin: int | None = None) -> Path:
    """A gateway.yaml naming every file `serve` reads at start, each present and valid."""
    shutil.copytree(POLICIES / "ai-diffusion-2025", workdir / "pack")
    (workdir / "tenants.yaml").write_text((POLICIES / "tenants.example.yaml").read_text())
    (workdir / "admin-tokens.yaml").write_text(f"tokens:\n  - {{name: ops, role: write, sha256: {'a' * 64}}}\n")
    generate(workdir / "keys" / "ledger.pem", workdir / "keys" / "ledger.pub.pem")
    (workdir / "jwks.json").write_text(jwks())
    (workdir / "hs256.secret").write_text("s" * 40 + "\n")
    (workdir / "slurm.token").write_text("gateway-held-slurm-token\n")
    (workdir / "slurm-jwt.key").write_bytes(b"k" * 32)
    config = workdir / "gateway.yaml"
    config.write_text(GATEWAY_YAML.format(listen=listen or free_port(), admin=admin or free_port()))
    return config


def user_env(**extra: str) -> dict[str, str]:
    """The test's environment without EXPORTGATE_* variables, with the site key the config names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    return env | {"EG_PREFLIGHT_SITE_KEY": "site-key"} | extra


Outcome = tuple[int | None, str, str]


def exportgate(args: list[str], cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """`exportgate ARGS` from this source tree (a `gateway` package in `cwd` comes first)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 20.0) -> Outcome:
    """Exit code (None: still running after `timeout`, then killed), stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def check_and_serve(args: list[str], cwd: Path, env: Mapping[str, str]) -> tuple[Outcome, Outcome]:
    """`exportgate check ARGS` and `exportgate serve ARGS`, run side by side."""
    check, serve = exportgate(["check", *args], cwd, env), exportgate(["serve", *args], cwd, env)
    return finish(check), finish(serve)


def assert_both_refuse(check: Outcome, serve: Outcome, expected: str) -> None:
    """check and serve print the same line on stderr, nothing on stdout, no traceback, and exit 1."""
    assert check[0] == 1 and expected in check[2].splitlines() and check[1] == "", check
    assert serve[0] == 1 and expected in serve[2].splitlines(), serve
    assert "Traceback" not in serve[2]


def test_check_passes_a_complete_config(tmp_path: Path) -> None:
    """Every file present and valid: ok, with a note for the key set that cannot be fetched offline."""
    config = complete_config(tmp_path)
    code, out, err = finish(exportgate(["check", "--config", str(config)], tmp_path, user_env()))
    assert code == 0, out + err
    assert f"ok: {config}, pack {tmp_path}/pack, registry {tmp_path}/tenants.yaml" in out.splitlines()
    assert (
        f"note: {config}:23: auth.issuers[2].jwks_url: not fetched offline; "
        "serve fetches it at start and retries, not ready until it answers"
    ) in err.splitlines()


def _unlink(name: str) -> Callable[[Path, dict[str, str]], None]:
    return lambda d, env: (d / name).unlink()


def _write(name: str, text: str) -> Callable[[Path, dict[str, str]], None]:
    def write(d: Path, env: dict[str, str]) -> None:
        (d / name).write_text(text)

    return write


def _ec_key(d: Path, env: dict[str, str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (d / "keys" / "ledger.pem").write_bytes(pem)


def _break_pack(d: Path, env: dict[str, str]) -> None:
    tiers = d / "pack" / "tiers.yaml"
    tiers.write_text(tiers.read_text().replace("  - MO\n", "  - XX\n", 1))


def _ledger_dir_is_a_file(d: Path, env: dict[str, str]) -> None:
    (d / "ledger").write_text("")


def _unset_site_key(d: Path, env: dict[str, str]) -> None:
    del env["EG_PREFLIGHT_SITE_KEY"]


# One fault per row: what breaks, and the line both commands must print ({d}: the config's directory).
FILE_FAULTS = [
    (
        "admin-tokens-file-missing",
        _unlink("admin-tokens.yaml"),
        "{d}/gateway.yaml:5: admin.tokens_file: {d}/admin-tokens.yaml: no such file "
        "(make entries with `exportgate keys admin-token`)",
    ),
    (
        "admin-tokens-file-invalid",
        _write("admin-tokens.yaml", "tokens:\n  - {name: ops, role: write, sha256: nothex}\n"),
        "{d}/admin-tokens.yaml:2: tokens[0].sha256: must be 64 lower-case hex digits (the token's SHA-256)",
    ),
    (
        "jwks-file-missing",
        _unlink("jwks.json"),
        "{d}/gateway.yaml:17: auth.issuers[0].jwks_file: {d}/jwks.json: No such file or directory",
    ),
    (
        "jwks-file-without-usable-keys",
        _write("jwks.json", '{"keys": []}'),
        "{d}/gateway.yaml:17: auth.issuers[0].jwks_file: {d}/jwks.json: no usable keys",
    ),
    (
        "hs256-secret-too-short",
        _write("hs256.secret", "short\n"),
        "{d}/gateway.yaml:20: auth.issuers[1].hs256_secret_file: {d}/hs256.secret: HS256 secret shorter than 32 bytes",
    ),
    (
        "signing-key-not-ed25519",
        _ec_key,
        "{d}/gateway.yaml:12: ledger.signing_key_file: {d}/keys/ledger.pem: not an Ed25519 private key",
    ),
    ("ledger-dir-is-a-file", _ledger_dir_is_a_file, "{d}/gateway.yaml:11: ledger.dir: {d}/ledger: not a directory"),
    (
        "header-file-missing",
        _unlink("slurm.token"),
        "{d}/gateway.yaml:30: upstreams[0].headers.X-SLURM-USER-TOKEN.file: "
        "cannot read {d}/slurm.token: No such file or directory",
    ),
    (
        "header-file-two-lines",
        _write("slurm.token", "one\ntwo\n"),
        "{d}/gateway.yaml:30: upstreams[0].headers.X-SLURM-USER-TOKEN.file: the value holds a line break",
    ),
    (
        "header-env-unset",
        _unset_site_key,
        "{d}/gateway.yaml:31: upstreams[0].headers.X-Site-Key.env: "
        "environment variable EG_PREFLIGHT_SITE_KEY is not set",
    ),
    (
        "slurm-jwt-key-too-short",
        _write("slurm-jwt.key", "short"),
        "{d}/gateway.yaml:37: upstreams[1].headers.X-SLURM-USER-TOKEN.slurm_jwt_key_file: "
        "the Slurm JWT key is shorter than 16 bytes",
    ),
    (
        "registry-missing",
        _unlink("tenants.yaml"),
        "{d}/gateway.yaml:9: policy.registry: {d}/tenants.yaml: no such file",
    ),
    (
        "pack-fails-to-load",
        _break_pack,
        f"{{d}}/pack/tiers.yaml:{TIERS_MO_LINE}: tier3[22]: 'XX' is not an ISO 3166-1 code "
        "(XX is user-assigned: it names no country)",
    ),
]


@pytest.mark.parametrize(("case", "breaks", "expected"), FILE_FAULTS, ids=[c[0] for c in FILE_FAULTS])
def test_check_and_serve_refuse_what_serve_needs(
    tmp_path: Path, case: str, breaks: Callable[[Path, dict[str, str]], None], expected: str
) -> None:
    """A file `serve` reads at start that is missing or invalid fails `check`, and `serve` exits 1 on the same line."""
    config = complete_config(tmp_path)
    env = user_env()
    breaks(tmp_path, env)
    check, serve = check_and_serve(["--config", str(config)], tmp_path, env)
    assert_both_refuse(check, serve, expected.format(d=tmp_path))


# Variables override gateway.yaml before it is validated, and problems name the variable.
# `config`: with the complete gateway.yaml (else the embedded defaults); {listen}, {admin}: its ports.
ENV_FAULTS = [
    ("listen-port-not-a-number", True, {"EXPORTGATE_LISTEN_PORT": "eighty"},
     "EXPORTGATE_LISTEN_PORT: 'eighty' is not a port (1..65535)"),
    ("admin-port-out-of-range", True, {"EXPORTGATE_ADMIN_PORT": "70000"},
     "EXPORTGATE_ADMIN_PORT: '70000' is not a port (1..65535)"),
    ("admin-port-is-the-proxy-port", True, {"EXPORTGATE_ADMIN_PORT": "{listen}"},
     "EXPORTGATE_ADMIN_PORT: the proxy and the admin listener both use port {listen}"),
    ("listen-port-is-the-admin-port", True, {"EXPORTGATE_LISTEN_PORT": "{admin}"},
     "EXPORTGATE_LISTEN_PORT: the proxy and the admin listener both use port {admin}"),
    ("admin-host-empty", True, {"EXPORTGATE_ADMIN_HOST": ""},
     "EXPORTGATE_ADMIN_HOST: must not be empty (unset it to use admin.host)"),
    ("instance-id-parent-dir", True, {"EXPORTGATE_INSTANCE_ID": ".."},
     "EXPORTGATE_INSTANCE_ID: '..' cannot name the ledger chain's directory"),
    ("embedded-upstream-not-http", False, {"EXPORTGATE_UPSTREAM": "ftp://slurm"},
     "EXPORTGATE_UPSTREAM: upstreams[0].url: 'ftp://slurm' is not an http(s) URL"),
    ("embedded-generic-scheduler", False, {"EXPORTGATE_SCHEDULER": "generic"},
     "EXPORTGATE_SCHEDULER: upstreams[0].scheduler_options: the generic scheduler needs scheduler_options "
     "(paths and fields)"),
    ("embedded-jwks-file-missing", False, {"EXPORTGATE_JWKS": "{d}/missing.json"},
     "EXPORTGATE_JWKS: {d}/missing.json: No such file or directory"),
    ("embedded-policy-dir-missing", False, {"EXPORTGATE_POLICY_DIR": "{d}/nowhere"},
     "EXPORTGATE_POLICY_DIR: {d}/nowhere/ai-diffusion-2025: no such directory"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "config", "variables", "expected"), ENV_FAULTS, ids=[c[0] for c in ENV_FAULTS])
def test_env_overrides_are_checked_and_named(
    tmp_path: Path, case: str, config: bool, variables: dict[str, str], expected: str
) -> None:
    """A bad EXPORTGATE_* value fails `check` and `serve` alike with a line naming the variable."""
    listen, admin = free_port(), free_port()
    path = complete_config(tmp_path, listen, admin)
    names = {"d": tmp_path, "listen": listen, "admin": admin}
    env = user_env(**{k: v.format(**names) for k, v in variables.items()})
    if not config:  # the embedded defaults: keep their listeners off well-known ports
        env = {"EXPORTGATE_LISTEN_HOST": "127.0.0.1", "EXPORTGATE_LISTEN_PORT": str(free_port()),
               "EXPORTGATE_ADMIN_PORT": str(free_port())} | env  # fmt: skip
    check, serve = check_and_serve(["--config", str(path)] if config else [], tmp_path, env)
    assert_both_refuse(check, serve, expected.format(**names))


def test_workers_override_keeps_admin_ports_off_the_proxy_port(tmp_path: Path) -> None:
    """`serve --workers 3` is refused when the workers' admin ports (admin.port + i) would take the proxy's port."""
    admin = free_port()
    config = complete_config(tmp_path, listen=admin + 2, admin=admin)
    config.write_text("quota: {store: redis, redis_url: 'redis://127.0.0.1:1'}\n" + config.read_text())
    code, _, err = finish(exportgate(["serve", "--config", str(config), "--workers", "3"], tmp_path, user_env()))
    ports = f"{admin}..{admin + 2}, which include the proxy's {admin + 2}"
    assert (code, err.splitlines()) == (1, [f"--workers 3: the 3 workers' admin listeners use ports {ports}"])


REGISTRY = """\
tenants:
  - id: orbit
    identities: [{{issuer: "https://idp.example.com", subject: orbit}}]
    location: {location}
    headquarters: {headquarters}
    parent_headquarters: {parent}
    kyc: {{status: verified, verified_at: 2025-04-01}}
"""

BAD_COUNTRIES = [
    ("lower-case", {"location": "in"},
     "4: tenants[0].location: 'in' is not an ISO 3166-1 code (codes are upper case: 'IN')"),
    ("country-name", {"headquarters": "India"},
     "5: tenants[0].headquarters: 'India' is not an ISO 3166-1 code (use the two-letter alpha-2 code)"),
    ("user-assigned", {"parent": "XX"},
     "6: tenants[0].parent_headquarters: 'XX' is not an ISO 3166-1 code (XX is user-assigned: it names no country)"),
    ("norway-unquoted", {"location": "NO"},
     '4: tenants[0].location: must be a string, not bool (quote codes such as "NO")'),
]  # fmt: skip


@pytest.mark.parametrize(("case", "countries", "expected"), BAD_COUNTRIES, ids=[c[0] for c in BAD_COUNTRIES])
def test_non_iso_registry_countries_are_errors(
    tmp_path: Path, case: str, countries: dict[str, str], expected: str
) -> None:
    """A registry country that is not an assigned ISO code fails `check` (and `serve`) at the field's line."""
    config = complete_config(tmp_path)
    (tmp_path / "tenants.yaml").write_text(
        REGISTRY.format(**({"location": "IN", "headquarters": "IN", "parent": "IN"} | countries))
    )
    check, serve = check_and_serve(["--config", str(config)], tmp_path, user_env())
    assert_both_refuse(check, serve, f"{tmp_path}/tenants.yaml:{expected}")


def test_missing_country_is_a_warning_naming_the_field(tmp_path: Path) -> None:
    """A country not yet recorded (absent or null) is a warning that says the field is missing; check still passes."""
    config = complete_config(tmp_path)
    registry = tmp_path / "tenants.yaml"
    registry.write_text(
        REGISTRY.format(location="DE", headquarters="null", parent="DE").replace("    parent_headquarters: DE\n", "")
    )
    code, out, err = finish(exportgate(["check", "--config", str(config)], tmp_path, user_env()))
    assert code == 0, out + err
    refused = "missing: tenant 'orbit' is refused tenant_country_unknown until it is recorded"
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {registry}:5: tenants[0].headquarters: {refused}",
        f"warning: {registry}:2: tenants[0].parent_headquarters: {refused}",
    ]


async def test_hot_reload_refuses_a_non_iso_country(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reloaded registry with a non-ISO country is refused: last good kept, WARNING with the problem, counted."""
    caplog.set_level(logging.WARNING, logger="gateway.adapters.policy_files")
    async with running_stack(tmp_path) as stack:
        registry = tmp_path / "tenants.yaml"
        text = registry.read_text()
        line = text.splitlines().index("    location: US") + 1
        registry.write_text(text.replace("    location: US", "    location: XX", 1))
        metric = 'exportgate_config_reloads_total{result="error"} 1.0'
        assert metric in await wait_for_metric(stack, metric)
        refused = [r for r in caplog.records if r.getMessage().startswith("reload refused")]
        assert [(r.levelno, r.getMessage()) for r in refused] == [
            (
                logging.WARNING,
                f"reload refused, keeping the last good pack and registry: {registry}:{line}: tenants[0].location: "
                "'XX' is not an ISO 3166-1 code (XX is user-assigned: it names no country)",
            )
        ]
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[
            0
        ] == 200  # the last good registry still places acme-us in US


def test_demo_with_a_broken_bundled_pack_prints_the_problem(tmp_path: Path) -> None:
    """`exportgate demo` from a source tree whose bundled pack was edited into an invalid one exits 1 with the line."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "gateway", tree / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    tiers = tree / "gateway" / "policies" / "ai-diffusion-2025" / "tiers.yaml"  # package data, read from there
    tiers.write_text(tiers.read_text().replace("  - MO\n", "  - XX\n", 1))
    code, out, err = finish(exportgate(["demo"], tree, user_env()), timeout=60)
    expected = (
        f"{tiers}:{TIERS_MO_LINE}: tier3[22]: 'XX' is not an ISO 3166-1 code (XX is user-assigned: it names no country)"
    )
    assert (code, err.splitlines()) == (1, [expected]), out + err


def test_demo_reads_the_policy_dir_from_the_environment(tmp_path: Path) -> None:
    """`exportgate demo` takes its pack and registry from EXPORTGATE_POLICY_DIR, as `serve` does: a broken copy
    there is reported with its own file and line (and a missing one by the variable), not the bundled ones."""
    shutil.copytree(POLICIES, tmp_path / "policies")
    tiers = tmp_path / "policies" / "ai-diffusion-2025" / "tiers.yaml"
    tiers.write_text(tiers.read_text().replace("  - MO\n", "  - XX\n", 1))
    code, out, err = finish(exportgate(["demo"], tmp_path, user_env(EXPORTGATE_POLICY_DIR=str(tmp_path / "policies"))))
    expected = (
        f"{tiers}:{TIERS_MO_LINE}: tier3[22]: 'XX' is not an ISO 3166-1 code (XX is user-assigned: it names no country)"
    )
    assert (code, err.splitlines()) == (1, [expected]), out + err
    code, out, err = finish(exportgate(["demo"], tmp_path, user_env(EXPORTGATE_POLICY_DIR=str(tmp_path / "nowhere"))))
    missing = [
        f"EXPORTGATE_POLICY_DIR: {tmp_path}/nowhere/ai-diffusion-2025: no such directory",
        f"EXPORTGATE_POLICY_DIR: {tmp_path}/nowhere/tenants.example.yaml: no such file",
    ]
    assert (code, err.splitlines()) == (1, missing), out + err
