"""deploy/compose holds together without Docker: its services name each other, their ports and mounted files
exist, Prometheus' configuration passes promtool, and the stack's own pieces (init.py's keys and token,
standin.py, the gateway.yaml) run here as processes wired the way Compose wires them, down to a job submitted
with init.py's token and answered by the stand-in scheduler."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli.preflight import preflight
from gateway.cli.workers import STOP_MARGIN_S
from gateway.config.bundled import BUNDLED_POLICIES
from gateway.config.located import load_text
from gateway.config.settings import Settings, parse_settings
from tests.deploy_kit import promtool
from tests.harness import SUBMIT, slurm_job
from tests.redis_server import RedisProcess, free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yaml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def binds(service: str) -> dict[str, Path]:
    """Container path -> repository file of each bind mount (a source starting with . is relative to the file)."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE_DIR / source).resolve()
    return out


def named_volumes(service: str) -> dict[str, str]:
    """Container path -> named volume."""
    out = {}
    for volume in services()[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if not source.startswith((".", "/")):
            out[target] = source
    return out


def gateway_config_text() -> str:
    args = services()["gateway"]["command"]
    return binds("gateway")[args[args.index("--config") + 1]].read_text()


def image_env() -> dict[str, str]:
    """The ENV lines of the Dockerfile the stack builds its image from."""
    build = services()["gateway"]["build"]
    dockerfile = (COMPOSE_DIR / build["context"] / build["dockerfile"]).read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in dockerfile.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def gateway_settings(env: dict[str, str] | None = None, text: str | None = None, base: Path = Path("/")) -> Settings:
    env = {**image_env(), **services()["gateway"]["environment"]} if env is None else env
    text = gateway_config_text() if text is None else text
    form_only = re.sub(r"^(\s*)signing_key_file: .*$", r"\1# (the key is checked with the keys init.py makes)", text,
                       flags=re.M) if base == Path("/") else text  # fmt: skip
    return parse_settings(load_text(form_only, "gateway.yaml"), base, env)


def test_services_name_each_other() -> None:
    """Every depends_on names a service, with a condition the target can meet (a healthcheck for healthy);
    each service runs a pinned image or the one built from the repository's Dockerfile."""
    found = services()
    assert set(found) == {"init", "gateway", "standin", "redis", "prometheus", "grafana"}
    for name, service in found.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in found and condition["condition"] in CONDITIONS, (name, target)
            if condition["condition"] == "service_healthy":
                assert found[target]["healthcheck"]["test"]
        if "build" in service:
            context = (COMPOSE_DIR / service["build"]["context"]).resolve()
            assert context == ROOT and (context / service["build"]["dockerfile"]).is_file()
        else:
            assert re.fullmatch(r"[a-z0-9./-]+:v?[0-9][\w.-]*", service["image"]), name  # a version, not latest
    assert {n for n, s in found.items() if "build" in s} == {"init", "gateway", "standin"}
    assert len({s["image"] for s in found.values() if "build" in s}) == 1  # built once


def test_mounted_files_exist_in_the_repository() -> None:
    """Every bind mount's source is a file of the repository (the dashboard and rules are deploy/'s own), and
    every named volume is declared and used."""
    declared = set(compose()["volumes"])
    used: set[str] = set()
    for name in services():
        for target, source in binds(name).items():
            assert source.is_file() and source.is_relative_to(ROOT), (name, target, source)
        used |= set(named_volumes(name).values())
    assert used == declared
    assert binds("grafana")["/var/lib/grafana/dashboards/exportgate.json"] == ROOT / "deploy/grafana/exportgate.json"
    assert binds("prometheus")["/etc/prometheus/rules/exportgate.yaml"] == ROOT / "deploy/prometheus/rules.yaml"


def _published(service: str) -> dict[int, str]:
    """Container port -> host address of each published port."""
    out = {}
    for port in services()[service].get("ports", []):
        host, published, target = port.split(":")
        assert published == target
        out[int(target)] = host
    return out


def test_ports_are_the_ones_the_services_listen_on() -> None:
    """Published ports are the gateway's proxy and admin listeners, Prometheus' and Grafana's, on loopback only;
    the scheduler and Redis stay on the stack's network."""
    settings = gateway_settings()
    assert _published("gateway") == {settings.listen_port: "127.0.0.1", settings.admin_port: "127.0.0.1"}
    assert settings.listen_host == settings.admin_host == "0.0.0.0"  # reachable from the other containers
    prometheus = services()["prometheus"]["command"]
    assert "--web.listen-address=:9090" in prometheus and _published("prometheus") == {9090: "127.0.0.1"}
    assert _published("grafana") == {3000: "127.0.0.1"}
    assert not _published("standin") and not _published("redis")


def test_the_gateway_reaches_the_stack() -> None:
    """gateway.yaml's upstream is the stand-in service on the port it listens on; the Redis URL names the Redis
    service; every file gateway.yaml names is on a volume; the stop grace period covers the drain."""
    settings = gateway_settings()
    (upstream,) = settings.upstreams
    standin = services()["standin"]
    assert upstream.url.rstrip("/") == f"http://standin:{standin['environment']['STANDIN_PORT']}"
    assert standin["expose"] == [standin["environment"]["STANDIN_PORT"]]
    assert services()["gateway"]["environment"]["EXPORTGATE_REDIS_URL"] == "redis://redis:6379/0"
    assert "redis_url" not in yaml.safe_load(gateway_config_text())["quota"]
    mounted = set(binds("gateway")) | set(named_volumes("gateway"))
    for path in (settings.ledger.dir, settings.ledger.anchor_dir, *(i.jwks_file for i in settings.issuers)):
        assert path is not None and any(path.is_relative_to(m) for m in mounted), path
    writable = {t for t, v in named_volumes("gateway").items() if not services()["gateway"]["volumes"]
                [[x.split(":")[1] for x in services()["gateway"]["volumes"]].index(t)].endswith(":ro")}  # fmt: skip
    assert {str(settings.ledger.dir), str(settings.ledger.anchor_dir)} <= writable
    assert named_volumes("init") == {t: v for t, v in named_volumes("gateway").items()}  # init prepares each
    grace = services()["gateway"]["stop_grace_period"]
    assert grace == f"{settings.shutdown.drain_s + settings.shutdown.grace_s + STOP_MARGIN_S:g}s"


def test_prometheus_scrapes_the_gateway_and_grafana_reads_prometheus(tmp_path: Path) -> None:
    """promtool accepts prometheus.yml with its rule files where the container has them; it scrapes the gateway's
    admin listener; Grafana's datasource is that Prometheus and its dashboards provider reads the mounted JSON."""
    config_path = next(a.split("=", 1)[1] for a in services()["prometheus"]["command"] if a.startswith("--config.file"))
    root = tmp_path / "prometheus"
    for target, source in binds("prometheus").items():
        (root / target.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text().replace("/etc/prometheus/", f"{root}/etc/prometheus/")
        (root / target.lstrip("/")).write_text(text)
    done = subprocess.run([promtool(), "check", "config", str(root / config_path.lstrip("/"))],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "rules found" in done.stdout  # the rule file was found and checked
    config = yaml.safe_load(binds("prometheus")[config_path].read_text())
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": [f"gateway:{gateway_settings().admin_port}"]}]
    assert job["metrics_path"] == "/metrics"

    grafana = binds("grafana")
    (datasource,) = yaml.safe_load(grafana["/etc/grafana/provisioning/datasources/exportgate.yaml"].read_text())[
        "datasources"]  # fmt: skip
    assert (datasource["type"], datasource["url"], datasource["isDefault"]) == ("prometheus", "http://prometheus:9090",
                                                                                True)  # fmt: skip
    providers = grafana["/etc/grafana/provisioning/dashboards/exportgate.yaml"]
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    dashboards = [t for t in grafana if Path(t).parent == Path(provider["options"]["path"])]
    assert [grafana[t].name for t in dashboards] == ["exportgate.json"]
    home = services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards


def test_the_image_holds_the_policies_the_gateway_reads() -> None:
    """gateway.yaml leaves policy: to the image's EXPORTGATE_POLICY_DIR, which the Dockerfile fills with the
    bundled pack and example registry."""
    assert "policy" not in yaml.safe_load(gateway_config_text())
    policy_dir = image_env()["EXPORTGATE_POLICY_DIR"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^COPY gateway/policies {re.escape(policy_dir)}$", dockerfile, re.M)
    assert BUNDLED_POLICIES == ROOT / "gateway" / "policies"


# --- The stack's pieces, run here -----------------------------------------------------------------------------


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    server = start_redis()
    yield server
    server.stop()


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer:\n{log.read_text()}")


def _start(args: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    outside = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, *args], cwd=cwd, env=outside | {"PYTHONPATH": str(ROOT)} | env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def test_the_stack_submits_a_job(tmp_path: Path, redis: RedisProcess) -> None:
    """init.py makes the keys into the volumes (twice: the second start keeps them), standin.py serves, and the
    gateway, reading gateway.yaml with the volumes where Compose mounts them and the image's and the service's
    environment (service names mapped to loopback), passes check, starts, and admits a job sent with
    `init.py --token acme-us`'s token: the stand-in scheduler answers it with a job id."""
    volumes = {target: tmp_path / "volumes" / name for target, name in named_volumes("gateway").items()}
    init = binds("init")["/opt/exportgate-compose/init.py"]
    command = services()["init"]["command"]
    assert [Path(c) for c in command] == [Path(t) for t in named_volumes("init")]
    mapped = [str(volumes[c]) for c in command]
    _run(init, *mapped, cwd=tmp_path)
    first = {p.name: p.read_bytes() for p in Path(mapped[0]).iterdir()}
    _run(init, *mapped, cwd=tmp_path)
    assert {p.name: p.read_bytes() for p in Path(mapped[0]).iterdir()} == first  # made once, kept
    assert {"ledger-signing.pem", "ledger-signing.pub.pem", "idp.pem", "jwks.json"} <= set(first)
    token = _run(init, "--token", "acme-us", mapped[0], cwd=tmp_path).strip()

    standin_port, proxy, admin = free_port(), free_port(), free_port()
    text = gateway_config_text()
    for target, path in volumes.items():
        text = text.replace(f" {target}", f" {path}")
    text = text.replace("http://standin:6820", f"http://127.0.0.1:{standin_port}")  # the stack's DNS, here
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    env = {**image_env(), **services()["gateway"]["environment"]}
    env |= {"EXPORTGATE_POLICY_DIR": str(BUNDLED_POLICIES), "EXPORTGATE_REDIS_URL": redis.url,
            "EXPORTGATE_LISTEN_HOST": "127.0.0.1", "EXPORTGATE_LISTEN_PORT": str(proxy),
            "EXPORTGATE_ADMIN_HOST": "127.0.0.1", "EXPORTGATE_ADMIN_PORT": str(admin)}  # fmt: skip
    settings = gateway_settings(env, text, tmp_path)
    found = preflight(settings, env)
    assert found.problems == [], found.problems

    standin_entry = services()["standin"]["entrypoint"]
    standin = binds("standin")[standin_entry[-1]]
    procs = [_start([str(standin)], {"STANDIN_PORT": str(standin_port), "STANDIN_HOST": "127.0.0.1"},
                    tmp_path / "standin.log", tmp_path)]  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{standin_port}/slurm/v0.0.38/ping", procs[0], tmp_path / "standin.log")
        args = ["-m", "gateway", "serve", *services()["gateway"]["command"]]
        args[args.index("--config") + 1] = str(config)
        procs.append(_start(args, env, tmp_path / "gateway.log", tmp_path))
        deadline = time.monotonic() + 30
        while not _ready(admin) and time.monotonic() < deadline:
            assert procs[1].poll() is None, (tmp_path / "gateway.log").read_text()
            time.sleep(0.1)
        assert _ready(admin), (tmp_path / "gateway.log").read_text()
        request = urllib.request.Request(
            f"http://127.0.0.1:{proxy}{SUBMIT}",
            data=json.dumps(slurm_job()).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read())["job_id"] == 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=60)
    verified = subprocess.run(
        [sys.executable, "-m", "gateway", "ledger", "verify", str(settings.ledger.dir), "--public-key",
         str(Path(mapped[0]) / "ledger-signing.pub.pem")], capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
