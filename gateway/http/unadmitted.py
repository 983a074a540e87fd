"""The sweep for jobs the gateway never admitted: live GPU jobs of a tenant's scheduler identity that no lease covers.

Once per reconciliation pass, each upstream whose adapter can list its jobs is asked, once per
scheduler identity its tenants map to (tenants sharing one identity are asked for once, with
the first one's credentials), for its live jobs; `live_gpu_jobs` keeps that identity's GPU jobs.
A job the store names no owner for was submitted around the gateway (on a login node, straight
to slurmrestd). Ownership is recorded only after the scheduler answers a submission, so a job is
flagged only when a later sweep, at least the upstream's connect plus read timeout after the
first, still finds it unowned: a submission in flight is never taken for one. A flagged job is
recorded once per process (`unadmitted_job`, before anything is done to it), counted, logged as a
warning and, when the pack's `enforcement.unadmitted` says `cancel`, cancelled through the
scheduler as that identity. Every failure is logged and counted and the sweep goes on.
"""

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass

from gateway.adapters.ledger.writer import LedgerUnavailable
from gateway.adapters.quota import BackendUnavailable
from gateway.adapters.upstream import Upstream
from gateway.core.jobs import IDEMPOTENCY_KEY
from gateway.core.policy import Action
from gateway.core.records import followup_body
from gateway.core.tenants import Tenant
from gateway.http.front_adopt import Placeholders
from gateway.http.reconcile_parts import ReconcileParts
from gateway.schedulers.base import LiveJob, shown, status_ok

log = logging.getLogger(__name__)

KIND = "unadmitted_job"
DECISION_ID = "unadmitted"
# Headers whose per-tenant value is the Slurm user the tenant runs as (a minted JWT's `sun` is too).
SLURM_USER_HEADER = "x-slurm-user-name"


@dataclass(frozen=True, slots=True)
class Identity:
    """One scheduler identity of an upstream: the tenants mapped to it, and the user its listing keeps."""

    tenants: tuple[Tenant, ...]
    user: str | None


def identities(upstream: Upstream, tenants: list[Tenant]) -> list[Identity]:
    """Tenants grouped by the identity values their credential headers carry (tenants lacking one are skipped)."""
    groups: dict[tuple[tuple[str, str], ...], list[Tenant]] = {}
    users: dict[tuple[tuple[str, str], ...], str | None] = {}
    for tenant in sorted(tenants, key=lambda t: t.id):
        if upstream.missing_identity(tenant):
            continue  # never asked with the gateway's own identity
        key: list[tuple[str, str]] = []
        named: str | None = None  # X-SLURM-USER-NAME
        minted: str | None = None  # the user a Slurm JWT is minted for
        for name, source in sorted(upstream.settings.headers.items()):
            if source.from_tenant is None:
                continue
            value = tenant.upstream_identity.get(source.from_tenant, "")
            key.append((name, value))
            if name.lower() == SLURM_USER_HEADER:
                named = value
            elif source.slurm_jwt_key_file is not None and minted is None:
                minted = value
        groups.setdefault(tuple(key), []).append(tenant)
        users[tuple(key)] = named if named is not None else minted
    return [Identity(tuple(group), users[key]) for key, group in groups.items()]


class UnadmittedSweep:
    """Finds, records, counts and (per the pack) cancels live GPU jobs no lease covers; see the module."""

    def __init__(self, upstreams: list[Upstream], parts: ReconcileParts) -> None:
        self.upstreams = upstreams
        self.store, self.ledger, self.policy, self.metrics = parts.store, parts.ledger, parts.policy, parts.metrics
        self.clock, self.send = parts.clock, parts.send
        self.placeholders = Placeholders(parts)  # submissions a front proxy forwarded, waiting for their job
        self._first_seen: dict[tuple[str, str], float] = {}  # (upstream, job id) -> first seen unowned
        self._flagged: set[tuple[str, str]] = set()  # recorded: never again by this process
        self._cancel_failed: set[tuple[str, str]] = set()  # recorded for cancelling, the cancel not yet accepted

    async def sweep(self) -> dict[str, int]:
        """One sweep over every upstream and identity; returns the jobs flagged (`unadmitted`) and cancelled.

        Never raises: every failure is logged and counted (`exportgate_unadmitted_sweep_errors_total`).
        """
        counts: Counter[str] = Counter()
        try:
            await self._sweep(counts)
        except Exception:  # supervision boundary: reconciliation goes on without this sweep
            self.metrics.unadmitted_errors.labels("list").inc()
            log.exception("unadmitted: the sweep failed unexpectedly; the next pass sweeps again")
        return {key: n for key, n in counts.items() if n}

    async def _sweep(self, counts: Counter[str]) -> None:
        tenants = list(self.policy.registry.tenants.values())
        for upstream in self.upstreams:
            adapter = upstream.adapter
            path = adapter.live_jobs_path() if adapter is not None else None
            if path is None or upstream.session is None:
                continue
            seen: set[tuple[str, str]] = set()
            complete = True
            for identity in identities(upstream, tenants):
                try:
                    listed = await self._identity(upstream, path, identity, seen, counts)
                except Exception:  # supervision boundary: one identity's failure must not end the sweep
                    self._error("list", f"sweeping {upstream.name} as {identity.tenants[0].id} failed unexpectedly")
                    log.exception("unadmitted: the sweep of %s failed unexpectedly", upstream.name)
                    listed = False
                complete = complete and listed
            if complete:  # forget jobs no longer live (or owned since): their ids are not seen again
                mine = {job for job in self._first_seen if job[0] == upstream.name}
                for job in mine - seen:
                    del self._first_seen[job]
                self._flagged = {job for job in self._flagged if job[0] != upstream.name or job in seen}
                self._cancel_failed &= self._flagged

    async def _identity(
        self, upstream: Upstream, path: str, identity: Identity, seen: set[tuple[str, str]], counts: Counter[str]
    ) -> bool:
        """Sweep one identity's jobs; False when they could not be listed."""
        assert upstream.adapter is not None
        asker = identity.tenants[0]
        fetched = await self.send(upstream, asker, "GET", path)
        jobs = None if fetched is None else upstream.adapter.live_gpu_jobs(fetched[0], fetched[1], identity.user)
        if jobs is None:
            status = "nothing" if fetched is None else str(fetched[0])
            self._error("list", f"{path} on {upstream.name} as {asker.id}: unreadable answer ({status})")
            return False
        complete = True
        for job in jobs:
            key = (upstream.name, job.job_id)
            if key in self._flagged:
                seen.add(key)
                if key in self._cancel_failed:
                    await self._cancel(upstream, identity, job, counts)  # recorded already: only the cancel again
                continue
            try:
                owner = await self.store.owner_of(upstream.name, job.job_id)
            except BackendUnavailable as exc:
                self._error("quota", f"owner of {shown(job.job_id)} on {upstream.name}: {exc}")
                complete = False
                continue
            if owner is not None:
                continue  # admitted through the gateway
            if await self.placeholders.adopt(upstream, identity.tenants, job):
                counts["adopted"] += 1
                continue  # a submission a front proxy forwarded: now owned
            seen.add(key)
            now = self.clock()
            first = self._first_seen.setdefault(key, now)
            settle_s = upstream.settings.connect_timeout_s + upstream.settings.timeout_s
            if now - first < settle_s:
                continue  # perhaps a submission whose answer (and ownership record) is still on its way
            await self._flag(upstream, identity, job, counts)
        if complete:  # every live job of the identity was offered: placeholders still waiting are older than any
            counts["placeholders_released"] += await self.placeholders.release_stale(upstream, identity.tenants)
        return complete

    async def _flag(self, upstream: Upstream, identity: Identity, job: LiveJob, counts: Counter[str]) -> None:
        policy = self.policy.pack.enforcement.unadmitted
        cancel = job.cancel if policy is Action.CANCEL else None
        action = Action.CANCEL if cancel is not None else Action.ALERT
        tenant_ids = [t.id for t in identity.tenants]
        fields: dict[str, object] = {}
        if policy is Action.CANCEL and cancel is None:
            fields["reason"] = "cannot_cancel"  # the scheduler's API cannot cancel it (a Ray driver)
        if not IDEMPOTENCY_KEY.match(job.job_id):  # chosen by whoever submitted around the gateway: bound it
            fields["job_id_sha256"] = hashlib.sha256(job.job_id.encode("utf-8", "backslashreplace")).hexdigest()
        records = [_shown_id(r) for r in job.records]
        body = followup_body(KIND, DECISION_ID, self.clock(), tenants=tenant_ids, upstream=upstream.name,
                             job_id=_shown_id(job.job_id), records=records, action=action.value, **fields)  # fmt: skip
        try:
            await self.ledger.append(body, wait=True)
        except LedgerUnavailable as exc:
            what = f"unadmitted_job record of {shown(job.job_id)} on {upstream.name}: {exc}; nothing done"
            self._error("ledger", what)
            return
        self._flagged.add((upstream.name, job.job_id))
        counts["unadmitted"] += 1
        if cancel is None:
            self.metrics.unadmitted_jobs.labels("alert").inc()
            log.warning("unadmitted: GPU job %s on %s (tenants %s) holds no lease: submitted around the gateway%s",
                        shown(job.job_id), upstream.name, ", ".join(tenant_ids),
                        "; it cannot be cancelled through the scheduler's API" if fields else "")  # fmt: skip
            return
        await self._cancel(upstream, identity, job, counts)

    async def _cancel(self, upstream: Upstream, identity: Identity, job: LiveJob, counts: Counter[str]) -> None:
        """Cancel a recorded job as its identity; a refused or unanswered cancel is tried again next sweep."""
        assert job.cancel is not None
        key, (method, path) = (upstream.name, job.job_id), job.cancel
        answered = await self.send(upstream, identity.tenants[0], method, path)
        done = answered is not None and status_ok(answered[0])
        if done:
            self._cancel_failed.discard(key)
            self.metrics.unadmitted_jobs.labels("cancel").inc()
            counts["unadmitted_cancelled"] += 1
        elif key not in self._cancel_failed:
            self._cancel_failed.add(key)
            self.metrics.unadmitted_jobs.labels("cancel_failed").inc()
        if not done:
            self.metrics.unadmitted_errors.labels("cancel").inc()
        log.warning("unadmitted: GPU job %s on %s (tenants %s) holds no lease: submitted around the gateway; "
                    "cancelling it: %s %s answered %s", shown(job.job_id), upstream.name,
                    ", ".join(t.id for t in identity.tenants), method, shown(path),
                    "nothing" if answered is None else answered[0])  # fmt: skip

    def _error(self, stage: str, what: str) -> None:
        self.metrics.unadmitted_errors.labels(stage).inc()
        log.error("unadmitted: %s", what)


def _shown_id(job_id: str) -> str:
    """A listed job's id as the ledger keeps it: as is when it is a plain short id, else quoted and cut short."""
    return job_id if IDEMPOTENCY_KEY.match(job_id) else shown(job_id)
