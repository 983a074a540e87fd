"""Gateway processes for tests: `python -m gateway serve` children, their readiness and their clean end."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> int:
    """The first of `count` consecutive loopback ports that are free right now."""
    for _ in range(100):
        first = free_port()
        if first + count >= 65536:
            continue
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@dataclass
class GatewayProcess:
    """One `exportgate serve` process (a supervisor or a single gateway) in its own process group."""

    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, args: list[str], log: Path) -> "GatewayProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(proc, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def group_alive(self) -> bool:
        """True while any process of this one's group (its workers included) still runs; zombies do not count."""
        return any(pgrp == self.proc.pid and state != "Z" for _, state, _, pgrp in _processes())

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, wait; then SIGKILL whatever of the group is left. Returns the exit code."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return code


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, read from /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        yield int(entry.name), state, int(ppid), int(pgrp)


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    return {p for p, state, ppid, _ in _processes() if ppid == pid and state != "Z"}


def ready(admin_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{admin_url}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(admin_urls: list[str], procs: list[GatewayProcess], timeout: float = 30.0) -> None:
    """Poll each admin /readyz until all answer 200; fail early with the logs if a process exited."""
    deadline = time.monotonic() + timeout
    pending = list(admin_urls)
    while pending:
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {p.proc.returncode}:\n{p.output()}")
        pending = [url for url in pending if not ready(url)]
        if pending and time.monotonic() > deadline:
            logs = "\n".join(p.output() for p in procs)
            raise RuntimeError(f"not ready after {timeout} s: {pending}\n{logs}")
        if pending:
            time.sleep(0.1)
