"""The Slurm cluster's node and partition facts, fetched from slurmrestd and refreshed in the background.

Identity: the facts are read as the Slurm user `scheduler_options.facts_user`: every per-tenant
identity header of the upstream is filled with that user (a JWT minted for it when the upstream
mints them) and static headers are sent as configured. It is never a tenant's identity, and it
only needs to see nodes and partitions (any Slurm user can, unless PrivateData hides them), so an
unprivileged service account fits. Without `facts_user` nothing is fetched: jobs whose price needs
the facts are refused `job_spec_invalid` unless `partition_node_gpus` / `partition_nodes` say them.
"""

import logging

import aiohttp

from gateway.adapters.background import RefreshedSource
from gateway.adapters.upstream import Upstream, UpstreamUnreadable
from gateway.schedulers.slurm import SlurmAdapter
from gateway.schedulers.slurm_facts import EMPTY, FactsUnreadable, SlurmFacts, parse_facts

log = logging.getLogger(__name__)


class SlurmFactsSource(RefreshedSource):
    """The newest facts snapshot of one Slurm upstream; `snapshot` never waits."""

    def __init__(self, upstream: Upstream, adapter: SlurmAdapter, first_wait_s: float = 5.0) -> None:
        super().__init__(upstream, first_wait_s, f"slurm-facts-{upstream.name}")
        self.options = adapter.options
        self._facts = EMPTY

    def snapshot(self) -> SlurmFacts:
        return self._facts

    def _headers(self) -> dict[str, str] | None:
        user = self.options.facts_user
        return None if user is None else self.upstream.service_headers(user)

    async def refresh(self) -> bool:
        """Fetch `/nodes` and `/partitions` once; the snapshot changes only when both are read."""
        headers = self._headers()
        if headers is None:
            return False
        version = self.options.facts_version or self.options.status_version
        try:
            nodes = await self.upstream.get_json(f"/slurm/{version}/nodes", headers)
            partitions = await self.upstream.get_json(f"/slurm/{version}/partitions", headers)
            facts = parse_facts(nodes, partitions)
        except (TimeoutError, aiohttp.ClientError, UpstreamUnreadable, FactsUnreadable) as exc:
            return self._failed(log, "slurm facts of upstream %s: %s; the last facts stay in use", exc)
        if self._failing or not self._facts.loaded:
            log.info(
                "slurm facts of upstream %s: %d nodes, %d partitions",
                self.upstream.name, len(facts.nodes), len(facts.partitions),
            )  # fmt: skip
        self._facts, self._failing = facts, False
        return True

    def _wait_s(self) -> float:
        return self.options.facts_refresh_s

    async def start(self) -> None:
        """One fetch now (bounded by `first_wait_s`), then one every `facts_refresh_s`."""
        if self._headers() is None:
            log.warning(
                "slurm facts of upstream %s: no scheduler_options.facts_user to read nodes and partitions as; "
                "jobs that need them are refused unless partition_node_gpus says them",
                self.upstream.name,
            )
            return
        await self._start_refreshing()
