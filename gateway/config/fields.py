"""Typed, strict field readers over located YAML nodes; problems are collected, not raised."""

from collections.abc import Callable, Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

from gateway.config.located import Node, Problem, Where

T = TypeVar("T")
_MISSING = object()


class Fields:
    """A mapping node read field by field; unknown keys are problems."""

    def __init__(self, node: Node, problems: list[Problem], allowed: Iterable[str]) -> None:
        self.node = node
        self.problems = problems
        self.ok = isinstance(node.raw, dict)
        if not self.ok:
            problems.append(node.problem("must be a mapping"))
            return
        allowed_set = set(allowed)
        for key, child in node.items():
            if key not in allowed_set:
                problems.append(child.problem("unknown key"))

    def child(self, key: str) -> Node | None:
        if not self.ok:
            return None
        raw = self.node.raw
        assert isinstance(raw, dict)
        return raw.get(key)

    def where(self, key: str) -> Where:
        """Where field `key` is: its own line, or this mapping's line when the key is absent."""
        return field_where(self.node, key)

    def problem(self, key: str, message: str) -> None:
        """Report a problem with field `key`, located at the field itself."""
        self.problems.append(self.where(key).problem(message))

    def missing(self, key: str) -> None:
        self.problem(key, "required")

    def _get(self, key: str, required: bool, convert: Callable[[Node], T], default: Any) -> Any:
        child = self.child(key)
        if child is None or child.raw is None:
            if required and self.ok:
                self.missing(key)
            return default
        try:
            return convert(child)
        except ValueError as exc:
            self.problems.append(child.problem(str(exc)))
            return default

    def text(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, required, as_str, default)

    def integer(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, required, as_int, default)

    def number(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, required, as_number, default)

    def flag(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, required, as_bool, default)

    def day(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, required, as_date, default)

    def texts(self, key: str, default: Any = None, required: bool = False) -> Any:
        return self._get(key, required, as_str_list, default)

    def choice(self, key: str, options: Iterable[str], default: Any = None, required: bool = False) -> Any:
        opts = list(options)

        def convert(node: Node) -> str:
            value = as_str(node)
            if value not in opts:
                raise ValueError(f"{value!r} is not one of {', '.join(opts)}")
            return value

        return self._get(key, required, convert, default)


def resolve_path(base: Path, value: str | None) -> Path | None:
    """A configured path, relative ones taken from `base` (the directory of the file that names it)."""
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def field_where(node: Node, key: str) -> Where:
    """Where field `key` of a mapping node is: its own line, or the mapping's line when it is absent."""
    child: Node | None = node.raw.get(key) if isinstance(node.raw, dict) else None
    if child is not None:
        return child.where()
    return Where(node.file, node.line, f"{node.path}.{key}" if node.path else key)


def as_str(node: Node) -> str:
    if not isinstance(node.raw, str):
        raise ValueError(f"must be a string, not {type(node.raw).__name__}")
    return node.raw


def as_int(node: Node) -> int:
    if isinstance(node.raw, bool) or not isinstance(node.raw, int):
        raise ValueError("must be an integer")
    return node.raw


def as_number(node: Node) -> float:
    raw = node.raw
    if isinstance(raw, str):
        try:
            raw = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError("must be a number")
    if raw != raw or raw in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return float(raw)


def as_bool(node: Node) -> bool:
    if not isinstance(node.raw, bool):
        raise ValueError("must be true or false")
    return node.raw


def as_date(node: Node) -> date:
    raw = node.raw
    if isinstance(raw, datetime):
        return raw.date()
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise ValueError("must be a date (YYYY-MM-DD)")


def as_str_list(node: Node) -> list[str]:
    if not isinstance(node.raw, list):
        raise ValueError("must be a list of strings")
    out = []
    for child in node.elements():
        if not isinstance(child.raw, str):
            raise ValueError(f"{child.path}: must be a string")
        out.append(child.raw)
    return out
