"""`exportgate nginx-config`: deterministic output that nginx accepts, routing as the gateway's route tables say."""

import re
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.cli.nginx_config import AUTH_URI, NginxConfigError, Targets, render, route_regex
from gateway.config.located import ConfigError
from gateway.config.settings import Settings, load_settings
from gateway.schedulers.slurm import ROUTES as SLURM_ROUTES
from tests.nginx_kit import check_conf

GATEWAY = """
listen: {host: 0.0.0.0, port: 8080}
admin: {host: 127.0.0.1, port: 9180}
decision: {host: 127.0.0.1, port: 9181}
upstreams:
  - name: slurm
    url: http://127.0.0.1:6820
    scheduler: slurm
    timeout_s: 30
    headers:
      X-SLURM-USER-NAME: {from_tenant: slurm_user}
      X-SLURM-USER-TOKEN: {env: SLURM_TOKEN}
  - name: ray
    url: https://localhost:8265
    prefix: /ray/
    strip_prefix: true
    scheduler: ray
    scheduler_options: {cluster_gpus: {H100: 8}}
  - name: batch
    url: http://127.0.0.1:8000/base
    prefix: /batch/
    scheduler: generic
    scheduler_options:
      submit_path: /batch/v1/jobs
      job_path: "/batch/v1/jobs/{job_id}"
      plain_read_paths: [/batch/v1/health]
      gpus_field: resources.gpus
      default_walltime_s: 3600
"""


def _settings(tmp_path: Path, text: str = GATEWAY) -> Settings:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_settings(path, env={"SLURM_TOKEN": "t"})


def test_output_is_deterministic_and_nginx_accepts_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _settings(tmp_path)
    targets = Targets("127.0.0.1:8000", "127.0.0.1:8080", "127.0.0.1:9181")
    first = render(settings, targets)
    assert first == render(_settings(tmp_path), targets)
    argv = ["nginx-config", "--config", str(tmp_path / "gateway.yaml"), "--listen", "127.0.0.1:8000"]
    assert main([*argv, "--out", str(tmp_path / "site.conf")]) == 0
    assert (tmp_path / "site.conf").read_text() == first  # the CLI's defaults: gateway.yaml's listeners
    checked = check_conf(tmp_path / "nginx", first)
    assert checked.returncode == 0, checked.stderr


def test_job_changing_routes_go_to_the_proxy(tmp_path: Path) -> None:
    """Per upstream, in table order: submit, update, cancel, listings and Ray packages 1 (proxy), reads "" (decide)."""
    text = render(_settings(tmp_path), Targets("8000", "127.0.0.1:8080", "127.0.0.1:9181"))
    via0 = text.split('map "$request_method $uri" $eg_via0 {', 1)[1].split("}", 1)[0]
    marks = {}
    for line in via0.splitlines():
        if "  # " in line:
            rule, comment = line.split("  # ", 1)
            marks[comment.split(" ")[0]] = rule.rsplit(" ", 1)[1]
    assert marks["slurm.job.submit"] == "1;" and marks["slurm.job.update"] == "1;"
    assert marks["slurm.job.cancel"] == "1;" and marks["slurm.jobs"] == "1;"
    assert marks["slurm.job.read"] == '"";' and marks["slurm.ping"] == '"";'
    assert '"~^(?:GET|HEAD) /ray/api/packages/gcs/[^/]+$" 1;' in text  # read by digest: the proxy's
    assert '"~^(?:POST) /ray/api/jobs/$" 1;' in text  # strip_prefix: nginx matches the client's path
    assert '"~^/ray(/.*)$" $1;' in text and "proxy_pass https://eg_u1$eg_uri1;" in text
    assert "proxy_pass http://eg_u2/base$request_uri;" in text  # the URL's own path goes first, as url_for
    assert "proxy_ssl_verify on;" in text and 'proxy_set_header Host "localhost:8265";' in text
    assert "proxy_set_header X-SLURM-USER-TOKEN $eg_h_x_slurm_user_token;" in text
    assert "location / {  # upstream slurm" in text and "location ^~ /ray/ {  # upstream ray" in text
    assert "location = /batch {  # upstream batch" in text
    assert f"location = {AUTH_URI} {{\n    internal;" in text
    assert "upstream eg_proxy { server 127.0.0.1:8080; keepalive 32; }" in text


def test_route_regex_matches_what_the_route_matches() -> None:
    for route in SLURM_ROUTES:
        regex = re.compile(route_regex(route, ""))
        path = route.pattern.replace("{version}", "v0.0.38").replace("{job_id}", "12")
        for method in route.methods:
            assert regex.match(f"{method} {path}"), (route.name, method)
        assert not regex.match(f"TRACE {path}")
        assert not regex.match(f"GET {path}/x")


def test_without_a_decision_listener_it_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _settings(tmp_path, GATEWAY.replace("decision: {host: 127.0.0.1, port: 9181}\n", ""))
    assert main(["nginx-config", "--config", str(tmp_path / "gateway.yaml")]) == 1
    assert "no `decision:` listener" in capsys.readouterr().err
    argv = ["nginx-config", "--config", str(tmp_path / "gateway.yaml"), "--decision", "10.0.0.5:9181"]
    assert main(argv) == 0 and "server 10.0.0.5:9181;" in capsys.readouterr().out


def test_bad_gateway_yaml_is_reported_like_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "gateway.yaml").write_text("upstreams: []\ndecision: {port: 99999}\n")
    assert main(["nginx-config", "--config", str(tmp_path / "gateway.yaml")]) == 1
    err = capsys.readouterr().err
    assert "gateway.yaml:2: decision.port: must be 1..65535" in err


def test_a_route_on_the_auth_location_is_refused(tmp_path: Path) -> None:
    route = '    routes: [{name: x, path: "/.exportgate/{p}", kind: plain_read}]\n'
    text = GATEWAY.replace("    timeout_s: 30\n", "    timeout_s: 30\n" + route)
    with pytest.raises(NginxConfigError, match="auth location"):
        render(_settings(tmp_path, text), Targets("80", "127.0.0.1:8080", "127.0.0.1:9181"))


def test_decision_listener_must_not_share_a_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`decision.port` on the proxy's or an admin port is refused where it is written, as `check` prints it."""
    for clash, who in (("8080", "proxy"), ("9180", "admin listener")):
        (tmp_path / "gateway.yaml").write_text(GATEWAY.replace("port: 9181}", f"port: {clash}}}"))
        assert main(["check", "--config", str(tmp_path / "gateway.yaml")]) == 1
        out = capsys.readouterr()
        assert f"gateway.yaml:4: decision.port: the {who} and the decision listener both use port {clash}" in (
            out.out + out.err
        )
    text = GATEWAY.replace("port: 9181}", "port: 9181, tls: true}")
    with pytest.raises(ConfigError, match=r"decision\.tls"):
        _settings(tmp_path, text)
