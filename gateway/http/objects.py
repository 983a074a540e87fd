"""The object-store flow: S3 requests for model weights, decided on the lineage they hold, re-signed to the store.

An `s3` upstream's requests do not go through the job pipeline. Each one is authenticated (a
bearer token, or SigV4 with an access key the registry maps to a tenant, or a presigned URL the
gateway minted), read as one allowed S3 operation (gateway/schedulers/s3.py), admitted on tier and
KYC, limited to the tenant's buckets, and decided on the weights rules (gateway/core/weights.py)
with the lineage's counted operations read from the quota store. Then it is recorded and sent to
the store signed with the gateway's own credentials:

* reads (GET, HEAD) go to the store first: the object's metadata (its lineage, if the gateway
  wrote one at upload) comes back with its headers, the decision is taken and recorded before a
  byte of it reaches the client, and a refusal closes the store's answer unread;
* writes (PUT, multipart) are decided on the catalogue and the lineage, parameters and domain the
  client declares (`x-amz-meta-exportgate-*`), recorded before anything is sent, and carry the
  gateway's own metadata to the store;
* listings are read whole and returned without the objects the tenant may not read.

A tenant asks `POST <prefix>/_exportgate/presign` for a short-lived presigned GET URL (to the
gateway, which decides again when it is used). Refusals are problem+json for bearer clients and
S3 `<Error>` XML for SigV4 clients.
"""

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.adapters.auth import Authenticator
from gateway.adapters.policy_files import PolicyFiles
from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.sigv4 import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    SigV4Claim,
    SigV4Error,
    check_scope,
    claim_from_header,
    claim_from_query,
    derived_secret,
    is_sigv4,
    payload_hash,
    presign_url,
    sign_upstream,
    verify,
)
from gateway.adapters.upstream import CredentialError, Upstream
from gateway.config.secrets import SecretError, SecretRef, read_secret
from gateway.core.catalogue import WeightsSettings
from gateway.core.codes import Code
from gateway.core.decide import Decision, Facts, decide, refuse
from gateway.core.leases import QUOTA_SLOT
from gateway.core.routes import Route, RouteMatch
from gateway.core.tenants import Identity, Tenant
from gateway.core.weights import (
    META_DECISION,
    META_DOMAIN,
    META_LINEAGE,
    META_PARAMS,
    META_TENANT,
    LineageStatus,
    ObjectFacts,
    WeightsDecision,
    WeightsOp,
    WeightsQuestion,
    catalogue_facts,
    decide_weights,
    lineage_bio_ops_key,
    lineage_ops_key,
    lineage_params_key,
    lineage_status,
    object_facts,
)
from gateway.http import forward
from gateway.http.admission import authenticate, resolve_tenant
from gateway.http.body import BodyTooLarge, read_bounded
from gateway.http.call import Call, Refused
from gateway.http.headers import downstream_response_headers, upstream_request_headers
from gateway.http.relay import LISTING_LIMIT
from gateway.http.responder import Responder
from gateway.schedulers.s3 import (
    NotAllowed,
    S3Adapter,
    S3Op,
    S3Options,
    S3Request,
    SecretSource,
    classify,
    filtered_listing,
    parse_listing,
    s3_error,
    split_query,
)

log = logging.getLogger(__name__)
PRESIGN_PATH = "/_exportgate/presign"
PRESIGN_KEY_PREFIX = "exportgate-presign."
SIGV4_ISSUER = "sigv4"
META_PREFIX = "x-amz-meta-"
OURS = META_PREFIX + "exportgate-"
# Client headers never passed to the store: SigV4's own (the gateway signs anew) and metadata only it writes.
_DROPPED = frozenset({"x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "expect"})
_CACHE_LIMIT = 10_000
_PRESIGN_BODY_LIMIT = 4096


@dataclass
class ObjectStore:
    """One `s3` upstream's runtime: the gateway's credentials there, its presign key, and a metadata cache."""

    upstream: Upstream
    options: S3Options
    key_id: str
    secret: str = field(repr=False)
    presign_key: bytes = field(repr=False)
    cache: dict[tuple[str, str, str], ObjectFacts] = field(default_factory=dict)

    def remember(self, etag: str, facts: ObjectFacts) -> None:
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        self.cache[(facts.bucket, facts.key, etag)] = facts


def read_source(source: SecretSource, env: Mapping[str, str], what: str) -> str:
    """One of the gateway's own secrets, read now from its file or variable (raises CredentialError)."""
    try:
        value = read_secret(SecretRef(source.file, source.env), env).strip()
    except SecretError as exc:
        raise CredentialError(f"{what}: {exc}") from exc
    if not value:
        raise CredentialError(f"{what}: empty")
    return value


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(64 * 1024):
        yield chunk


class PayloadMismatch(Exception):
    """The body a SigV4 client sent does not hash to the `x-amz-content-sha256` it signed."""


async def _checked_body(request: web.Request, expected: str) -> AsyncIterator[bytes]:
    """The body, its SHA-256 checked against the signed one: the last chunk is held back until the hash is
    known, so a body that does not match never reaches the store whole (the upload is cut short, and fails)."""
    digest = hashlib.sha256()
    held: bytes | None = None
    async for chunk in request.content.iter_chunked(64 * 1024):
        digest.update(chunk)
        if held is not None:
            yield held
        held = chunk
    if digest.hexdigest() != expected:
        raise PayloadMismatch("the body does not match x-amz-content-sha256")
    if held is not None:
        yield held


def open_store(upstream: Upstream, env: Mapping[str, str]) -> ObjectStore | None:
    """The runtime of an `s3` upstream (None for any other); its secrets are read now (raises CredentialError)."""
    adapter = upstream.adapter
    if not isinstance(adapter, S3Adapter):
        return None
    o = adapter.options
    key_id = read_source(o.access_key_id, env, f"upstream {upstream.name}: access_key_id")
    secret = read_source(o.secret_access_key, env, f"upstream {upstream.name}: secret_access_key")
    presign = (
        read_source(o.presign_secret, env, f"upstream {upstream.name}: presign_secret").encode()
        if o.presign_secret is not None
        else secrets.token_bytes(32)
    )
    if len(presign) < 16:
        raise CredentialError(f"upstream {upstream.name}: presign_secret is shorter than 16 bytes")
    return ObjectStore(upstream, o, key_id, secret, presign)


def admit_object(policy: PolicyFiles, call: Call, tenant: Tenant, s3: S3Request) -> Decision:
    """Tier and KYC (core `decide`), then the tenant's buckets (the registry's `object_store.buckets`)."""
    decision = decide(Facts(call.when, tenant, s3.op.route_kind), policy.pack)
    if not decision.forwards:
        return decision
    access = tenant.object_store
    if access is None or not access.may_use(s3.bucket):
        return refuse(Code.ROUTE_NOT_ALLOWED, f"bucket {s3.bucket} is not one of this tenant's", decision.tier)
    return decision


async def lineage_now(quota: QuotaStore, policy: PolicyFiles, facts: ObjectFacts, when: datetime,
                      now: float) -> LineageStatus | None:  # fmt: skip
    """An object's lineage status on `when`: the gateway's counts (read from the quota store at `now`), the
    catalogue, and what the object declares; None for an object of no lineage. Raises BackendUnavailable."""
    if facts.lineage is None:
        return None
    counted = await quota.counter_value(QUOTA_SLOT, lineage_ops_key(facts.lineage), now)
    bio = await quota.counter_value(QUOTA_SLOT, lineage_bio_ops_key(facts.lineage), now)
    param_jobs = await quota.counter_value(QUOTA_SLOT, lineage_params_key(facts.lineage), now)
    settings = policy.pack.weights or WeightsSettings()
    lineage = catalogue_facts(settings, facts.lineage, when.date(), counted_ops=counted, counted_bio_ops=bio,
                              parameters=facts.parameters, data_domain=facts.data_domain,
                              counted_param_jobs=param_jobs)  # fmt: skip
    return lineage_status(lineage, settings, policy.pack, when)


def xml_dialect(resource: str, s3_code: str | None = None) -> Callable[[str, str, str, str], tuple[str, bytes]]:
    """The S3 error dialect for one request (SigV4 clients)."""

    def render(code: str, detail: str, decision_id: str, citation: str) -> tuple[str, bytes]:
        return "application/xml", s3_error(code, detail, decision_id, resource, s3_code, citation)

    return render


def _metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """User metadata of a request or an answer: lower-case names without `x-amz-meta-`."""
    return {k.lower()[len(META_PREFIX) :]: v for k, v in headers.items() if k.lower().startswith(META_PREFIX)}


@dataclass(frozen=True, slots=True)
class _Who:
    tenant: Tenant
    sigv4: SigV4Claim | None


class Objects:
    """The flow of every request to an `s3` upstream (see the module docstring)."""

    def __init__(
        self,
        stores: list[ObjectStore],
        auth: Authenticator,
        policy: PolicyFiles,
        quota: QuotaStore,
        responder: Responder,
        write_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stores = {s.upstream.name: s for s in stores}
        self.auth = auth
        self.policy = policy
        self.quota = quota
        self.responder = responder
        self.write_timeout_s = write_timeout_s
        self.clock = clock

    def serves(self, upstream: Upstream) -> bool:
        return upstream.name in self.stores

    # -- the flow ---------------------------------------------------------------------------------

    async def handle(self, call: Call) -> web.StreamResponse:
        request = call.request
        assert request is not None
        store = self.stores[call.upstream.name]
        raw_query = request.raw_path.partition("?")[2]
        query = split_query(raw_query)
        local = call.upstream.local_path(call.path)
        if is_sigv4(call.headers.get("Authorization"), query):
            call.dialect = xml_dialect(local)
        who = await self._authenticate(call, store, local, query)
        if isinstance(who, Refused):  # an unread body is never taken for a next request
            return await self.responder.refused(call, Refused(who.decision, close=request.body_exists))
        if local == PRESIGN_PATH:
            return await self._presign(call, store, who)
        try:
            s3 = classify(call.method, local, query, call.headers)
        except NotAllowed as exc:
            return await self._refuse(call, refuse(Code.ROUTE_NOT_ALLOWED, str(exc)), close=request.body_exists)
        if call.dialect is not None:
            call.dialect = xml_dialect(s3.resource)
        call.match = RouteMatch(Route.of(f"s3.{s3.op.value}", (call.method,), "/{bucket}/{key}", s3.op.route_kind),
                                {"bucket": s3.bucket, "key": s3.key})  # fmt: skip
        admission = self._admit(call, who.tenant, s3)
        if not admission.forwards:
            return await self._refuse(call, admission, close=request.body_exists)
        try:
            if s3.op.weights_op is WeightsOp.READ:
                return await self._read(call, store, who, s3, admission)
            if s3.op.weights_op is WeightsOp.LIST:
                return await self._list(call, store, who, s3, admission)
            return await self._write(call, store, who, s3, admission)
        except BackendUnavailable as exc:
            return self.responder.backend_down(call, admission, "quota", str(exc))
        except forward.UpstreamFailure as exc:
            return self.responder.reply(call, exc.code, exc.detail)

    async def _refuse(self, call: Call, decision: Decision, *, close: bool = False) -> web.Response:
        return await self.responder.refused(call, Refused(decision, close=close))

    async def _authenticate(self, call: Call, store: ObjectStore, local: str,
                            query: list[tuple[str, str]]) -> _Who | Refused:  # fmt: skip
        """A bearer token, or a SigV4 signature by a registered access key (or a gateway presign key)."""
        authorization = call.headers.get("Authorization")
        if (authorization or "").startswith("AWS ") or any(k == "AWSAccessKeyId" for k, _ in query):
            call.dialect = xml_dialect(local, "InvalidRequest")
            detail = "the authorization mechanism you have provided is not supported; use AWS4-HMAC-SHA256 (SigV4)"
            return Refused(refuse(Code.AUTH_INVALID, detail))
        if not is_sigv4(authorization, query):
            identity = await authenticate(self.auth, call)
            if isinstance(identity, Refused):
                return identity
            call.identity = identity
            tenant = resolve_tenant(self.policy, call, identity)
            if isinstance(tenant, Refused):
                return tenant
            call.tenant = tenant
            return _Who(tenant, None)
        try:
            claim = claim_from_header(authorization, call.headers) if authorization else claim_from_query(query)
            tenant, secret, max_expires = self._key(store, claim)
            call.identity = Identity(SIGV4_ISSUER, claim.key_id)
            call.tenant = tenant
            check_scope(claim, store.options.region, self.clock(), store.options.clock_skew_s, max_expires)
            request = call.request
            assert request is not None
            verify(claim, secret, call.method, request.raw_path.partition("?")[0], query, call.headers)
        except SigV4Error as exc:
            call.dialect = xml_dialect(local, exc.s3_code)
            return Refused(refuse(Code.AUTH_INVALID, exc.detail))
        return _Who(tenant, claim)

    def _key(self, store: ObjectStore, claim: SigV4Claim) -> tuple[Tenant, str, int | None]:
        registry = self.policy.registry
        if claim.key_id.startswith(PRESIGN_KEY_PREFIX):
            tenant = registry.tenants.get(claim.key_id[len(PRESIGN_KEY_PREFIX) :])
            if tenant is None or not claim.presigned:
                raise SigV4Error("InvalidAccessKeyId", "the presign credential names no tenant")
            return tenant, derived_secret(store.presign_key, tenant.id), store.options.presign_max_s
        found = registry.access_key(claim.key_id)
        if found is None:
            raise SigV4Error("InvalidAccessKeyId", "the access key id is not registered")
        return found[0], found[1].secret, None

    def _admit(self, call: Call, tenant: Tenant, s3: S3Request) -> Decision:
        return admit_object(self.policy, call, tenant, s3)

    # -- lineage facts ----------------------------------------------------------------------------

    def _settings(self) -> WeightsSettings:
        return self.policy.pack.weights or WeightsSettings()

    async def _status(self, facts: ObjectFacts, call: Call) -> LineageStatus | None:
        return await lineage_now(self.quota, self.policy, facts, call.when, self.clock())

    async def _weights(self, call: Call, who: _Who, op: WeightsOp, facts: ObjectFacts,
                       admission: Decision) -> WeightsDecision:  # fmt: skip
        status = await self._status(facts, call)
        question = WeightsQuestion(op, who.tenant, status, facts.bucket)
        return decide_weights(question, admission, self._settings(), self.policy.pack, call.when)

    @staticmethod
    def _extra(call: Call, s3: S3Request, facts: ObjectFacts, wd: WeightsDecision, **more: Any) -> None:
        call.record_extra = {
            "weights": {
                "op": s3.op.weights_op.value,
                "s3_op": s3.op.value,
                "bucket": s3.bucket,
                "key": s3.key[:512],
                "lineage_source": facts.source,
                **wd.as_record(),
                **more,
            }
        }

    # -- reads ------------------------------------------------------------------------------------

    async def _read(self, call: Call, store: ObjectStore, who: _Who, s3: S3Request,
                    admission: Decision) -> web.StreamResponse:  # fmt: skip
        """Ask the store first; decide on what its answer's metadata says before a byte reaches the client."""
        request = call.request
        assert request is not None
        session = store.upstream.session
        assert session is not None
        url, headers = self._upstream_request(call, store, s3, who, body=False)
        try:
            answer = await session.request(call.method, URL(url, encoded=True), headers=headers, allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise forward.classify(exc) from exc
        try:
            facts = object_facts(self._settings(), s3.bucket, s3.key, _metadata(answer.headers))
            wd = await self._weights(call, who, WeightsOp.READ, facts, admission)
            self._extra(call, s3, facts, wd, status=answer.status)
            if not wd.decision.forwards:
                return await self._refuse(call, wd.decision)
            refused = await self.responder.commit(call, wd.decision, wait=False)
            if refused is not None:
                return refused
            return await self._stream_back(request, call, answer)
        finally:
            answer.release()

    async def _stream_back(
        self, request: web.Request, call: Call, answer: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = downstream_response_headers(answer.headers, keep_length=True)
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        response.headers["X-Exportgate-Decision-Id"] = call.decision_id
        await response.prepare(request)
        try:
            async for chunk in answer.content.iter_chunked(64 * 1024):
                async with asyncio.timeout(self.write_timeout_s):
                    await response.write(chunk)
        except (TimeoutError, aiohttp.ClientError):
            transport = request.transport
            if transport is not None:
                transport.close()
            return response
        await response.write_eof()
        return response

    # -- writes and deletes ------------------------------------------------------------------------

    async def _write(self, call: Call, store: ObjectStore, who: _Who, s3: S3Request,
                     admission: Decision) -> web.StreamResponse:  # fmt: skip
        """Decide on the catalogue and the client's declarations, record (waiting), then send with our metadata."""
        request = call.request
        assert request is not None
        declared = _metadata(call.headers) if s3.op in (S3Op.PUT_OBJECT, S3Op.CREATE_MULTIPART) else {}
        facts = object_facts(self._settings(), s3.bucket, s3.key, declared)
        op = s3.op.weights_op
        wd = await self._weights(call, who, op, facts, admission)
        self._extra(call, s3, facts, wd)
        if not wd.decision.forwards:
            return await self._refuse(call, wd.decision, close=request.body_exists)
        refused = await self.responder.commit(call, wd.decision, wait=True)
        if refused is not None:
            return refused
        ours = self._our_metadata(call, who, facts) if s3.op in (S3Op.PUT_OBJECT, S3Op.CREATE_MULTIPART) else {}
        try:
            url, headers = self._upstream_request(call, store, s3, who, body=request.body_exists, metadata=ours)
        except SigV4Error as exc:
            return await self._refuse(call, refuse(Code.REQUEST_MALFORMED, exc.detail), close=request.body_exists)
        session = store.upstream.session
        assert session is not None
        claimed = call.headers.get("x-amz-content-sha256", "") if who.sigv4 is not None else ""
        checked = len(claimed) == 64 and claimed != EMPTY_SHA256
        data = (_checked_body(request, claimed) if checked else _body(request)) if request.body_exists else None
        try:
            answer = await session.request(call.method, URL(url, encoded=True), headers=headers, data=data,
                                           allow_redirects=False)  # fmt: skip
        except (TimeoutError, aiohttp.ClientError, PayloadMismatch) as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, PayloadMismatch):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise forward.classify(exc) from exc
            await self.responder.followup("unsettled", call, reason="payload_mismatch")
            call.dialect = xml_dialect(s3.resource, "XAmzContentSHA256Mismatch")
            return self.responder.reply(call, Code.REQUEST_MALFORMED, str(cause))
        try:
            return await self._stream_back(request, call, answer)
        finally:
            answer.release()

    @staticmethod
    def _our_metadata(call: Call, who: _Who, facts: ObjectFacts) -> dict[str, str]:
        """What the gateway writes on an upload: the lineage decided on, the declared figures, who, which decision."""
        out = {META_TENANT: who.tenant.id, META_DECISION: call.decision_id}
        if facts.lineage is not None:
            out[META_LINEAGE] = facts.lineage
        if facts.parameters is not None:
            out[META_PARAMS] = f"{facts.parameters:.6g}"
        if facts.data_domain is not None:
            out[META_DOMAIN] = facts.data_domain
        return out

    def _upstream_request(self, call: Call, store: ObjectStore, s3: S3Request, who: _Who, *, body: bool,
                          metadata: Mapping[str, str] | None = None) -> tuple[str, CIMultiDict[str]]:  # fmt: skip
        """The store's URL for the request and the headers to send, signed with the gateway's credentials."""
        query = s3.query_string()
        url = store.upstream.settings.url + s3.path() + (f"?{query}" if query else "")
        assert call.request is not None
        headers = upstream_request_headers(call.request.headers)
        for name in list(headers):
            lower = name.lower()
            if lower in _DROPPED or lower.startswith(OURS):
                headers.popall(name, None)
        for name, value in (metadata or {}).items():
            headers[META_PREFIX + name] = value
        if body and call.request is not None and call.request.content_length is not None:
            headers["Content-Length"] = str(call.request.content_length)
        # A body streams past: a SigV4 client's payload hash is passed on for the store to check it against;
        # a bearer client's goes unsigned. A request without a body signs the empty payload.
        payload = EMPTY_SHA256
        if body:
            payload = (
                payload_hash(call.headers.get("x-amz-content-sha256"), signed=True) if who.sigv4 else UNSIGNED_PAYLOAD
            )
        signed = {k: v for k, v in headers.items() if k.lower().startswith("x-amz-") or k.lower() in ("content-md5",)}
        for name in signed:
            headers.popall(name, None)
        auth = sign_upstream(call.method, url, signed, store.key_id, store.secret, store.options.region, payload)
        for name, value in auth.items():
            headers[name] = value
        return url, headers

    # -- listings ---------------------------------------------------------------------------------

    async def _list(self, call: Call, store: ObjectStore, who: _Who, s3: S3Request,
                    admission: Decision) -> web.StreamResponse:  # fmt: skip
        """The listing without the objects the tenant may not read; one record says how many were left out."""
        request = call.request
        assert request is not None
        session = store.upstream.session
        assert session is not None
        url, headers = self._upstream_request(call, store, s3, who, body=False)
        headers["Accept-Encoding"] = "identity"
        try:
            async with session.request(call.method, URL(url, encoded=True), headers=headers,
                                       allow_redirects=False) as answer:  # fmt: skip
                try:
                    body = await read_bounded(answer.content, LISTING_LIMIT)
                except BodyTooLarge:
                    raise forward.UpstreamFailure(Code.UPSTREAM_UNREACHABLE, "the store's listing was too large",
                                                  sent=True) from None  # fmt: skip
                status, answer_headers = answer.status, downstream_response_headers(answer.headers, keep_length=False)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise forward.classify(exc) from exc
        summary: dict[str, Any] = {"op": "list", "s3_op": s3.op.value, "bucket": s3.bucket, "status": status,
                                   "prefix": dict(s3.query).get("prefix", "")[:512]}  # fmt: skip
        if 200 <= status < 300 and call.method != "HEAD":
            try:
                root, entries, _ = parse_listing(body)
            except ValueError as exc:
                return self.responder.reply(call, Code.UPSTREAM_UNREACHABLE, f"the store's listing: {exc}")
            hidden_ids = await self._hidden(call, store, who, s3, admission, [listed for _, listed in entries], summary)
            body, hidden = filtered_listing(root, entries, lambda listed: listed.key not in hidden_ids)
            summary |= {"objects": len(entries), "hidden": hidden}
            answer_headers["Content-Type"] = "application/xml"
        call.record_extra = {"weights": summary}
        refused = await self.responder.commit(call, admission, wait=False)
        if refused is not None:
            return refused
        out = web.Response(status=status, body=body, headers=answer_headers)
        out.headers["X-Exportgate-Decision-Id"] = call.decision_id
        return out

    async def _hidden(self, call: Call, store: ObjectStore, who: _Who, s3: S3Request, admission: Decision,
                      listed: list[Any], summary: dict[str, Any]) -> set[str]:  # fmt: skip
        """The keys of the listing the tenant may not read (enforced refusals; shadow ones are listed)."""
        settings = self._settings()
        facts: dict[str, ObjectFacts] = {}
        unknown = []
        for item in listed:
            found = object_facts(settings, s3.bucket, item.key, {})
            cached = store.cache.get((s3.bucket, item.key, item.etag))
            if found.lineage is None and cached is not None:
                found = cached
            elif found.lineage is None and item.etag:
                unknown.append(item)
            facts[item.key] = found
        if unknown:  # objects no pattern names: their metadata says whether they hold a lineage
            gate = asyncio.Semaphore(store.options.head_concurrency)

            async def head(item: Any) -> None:
                async with gate:
                    facts[item.key] = await self._head_facts(call, store, s3.bucket, item.key, item.etag, who)

            await asyncio.gather(*(head(item) for item in unknown))
        decisions: dict[tuple[str | None, float | None, str | None], WeightsDecision] = {}
        hidden: set[str] = set()
        by_lineage: dict[str, dict[str, Any]] = {}
        for key, found in facts.items():
            if found.lineage is None:
                continue
            marker = (found.lineage, found.parameters, found.data_domain)
            if marker not in decisions:
                decisions[marker] = await self._weights(call, who, WeightsOp.READ, found, admission)
            wd = decisions[marker]
            code = wd.decision.code.value if wd.decision.code else None
            lineage = wd.status.as_record() if wd.status else None
            first = {"objects": 0, "hidden": 0, "decision": wd.decision.outcome.value, "code": code, "lineage": lineage}
            entry = by_lineage.setdefault(found.lineage, first)
            entry["objects"] += 1
            if not wd.decision.forwards:
                hidden.add(key)
                entry["hidden"] += 1
        summary["lineages"] = by_lineage
        return hidden

    async def _head_facts(self, call: Call, store: ObjectStore, bucket: str, key: str, etag: str,
                          who: _Who) -> ObjectFacts:  # fmt: skip
        """One object's gateway-written metadata, by a HEAD the gateway signs; a failed HEAD hides the object."""
        session = store.upstream.session
        assert session is not None
        path = "/" + quote(bucket, safe="") + "/" + quote(key, safe="/~")
        url = store.upstream.settings.url + path
        headers = sign_upstream("HEAD", url, {}, store.key_id, store.secret, store.options.region, EMPTY_SHA256)
        try:
            async with session.head(URL(url, encoded=True), headers=headers, allow_redirects=False) as answer:
                if answer.status != 200:
                    return ObjectFacts(bucket, key, lineage="(unreadable)", source="unreadable")
                facts = object_facts(self._settings(), bucket, key, _metadata(answer.headers))
        except (TimeoutError, aiohttp.ClientError):
            return ObjectFacts(bucket, key, lineage="(unreadable)", source="unreadable")
        store.remember(etag, facts)
        return facts

    # -- presigned URLs -----------------------------------------------------------------------------

    async def _presign(self, call: Call, store: ObjectStore, who: _Who) -> web.StreamResponse:
        """`POST <prefix>/_exportgate/presign {"bucket", "key", "expires_s"}`: a presigned GET URL to the gateway,
        for an object the tenant may read now (decided and recorded like a read), valid at most presign_max_s."""
        request = call.request
        assert request is not None
        if call.method != "POST":
            return await self._refuse(
                call, refuse(Code.METHOD_NOT_ALLOWED, "presign is POST"), close=request.body_exists
            )
        raw = await request.content.read(_PRESIGN_BODY_LIMIT + 1)
        try:
            asked = json.loads(raw) if len(raw) <= _PRESIGN_BODY_LIMIT else None
        except ValueError:
            asked = None
        if (
            not isinstance(asked, dict)
            or not isinstance(asked.get("bucket"), str)
            or not isinstance(asked.get("key"), str)
        ):
            detail = 'send {"bucket": ..., "key": ..., "expires_s": ...} as JSON (at most 4 KiB)'
            return await self._refuse(call, refuse(Code.REQUEST_MALFORMED, detail))
        if asked.get("method", "GET") != "GET":
            return await self._refuse(call, refuse(Code.ROUTE_NOT_ALLOWED, "presigned URLs are minted for GET only"))
        limit = store.options.presign_max_s
        expires = asked.get("expires_s", min(300, limit))
        if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= limit:
            return await self._refuse(call, refuse(Code.REQUEST_MALFORMED, f"expires_s must be 1..{limit}"))
        if who.sigv4 is not None:  # a signed presign request: its body is what it signed
            claimed = call.headers.get("x-amz-content-sha256", "")
            if claimed not in ("UNSIGNED-PAYLOAD", hashlib.sha256(raw).hexdigest()):
                call.dialect = xml_dialect(PRESIGN_PATH, "XAmzContentSHA256Mismatch")
                return await self._refuse(
                    call, refuse(Code.AUTH_INVALID, "the body does not match x-amz-content-sha256")
                )
        bucket, key = asked["bucket"], asked["key"].lstrip("/")
        object_path = "/" + quote(bucket, safe="") + "/" + quote(key, safe="/~")
        try:
            s3 = classify("GET", object_path, [], {})
        except NotAllowed as exc:
            return await self._refuse(call, refuse(Code.ROUTE_NOT_ALLOWED, str(exc)))
        call.match = RouteMatch(Route.of("s3.presign", ("POST",), PRESIGN_PATH, s3.op.route_kind),
                                {"bucket": s3.bucket, "key": s3.key})  # fmt: skip
        admission = self._admit(call, who.tenant, s3)
        if not admission.forwards:
            return await self._refuse(call, admission)
        try:
            facts = await self._head_facts(call, store, s3.bucket, s3.key, "", who)
            if facts.source == "unreadable":
                facts = object_facts(self._settings(), s3.bucket, s3.key, {})
            wd = await self._weights(call, who, WeightsOp.READ, facts, admission)
        except BackendUnavailable as exc:
            return self.responder.backend_down(call, admission, "quota", str(exc))
        self._extra(call, s3, facts, wd, presign=True, expires_s=expires)
        if not wd.decision.forwards:
            return await self._refuse(call, wd.decision)
        refused = await self.responder.commit(call, wd.decision, wait=True)
        if refused is not None:
            return refused
        prefix = ""
        settings = call.upstream.settings
        if settings.strip_prefix:
            prefix = settings.prefix.rstrip("/")
        base = f"{request.scheme}://{request.host}{prefix}"
        key_id = PRESIGN_KEY_PREFIX + who.tenant.id
        url = presign_url(base + s3.path(), key_id, derived_secret(store.presign_key, who.tenant.id),
                          store.options.region, expires)  # fmt: skip
        body = {"url": url, "method": "GET", "expires_s": expires, "decision_id": call.decision_id}
        return web.json_response(body, headers={"X-Exportgate-Decision-Id": call.decision_id,
                                                "Cache-Control": "no-store"})  # fmt: skip
