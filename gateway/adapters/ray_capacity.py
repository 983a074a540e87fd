"""A Ray cluster's GPU capacity, read from its dashboard at start and refreshed in the background.

Identity: Ray's dashboard has one identity, so the list is read with the upstream's static
credential headers (e.g. `Authorization` for `RAY_AUTH_MODE=token`); per-tenant headers are not
sent. Only a Ray upstream with `pricing: cluster` and no `cluster_gpus` reads it (configured
capacity wins). Until a first answer its jobs are refused `job_spec_invalid` and the read is
retried every few seconds; a failed refresh keeps the last snapshot, whose per-model peaks never
shrink.
"""

import asyncio
import contextlib
import json
import logging

import aiohttp

from gateway.adapters.upstream import Upstream
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


class RayCapacitySource:
    """The newest capacity snapshot of one Ray upstream; `snapshot` never waits."""

    def __init__(self, upstream: Upstream, options: RayOptions, first_wait_s: float = 5.0) -> None:
        self.upstream = upstream
        self.options = options
        self.first_wait_s = first_wait_s
        self._capacity = EMPTY
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def snapshot(self) -> RayCapacity:
        return self._capacity

    async def _get(self) -> object:
        session = self.upstream.session
        assert session is not None
        headers = dict(self.upstream.static_headers)
        async with session.get(self.upstream.url_for(NODES_PATH), headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                raise CapacityUnreadable(f"GET /api/v0/nodes answered {response.status}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise CapacityUnreadable(f"GET /api/v0/nodes: not JSON: {exc}") from None

    async def refresh(self) -> bool:
        """Read the live nodes once; the snapshot changes only when the whole list was read."""
        try:
            capacity = widened(self._capacity, await self._get())
        except (TimeoutError, aiohttp.ClientError, CapacityUnreadable) as exc:
            if not self._failing:
                log.warning("ray capacity of upstream %s: %s; the last capacity stays in use", self.upstream.name, exc)
            self._failing = True
            return False
        if self._failing or not self._capacity.loaded or capacity.peak != self._capacity.peak:
            log.info(
                "ray capacity of upstream %s: %d live nodes, GPUs now %s, priced at %s",
                self.upstream.name, capacity.nodes, _shown(capacity.gpus), _shown(capacity.peak),
            )  # fmt: skip
        self._capacity, self._failing = capacity, False
        return True

    async def _forever(self) -> None:
        while True:  # until a first answer, retried sooner
            every = self.options.capacity_refresh_s
            await asyncio.sleep(every if self._capacity.loaded else min(every, UNLOADED_RETRY_S))
            await self.refresh()

    async def start(self) -> None:
        """One read now (bounded by `first_wait_s`), then one every `capacity_refresh_s`."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.refresh(), self.first_wait_s)
        if not self._capacity.loaded:
            log.warning(
                "ray capacity of upstream %s: not read yet; its jobs are refused until it is "
                "(or set scheduler_options.cluster_gpus)",
                self.upstream.name,
            )
        self._task = asyncio.create_task(self._forever(), name=f"ray-capacity-{self.upstream.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _shown(gpus: GpuCounts) -> str:
    shown = sorted(f"{n} {model or '(no accelerator type)'}" for model, n in gpus.items())
    return ", ".join(shown) or "no GPUs"
