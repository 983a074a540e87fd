"""Start and stop a real three-master Redis Cluster on free loopback ports for tests."""

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.redis_server import RedisProcess, free_port


@dataclass
class RedisClusterProcesses:
    """Three cluster-enabled redis-server masters covering all slots; `url` names one of them."""

    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cli() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli not found: install it (apt-get install redis-tools)")
    return binary


def start_cluster(masters: int = 3) -> RedisClusterProcesses:
    """Start `masters` nodes, join them with `redis-cli --cluster create`, wait for cluster_state:ok."""
    workdir = Path(tempfile.mkdtemp(prefix="exportgate-cluster-"))
    cluster = RedisClusterProcesses()
    try:
        for _ in range(masters):
            port = free_port()
            extra = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                "--cluster-node-timeout", "2000",
                # The default bus port (port + 10000) may be taken or past 65535.
                "--cluster-port", str(free_port()),
            )  # fmt: skip
            cluster.nodes.append(RedisProcess(port, workdir, extra=extra).start())
        addresses = [f"127.0.0.1:{node.port}" for node in cluster.nodes]
        subprocess.run(
            [_cli(), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [_cli(), "-p", str(node.port), "cluster", "info"], capture_output=True, text=True, timeout=5
                ).stdout
                for node in cluster.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return cluster
            time.sleep(0.05)
        raise RuntimeError("redis cluster did not reach cluster_state:ok")
    except BaseException:
        cluster.stop()
        raise
