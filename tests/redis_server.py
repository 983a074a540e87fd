"""Start and stop real redis-server processes on free loopback ports for tests."""

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

_GIVEN: set[int] = set()  # ports handed out in this test process: two calls never return the same one


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that no earlier call returned.

    The kernel may hand a just-closed ephemeral port out again at once, so two calls in a row (a proxy and
    its webhook port) could collide without the set.
    """
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no free port that was not handed out already")


@dataclass
class RedisProcess:
    """One redis-server child process; `url` points at it."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: tuple[str, ...] = ()
    password: str | None = None  # `requirepass`: `url` then lacks it, `url_with_password` has it

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def url_with_password(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0" if self.password else self.url

    def start(self) -> "RedisProcess":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: install it (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *self.extra,
                *(("--requirepass", self.password) if self.password else ()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    auth = f"AUTH {self.password}\r\n".encode() if self.password else b""
                    sock.sendall(auth + b"PING\r\n")
                    expected = b"+OK\r\n+PONG" if self.password else b"+PONG"
                    got = b""
                    while len(got) < len(expected) and (part := sock.recv(64)):
                        got += part
                    if got.startswith(expected):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def start_redis(*extra: str, password: str | None = None) -> RedisProcess:
    """A fresh redis-server in its own temporary directory (with `password`, clients must AUTH)."""
    workdir = Path(tempfile.mkdtemp(prefix="exportgate-redis-"))
    return RedisProcess(free_port(), workdir, extra=extra, password=password).start()
