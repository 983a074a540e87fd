"""Access records encoded from a template: a tenant's reads of one route differ in five fields only."""

from collections.abc import Callable, Hashable
from typing import Any, TypedDict

from gateway.core.decide import Decision
from gateway.core.ledger import UNENCODABLE, Prepared, Template, template
from gateway.core.policy import Pack
from gateway.core.tenants import Tenant
from gateway.http.call import Call


class Varying(TypedDict):
    """The fields of a request's record that change from one request to the next (the template's holes)."""

    decision_id: str
    ts: float
    client_ip: str
    method: str
    path: str


def varying(call: Call) -> Varying:
    """Those fields of `call`'s record, as every record of a request holds them (the responder's too)."""
    return Varying(decision_id=call.decision_id, ts=call.now, client_ip=call.client_ip, method=call.method,
                   path=call.path[:512])  # fmt: skip


# What changes from one request to the next; everything else in an access record is fixed by who asked, on
# which route of which upstream, through which entry, under which decision, pack and registry.
HOLES = tuple(Varying.__annotations__)


class RecordTemplates:
    """Templates of access records by their fixed fields, each encoded once (see `ledger.Template`).

    Keys name the decision, tenant and pack by identity: entries keep them, so an id is not reused while
    its entry lives, and a reload's new objects miss. Emptied when it holds `size` entries.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: dict[Hashable, tuple[Decision, Tenant | None, Pack, Template | None]] = {}

    def prepared(
        self, call: Call, decision: Decision, kind: str, pack: Pack, registry: str, body: Callable[[], dict[str, Any]]
    ) -> Prepared | None:
        """The record of `call` encoded from its template (`body()` builds it the first time), or None where a
        template does not serve: records with a job or flow fields, or a field json cannot encode."""
        if call.job is not None or call.record_extra:
            return None
        match = call.match
        key = (
            kind, call.entry, id(decision), id(call.tenant), call.identity, id(pack), registry, call.upstream.name,
            match.route.name if match else None, match.route.kind if match else None,
        )  # fmt: skip
        hit = self._entries.get(key)
        if hit is None or hit[0] is not decision or hit[1] is not call.tenant or hit[2] is not pack:
            fixed = {k: v for k, v in body().items() if k not in HOLES}
            if len(self._entries) >= self.size:
                self._entries.clear()
            hit = self._entries[key] = (decision, call.tenant, pack, template(fixed, HOLES))
        found = hit[3]
        if found is None:
            return None
        try:
            return found.fill(varying(call))
        except UNENCODABLE:
            return None  # the caller's own path refuses it, and logs why
