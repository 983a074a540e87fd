"""YAML loading that remembers line numbers, and errors that name file, line and field."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration problem, printed as `file:line: field: problem`."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        if not self.file:  # a value from the environment: `field` names the variable
            return f"{self.field}: {self.message}"
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass(frozen=True, slots=True)
class Where:
    """Where a configured value came from: a file's line and field, or (file "") an environment variable."""

    file: str
    line: int
    field: str

    @classmethod
    def env(cls, name: str) -> "Where":
        return cls("", 0, name)

    def problem(self, message: str) -> Problem:
        return Problem(self.file, self.line, self.field, message)


class ConfigError(Exception):
    """One or more configuration problems; the last good configuration stays in force."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class Node:
    """A YAML value with where it came from; `.value` is the plain Python value below it."""

    __slots__ = ("file", "line", "path", "raw")

    def __init__(self, raw: Any, file: str, line: int, path: str) -> None:
        self.raw = raw
        self.file = file
        self.line = line
        self.path = path

    @property
    def value(self) -> Any:
        if isinstance(self.raw, dict):
            return {k: v.value for k, v in self.raw.items()}
        if isinstance(self.raw, list):
            return [v.value for v in self.raw]
        return self.raw

    def problem(self, message: str) -> Problem:
        return self.where().problem(message)

    def where(self) -> Where:
        return Where(self.file, self.line, self.path or "(top)")

    def walk(self) -> Iterator["Node"]:
        """This node and every node below it."""
        yield self
        children = self.raw.values() if isinstance(self.raw, dict) else self.raw if isinstance(self.raw, list) else ()
        for child in children:
            yield from child.walk()

    def items(self) -> Iterator[tuple[str, "Node"]]:
        assert isinstance(self.raw, dict)
        return iter(self.raw.items())

    def elements(self) -> Iterator["Node"]:
        assert isinstance(self.raw, list)
        return iter(self.raw)


def _child(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _convert(node: yaml.Node, file: str, path: str, problems: list[Problem]) -> Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            if key in out:
                problems.append(Problem(file, key_node.start_mark.line + 1, _child(path, key), "duplicate key"))
                continue
            out[key] = _convert(value_node, file, _child(path, key), problems)
        return Node(out, file, line, path)
    if isinstance(node, yaml.SequenceNode):
        return Node([_convert(v, file, _child(path, i), problems) for i, v in enumerate(node.value)], file, line, path)
    value = yaml.safe_load(yaml.serialize(node))
    return Node(value, file, line, path)


def load_text(text: str, file: str) -> Node:
    """Parse YAML text into located nodes; syntax errors and duplicate keys raise ConfigError."""
    problems: list[Problem] = []
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([Problem(file, line, "(syntax)", str(exc.problem))]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(file, 1, "(syntax)", str(exc))]) from exc
    if tree is None:
        return Node({}, file, 1, "")
    root = _convert(tree, file, "", problems)
    if problems:
        raise ConfigError(problems)
    return root


def load_file(path: Path) -> Node:
    """Read and parse one YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(path), 1, "(file)", f"cannot read: {exc}")]) from exc
    return load_text(text, str(path))
