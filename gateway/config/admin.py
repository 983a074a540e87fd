"""Admin API tokens: a YAML file of named tokens, stored as SHA-256 hashes with a role.

Roles are ranked: `read` < `operate` < `admin`, and a token may do what its role and every role
below it may. `write`, the earlier name of `operate`, is still read as `operate`, so a tokens
file written before roles were split keeps its meaning. A token without a role is refused: an
operator names what each credential may do.
"""

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gateway.config.fields import Fields
from gateway.config.located import ConfigError, Problem, load_file

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Role(StrEnum):
    READ = "read"  # look: jobs, explain, usage
    OPERATE = "operate"  # act on leases: release
    ADMIN = "admin"  # change the gateway: reload

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: "Role") -> bool:
        """Whether this role may do what `needed` may."""
        return self.rank >= needed.rank


_RANK = {Role.READ: 0, Role.OPERATE: 1, Role.ADMIN: 2}
LEGACY_ROLES = {"write": Role.OPERATE}  # accepted in tokens files, written as `operate` by `keys admin-token`


@dataclass(frozen=True, slots=True)
class AdminToken:
    """One operator credential; the token itself is never stored, only its SHA-256."""

    name: str
    role: Role
    sha256: str


def load_admin_tokens(path: Path) -> tuple[AdminToken, ...]:
    """`tokens: [{name, role: read|operate|admin, sha256}]`; problems raise ConfigError with file and line."""
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
            choices = [r.value for r in Role] + list(LEGACY_ROLES)
            role = entry.choice("role", choices, "read", required=True)
            digest: str = entry.text("sha256", "", required=True)
            if digest and not _HEX64.match(digest):
                entry.problem("sha256", "must be 64 lower-case hex digits (the token's SHA-256)")
            out.append(AdminToken(name, LEGACY_ROLES.get(role) or Role(role), digest))
    if problems:
        raise ConfigError(problems)
    return tuple(out)
