"""A real S3-compatible server (moto's server mode) on a loopback port, and the gateway config and clients for it.

moto_server is started as a child process on a free port (no credentials checked there: the gateway signs
with its own, and tests check what reaches it through the store's own answers). Clients are boto3 (run in
a thread: the gateway under test shares the event loop) and the `aws` CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore
from botocore.config import Config

if TYPE_CHECKING:  # the stubs are a type-checking dependency only (not installed by the floors run)
    from mypy_boto3_s3 import S3Client

from tests.harness import ISSUER, POLICIES, tenant
from tests.redis_server import free_port

BIN = Path(sys.executable).parent
REGION = "us-east-1"
GATEWAY_KEY_ID = "gateway-store-key"
GATEWAY_SECRET = "gateway-store-secret-0123456789"


@dataclass
class MotoServer:
    """One moto_server child; `url` points at it."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> S3Client:
        """A client straight to the store (the operator's view), not through the gateway."""
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=GATEWAY_KEY_ID,
                            aws_secret_access_key=GATEWAY_SECRET, region_name=REGION)  # fmt: skip

    def reset(self) -> None:
        """Empty the store between tests (moto's own reset endpoint)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=5).close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_moto() -> MotoServer:
    binary = shutil.which("moto_server", path=str(BIN)) or shutil.which("moto_server")
    if binary is None:
        raise RuntimeError("moto_server not found: pip install 'moto[server]'")
    port = free_port()
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1).close()
            return MotoServer(port, proc)
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def moto_fixture() -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


def write_store_secrets(workdir: Path) -> None:
    (workdir / "store-key-id").write_text(GATEWAY_KEY_ID + "\n")
    (workdir / "store-secret").write_text(GATEWAY_SECRET + "\n")


def s3_options(workdir: Path, extra: str = "") -> str:
    """The `scheduler_options` of an s3 upstream (YAML at an upstream entry's indent)."""
    write_store_secrets(workdir)
    return (
        "    scheduler_options:\n"
        f"      region: {REGION}\n"
        f"      access_key_id: {{file: {workdir / 'store-key-id'}}}\n"
        f"      secret_access_key: {{file: {workdir / 'store-secret'}}}\n"
        f"      presign_max_s: 600\n{extra}"
    )


def weights_pack(workdir: Path, weights_yaml: str, pack_yaml: Callable[[str], str] | None = None) -> Path:
    """The bundled pack with another weights.yaml (and pack.yaml, edited by `pack_yaml`)."""
    pack = workdir / "pack"
    pack.mkdir(exist_ok=True)
    for source in (POLICIES / "ai-diffusion-2025").glob("*.yaml"):
        text = source.read_text()
        if source.name == "pack.yaml" and pack_yaml is not None:
            text = pack_yaml(text)
        (pack / source.name).write_text(text)
    (pack / "weights.yaml").write_text(weights_yaml)
    return pack


@dataclass(frozen=True)
class KeyPair:
    key_id: str
    secret: str


def store_tenant(workdir: Path, tenant_id: str, countries: str, buckets: str, extra: str = "") -> tuple[str, KeyPair]:
    """A verified tenant (harness.tenant) with an object_store section and an access key whose secret is a file."""
    key = KeyPair(f"EG{tenant_id.upper().replace('-', '')}0001", f"{tenant_id}-secret-0123456789abcdef")
    secret_file = workdir / f"{tenant_id}.s3-secret"
    secret_file.write_text(key.secret + "\n")
    section = (
        f"\n    object_store:\n      buckets: [{buckets}]\n"
        f"      access_keys: [{{id: {key.key_id}, secret_file: {secret_file}}}]{extra}"
    )
    return tenant(tenant_id, countries, section), key


def sigv4_client(endpoint: str, key: KeyPair, **config: Any) -> S3Client:
    """boto3 signing with the tenant's own access key (path-style: the gateway reads bucket from the path)."""
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key.key_id, aws_secret_access_key=key.secret,
                        region_name=REGION, config=Config(s3={"addressing_style": "path"},
                                                          retries={"max_attempts": 1}, **config))  # fmt: skip


def bearer_client(endpoint: str, token: Callable[[], str]) -> S3Client:
    """boto3 without SigV4, sending the tenant's bearer token instead."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                          config=Config(signature_version=botocore.UNSIGNED, s3={"addressing_style": "path"},
                                        retries={"max_attempts": 1}))  # fmt: skip

    def add_bearer(request: Any, **_: Any) -> None:
        request.headers["Authorization"] = f"Bearer {token()}"

    client.meta.events.register("before-send.s3.*", add_bearer)
    return client


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A blocking client call off the event loop the gateway under test runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def aws_cli(args: list[str], endpoint: str, key: KeyPair, workdir: Path) -> tuple[int, str, str]:
    """`aws <args> --endpoint-url endpoint` as the tenant (a subprocess; config and credentials from env only)."""
    config = workdir / "aws-config"
    config.write_text(
        "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n  multipart_threshold = 6MB\n"
        "  multipart_chunksize = 5MB\nretry_mode = standard\nmax_attempts = 1\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),
        "AWS_ACCESS_KEY_ID": key.key_id,
        "AWS_SECRET_ACCESS_KEY": key.secret,
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "aws"), *args, "--endpoint-url", endpoint, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def registry(*tenants: str) -> str:
    return "tenants:" + "".join(tenants) + "\n"


__all__ = ["ISSUER"]
