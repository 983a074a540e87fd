"""Secrets never in gateway.yaml's text: the Redis URL and an HS256 secret come from a file or a variable, read
the way upstream header secrets are; a missing one is a `file:line: field: problem`, and no value is printed."""

import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import jwt
import pytest
import redis.asyncio as aioredis
import redis.exceptions

from gateway.adapters.auth import Authenticator, AuthError
from gateway.cli.preflight import preflight
from gateway.config.located import ConfigError
from gateway.config.secrets import SecretError, SecretRef, read_secret
from gateway.config.settings import Settings, describe, load_settings
from gateway.demo.standin import StandinState
from gateway.http.app import Server
from tests.harness import JOB, POLICIES, SUBMIT, Idp, Stack, call, start_standin, write_config
from tests.redis_server import RedisProcess, free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisProcess]:
    """A redis-server that refuses clients without the password (`requirepass`)."""
    server = start_redis(password=PASSWORD)
    yield server
    server.stop()


def test_a_secret_file_loses_one_trailing_line_break_and_a_variable_is_taken_as_set(tmp_path: Path) -> None:
    """The one reader of every secret: `echo`'s newline goes, anything else stays; unset and unreadable say where."""
    for written, read in (("v\n", "v"), ("v\r\n", "v"), ("v\n\n", "v\n"), (" v ", " v ")):
        (tmp_path / "s").write_text(written, newline="")
        assert read_secret(SecretRef(file=tmp_path / "s"), {}) == read
    assert read_secret(SecretRef(env="X"), {"X": " v\n"}) == " v\n"
    for ref, message in (
        (SecretRef(env="X"), "environment variable X is not set"),
        (SecretRef(file=tmp_path / "none"), f"cannot read {tmp_path}/none: No such file or directory"),
    ):
        with pytest.raises(SecretError) as caught:
            read_secret(ref, {})
        assert str(caught.value) == message


@asynccontextmanager
async def redis_stack(workdir: Path, redis_url: str, env: Mapping[str, str], prefix: str) -> AsyncIterator[Stack]:
    """A gateway on the Redis store whose `quota.redis_url` is the YAML given, run with `env` as its environment."""
    idp = Idp()
    (workdir / "jwks.json").write_text(json.dumps(idp.jwks()))
    state = StandinState()
    runner, url = await start_standin(state)
    path = write_config(workdir, url, quota=f"store: redis, redis_url: {redis_url}, prefix: '{prefix}'")
    settings = load_settings(path, env=env)
    server = Server(settings, env=env)
    await server.start()
    try:
        yield Stack(server, settings, state, idp, workdir)
    finally:
        await server.stop()
        await runner.cleanup()


@pytest.mark.parametrize("source", ["env", "file", "EXPORTGATE_REDIS_URL"])
async def test_the_redis_url_comes_from_a_variable_or_a_file(
    tmp_path: Path, locked_redis: RedisProcess, source: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL with the password reaches a Redis that requires it (a job's lease lands there), from
    `{env: NAME}`, from `{file: PATH}` (one trailing newline dropped), or from EXPORTGATE_REDIS_URL over the
    file's value; the password is in no log line and no summary."""
    with pytest.raises(redis.exceptions.AuthenticationError):  # the server does hold clients to the password
        await aioredis.from_url(locked_redis.url).ping()
    secret_url = locked_redis.url_with_password
    (tmp_path / "redis.url").write_text(secret_url + "\n")
    configured, env = {
        "env": ("{env: EG_TEST_REDIS_URL}", {"EG_TEST_REDIS_URL": secret_url}),
        "file": (f"{{file: {tmp_path / 'redis.url'}}}", {}),
        "EXPORTGATE_REDIS_URL": ("'redis://127.0.0.1:1/0'", {"EXPORTGATE_REDIS_URL": secret_url}),
    }[source]
    prefix = f"secrets-{source}-{secrets.token_hex(4)}:"
    caplog.set_level(logging.DEBUG)
    async with redis_stack(tmp_path, configured, env, prefix) as stack:
        assert stack.settings.quota.redis_url == secret_url
        status, body, _ = await call(stack, "POST", SUBMIT, "acme-us", payload=JOB)
        assert status == 200, body
        printed = f"{stack.settings!r} {describe(stack.settings)}"
    client = aioredis.from_url(secret_url)
    try:
        assert await client.keys(prefix + "*"), "the lease was not stored in the password-protected Redis"
    finally:
        await client.aclose()
    assert PASSWORD not in printed
    assert not [r.getMessage() for r in caplog.records if PASSWORD in r.getMessage()]


POLICY = f"policy: {{pack: {POLICIES / 'ai-diffusion-2025'}, registry: {POLICIES / 'tenants.example.yaml'}}}"
# Line 6 is quota.redis_url.
CONFIG = """\
listen: {{host: 127.0.0.1, port: {listen}}}
admin: {{host: 127.0.0.1, port: {admin}}}
{policy}
quota:
  store: redis
  redis_url: {redis_url}
upstreams: [{{url: 'http://127.0.0.1:9'}}]
"""


def config(directory: Path, redis_url: str) -> Path:
    path = directory / "gateway.yaml"
    path.write_text(CONFIG.format(listen=free_port(), admin=free_port(), policy=POLICY, redis_url=redis_url))
    return path


def exportgate(command: str, path: Path, env: Mapping[str, str]) -> tuple[int, str, str]:
    """`exportgate COMMAND --config PATH` from this source tree: exit code, stdout, stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORTGATE_", "EG_"))}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", command, "--config", str(path)],
        cwd=path.parent, env={**clean, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    ("case", "redis_url", "env", "expected"),
    [
        ("file-missing", "{{file: missing.url}}", {},
         "{path}:6: quota.redis_url.file: cannot read {d}/missing.url: No such file or directory"),
        ("env-unset", "{{env: EG_REDIS_URL}}", {},
         "{path}:6: quota.redis_url.env: environment variable EG_REDIS_URL is not set"),
    ],
)  # fmt: skip
def test_check_and_serve_refuse_a_missing_redis_url_secret(
    tmp_path: Path, case: str, redis_url: str, env: dict[str, str], expected: str
) -> None:
    """A Redis URL file that is not there, or a variable that is not set: `check` and `serve` exit 1 on the line."""
    path = config(tmp_path, redis_url.format())
    line = expected.format(path=path, d=tmp_path)
    for command in ("check", "serve"):
        code, out, err = exportgate(command, path, env)
        assert code == 1 and line in err.splitlines() and "Traceback" not in err, (command, out, err)


def test_check_warns_of_a_password_written_in_the_file_and_never_prints_it(tmp_path: Path) -> None:
    """A literal URL with a password passes `check` with a warning at its line, and the password is not shown."""
    path = config(tmp_path, f"'redis://:{PASSWORD}@127.0.0.1:6379/0'")
    code, out, err = exportgate("check", path, {})
    assert code == 0, err
    assert (
        f"warning: {path}:6: quota.redis_url: the URL holds a password in the configuration file: "
        "use {env: NAME}, {file: PATH} or EXPORTGATE_REDIS_URL instead"
    ) in err.splitlines()
    assert PASSWORD not in out + err
    (tmp_path / "redis.url").write_text(f"redis://:{PASSWORD}@127.0.0.1:6379/0\n")
    code, out, err = exportgate("check", config(tmp_path, "{file: redis.url}"), {})
    assert code == 0 and "quota.redis_url" not in err, err  # from a file: nothing to warn about


def test_redis_url_problems_name_the_source_not_the_value(tmp_path: Path) -> None:
    """A bad URL from any source is a problem at its field or variable that does not quote the value."""
    (tmp_path / "empty.url").write_text("\n")
    (tmp_path / "http.url").write_text(f"http://:{PASSWORD}@x\n")
    path = tmp_path / "gateway.yaml"
    cases = [
        ("{file: empty.url}", {}, f"{path}:6: quota.redis_url: file {tmp_path}/empty.url is empty"),
        ("{file: http.url}", {},
         f"{path}:6: quota.redis_url: must be a redis://, rediss:// or unix:// URL (the value is not shown)"),
        ("{file: a, env: B}", {}, f"{path}:6: quota.redis_url: exactly one of file, env"),
        ("{path: a}", {}, f"{path}:6: quota.redis_url.path: unknown key"),
        ("[a]", {}, f"{path}:6: quota.redis_url: must be a string, {{file: PATH}} or {{env: NAME}}"),
        ("{env: EG_X}", {"EXPORTGATE_REDIS_URL": ""},
         "EXPORTGATE_REDIS_URL: must not be empty (unset it to use quota.redis_url)"),
        ("{env: EG_X}", {"EXPORTGATE_REDIS_URL": f"https://:{PASSWORD}@x"},
         "EXPORTGATE_REDIS_URL: must be a redis://, rediss:// or unix:// URL (the value is not shown)"),
    ]  # fmt: skip
    for redis_url, env, expected in cases:
        with pytest.raises(ConfigError) as caught:
            load_settings(config(tmp_path, redis_url), env=env)
        printed = [str(p) for p in caught.value.problems]
        assert printed[0] == expected, (redis_url, printed)
        assert PASSWORD not in " ".join(printed)


HS256_CONFIG = """\
auth:
  issuers:
    - issuer: https://sso.example.com
      audiences: [exportgate]
      hs256_secret: {secret}
upstreams: [{{url: 'http://127.0.0.1:9'}}]
"""


def hs256_settings(tmp_path: Path, secret: str, env: Mapping[str, str]) -> Settings:
    path = tmp_path / "gateway.yaml"
    path.write_text(HS256_CONFIG.format(secret=secret))
    return load_settings(path, env=env)


async def test_an_hs256_secret_comes_from_a_variable_or_a_file(tmp_path: Path) -> None:
    """`hs256_secret: {env: NAME}` and `{file: PATH}` verify tokens signed with the secret, and only those."""
    key = secrets.token_urlsafe(40)
    (tmp_path / "hs.secret").write_text(key + "\n")
    now = int(time.time())
    claims = {"iss": "https://sso.example.com", "aud": "exportgate", "sub": "t", "iat": now, "exp": now + 60}
    for secret, env in (("{env: EG_HS}", {"EG_HS": key}), (f"{{file: {tmp_path / 'hs.secret'}}}", {})):
        settings = hs256_settings(tmp_path, secret, env)
        assert key not in repr(settings)
        auth = Authenticator(settings.issuers)
        await auth.start()
        try:
            identity = await auth.authenticate("Bearer " + jwt.encode(claims, key, "HS256"))
            assert identity.subject == "t"
            with pytest.raises(AuthError):
                await auth.authenticate("Bearer " + jwt.encode(claims, "x" * 40, "HS256"))
        finally:
            await auth.close()


def test_hs256_secret_problems(tmp_path: Path) -> None:
    """An unset variable and a literal are config problems at their line; a short secret fails `check`."""
    path = tmp_path / "gateway.yaml"
    for secret, expected in (
        ("{env: EG_HS}", f"{path}:5: auth.issuers[0].hs256_secret.env: environment variable EG_HS is not set"),
        ("'in-the-file-itself-0123456789abcdef'",
         f"{path}:5: auth.issuers[0].hs256_secret: write the secret in a file or a variable: "
         "{file: PATH} or {env: NAME}"),
    ):  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            hs256_settings(tmp_path, secret, {})
        assert [str(p) for p in caught.value.problems] == [expected]
    settings = hs256_settings(tmp_path, "{env: EG_HS}", {"EG_HS": "short"})
    assert [str(p) for p in preflight(settings, {}).problems if p.field.startswith("auth.")] == [
        f"{path}:5: auth.issuers[0].hs256_secret.env: environment variable EG_HS: HS256 secret shorter than 32 bytes"
    ]
    settings = hs256_settings(tmp_path, "{file: missing.secret}", {})
    assert [str(p) for p in preflight(settings, {}).problems if p.field.startswith("auth.")] == [
        f"{path}:5: auth.issuers[0].hs256_secret.file: {tmp_path}/missing.secret: No such file or directory"
    ]
