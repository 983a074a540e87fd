"""Who a Kubernetes admission request is for: the user's tenant, or for a controller the namespace's tenant.

There is no token: the API server names the user (`request.userInfo.username`). A user is the
registry identity `{issuer: <admission_webhook.issuer>, subject: <username>}`, as a token's
`(iss, sub)` is for the proxy, and may act only in its tenant's namespace (the upstream's
`bind_params`, `{ns: k8s_namespace}` by default). A user the registry does not know is refused
`tenant_unknown`.

Controllers (`admission_webhook.controllers`) create objects for others. What one creates under
a controlling owner the adapter priced, whose lease is live (the Job controller's pods, KubeRay's
pods and the RayCluster of a RayJob), is covered by that owner's lease. Anything else a
controller creates (a CronJob's Jobs, a ReplicaSet's GPU pods) is priced for the tenant whose
namespace it is in (`upstream_identity.<field>` equal to the namespace, one tenant only).
Updates are taken as the namespace tenant's too: an update charges nothing new, and the users
who make them (KubeRay's autoscaler, a GitOps agent) are often in no registry.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from gateway.adapters.quota import BackendUnavailable, QuotaStore
from gateway.adapters.upstream import Upstream
from gateway.config.admission_webhook import WebhookSettings
from gateway.core.tenants import Identity, Registry, Tenant
from gateway.http.body import BodyTooLarge, read_bounded
from gateway.schedulers.base import try_json
from gateway.schedulers.kubernetes_review import Review, admitted_id, controller_of, owner_path, proxy_id

log = logging.getLogger(__name__)
MAX_HOPS = 3  # Pod -> RayCluster -> RayJob: owners are followed this far up
OWNER_READ_TIMEOUT_S = 3.0
MAX_OWNER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Requester:
    """The user as an identity, the tenant it acts for (None: none), and whether it is a listed controller."""

    identity: Identity
    tenant: Tenant | None
    controller: bool
    unknown: str = ""  # why there is no tenant


def namespace_tenant(registry: Registry, upstream: Upstream, namespace: str) -> tuple[Tenant | None, str]:
    """The one tenant whose `upstream_identity` names `namespace` (the field `bind_params` binds `ns` to)."""
    field = upstream.settings.bind_params.get("ns")
    if field is None:
        return None, "the upstream binds no namespace to tenants (bind_params has no ns)"
    found = [t for t in registry.tenants.values() if t.upstream_identity.get(field) == namespace]
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"namespace {namespace!r} belongs to no registered tenant"
    return None, f"namespace {namespace!r} is bound to {len(found)} tenants"


def requester(registry: Registry, settings: WebhookSettings, upstream: Upstream, review: Review) -> Requester:
    """The tenant a review is decided for (see the module); `unknown` says why there is none."""
    identity = Identity(settings.issuer, review.username)
    controller = review.username in settings.controllers
    tenant = registry.lookup(identity) if review.username else None
    if tenant is not None:
        return Requester(identity, tenant, controller)
    if controller or review.operation == "UPDATE":
        by_namespace, why = namespace_tenant(registry, upstream, review.namespace)
        return Requester(identity, by_namespace, controller, why)
    why = f"the Kubernetes user maps to no registered tenant (registry identities of issuer {settings.issuer!r})"
    return Requester(identity, None, controller, why)


async def covering_owner(store: QuotaStore, upstream: Upstream, owned: str, review: Review) -> str | None:
    """The id of the leased owner that covers what a controller creates, or None (then it is priced itself).

    The object's controlling owner covers it when that owner's lease is live, whether the webhook
    (`owned` scope, by uid) or the proxy (the adapter's id) admitted it; an owner not leased itself
    is read from the API server and its own controlling owner tried, up to MAX_HOPS.
    """
    ref, namespace = controller_of(review.obj), review.namespace
    for _ in range(MAX_HOPS):
        if ref is None:
            return None
        for scope, job_id in ((owned, admitted_id(ref.resource, namespace, ref.name, ref.uid)),
                              (upstream.name, proxy_id(namespace, ref))):  # fmt: skip
            try:
                if await store.held_amounts(scope, job_id) is not None:
                    return job_id
            except BackendUnavailable as exc:
                log.warning("admission webhook: the lease of owner %s cannot be read: %s", job_id, exc)
                return None  # priced itself: counted twice at worst
        doc = await _read(upstream, owner_path(namespace, ref))
        meta = doc.get("metadata") if doc is not None else None
        if not isinstance(meta, Mapping) or meta.get("uid") != ref.uid:
            return None
        ref = controller_of(doc)
    return None


async def _read(upstream: Upstream, path: str) -> Mapping[str, Any] | None:
    """An object the gateway reads from the API server with its own credentials; None when it cannot."""
    if upstream.session is None:
        return None
    headers = {**upstream.static_headers, "Accept": "application/json", "Accept-Encoding": "identity"}
    try:
        async with upstream.session.get(
            URL(upstream.url_for(path), encoded=True), headers=headers,
            timeout=aiohttp.ClientTimeout(total=OWNER_READ_TIMEOUT_S), allow_redirects=False,
        ) as response:  # fmt: skip
            if response.status != 200:
                return None
            body = await read_bounded(response.content, MAX_OWNER_BYTES)
    except BodyTooLarge:
        return None
    except (TimeoutError, aiohttp.ClientError) as exc:
        log.warning("admission webhook: owner %s could not be read: %s", path, type(exc).__name__)
        return None
    doc = try_json(body)
    return doc if isinstance(doc, dict) else None
