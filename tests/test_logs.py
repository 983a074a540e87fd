"""Logs a platform team can use: JSON lines by default off a terminal, one event per request naming its
decision, tenant, route kind, status and duration, each worker named, reloads saying what changed, and
client text that can neither break a line nor fake a field."""

import ast
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.logs import InstanceFilter, TextFormatter, chosen_format, install, json_formatter
from gateway.config.located import ConfigError, load_text
from gateway.config.logs import LogSettings
from gateway.config.settings import load_settings, parse_settings
from gateway.demo.standin import StandinState
from tests.harness import (
    JOB_PATH,
    POLICIES,
    SUBMIT,
    Idp,
    call,
    running_stack,
    slurm_job,
    start_standin,
    wait_until,
    write_config,
)
from tests.processes import ROOT, GatewayProcess, free_ports, wait_ready
from tests.redis_server import RedisProcess

UPSTREAM = "upstreams: [{url: 'http://x'}]\n"


# -- the `log:` section and its variables -----------------------------------------------------


def settings_of(text: str, env: dict[str, str] | None = None) -> LogSettings:
    return parse_settings(load_text(text, "gateway.yaml"), Path("/"), env or {}).log


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_of(text, env)
    return [str(p) for p in caught.value.problems]


def test_log_section_defaults_and_values() -> None:
    """No section: auto format, info, no access log; each field as written, and the variables over the file."""
    assert settings_of(UPSTREAM) == LogSettings("auto", "info", False)
    text = UPSTREAM + "log: {format: text, level: warning, access: true}\n"
    assert settings_of(text) == LogSettings("text", "warning", True)
    env = {"EXPORTGATE_LOG_FORMAT": "JSON", "EXPORTGATE_LOG_LEVEL": "debug"}
    assert settings_of(text, env) == LogSettings("json", "debug", True)


BAD_LOG = [
    ("format", "log: {format: xml}\n", {}, "gateway.yaml:2: log.format: 'xml' is not one of json, text, auto"),
    ("level", "log:\n  level: loud\n", {}, "gateway.yaml:3: log.level: 'loud' is not one of debug, info, warning"),
    ("access", "log: {access: yes please}\n", {}, "gateway.yaml:2: log.access: must be true or false"),
    ("unknown-key", "log: {colour: red}\n", {}, "gateway.yaml:2: log.colour: unknown key"),
    ("not-a-mapping", "log: json\n", {}, "gateway.yaml:2: log: must be a mapping"),
    ("format-variable", "", {"EXPORTGATE_LOG_FORMAT": "xml"}, "EXPORTGATE_LOG_FORMAT: 'xml' is not one of json"),
    ("level-variable", "", {"EXPORTGATE_LOG_LEVEL": "5"}, "EXPORTGATE_LOG_LEVEL: '5' is not one of debug"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "text", "env", "expected"), BAD_LOG, ids=[c[0] for c in BAD_LOG])
def test_bad_log_settings_are_located(case: str, text: str, env: dict[str, str], expected: str) -> None:
    """A bad value in the file names its line and field; a bad variable names the variable."""
    problems = problems_of(UPSTREAM + text, env)
    assert any(p.startswith(expected) for p in problems), problems


def test_auto_is_text_on_a_terminal_and_json_anywhere_else() -> None:
    """The documented rule: standard error a terminal -> text; a pipe or a file (a container's log) -> JSON."""
    primary, secondary = os.openpty()
    try:
        with os.fdopen(secondary, "w", closefd=False) as tty:
            assert chosen_format(LogSettings(), tty) == "text"
            assert chosen_format(LogSettings("json"), tty) == "json"
    finally:
        os.close(primary)
        os.close(secondary)
    assert chosen_format(LogSettings(), io.StringIO()) == "json"
    assert chosen_format(LogSettings("text"), io.StringIO()) == "text"


# -- formats -----------------------------------------------------------------------------------

HOSTILE = 'curl" status=200 tenant=acme-us\nINFO forged line \u2028x'
USER_AGENT = "curl\" status=200 tenant=acme-us code=' INFO forged"  # what a header can carry: no line break


def record(message: str = "request", **fields: Any) -> logging.LogRecord:
    rec = logging.LogRecord("gateway.request", logging.INFO, __file__, 1, message, None, None)
    rec.__dict__.update(fields)
    InstanceFilter("gw-w1").filter(rec)
    return rec


def test_json_lines_carry_every_field_and_escape_client_text() -> None:
    """One JSON object per line; a hostile value comes back exactly as it went in, as one field."""
    line = json_formatter().format(record(decision_id="d1", tenant="acme-us", status=200, user_agent=HOSTILE))
    assert "\n" not in line
    event = json.loads(line)
    assert event["user_agent"] == HOSTILE and event["status"] == 200 and event["tenant"] == "acme-us"
    assert (event["level"], event["logger"], event["message"], event["instance"]) == (
        "INFO", "gateway.request", "request", "gw-w1",
    )  # fmt: skip
    assert event["time"].endswith("+00:00")


def test_text_lines_quote_client_text_on_one_line() -> None:
    """Text keeps one line per event: a hostile value is a quoted literal that reads back as itself, and a
    message with a line break in it is shown escaped."""
    line = TextFormatter().format(record("client sent\r\nINFO fake", decision_id="d1", status=499, user_agent=HOSTILE))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert " INFO [gw-w1] gateway.request: client sent\\r\\nINFO fake decision_id=d1 status=499 user_agent=" in line
    shown = line.split(" user_agent=", 1)[1]
    assert ast.literal_eval(shown) == HOSTILE


def test_install_replaces_its_own_handler_and_sets_the_level() -> None:
    """A second install does not double every line; the level applies to the gateway's loggers."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        first, second = io.StringIO(), io.StringIO()
        install(LogSettings("json", "warning"), "gw", first)
        install(LogSettings("json", "warning"), "gw", second)
        logging.getLogger("gateway.request").info("hidden")
        logging.getLogger("gateway.x").warning("shown")
        assert first.getvalue() == ""
        assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["shown"]
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)


# -- request events, in process ----------------------------------------------------------------


def events(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


async def test_each_request_is_one_event_with_its_decision(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An admitted submission, a refusal and an owned read: one event each, naming decision, tenant, route
    kind, status, refusal code and duration; with `log.access` an access line beside each."""
    caplog.set_level(logging.INFO, logger="gateway.access")
    caplog.set_level(logging.DEBUG, logger="gateway.request")  # last: caplog's handler takes the last level set
    async with running_stack(tmp_path, extra="log: {access: true}") as stack:
        ok = await call(stack, "POST", SUBMIT, "acme-us", payload=slurm_job())
        refused = await call(
            stack, "POST", SUBMIT, "harbour-hk", payload=slurm_job(), headers={"User-Agent": USER_AGENT}
        )
        read = await call(stack, "GET", JOB_PATH.format(ok[1]["job_id"]), "acme-us")
    assert (ok[0], refused[0], read[0]) == (200, 451, 200)
    got = {vars(r)["decision_id"]: r for r in events(caplog, "gateway.request")}
    ids = [reply[2]["X-Exportgate-Decision-Id"] for reply in (ok, refused, read)]
    assert set(ids) <= set(got)
    fields = ("tenant", "route_kind", "status", "code", "upstream", "entry")
    rows = [tuple(vars(got[i])[f] for f in fields) for i in ids]
    assert rows == [
        ("acme-us", "submit", 200, None, "slurm", "proxy"),
        ("harbour-hk", "submit", 451, "tier3_embargoed", "slurm", "proxy"),
        ("acme-us", "read", 200, None, "slurm", "proxy"),
    ]
    assert all(isinstance(vars(got[i])["duration_ms"], float) and vars(got[i])["duration_ms"] > 0 for i in ids)
    access = {vars(r)["decision_id"]: r for r in events(caplog, "gateway.access")}
    line = vars(access[ids[1]])
    assert (line["user_agent"], line["method"], line["path"], line["status"]) == (USER_AGENT, "POST", SUBMIT, 451)
    # Both formats keep each event to one line.
    for rec in [got[ids[1]], access[ids[1]]]:
        InstanceFilter("test-gw").filter(rec)
        assert json.loads(json_formatter().format(rec))["decision_id"] == ids[1]
        text = TextFormatter().format(rec)
        assert "\n" not in text and f" decision_id={ids[1]} " in text
    shown = TextFormatter().format(access[ids[1]]).split(" user_agent=", 1)[1]
    assert ast.literal_eval(shown) == USER_AGENT  # quoted whole: its "status=200" is no field of the line


async def test_no_access_lines_unless_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`log.access` is off by default: request events only, and an answered request's at DEBUG (a refusal's
    at INFO), so the default level logs no line for a request that went through."""
    caplog.set_level(logging.DEBUG, logger="gateway")
    async with running_stack(tmp_path) as stack:
        assert (await call(stack, "GET", "/slurm/v0.0.38/ping", "acme-us"))[0] == 200
        assert (await call(stack, "GET", "/slurm/v0.0.38/ping", "harbour-hk"))[0] == 451
    assert events(caplog, "gateway.access") == []
    levels = [(vars(r)["status"], r.levelname) for r in events(caplog, "gateway.request")]
    assert levels == [(200, "DEBUG"), (451, "INFO")]


async def test_a_reload_names_what_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Tenants added, removed and changed, and the pack's version before and after, in the reload's event."""
    pack = tmp_path / "pack"
    shutil.copytree(POLICIES / "ai-diffusion-2025", pack)
    caplog.set_level(logging.INFO, logger="gateway.adapters.policy_files")
    async with running_stack(tmp_path, pack=pack, reload="interval_s: 3600") as stack:  # reloaded by hand
        registry = tmp_path / "tenants.yaml"
        text = registry.read_text()
        start = text.index("  - id: harbour-hk")
        end = text.index("  - id: unplaced")
        text = text[:start] + text[end:]  # harbour-hk removed
        text = text.replace("  - id: selva-br", "  - id: selva-br-2", 1)  # one renamed: removed and added
        acme = text.index("  - id: acme-us")
        text = text[:acme] + text[acme:].replace("location: US", "location: CA", 1)  # acme-us changed
        registry.write_text(text)
        (pack / "pack.yaml").write_text(
            (pack / "pack.yaml").read_text().replace('version: "2025.1"', 'version: "2025.2"')
        )
        stack.server.policy.reload()
    reloads = [r for r in caplog.records if r.getMessage().startswith("reloaded pack")]
    assert len(reloads) == 1
    event = vars(reloads[0])
    assert event["tenants_added"] == ["selva-br-2"]
    assert event["tenants_removed"] == ["harbour-hk", "selva-br"]
    assert event["tenants_changed"] == ["acme-us"]
    assert (event["pack_version"], event["previous_pack_version"], event["pack_changed"]) == ("2025.2", "2025.1", True)
    assert "1 tenants added, 2 removed, 1 changed" in reloads[0].getMessage()
    InstanceFilter("test-gw").filter(reloads[0])
    assert json.loads(json_formatter().format(reloads[0]))["tenants_removed"] == ["harbour-hk", "selva-br"]


# -- the real process: what a container's log collector reads ----------------------------------


def serve(config: Path, log: Path, **env: str) -> GatewayProcess:
    """`exportgate serve` with standard error into a file (no terminal), with `env` over a clean environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
            cwd=ROOT, env=base | env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return GatewayProcess(proc, log)


async def test_serve_writes_json_lines_off_a_terminal(tmp_path: Path) -> None:
    """A gateway process whose standard error is a file writes only JSON lines; each request's event carries
    its decision id, tenant, route kind, status, duration and instance; a hostile User-Agent stays one field."""
    state = StandinState()
    runner, url = await start_standin(state)
    idp = Idp()
    (tmp_path / "jwks.json").write_text(json.dumps(idp.jwks()))
    config = write_config(tmp_path, url, instance_id="gw-logs", extra="log: {access: true, level: debug}")
    settings = load_settings(config, env={})
    gateway = serve(config, tmp_path / "serve.log")
    try:
        wait_ready([f"http://127.0.0.1:{settings.admin_port}"], [gateway])
        base = f"http://127.0.0.1:{settings.listen_port}"
        headers = {"Authorization": f"Bearer {idp.token('acme-us')}", "User-Agent": USER_AGENT}
        ok = await call(base, "POST", SUBMIT, payload=slurm_job(), headers=headers)
        denied = await call(base, "GET", "/slurm/v0.0.38/ping")
        assert (ok[0], denied[0]) == (200, 401)
    finally:
        code = gateway.stop()
        await runner.cleanup()
    assert code == 0, gateway.output()
    lines = gateway.output().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line, the gateway's and aiohttp's, is JSON
    assert all(p["instance"] == "gw-logs" and {"time", "level", "logger", "message"} <= p.keys() for p in parsed)
    requests = {p["decision_id"]: p for p in parsed if p["logger"] == "gateway.request"}
    submitted = requests[ok[2]["X-Exportgate-Decision-Id"]]
    assert (submitted["tenant"], submitted["route_kind"], submitted["status"]) == ("acme-us", "submit", 200)
    assert submitted["duration_ms"] > 0 and submitted["level"] == "DEBUG"  # answered: DEBUG; refused: INFO
    refused = requests[denied[2]["X-Exportgate-Decision-Id"]]
    assert refused["level"] == "INFO"
    assert (refused["tenant"], refused["route_kind"], refused["status"], refused["code"]) == (
        None, "none", 401, "auth_missing",
    )  # fmt: skip
    access = next(p for p in parsed if p["logger"] == "gateway.access" and p["decision_id"] == submitted["decision_id"])
    assert access["user_agent"] == USER_AGENT and access["path"] == SUBMIT


async def test_the_variable_turns_a_process_to_text(tmp_path: Path) -> None:
    """EXPORTGATE_LOG_FORMAT=text wins over the file's and the automatic choice: text lines, naming the instance."""
    idp = Idp()
    (tmp_path / "jwks.json").write_text(json.dumps(idp.jwks()))
    config = write_config(tmp_path, "http://127.0.0.1:9", instance_id="gw-text", extra="log: {format: json}")
    settings = load_settings(config, env={})
    gateway = serve(config, tmp_path / "serve.log", EXPORTGATE_LOG_FORMAT="text", EXPORTGATE_LOG_LEVEL="info")
    try:
        wait_ready([f"http://127.0.0.1:{settings.admin_port}"], [gateway])
        assert (await call(f"http://127.0.0.1:{settings.listen_port}", "GET", "/x"))[0] == 401
    finally:
        code = gateway.stop()
    assert code == 0, gateway.output()
    lines = gateway.output().splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    request = next(line for line in lines if " gateway.request: request " in line)
    assert (
        " INFO [gw-text] " in request and " route_kind=none status=401 " in request and "code=auth_missing" in request
    )


def instances(output: str) -> set[str]:
    """The instances named by the complete lines written so far."""
    return {json.loads(line)["instance"] for line in output.splitlines(keepends=True) if line.endswith("\n")}


async def test_each_worker_names_itself(tmp_path: Path, redis_server: RedisProcess) -> None:
    """With two workers, the supervisor's lines name the instance and each worker's lines its own `-w<i>`."""
    (tmp_path / "jwks.json").write_text(json.dumps(Idp().jwks()))
    admin = free_ports(2)  # one admin listener per worker
    quota = f'store: redis, redis_url: "{redis_server.url}", prefix: "logs-{time.monotonic_ns()}:"'
    config = write_config(tmp_path, "http://127.0.0.1:9", instance_id="sup", admin_port=admin, quota=quota,
                          extra="workers: 2")  # fmt: skip
    gateway = serve(config, tmp_path / "serve.log")
    try:
        wait_ready([f"http://127.0.0.1:{admin}", f"http://127.0.0.1:{admin + 1}"], [gateway], timeout=40)
        await wait_until(lambda: {"sup-w0", "sup-w1"} <= instances(gateway.output()), 10)
    finally:
        code = gateway.stop()
    assert code == 0, gateway.output()
    parsed = [json.loads(line) for line in gateway.output().splitlines()]
    by_instance: dict[str, list[str]] = {}
    for p in parsed:
        by_instance.setdefault(p["instance"], []).append(p["message"])
    assert any(m.startswith("supervising 2 workers") for m in by_instance["sup"])
    for worker in ("sup-w0", "sup-w1"):
        assert any(m.startswith("exportgate listening on") for m in by_instance[worker]), by_instance
