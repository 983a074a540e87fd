"""What a priced answer tells the tenant's tools: the job's cost and the room left under its caps.

Set on an admitted submission's or update's answer (the room after this job) and on a refusal of
a priced job (the room now: the refused job took nothing), so a client can tell it is near a cap
before it is refused. Headers an upstream sent under these names are dropped first: only the
gateway speaks for its own counts.
"""

from collections.abc import MutableMapping

from gateway.core.decide import Decision
from gateway.core.headroom import headrooms

PREFIX = "X-Exportgate-"
OURS = ("x-exportgate-cost-", "x-exportgate-headroom-", "x-exportgate-binding-")
HEADROOM_HEADERS = {"tpp": "Headroom-TPP", "training_ops": "Headroom-Training-Ops", "tpp_hours": "Headroom-TPP-Hours"}


def number(value: float) -> str:
    """A count as a header value: whole numbers without a fraction, others to 15 significant digits."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.15g}"


def quota_headers(decision: Decision) -> dict[str, str]:
    """The cost and headroom headers a decision supports (none before the job was priced)."""
    cost = decision.cost
    if cost is None:
        return {}
    headers = {
        f"{PREFIX}Cost-TPP": number(cost.held_tpp),
        f"{PREFIX}Cost-GPUs": str(cost.gpus),
        f"{PREFIX}Cost-TPP-Hours": number(cost.tpp_hours),
        f"{PREFIX}Cost-Training-Ops": number(cost.training_ops),
    }
    if decision.quota is None:
        return headers
    for kind, room in headrooms(decision.quota).items():
        headers[PREFIX + HEADROOM_HEADERS[kind]] = number(room.amount)
        if kind == "tpp":
            headers[f"{PREFIX}Binding-Cap"] = room.binding
    return headers


def set_quota_headers(headers: MutableMapping[str, str], decision: Decision) -> None:
    """Replace whatever an upstream said under these names with the gateway's own counts."""
    for name in {n for n in headers if n.lower().startswith(OURS)}:
        if name in headers:  # a multidict drops every value of a name at once, in any case
            del headers[name]
    headers.update(quota_headers(decision))
