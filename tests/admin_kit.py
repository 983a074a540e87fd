"""Admin tokens for tests, one per role, and the request helper for the operator API."""

import hashlib
from pathlib import Path
from typing import Any

from tests.harness import Reply, Stack, call

TOKENS = {
    "read": "read-token-for-tests-0123456789abcdef",
    "operate": "operate-token-for-tests-0123456789abcdef",
    "admin": "admin-token-for-tests-0123456789abcdef",
}


def tokens_file(workdir: Path) -> Path:
    """A tokens file naming one operator per role (`auditor`, `oncall`, `root`)."""
    names = {"read": "auditor", "operate": "oncall", "admin": "root"}
    path = workdir / "admin-tokens.yaml"
    lines = [
        f"  - {{name: {names[role]}, role: {role}, sha256: {hashlib.sha256(token.encode()).hexdigest()}}}"
        for role, token in TOKENS.items()
    ]
    path.write_text("tokens:\n" + "\n".join(lines) + "\n")
    return path


async def admin(stack: Stack, method: str, path: str, *, role: str = "read", payload: Any = None) -> Reply:
    """`method path` on the admin listener with the token of `role`."""
    return await call(stack, method, path, payload=payload, admin_token=TOKENS[role], admin=True)
