"""Admin API tokens: a YAML file of named tokens, stored as SHA-256 hashes with a role."""

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.config.fields import Fields
from gateway.config.located import ConfigError, Problem, load_file

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Role(StrEnum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class AdminToken:
    """One operator credential; the token itself is never stored, only its SHA-256."""

    name: str
    role: Role
    sha256: str


def load_admin_tokens(path: Path) -> tuple[AdminToken, ...]:
    """`tokens: [{name, role: read|write, sha256}]`; problems raise ConfigError with file and line."""
    problems: list[Problem] = []
    root = load_file(path)
    fields = Fields(root, problems, ("tokens",))
    node = fields.child("tokens")
    out: list[AdminToken] = []
    if node is None or not isinstance(node.raw, list):
        fields.problem("tokens", "required list")
    else:
        for item in node.elements():
            entry = Fields(item, problems, ("name", "role", "sha256"))
            name: str = entry.text("name", "", required=True)
            role = entry.choice("role", [r.value for r in Role], "read", required=True)
            digest: str = entry.text("sha256", "", required=True)
            if digest and not _HEX64.match(digest):
                entry.problem("sha256", "must be 64 lower-case hex digits (the token's SHA-256)")
            out.append(AdminToken(name, Role(role), digest))
    if problems:
        raise ConfigError(problems)
    return tuple(out)
