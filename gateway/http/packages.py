"""Code packages (Ray's `--working-dir` / `py_modules` uploads): a tenant reads and runs only what it uploaded.

Ray names a directory's package after an XOR of per-file hashes (a wheel after its file name): a
name proves nothing about the bytes, two tenants may upload under one name, and Ray keeps one copy
per name, a later upload replacing it. The gateway keeps, in the quota store's ownership records (a
namespace of their own, `<upstream>#packages`; the digest stands in the record's lease id):

* `gcs://<name>`: the SHA-256 of the bytes last uploaded under the name through the gateway, and by whom;
* `gcs://<name> <tenant>`: the SHA-256 of the bytes that tenant uploaded under it.

A tenant may read (`GET`) or name in a submission's runtime_env only a package whose bytes it
uploaded and which are still the ones Ray holds (its digest equals the name's). An upload whose
bytes differ from those recorded for the name is refused `package_conflict` while Ray still holds
the name (it would replace another upload's code); the same bytes, or a name Ray no longer holds,
are forwarded and recorded. Records are kept as long as job ownership (30 days) and are not in the
ledger: after a memory store restarts, the CLI's existence check gets 404 and it uploads again.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from yarl import URL

from gateway.adapters.quota import BackendUnavailable, LeaseRef, QuotaStore, StoredResponse
from gateway.config.limits import Limits
from gateway.core.codes import Code
from gateway.core.decide import refuse
from gateway.core.jobs import JobSpec
from gateway.core.leases import QUOTA_SLOT
from gateway.http import forward
from gateway.http.call import Admitted, JobCall, Refused
from gateway.http.job_body import BodyReader
from gateway.http.reads import Reads
from gateway.http.relay import Relay, answer
from gateway.http.responder import Responder
from gateway.schedulers.ray import PACKAGE_READ, PACKAGE_ROUTES, RayAdapter, package_uri

_STORED = StoredResponse(200, (), b"")


def namespace(upstream: str) -> str:
    """The ownership namespace of an upstream's packages (never a real upstream's job records)."""
    return f"{upstream}#packages"


def _digest_of(lease: LeaseRef) -> str:
    return lease.lease_id


class _KeyedLocks:
    """One asyncio lock per key while anyone holds or waits for it (uploads of one name take turns)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Packages:
    """The package routes' flow, and the check a submission naming packages passes."""

    def __init__(
        self, store: QuotaStore, responder: Responder, reads: Reads, relay: Relay, reader: BodyReader, limits: Limits
    ) -> None:
        self.store = store
        self.responder = responder
        self.reads = reads
        self.relay = relay
        self.reader = reader
        self.limits = limits
        self._locks = _KeyedLocks()

    @staticmethod
    def handles(a: Admitted) -> bool:
        """Whether the admitted request is a Ray package read or upload."""
        return isinstance(a.upstream.adapter, RayAdapter) and a.match.route in PACKAGE_ROUTES

    async def usable(self, upstream: str, tenant_id: str, uri: str) -> bool:
        """Whether the tenant uploaded the bytes the gateway last let through under `uri`."""
        ns = namespace(upstream)
        mine = await self.store.owner_of(ns, f"{uri} {tenant_id}")
        if mine is None or mine.tenant_id != tenant_id:
            return False
        current = await self.store.owner_of(ns, uri)
        return current is not None and _digest_of(current.lease) == _digest_of(mine.lease)

    async def handle(self, a: Admitted) -> web.StreamResponse:
        uri = package_uri(a.match)
        if uri is None:
            detail = "not a package name Ray makes (letters, digits, '.', '_', '+', '-'; not starting with '.' or '-')"
            return await self.responder.refuse(a.call, refuse(Code.ROUTE_NOT_ALLOWED, detail, a.admission.tier))
        if a.match.route == PACKAGE_READ:
            if a.request.body_exists:  # read within the limits like any other route's, never streamed on unread
                body = await self.reader.read(a.request, a.admission.tier)
                if isinstance(body, Refused):
                    return await self.responder.refused(a.call, body)
                a.call.body = body
            return await self._read(a, uri)
        return await self._upload(a, uri)

    async def _read(self, a: Admitted, uri: str) -> web.StreamResponse:
        try:
            usable = await self.usable(a.upstream.name, a.tenant.id, uri)
        except BackendUnavailable as exc:
            return self.responder.backend_down(a.call, a.admission, "quota", str(exc))
        if not usable:
            # 404 is what Ray answers for a missing package: the CLI then uploads its own copy.
            detail = f"package {uri[:128]} was not uploaded by this tenant through the gateway"
            return await self.responder.refuse(a.call, refuse(Code.PACKAGE_NOT_OWNED, detail, a.admission.tier))
        result = await self.reads.fetch_recorded(a, a.admission, None, wait=False)
        return result if isinstance(result, web.StreamResponse) else answer(result, a.decision_id)

    async def _upload(self, a: Admitted, uri: str) -> web.StreamResponse:
        body = await self.reader.read(a.request, a.admission.tier, limit=self.limits.max_package_bytes)
        if isinstance(body, Refused):
            return await self.responder.refused(a.call, body)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        ns = namespace(a.upstream.name)
        async with self._locks.hold(f"{ns} {uri}"):
            try:
                current = await self.store.owner_of(ns, uri)
            except BackendUnavailable as exc:
                return self.responder.backend_down(a.call, a.admission, "quota", str(exc))
            if current is not None and _digest_of(current.lease) != digest:
                held = await self._ray_holds(a, uri)
                if not isinstance(held, bool):
                    return held
                if held:
                    detail = (
                        f"{uri[:128]} already holds other content uploaded through the gateway; "
                        "change a file to give your package another name"
                    )
                    return await self.responder.refuse(a.call, refuse(Code.PACKAGE_CONFLICT, detail, a.admission.tier))
            result = await self.reads.fetch_recorded(a, a.admission, body)
            if isinstance(result, web.StreamResponse):
                return result
            if 200 <= result.status < 300:
                ref = LeaseRef(QUOTA_SLOT, a.tenant.id, digest, None, ())
                try:
                    # The tenant's own record first: the name's record then makes it usable.
                    await self.store.complete(ref, upstream=ns, job_id=f"{uri} {a.tenant.id}", response=_STORED,
                                              now=a.call.now)  # fmt: skip
                    await self.store.complete(ref, upstream=ns, job_id=uri, response=_STORED, now=a.call.now)
                except BackendUnavailable as exc:
                    return self.responder.backend_down(a.call, a.admission, "quota", str(exc))
            return answer(result, a.decision_id)

    async def _ray_holds(self, a: Admitted, uri: str) -> bool | web.Response:
        """Whether Ray still holds a package under `uri` (asked with its own existence check)."""
        session = a.upstream.session
        assert session is not None  # started with the server
        url = a.upstream.url_for("/api/packages/gcs/" + uri[len("gcs://") :])
        try:
            async with session.get(
                URL(url, encoded=True), headers=self.relay.headers(a, a.admission), allow_redirects=False
            ) as reply:
                await reply.read()
                return reply.status != 404  # anything but "does not exist" keeps the name taken
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = forward.classify(exc)
            return self.responder.reply(a.call, failure.code, failure.detail)

    async def check_submission(self, job: JobCall, spec: JobSpec) -> web.Response | None:
        """The refusal for a submission that runs a package the tenant may not use."""
        a = job.admitted
        for uri in spec.packages:
            try:
                usable = await self.usable(a.upstream.name, a.tenant.id, uri)
            except BackendUnavailable as exc:
                return self.responder.backend_down(a.call, a.admission, "quota", str(exc))
            if not usable:
                detail = f"runtime_env names package {uri[:128]}, which this tenant did not upload through the gateway"
                return await self.responder.refuse(a.call, refuse(Code.PACKAGE_NOT_OWNED, detail, a.admission.tier))
        return None
