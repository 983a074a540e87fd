"""A real nginx (Debian `nginx-light`, installed when missing and root) on a free loopback port, for tests."""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "nginx-light"  # Debian's smallest nginx with the auth_request module


def ensure_nginx() -> str:
    """The nginx binary; installed with apt-get when it is missing and the tests run as root."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is not None:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"nginx is required: install it (apt-get install {PACKAGE})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", PACKAGE], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).exists():
        raise RuntimeError(f"nginx is still missing after apt-get install {PACKAGE}")
    return found


def main_conf(prefix: Path) -> str:
    """A whole nginx.conf including `prefix`/site.conf (an `http {}`-level text), in the foreground."""
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp = "".join(f"  {kind}_temp_path {prefix / kind};\n" for kind in kinds)
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
events {{ worker_connections 1024; }}
http {{
  access_log off;
{temp}  include {prefix / "site.conf"};
}}
"""


@dataclass
class Nginx:
    prefix: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def errors(self) -> str:
        log = self.prefix / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""


def check_conf(prefix: Path, site: str) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `site` (an http-level text) wrapped in a whole configuration."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    (prefix / "nginx.conf").write_text(main_conf(prefix))
    binary = ensure_nginx()
    return subprocess.run(
        [binary, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], capture_output=True, text=True, check=False
    )


@contextmanager
def running_nginx(prefix: Path, site: str, port: int) -> Iterator[Nginx]:
    """nginx serving `site` (which listens on 127.0.0.1:`port`) until the block ends."""
    checked = check_conf(prefix, site)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
    log = (prefix / "stdout.log").open("wb")
    proc = subprocess.Popen(
        [ensure_nginx(), "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited {proc.returncode}: {(prefix / 'error.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not open its port") from None
                time.sleep(0.05)
        yield Nginx(prefix, port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
