"""An operator's release survives a restart: the memory store's start-up rebuild applies it."""

import hashlib
from pathlib import Path

import aiohttp

from gateway.core.leases import QUOTA_SLOT
from tests.harness import run_stack
from tests.test_e2e_proxy import post

TOKEN = "write-token-for-rebuild-tests-0123456789"


async def test_operator_release_is_kept_across_restart(tmp_path: Path) -> None:
    """After an operator release and a restart, the rebuilt counters still show the capacity as free."""
    tokens = tmp_path / "admin-tokens.yaml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    tokens.write_text(f"tokens:\n  - {{name: oncall, role: write, sha256: {digest}}}\n")
    async for stack in run_stack(tmp_path, admin_tokens_file=tokens):
        assert (await post(stack, "acme-us"))[0] == 200
        assert (await post(stack, "acme-us"))[0] == 200
        async with aiohttp.ClientSession() as client:
            url = stack.admin_url + "/admin/v1/jobs/slurm/1/release"
            async with client.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200
    async for stack in run_stack(tmp_path, admin_tokens_file=tokens):
        store = stack.server.store
        assert store is not None
        assert await store.counter_value(QUOTA_SLOT, "tenant:acme-us", stack.server.clock()) == 15832  # job 2 only
        owner = await store.owner_of("slurm", "2")
        assert owner is not None and owner.tenant_id == "acme-us"
