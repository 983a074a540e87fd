"""Packaging: the bundled policies are package data found through importlib.resources, the wheel's package-data
globs cover every data file, constraints/lock.txt pins every declared dependency within its range, and
constraints/floors.txt pins each declared floor exactly. (.ci/wheel-check builds and runs the wheel itself.)"""

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import gateway
from gateway.config.bundled import BUNDLED_PACK, BUNDLED_POLICIES, BUNDLED_REGISTRY, bundled_policies
from gateway.config.pack import load_pack
from gateway.config.registry import load_registry
from gateway.config.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE = Path(gateway.__file__).parent
# Lint and type tools: `make test-floors` runs the tests only, so they have no floor to prove.
NO_FLOOR = {"ruff", "mypy"}
# Pins in floors.txt that are no declared dependency: a transitive one held at its floor's contemporary
# version (each explained in floors.txt).
FLOORS_TRANSITIVE = {"pyparsing": "3.1.2"}


def declared() -> list[Requirement]:
    """The runtime dependencies and the test extra, as pyproject.toml states them."""
    project = PYPROJECT["project"]
    return [Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]]


def pins(name: str) -> dict[str, tuple[Version, str]]:
    """A constraints file's `name==version` lines, by canonical name: (version, the line's marker text)."""
    found: dict[str, tuple[Version, str]] = {}
    for raw in (ROOT / "constraints" / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, _, marker = line.partition(";")
        package, sep, version = requirement.partition("==")
        assert sep, f"{name}: {raw!r} is not an exact pin"
        found[canonicalize_name(package.strip())] = (Version(version.strip()), marker.strip())
    return found


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(bounds) if bounds else None


def test_bundled_policies_are_package_data() -> None:
    """The pack and registry are read from inside the installed package, and load clean from there."""
    assert bundled_policies() == BUNDLED_POLICIES == PACKAGE / "policies"
    assert load_pack(BUNDLED_POLICIES / BUNDLED_PACK).tiers is not None
    assert load_registry(BUNDLED_POLICIES / BUNDLED_REGISTRY).tenants


def test_embedded_defaults_use_the_bundled_policies_unless_the_policy_dir_is_set(tmp_path: Path) -> None:
    """No `policy:` and no EXPORTGATE_POLICY_DIR: the package's copy; with the variable: the directory it names."""
    bundled = load_settings(None, env={})
    assert (bundled.pack_dir, bundled.registry_file) == (
        PACKAGE / "policies" / "ai-diffusion-2025",
        PACKAGE / "policies" / "tenants.example.yaml",
    )
    moved = load_settings(None, env={"EXPORTGATE_POLICY_DIR": str(tmp_path)})
    assert (moved.pack_dir, moved.registry_file) == (tmp_path / "ai-diffusion-2025", tmp_path / "tenants.example.yaml")


def test_top_level_policies_is_the_package_copy() -> None:
    """`policies/` at the top of the tree (the paths docs and deploy files name) is a link to gateway/policies."""
    link = ROOT / "policies"
    assert link.is_symlink() and link.readlink() == Path("gateway/policies")
    assert link.resolve() == (PACKAGE / "policies").resolve()


def test_package_data_globs_cover_every_data_file() -> None:
    """Every non-Python file in the package is matched by a [tool.setuptools.package-data] glob, so the wheel has
    it (a new pack directory or script needs a glob; .ci/wheel-check checks the built archives too)."""
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["gateway"]
    covered = {p for pattern in globs for p in PACKAGE.glob(pattern)}
    data = {p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc", ".pyi")}
    assert any(p.suffix == ".lua" for p in data) and any(p.name == "pack.yaml" for p in data)
    assert sorted(str(p.relative_to(PACKAGE)) for p in data - covered) == []


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_lock_pins_each_declared_dependency_within_its_range(requirement: Requirement) -> None:
    """constraints/lock.txt has an exact pin for the dependency that its pyproject.toml range admits (run
    `make lock` after changing pyproject.toml)."""
    locked = pins("lock.txt")
    name = canonicalize_name(requirement.name)
    assert name in locked, f"{name} is not in constraints/lock.txt: run `make lock`"
    version, marker = locked[name]
    assert requirement.specifier.contains(version, prereleases=True), (name, str(version), str(requirement))
    if requirement.marker is not None:
        assert marker, f"{name}: the lock pins it for every platform, pyproject only where {requirement.marker}"


def test_floors_equal_the_declared_lower_bounds() -> None:
    """constraints/floors.txt pins each declared dependency at its pyproject.toml floor, and nothing else but
    the transitive pins it explains."""
    floors = {name: version for name, (version, _) in pins("floors.txt").items()}
    for name, version in FLOORS_TRANSITIVE.items():
        assert str(floors.pop(name)) == version
    expected = {
        canonicalize_name(r.name): bound
        for r in declared()
        if (bound := lower_bound(r)) is not None and canonicalize_name(r.name) not in NO_FLOOR
    }
    assert floors == expected
