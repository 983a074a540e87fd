"""Secrets named in gateway.yaml, never written in it: `{file: PATH}` or `{env: NAME}`.

One form and one reader for every secret-bearing setting (an upstream's credential headers, the
Redis URL, an issuer's HS256 secret): a file's text loses one trailing line break (what `echo` and
most editors add), a variable is taken as set. A file that cannot be read or a variable that is
not set is a configuration problem at the field's line; the value itself is never part of a
problem, a log line or a summary.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from gateway.config.fields import Fields, resolve_path
from gateway.config.located import Node, Problem

SOURCE_KEYS = ("file", "env")


class SecretError(Exception):
    """A secret's file cannot be read or its variable is not set; the message names the source, not the value."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret is read from: exactly one of a file and an environment variable."""

    file: Path | None = None
    env: str | None = None

    def __str__(self) -> str:
        return f"file {self.file}" if self.file is not None else f"environment variable {self.env}"


def secret_ref(fields: Fields, base: Path) -> SecretRef | None:
    """The `file` and `env` keys of a mapping already being read (checked by the caller: exactly one)."""
    file = resolve_path(base, fields.text("file"))
    env: str | None = fields.text("env")
    if env is not None and not env:
        fields.problem("env", "must name an environment variable")
    if file is None and env is None:
        return None
    return SecretRef(file, env)


def read_secret(ref: SecretRef, env: Mapping[str, str]) -> str:
    """The secret's text: a file's without one trailing line break, a variable's as set (raises SecretError)."""
    if ref.file is not None:
        try:
            text = ref.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else "not UTF-8 text"
            raise SecretError(f"cannot read {ref.file}: {reason}") from exc
        return text.removesuffix("\n").removesuffix("\r")
    assert ref.env is not None
    value = env.get(ref.env)
    if value is None:
        raise SecretError(f"environment variable {ref.env} is not set")
    return value


def load_secret(node: Node | None, base: Path, problems: list[Problem]) -> str | SecretRef | None:
    """A secret-bearing field: a literal string, or `{file: PATH}` / `{env: NAME}` (exactly one)."""
    if node is None or node.raw is None:
        return None
    if isinstance(node.raw, str):
        return node.raw
    if not isinstance(node.raw, dict):
        problems.append(node.problem("must be a string, {file: PATH} or {env: NAME}"))
        return None
    fields = Fields(node, problems, SOURCE_KEYS)
    ref = secret_ref(fields, base)
    if sum(fields.child(key) is not None for key in SOURCE_KEYS) != 1:
        problems.append(node.problem("exactly one of file, env"))
        return None
    return ref


def resolve_secret(
    node: Node | None, base: Path, env: Mapping[str, str], problems: list[Problem]
) -> tuple[str | None, bool]:
    """A secret-bearing field read now: (the value, whether gateway.yaml holds it literally).

    A problem reading it is placed at its `file` or `env` line."""
    loaded = load_secret(node, base, problems)
    if not isinstance(loaded, SecretRef):
        return loaded, loaded is not None
    assert node is not None
    try:
        value = read_secret(loaded, env)
    except SecretError as exc:
        where: Node = node.raw["file" if loaded.file is not None else "env"]
        problems.append(where.problem(str(exc)))
        return None, False
    if not value:
        problems.append(node.problem(f"{loaded} is empty"))
        return None, False
    return value, False


def url_password(url: str) -> bool:
    """Whether a URL carries a password (in its user information or a `password` query parameter)."""
    try:
        parts = urlsplit(url)
        return bool(parts.password) or any(k.lower() == "password" and v for k, v in parse_qsl(parts.query))
    except ValueError:
        return False

