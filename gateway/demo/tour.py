"""`exportgate demo`: the gateway and a stand-in scheduler on free ports, one tenant per case."""

import asyncio
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.adapters.ledger.signing import generate, load_public_key
from gateway.cli.ledger import verify
from gateway.cli.preflight import preflight
from gateway.config.located import ConfigError
from gateway.config.settings import load_settings
from gateway.demo.standin import StandinState, standin_app
from gateway.http.app import Server

ISSUER = "https://idp.example.com"
AUDIENCE = "exportgate"
SUBMISSION = {
    "job": {
        "name": "train-7b",
        "partition": "gpu",
        "account": "team-a",
        "time_limit": 120,
        "tasks": 1,
        "nodes": 1,
        "gpus": "h100:8",
        "environment": {"PATH": "/usr/bin:/bin"},
        "current_working_directory": "/tmp",
    },
    "script": "#!/bin/bash\nsrun python train.py",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scenarios(tenant_ids: list[str]) -> list[tuple[str, int]]:
    """One 8-GPU job per tenant, then jobs that show the caps with the example registry's tenants (those a
    registry from EXPORTGATE_POLICY_DIR lacks are left out): Tier 1 is metered but uncapped, and two
    affiliates of one group share the 26.9M TPP LPP allowance (about 1,699 H100s)."""
    caps = [("acme-us", 4096), ("falcon-ae", 1600), ("falcon-sg", 256)]
    return [(t, 8) for t in tenant_ids] + [(t, gpus) for t, gpus in caps if t in tenant_ids]


def _token(key: ec.EllipticCurvePrivateKey, subject: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 300}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "demo-1"})


def _config(workdir: Path, upstream_port: int, jwks: Path) -> Path:
    path = workdir / "gateway.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {_free_port()}}}
admin: {{host: 127.0.0.1, port: {_free_port()}}}
instance_id: demo
ledger: {{dir: {workdir / "ledger"}, signing_key_file: {workdir / "keys" / "ledger.pem"}}}
auth:
  issuers:
    - issuer: "{ISSUER}"
      audiences: ["{AUDIENCE}"]
      algorithms: [ES256]
      jwks_file: {jwks}
upstreams:
  - name: slurm
    url: http://127.0.0.1:{upstream_port}
    scheduler: slurm
    headers:
      X-SLURM-USER-NAME: {{from_tenant: slurm_user}}
""")
    return path


@contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    """The demo's directory: `keep` (made if need be, left behind), else a temporary one removed at the end."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="exportgate-demo-") as tmp:
        yield Path(tmp)


def _keep_files(workdir: Path, key: ec.EllipticCurvePrivateKey, config: Path, pack: Path, registry: Path) -> None:
    """What a kept demo leaves to explore: its own copy of the registry (named in gateway.yaml with the pack), the
    token issuer's private key (mode 0600; the JWKS beside it has the public half) and a job body for `explain`
    (256 H100s, the job the demo's falcon-sg is refused)."""
    shutil.copyfile(registry, workdir / "tenants.yaml")
    with config.open("a") as fh:
        fh.write(f"policy: {{pack: {pack}, registry: {workdir / 'tenants.yaml'}}}\n")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    fd = os.open(workdir / "keys" / "issuer.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    job = json.loads(json.dumps(SUBMISSION))
    job["job"]["gpus"] = "h100:256"  # the job falcon-sg was refused in the demo: `explain` says why
    (workdir / "job.json").write_text(json.dumps(job, indent=2) + "\n")


def next_commands(workdir: Path, pack: Path) -> list[str]:
    """The commands a kept demo suggests, on its own files."""
    ledger, public = shlex.quote(str(workdir / "ledger")), shlex.quote(str(workdir / "keys" / "ledger.pub.pem"))
    config, job, html = (shlex.quote(str(workdir / name)) for name in ("gateway.yaml", "job.json", "compute-held.html"))
    return [
        f"exportgate ledger verify {ledger} --public-key {public}",
        f"exportgate replay --ledger {ledger} --policy {shlex.quote(str(pack))}",
        f"exportgate report compute-held --ledger {ledger} --public-key {public} --out {html}",
        f"exportgate report refusals-access --ledger {ledger} --public-key {public} --format csv",
        f"exportgate explain --config {config} --tenant falcon-sg --method POST --path /slurm/v0.0.38/job/submit "
        f"--body-file {job}",
        f"exportgate usage --config {config}",
    ]


async def run_demo(keep: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """Send one submission per example tenant; the decision rows, and `ledger verify`'s exit status. With `keep`,
    the demo's files stay in that directory and the commands to try on them are printed."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "demo-1", "use": "sig", "alg": "ES256"})
    with _workdir(keep) as workdir:
        jwks = workdir / "jwks.json"
        jwks.write_text(json.dumps({"keys": [jwk]}))
        (workdir / "keys").mkdir()
        generate(workdir / "keys" / "ledger.pem", workdir / "keys" / "ledger.pub.pem")
        upstream_port = _free_port()
        # No `policy:` in the demo's config: the pack and registry under EXPORTGATE_POLICY_DIR, else the bundled ones.
        policy_env = {k: v for k, v in os.environ.items() if k == "EXPORTGATE_POLICY_DIR"}
        config = _config(workdir, upstream_port, jwks)
        settings = load_settings(config, env=policy_env)
        if keep is not None:  # its own copy of the registry, and the pack named, so the kept config stands alone
            _keep_files(workdir, key, config, settings.pack_dir, settings.registry_file)
            settings = load_settings(config, env={})
        problems = preflight(settings, {}).problems  # what `serve` would refuse to start with
        if problems:
            raise ConfigError(problems)
        state = StandinState()
        runner = web.AppRunner(standin_app(state), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
        server = Server(settings, env={})
        await server.start()
        rows = []
        try:
            assert server.policy is not None
            url = f"http://127.0.0.1:{settings.listen_port}/slurm/v0.0.38/job/submit"
            tenants = server.policy.registry.tenants
            async with aiohttp.ClientSession() as client:
                for tenant_id, gpus in scenarios(list(tenants)):
                    tenant = tenants[tenant_id]
                    token = _token(key, tenant.identities[0].subject)
                    body = json.loads(json.dumps(SUBMISSION))
                    body["job"]["gpus"] = f"h100:{gpus}"
                    async with client.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
                        answer = await resp.json(content_type=None)
                    rows.append(
                        {
                            "tenant": tenant.id,
                            "tier": _tier_of(server, tenant.id),
                            "kyc": tenant.kyc.status.value,
                            "gpus": f"{gpus} x H100",
                            "status": resp.status,
                            "decision": "allow" if resp.status < 300 else "deny",
                            "code": answer.get("code", "") if isinstance(answer, dict) else "",
                        }
                    )
        finally:
            await server.stop()
            await runner.cleanup()
        print(format_table(rows))
        # The ledger every decision above went to, checked as an auditor would: key kept outside it.
        print("\nexportgate ledger verify (signed checkpoints, key kept outside the ledger):", flush=True)
        verified = verify(workdir / "ledger", load_public_key(workdir / "keys" / "ledger.pub.pem"), {})
        if keep is not None:
            print(f"\nkept in {workdir}: gateway.yaml, tenants.yaml, jwks.json, job.json, keys/ (ledger-signing pair "
                  "ledger.pem and ledger.pub.pem, token issuer issuer.pem), ledger/\nnext, try:")  # fmt: skip
            print("\n".join(f"  {command}" for command in next_commands(workdir, settings.pack_dir)))
        return rows, verified


def _tier_of(server: Server, tenant_id: str) -> str:
    from datetime import UTC, datetime

    from gateway.core.iso import ISO_3166_ALPHA2
    from gateway.core.tiers import resolve_tier

    assert server.policy is not None
    tenant = server.policy.registry.tenants[tenant_id]
    tier, _ = resolve_tier(tenant.countries(), server.policy.pack.tiers, ISO_3166_ALPHA2, datetime.now(UTC).date())
    return "?" if tier is None else str(int(tier))


def format_table(rows: list[dict[str, Any]]) -> str:
    headers = ["tenant", "tier", "kyc", "gpus", "status", "decision", "code"]
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in headers]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(row[h]).ljust(w) for h, w in zip(headers, widths, strict=True)))
    return "\n".join(lines)


def main(keep: Path | None = None) -> int:
    logging.getLogger("gateway").setLevel(logging.WARNING)
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        print(f"error: {keep}: --keep needs a new or empty directory", file=sys.stderr)
        return 1
    try:
        _, verified = asyncio.run(run_demo(keep))
    except ConfigError as exc:  # the pack or registry (bundled, edited, or EXPORTGATE_POLICY_DIR's): say where
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    return verified  # 1 when the ledger the demo wrote does not verify
