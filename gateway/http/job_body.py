"""The body stage: read a job route's body within the limits and parse it with the scheduler adapter."""

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.adapters.metrics import Metrics
from gateway.config.limits import Limits
from gateway.core.codes import Code
from gateway.core.decide import refuse
from gateway.core.jobs import IDEMPOTENCY_KEY, JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import RouteMatch
from gateway.core.tiers import Tier
from gateway.http.body import BodyTooLarge, BodyTooSlow, Pace, read_limited
from gateway.http.call import JobCall, Refused

Parser = Callable[[RouteMatch, str | None, str | None, bytes], JobSpec | None]


@dataclass(frozen=True, slots=True)
class JobBody:
    """A job route's body as sent, and what the adapter read from it (None: an update of no resources)."""

    raw: bytes
    spec: JobSpec | None
    idempotency_key: str | None = None


def job_record(spec: JobSpec) -> dict[str, Any]:
    """The job as the ledger keeps it (`parameters`: the declared parameter count; absent in older records)."""
    return {
        "parts": [asdict(p) for p in spec.parts],
        "walltime_s": spec.walltime_s,
        "purpose": spec.purpose,
        "lineage": spec.lineage,
        "parameters": spec.parameters,
    }


def content_encoding(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> str | None:
    """Every Content-Encoding the client sent, joined: the upstream reads them all, so the adapter must too."""
    values = headers.getall("Content-Encoding", [])
    return ", ".join(values) if values else None


def idempotency_key(headers: Mapping[str, str], spec: JobSpec | None, tier: Tier | None) -> str | Refused | None:
    """The submission's idempotency key (the header, else the body's), or the refusal of a malformed one."""
    idem = headers.get("Idempotency-Key") or (spec.idempotency_key if spec else None)
    if idem is not None and not IDEMPOTENCY_KEY.match(idem):
        detail = "Idempotency-Key: 1 to 128 letters, digits, '.', '_', ':' or '-'"
        return Refused(refuse(Code.JOB_SPEC_INVALID, detail, tier))
    return idem


class BodyReader:
    """Reads and parses job bodies; a refusal when the body is too large, too slow or unreadable."""

    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics

    async def submission(self, job: JobCall) -> JobBody | Refused:
        body = await self._parsed(job, job.adapter.parse_submission)
        if isinstance(body, Refused):
            return body
        a = job.admitted
        idem = idempotency_key(a.request.headers, body.spec, a.admission.tier)
        return idem if isinstance(idem, Refused) else replace(body, idempotency_key=idem)

    async def update(self, job: JobCall) -> JobBody | Refused:
        return await self._parsed(job, job.adapter.parse_update)

    async def _parsed(self, job: JobCall, parse: Parser) -> JobBody | Refused:
        """Read the body, then parse it with the adapter's submission or update parser."""
        raw = await self._read(job)
        if isinstance(raw, Refused):
            return raw
        a = job.admitted
        try:
            spec = parse(a.match, a.request.headers.get("Content-Type"), content_encoding(a.request.headers), raw)
        except JobUpdateNotAllowed as exc:  # only the update parser raises it
            return Refused(refuse(Code.JOB_UPDATE_NOT_ALLOWED, str(exc), a.admission.tier))
        except JobSpecInvalid as exc:
            return Refused(refuse(Code.JOB_SPEC_INVALID, str(exc), a.admission.tier))
        return JobBody(raw, spec)

    async def _read(self, job: JobCall) -> bytes | Refused:
        return await self.read(job.admitted.request, job.admitted.admission.tier)

    async def read(self, request: web.Request, tier: Tier | None, *, limit: int | None = None) -> bytes | Refused:
        """The whole body as sent (raises ClientClosed), or the refusal when it is too large or too slow.

        `limit` replaces `limits.max_body_bytes` (code package uploads have their own).
        """
        limits = self.limits
        most = limits.max_body_bytes if limit is None else limit
        try:
            return await read_limited(request, most, Pace(limits.body_timeout_s, limits.body_min_rate_bytes_s))
        except BodyTooLarge:
            detail = f"the body exceeds {most} bytes"
            return Refused(refuse(Code.BODY_TOO_LARGE, detail, tier), close=True)
        except BodyTooSlow:
            self.metrics.connections_refused.labels("body_timeout").inc()
            detail = (
                f"the body paused over {limits.body_timeout_s:g} s or arrived slower than "
                f"{limits.body_min_rate_bytes_s:g} bytes/s"
            )
            return Refused(refuse(Code.REQUEST_TIMEOUT, detail, tier), close=True)
