"""What a Slurm cluster is made of, as slurmrestd's `/nodes` and `/partitions` report it (pure parsing).

The gateway needs these facts to price jobs that Slurm sizes itself: whole-node jobs (`exclusive`,
or a partition with `OverSubscribe=EXCLUSIVE`) hold every GPU of each node they get, and per-node
GPU requests are multiplied by the most nodes a job may span. A snapshot is immutable; the adapters
layer fetches and replaces it, and operator overrides (`scheduler_options`) win over what it says.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.jobs import JobSpecInvalid
from gateway.schedulers.slurm_fields import GpuCounts, gres_spec


@dataclass(frozen=True, slots=True)
class NodeFacts:
    name: str
    gpus: Mapping[str | None, int]  # GPU type (None: untyped) -> count on this node
    partitions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PartitionFacts:
    name: str
    total_nodes: int | None
    default: bool = False
    exclusive: bool | None = None  # OverSubscribe=EXCLUSIVE; None: the source does not say (v0.0.36..v0.0.38)


@dataclass(frozen=True, slots=True)
class SlurmFacts:
    """One snapshot of the cluster; `loaded` is False until slurmrestd answered once."""

    nodes: Mapping[str, NodeFacts] = field(default_factory=dict)
    partitions: Mapping[str, PartitionFacts] = field(default_factory=dict)
    loaded: bool = False

    def default_partition(self) -> str | None:
        return next((p.name for p in self.partitions.values() if p.default), None)

    def node_gpus(self, partition: str) -> GpuCounts | None:
        """The GPUs of the partition's largest node, per type; None when no node of it is known."""
        members = [n for n in self.nodes.values() if partition in n.partitions]
        if not members:
            return None
        out: GpuCounts = {}
        for node in members:
            for label, n in node.gpus.items():
                out[label] = max(out.get(label, 0), n)
        return out

    def node_count(self, partition: str) -> int | None:
        p = self.partitions.get(partition)
        if p is not None and p.total_nodes:
            return p.total_nodes
        members = sum(1 for n in self.nodes.values() if partition in n.partitions)
        return members or None


EMPTY = SlurmFacts()


class FactsUnreadable(ValueError):
    """A slurmrestd answer that does not describe nodes or partitions."""


def _items(doc: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise FactsUnreadable(f"the slurmrestd answer holds no {key} list")
    return [item for item in doc[key] if isinstance(item, dict) and isinstance(item.get("name"), str)]


def node_gres(value: Any) -> GpuCounts:
    """A node's `gres` ("gpu:h100:8(S:0-1),mps:100,nic:1") as GPUs per type; other gres are not GPUs."""
    if not isinstance(value, str):
        return {}
    out: GpuCounts = {}
    for item in re.sub(r"\([^)]*\)", "", value).split(","):
        if re.split(r"[:=]", item.strip(), maxsplit=1)[0].lower() != "gpu":
            continue
        try:
            for label, n in gres_spec(item, "gres").items():
                out[label] = out.get(label, 0) + n
        except JobSpecInvalid as exc:
            raise FactsUnreadable(f"node gres {value[:64]!r}: {exc}") from None
    return out


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if isinstance(value, list):
        return tuple(p for p in value if isinstance(p, str))
    return ()


def parse_nodes(doc: Any) -> dict[str, NodeFacts]:
    """`GET /slurm/{v}/nodes` (v0.0.36..v0.0.42: `name`, `gres`, `partitions` are the same)."""
    out: dict[str, NodeFacts] = {}
    for node in _items(doc, "nodes"):
        gpus = node_gres(node.get("gres"))
        out[node["name"]] = NodeFacts(node["name"], gpus, _names(node.get("partitions")))
    return out


def _int(value: Any) -> int | None:
    if isinstance(value, dict):  # v0.0.40+ {"set", "infinite", "number"}
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def parse_partitions(doc: Any) -> dict[str, PartitionFacts]:
    """`GET /slurm/{v}/partitions`: v0.0.36..v0.0.38 (`total_nodes`, `flags`, no OverSubscribe) and
    v0.0.40+ (`nodes.total`, `partition.state`/`flags`, `maximums.oversubscribe.jobs` 0 = EXCLUSIVE)."""
    out: dict[str, PartitionFacts] = {}
    for part in _items(doc, "partitions"):
        total = _int(part.get("total_nodes"))
        if total is None:
            total = _int(_dig(part, "nodes", "total"))
        flags = {f.lower() for f in _names(part.get("flags")) + _names(_dig(part, "partition", "state"))}
        default = "default" in flags or _dig(part, "defaults", "partition") is True
        oversubscribe = _dig(part, "maximums", "oversubscribe")
        exclusive: bool | None = None
        if isinstance(oversubscribe, dict) and _int(oversubscribe.get("jobs")) is not None:
            exclusive = _int(oversubscribe.get("jobs")) == 0
        out[part["name"]] = PartitionFacts(part["name"], total, default, exclusive)
    return out


def parse_facts(nodes_doc: Any, partitions_doc: Any) -> SlurmFacts:
    """A loaded snapshot from the two answers; raises FactsUnreadable when either is unreadable."""
    return SlurmFacts(parse_nodes(nodes_doc), parse_partitions(partitions_doc), loaded=True)
