"""The functional core stays pure: no I/O library is imported under gateway/core or gateway/schedulers."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"
FORBIDDEN = {"aiohttp", "redis", "prometheus_client", "asyncio", "os", "time", "socket", "subprocess", "yaml"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


PURE = sorted([*(ROOT / "core").glob("*.py"), *(ROOT / "schedulers").glob("*.py")])


@pytest.mark.parametrize("path", PURE, ids=[f"{p.parent.name}/{p.name}" for p in PURE])
def test_pure_modules_import_no_io(path: Path) -> None:
    """A core or scheduler module imports none of the I/O libraries."""
    assert imported_modules(path) & FORBIDDEN == set()


def test_core_is_not_empty() -> None:
    """The architecture test looks at real files (guards against a moved package)."""
    assert len([p for p in PURE if p.parent.name == "core"]) >= 8
