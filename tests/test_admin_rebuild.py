"""An operator's release survives a restart: the memory store's start-up rebuild applies it."""

import hashlib
from pathlib import Path

from gateway.core.leases import QUOTA_SLOT
from tests.harness import JOB, SUBMIT, call, running_stack

TOKEN = "write-token-for-rebuild-tests-0123456789"


async def test_operator_release_is_kept_across_restart(tmp_path: Path) -> None:
    """After an operator release and a restart, the rebuilt counters still show the capacity as free."""
    tokens = tmp_path / "admin-tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f"tokens:\n  - {{name: oncall, role: write, sha256: {digest}}}\n")
    async with running_stack(tmp_path, admin_tokens_file=tokens) as stack:
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[0] == 200
        assert (await call(stack, "POST", SUBMIT, "acme-us", payload=JOB))[0] == 200
        assert (await call(stack, "POST", "/admin/v1/jobs/slurm/1/release", admin_token=TOKEN))[0] == 200
    async with running_stack(tmp_path, admin_tokens_file=tokens) as stack:
        store = stack.server.store
        assert store is not None
        assert await store.counter_value(QUOTA_SLOT, "tenant:acme-us", stack.server.clock()) == 15832  # job 2 only
        owner = await store.owner_of("slurm", "2")
        assert owner is not None and owner.tenant_id == "acme-us"
