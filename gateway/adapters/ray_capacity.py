"""A Ray cluster's GPU capacity, read from its dashboard at start and refreshed in the background.

Identity: Ray's dashboard has one identity, so the list is read with the upstream's static
credential headers (e.g. `Authorization` for `RAY_AUTH_MODE=token`); per-tenant headers are not
sent. Only a Ray upstream with `pricing: cluster` and no `cluster_gpus` reads it (configured
capacity wins). Until a first answer its jobs are refused `job_spec_invalid` and the read is
retried every few seconds; a failed refresh keeps the last snapshot, whose per-model peaks never
shrink.
"""

import logging

import aiohttp

from gateway.adapters.background import RefreshedSource
from gateway.adapters.upstream import Upstream, UpstreamUnreadable
from gateway.schedulers.ray import RayOptions
from gateway.schedulers.ray_capacity import (
    EMPTY,
    NODES_PATH,
    CapacityUnreadable,
    GpuCounts,
    RayCapacity,
    widened,
)

log = logging.getLogger(__name__)

UNLOADED_RETRY_S = 5.0


def reads_capacity(options: RayOptions) -> bool:
    """Whether an upstream with these options prices at what Ray lists (rather than `cluster_gpus`)."""
    return options.pricing == "cluster" and not options.cluster_gpus


class RayCapacitySource(RefreshedSource):
    """The newest capacity snapshot of one Ray upstream; `snapshot` never waits."""

    def __init__(self, upstream: Upstream, options: RayOptions, first_wait_s: float = 5.0) -> None:
        super().__init__(upstream, first_wait_s, f"ray-capacity-{upstream.name}")
        self.options = options
        self._capacity = EMPTY

    def snapshot(self) -> RayCapacity:
        return self._capacity

    async def refresh(self) -> bool:
        """Read the live nodes once; the snapshot changes only when the whole list was read."""
        try:
            nodes = await self.upstream.get_json(NODES_PATH, dict(self.upstream.static_headers))
            capacity = widened(self._capacity, nodes)
        except (TimeoutError, aiohttp.ClientError, UpstreamUnreadable, CapacityUnreadable) as exc:
            return self._failed(log, "ray capacity of upstream %s: %s; the last capacity stays in use", exc)
        if self._failing or not self._capacity.loaded or capacity.peak != self._capacity.peak:
            log.info(
                "ray capacity of upstream %s: %d live nodes, GPUs now %s, priced at %s",
                self.upstream.name, capacity.nodes, _shown(capacity.gpus), _shown(capacity.peak),
            )  # fmt: skip
        self._capacity, self._failing = capacity, False
        return True

    def _wait_s(self) -> float:
        """Every `capacity_refresh_s`; until a first answer, retried sooner."""
        every = self.options.capacity_refresh_s
        return every if self._capacity.loaded else min(every, UNLOADED_RETRY_S)

    async def start(self) -> None:
        """One read now (bounded by `first_wait_s`), then one every `capacity_refresh_s`."""
        await self._start_refreshing()
        if not self._capacity.loaded:
            log.warning(
                "ray capacity of upstream %s: not read yet; its jobs are refused until it is "
                "(or set scheduler_options.cluster_gpus)",
                self.upstream.name,
            )


def _shown(gpus: GpuCounts) -> str:
    shown = sorted(f"{n} {model or '(no accelerator type)'}" for model, n in gpus.items())
    return ", ".join(shown) or "no GPUs"
