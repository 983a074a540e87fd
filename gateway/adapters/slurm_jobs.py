"""Which job a Slurm array task or heterogeneous component addressed by its own job id belongs to.

A task of array 11 also has a job id of its own (11_0 is job 12). The gateway records owners by
the id a submission answered with (11), so job 12 is unknown to it. Its parent is asked of
slurmctld, through slurmrestd, with the asking tenant's own credentials (no more privilege than
forwarding the request would use); the answer is the scheduler's record, which no tenant can
shape, and the caller still checks that the parent is the tenant's own.
"""

import logging

import aiohttp

from gateway.adapters.upstream import Upstream
from gateway.core.tenants import Tenant
from gateway.schedulers.slurm import SlurmAdapter

log = logging.getLogger(__name__)
MAX_STATUS_BYTES = 8 * 1024 * 1024


async def parent_job(upstream: Upstream, tenant: Tenant, job_id: str) -> str | None:
    """The id of the array / heterogeneous job `job_id` is part of; None when it is not one or unknown."""
    adapter, session = upstream.adapter, upstream.session
    if not isinstance(adapter, SlurmAdapter) or session is None:
        return None
    path = adapter.status_path(job_id)
    if path is None:
        return None
    try:
        async with session.get(upstream.url_for(path), headers=upstream.credential_headers(tenant)) as response:
            body = await response.content.read(MAX_STATUS_BYTES + 1)
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("parent of slurm job %s could not be asked: %s", job_id[:32], exc)
        return None
    if len(body) > MAX_STATUS_BYTES:
        return None
    return adapter.parent_job_id(job_id, status, body)
