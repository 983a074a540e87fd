"""A Ray cluster's GPUs per model, as the dashboard's state API lists its live nodes (pure parsing).

The source is `GET /api/v0/nodes` (Ray's state API, what `ray list nodes` reads), asked for the
ALIVE nodes only: each node's `resources_total` holds its `GPU` count and, on a node whose GPU
type is known, an `accelerator_type:<MODEL>` resource (Ray adds it on real GPU nodes; its amount
is not a GPU count). `/api/cluster_status` and `/nodes?view=summary` say the same per node but
camelCase every resource name (`accelerator_type:H100_SXM` comes out `acceleratorType:H100Sxm`),
so they cannot name a model reliably.

A snapshot keeps the GPUs of this moment and, per model, the most seen since the gateway started:
an autoscaling cluster that shrank may grow again, and a job is priced at what its cluster may hold.
The adapters layer fetches the list and replaces the snapshot; `cluster_gpus` in the options wins.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.pricing import CANDIDATE_SEPARATOR

# ALIVE nodes only, and as many as the API server gives (its own ceiling is 10000).
NODES_PATH = "/api/v0/nodes?limit=10000&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"

ACCELERATOR = "accelerator_type:"
ACCELERATOR_LABEL = "ray.io/accelerator-type"
MAX_NODE_GPUS = 1_000_000

GpuCounts = Mapping[str | None, int]  # model label (None: the node names no accelerator type) -> GPUs


@dataclass(frozen=True, slots=True)
class RayCapacity:
    """One reading of the cluster; `loaded` is False until the dashboard answered once.

    `gpus` is what the newest answer said; `peak` the most per model since start (what jobs are priced at).
    """

    gpus: GpuCounts = field(default_factory=dict)
    peak: GpuCounts = field(default_factory=dict)
    nodes: int = 0
    loaded: bool = False


EMPTY = RayCapacity()


class CapacityUnreadable(ValueError):
    """A dashboard answer that does not list the cluster's live nodes, or lists only some of them."""


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise CapacityUnreadable(f"{where} is not a resource amount: {str(value)[:40]!r}")
    return float(value)


def node_model(node: Mapping[str, Any]) -> str | None:
    """The node's GPU model label: its accelerator types (resources, `ray.io/accelerator-type` label),
    several joined as candidates (priced at the dearest); None when it names none."""
    models: set[str] = set()
    resources = node.get("resources_total")
    if isinstance(resources, Mapping):
        models |= {k[len(ACCELERATOR) :] for k in resources if isinstance(k, str) and k.startswith(ACCELERATOR)}
    labels = node.get("labels")
    label = labels.get(ACCELERATOR_LABEL) if isinstance(labels, Mapping) else None
    if isinstance(label, str):
        models.add(label)
    models = {m.strip() for m in models if m.strip()}
    return CANDIDATE_SEPARATOR.join(sorted(models)) if models else None


def node_gpus(node: Mapping[str, Any]) -> int:
    """Whole GPUs of a node (`resources_total.GPU`, a fraction rounded up)."""
    resources = node.get("resources_total")
    if not isinstance(resources, Mapping):
        raise CapacityUnreadable(f"node {str(node.get('node_id'))[:16]}: no resources_total")
    gpus = math.ceil(_number(resources.get("GPU", 0), "resources_total.GPU"))
    if gpus > MAX_NODE_GPUS:
        raise CapacityUnreadable(f"a node with {gpus} GPUs is beyond any real one")
    return gpus


def _listing(doc: Any) -> list[Any]:
    """The node list of a state API answer, refused when Ray truncated or limited it (GPUs would be missing)."""
    data = doc.get("data") if isinstance(doc, dict) else None
    listing = data.get("result") if isinstance(data, dict) else None
    if not isinstance(doc, dict) or doc.get("result") is not True or not isinstance(listing, dict):
        message = doc.get("msg") if isinstance(doc, dict) else None
        raise CapacityUnreadable(f"not a state API answer{f': {str(message)[:120]}' if message else ''}")
    nodes, total = listing.get("result"), listing.get("total")
    if not isinstance(nodes, list):
        raise CapacityUnreadable("the state API answer holds no node list")
    after_truncation, filtered = listing.get("num_after_truncation"), listing.get("num_filtered")
    if isinstance(total, int) and isinstance(after_truncation, int) and after_truncation < total:
        raise CapacityUnreadable(f"Ray truncated the node list ({after_truncation} of {total})")
    if isinstance(filtered, int) and len(nodes) < filtered:
        raise CapacityUnreadable(f"Ray limited the node list ({len(nodes)} of {filtered})")
    if listing.get("partial_failure_warning"):
        raise CapacityUnreadable(f"partial answer: {str(listing['partial_failure_warning'])[:120]}")
    return nodes


def parse_nodes(doc: Any) -> dict[str | None, int]:
    """`GET /api/v0/nodes` as GPUs per model over the ALIVE nodes; raises CapacityUnreadable."""
    out: dict[str | None, int] = {}
    for node in _listing(doc):
        if not isinstance(node, dict):
            raise CapacityUnreadable("a node entry is not an object")
        if node.get("state") != "ALIVE":
            continue
        gpus = node_gpus(node)
        if gpus:
            model = node_model(node)
            out[model] = out.get(model, 0) + gpus
    return out


def widened(seen: RayCapacity, doc: Any) -> RayCapacity:
    """The snapshot after one more answer: its GPUs now, and per model the most seen so far."""
    gpus = parse_nodes(doc)
    nodes = sum(1 for n in _listing(doc) if isinstance(n, dict) and n.get("state") == "ALIVE")
    peak = dict(seen.peak)
    for model, n in gpus.items():
        peak[model] = max(peak.get(model, 0), n)
    return RayCapacity(gpus, peak, nodes, loaded=True)
