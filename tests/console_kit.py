"""A gateway with real decisions for the console's tests, and readers for the numbers its pages show."""

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.adapters.ledger.signing import generate
from tests.admin_kit import tokens_file
from tests.harness import E2E_TENANTS, SUBMIT, Stack, call, running_stack, slurm_job, tenant

# A licensed tenant located in Singapore and headquartered in Malaysia: beyond its 2-H100 allowance it draws on
# both countries' allocations (as in test_admin_usage).
REGISTRY = E2E_TENANTS.rstrip("\n") + tenant(
    "split-sg", "SG/MY/MY", "\n    tpp_cap: 31664\n    licences: [{id: D-2001, lifts: [tenant_cap]}]"
) + "\n"  # fmt: skip


@dataclass(frozen=True)
class Decided:
    """What the gateway was asked before the console is looked at."""

    allowed: list[str]  # job ids, in order
    refused: dict[str, int]  # refusal codes and how many


@asynccontextmanager
async def decided_stack(workdir: Path) -> AsyncIterator[tuple[Stack, Decided]]:
    """A gateway with admin tokens and a signed ledger, after admissions (capped-ae twice, falcon-ae, us-one,
    split-sg beyond its allowance) and refusals (capped-ae over its cap, a Tier 3 subsidiary)."""
    keys = workdir / "keys"
    keys.mkdir(parents=True)
    generate(keys / "ledger.pem", keys / "ledger.pub.pem")
    async with running_stack(
        workdir, registry=REGISTRY, admin_tokens_file=tokens_file(workdir), signing_key_file=keys / "ledger.pem",
        ledger_options="checkpoint_every_records: 3",
    ) as stack:  # fmt: skip
        allowed: list[str] = []
        refused: dict[str, int] = {}
        asks = [("capped-ae", "h100:1"), ("capped-ae", "h100:1"), ("falcon-ae", "h100:1"), ("us-one", "h100:1"),
                ("split-sg", "h100:3"), ("capped-ae", "h100:1"), ("fjord-se-cn", "h100:1")]  # fmt: skip
        for sub, gpus in asks:
            status, body, _ = await call(stack, "POST", SUBMIT, sub, payload=slurm_job(gpus=gpus))
            if status == 200:
                allowed.append(str(body["job_id"]))
            else:
                refused[body["code"]] = refused.get(body["code"], 0) + 1
        assert len(allowed) == 5 and sum(refused.values()) == 2, (allowed, refused)
        yield stack, Decided(allowed, refused)


def row(page: str, row_id: str) -> str:
    """The inner HTML of the table row `id="row_id"`."""
    found = re.search(rf'<tr id="{re.escape(row_id)}"[^>]*>(.*?)</tr>', page, re.S)
    assert found, f"no row {row_id!r} on the page"
    return found.group(1)


def cell(page: str, row_id: str, cls: str) -> str:
    """The text of the cell of class `cls` in row `row_id`, tags dropped and entities decoded."""
    found = re.search(rf'<td class="[^"]*\b{re.escape(cls)}\b[^"]*">(.*?)</td>', row(page, row_id), re.S)
    assert found, f"no cell {cls!r} in row {row_id!r}"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1))).strip()


def by_id(page: str, element_id: str) -> str:
    """The text of the element `id="element_id"` (its first closing tag ends it)."""
    found = re.search(rf'<(\w+) id="{re.escape(element_id)}"[^>]*>(.*?)</\1>', page, re.S)
    assert found, f"no element {element_id!r} on the page"
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(2))).strip()
