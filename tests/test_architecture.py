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


PURE = sorted([*(ROOT / "core").rglob("*.py"), *(ROOT / "schedulers").glob("*.py")])  # core/reports too


@pytest.mark.parametrize("path", PURE, ids=[f"{p.parent.name}/{p.name}" for p in PURE])
def test_pure_modules_import_no_io(path: Path) -> None:
    """A core or scheduler module imports none of the I/O libraries."""
    assert imported_modules(path) & FORBIDDEN == set()


def test_core_is_not_empty() -> None:
    """The architecture test looks at real files (guards against a moved package)."""
    assert len([p for p in PURE if p.parent.name == "core"]) >= 8


# Dependencies point one way: each package may import only from its own layer and those below.
LAYERS = {"core": 0, "schedulers": 1, "config": 2, "adapters": 3, "http": 4, "cli": 5, "demo": 5}


def gateway_imports(path: Path) -> set[str]:
    """The `gateway.*` modules a file imports, TYPE_CHECKING imports included (a cycle is a cycle)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gateway"))
    return found


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


LAYERED = sorted(p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] in LAYERS)


@pytest.mark.parametrize("path", LAYERED, ids=[str(p.relative_to(ROOT)) for p in LAYERED])
def test_layers_import_only_downwards(path: Path) -> None:
    """core <- schedulers <- config <- adapters <- http <- cli/demo: no module imports a layer above its own."""
    mine = LAYERS[path.relative_to(ROOT).parts[0]]
    above = {m for m in gateway_imports(path) if (layer_of(m) or 0) > mine}
    assert above == set()


def test_every_package_is_layered() -> None:
    """Every package under gateway/ has a layer, so a new one cannot slip past the rule above."""
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_edges(path: Path, modules: set[str]) -> set[str]:
    """The gateway modules a file imports; `from pkg import sub` imports the submodule, not the package's names."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= subs or {node.module}
            if len(subs) < len(node.names):  # some names are the package's own
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gateway"))
    return found & modules


def import_graph() -> dict[str, set[str]]:
    """Each gateway module and the gateway modules it imports, TYPE_CHECKING imports included."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: module_edges(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as the modules along it, or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_import_graph_has_no_cycle() -> None:
    """No gateway module imports itself back through others, at module level or under TYPE_CHECKING."""
    graph = import_graph()
    assert "gateway.http.pipeline" in graph  # the graph is the real package
    assert find_cycle(graph) == []


def test_find_cycle_finds_one() -> None:
    """The cycle finder is not vacuous: it reports a cycle it is given."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
