"""Where a job's price came from: the fields of a submission body each scheduler prices from, as sent.

`exportgate explain` shows them next to the priced job, so an operator can see which field gave
the GPUs, the model, the copies at once, the walltime, the lineage, its parameters and the purpose. This reads
the body the way each adapter names its fields (the adapter itself decides; this only points at
the fields it reads that are present), and says when a number came from configuration instead
(a default model or walltime, a Ray cluster priced whole).
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.jobs import JobSpec
from gateway.schedulers.base import key_name
from gateway.schedulers.generic import GenericAdapter
from gateway.schedulers.kubernetes import KubernetesAdapter
from gateway.schedulers.kubernetes_pods import GPU_RESOURCES, PRODUCT_LABELS
from gateway.schedulers.ray import RayAdapter
from gateway.schedulers.slurm import SlurmAdapter
from gateway.schedulers.slurm_gpus import GPU_FIELDS, RESOURCE_KEYS

MAX_SOURCES = 64  # a body is client text: at most this many fields are named
MAX_SHOWN = 120  # characters of a value shown


@dataclass(frozen=True, slots=True)
class Source:
    """One quantity (`gpus`, `model`, `concurrency`, `walltime`, `lineage`, `parameters`, `purpose`) and where it
    was read: a body field (`field`, with its value as sent) or the configuration (`field` None, `note` says which)."""

    quantity: str
    field: str | None
    value: Any = None
    note: str = ""

    def as_record(self) -> dict[str, Any]:
        return {"quantity": self.quantity, "field": self.field, "value": self.value, "note": self.note}


def _shown(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def _walk(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every object member, depth first, to a bounded depth."""
    if depth > 32:
        return
    if isinstance(value, dict):
        for key, child in value.items():
            where = f"{path}.{key_name(key)}" if path else key_name(key)
            yield where, key, child
            yield from _walk(child, where, depth + 1)
    elif isinstance(value, list):
        for i, child in enumerate(value[:256]):
            yield from _walk(child, f"{path}[{i}]", depth + 1)


def _env_value(env: Any, name: str) -> Any:
    """A Slurm environment variable, from a mapping or a list of `NAME=value` strings."""
    if isinstance(env, dict):
        return env.get(name)
    if isinstance(env, list):
        for item in env:
            if isinstance(item, str) and item.startswith(name + "="):
                return item[len(name) + 1 :]
    return None


def _slurm(adapter: SlurmAdapter, doc: Mapping[str, Any]) -> Iterator[Source]:
    key = "jobs" if "jobs" in doc else "job"
    raw = doc.get(key)
    components = list(enumerate(raw)) if isinstance(raw, list) else [(None, raw)]
    o = adapter.options
    for i, job in components:
        if not isinstance(job, dict):
            continue
        where = key if i is None else f"{key}[{i}]"
        for name, value in job.items():
            lowered = name.lower() if isinstance(name, str) else name
            if lowered in GPU_FIELDS:
                yield Source("gpus", f"{where}.{name}", _shown(value))
            elif lowered == "array":
                yield Source("concurrency", f"{where}.{name}", _shown(value))
            elif lowered in ("time_limit", "partition"):
                yield Source("walltime", f"{where}.{name}", _shown(value))
            elif lowered in RESOURCE_KEYS:
                yield Source("gpus", f"{where}.{name}", _shown(value), "multiplies the GPU fields")
            elif lowered == "comment" and isinstance(value, str):
                for quantity, tag in (("lineage", "lineage"), ("purpose", "purpose"), ("parameters", "params")):
                    if f"{tag}=" in value:
                        yield Source(quantity, f"{where}.comment", _shown(value), f"its {tag}= tag")
        for quantity, name in (("lineage", o.lineage_env), ("purpose", o.purpose_env), ("parameters", o.params_env)):
            found = _env_value(job.get("environment"), name)
            if found is not None:
                yield Source(quantity, f"{where}.environment.{name}", _shown(found))


def _kubernetes(adapter: KubernetesAdapter, doc: Mapping[str, Any]) -> Iterator[Source]:
    o = adapter.options
    for path, key, value in _walk(doc):
        if key in GPU_RESOURCES and (".limits." in f".{path}" or ".requests." in f".{path}"):
            yield Source("gpus", path, _shown(value))
        elif key in PRODUCT_LABELS or (key == "key" and value in PRODUCT_LABELS):
            yield Source("model", path, _shown(value))
        elif key in ("parallelism", "replicas", "minReplicas", "maxReplicas", "numOfHosts"):
            yield Source("concurrency", path, _shown(value))
        elif key == "activeDeadlineSeconds":
            yield Source("walltime", path, _shown(value))
        elif key == o.lineage_label:
            yield Source("lineage", path, _shown(value))
        elif key == o.purpose_label:
            yield Source("purpose", path, _shown(value))
        elif key == o.params_label:
            yield Source("parameters", path, _shown(value))


def _ray(adapter: RayAdapter, doc: Mapping[str, Any]) -> Iterator[Source]:
    o = adapter.options
    if o.pricing == "cluster":
        yield Source("gpus", None, None, "pricing: cluster: every GPU of the Ray cluster (scheduler_options)")
    if "entrypoint_num_gpus" in doc:
        yield Source("gpus", "entrypoint_num_gpus", _shown(doc["entrypoint_num_gpus"]))
    resources = doc.get("entrypoint_resources")
    if isinstance(resources, dict):
        for name, value in resources.items():
            if "gpu" in name.lower() or name.startswith("accelerator_type:"):
                yield Source("model", f"entrypoint_resources.{key_name(name)}", _shown(value))
    metadata = doc.get("metadata")
    if isinstance(metadata, dict):
        for quantity, name in (("walltime", o.walltime_metadata_key), ("lineage", o.lineage_key),
                               ("parameters", o.params_key), ("purpose", o.purpose_key)):  # fmt: skip
            if name in metadata:
                yield Source(quantity, f"metadata.{key_name(name)}", _shown(metadata[name]))


def _dotted(doc: Any, path: str) -> tuple[bool, Any]:
    value = doc
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _generic(adapter: GenericAdapter, doc: Mapping[str, Any]) -> Iterator[Source]:
    o = adapter.options
    fields = (("gpus", o.gpus_field), ("model", o.model_field), ("concurrency", o.concurrency_field),
              ("walltime", o.walltime_field), ("lineage", o.lineage_field), ("parameters", o.params_field),
              ("purpose", o.purpose_field))  # fmt: skip
    for quantity, path in fields:
        if path is None:
            continue
        present, value = _dotted(doc, path)
        if present:
            yield Source(quantity, path, _shown(value))


def body_sources(adapter: object, doc: Any, spec: JobSpec | None) -> tuple[Source, ...]:
    """The fields of `doc` (a decoded submission) `adapter` prices from, and the defaults it priced with."""
    found: list[Source] = []
    if isinstance(doc, dict):
        if isinstance(adapter, SlurmAdapter):
            found.extend(_slurm(adapter, doc))
        elif isinstance(adapter, KubernetesAdapter):
            found.extend(_kubernetes(adapter, doc))
        elif isinstance(adapter, RayAdapter):
            found.extend(_ray(adapter, doc))
        elif isinstance(adapter, GenericAdapter):
            found.extend(_generic(adapter, doc))
    found = found[:MAX_SOURCES]
    default_model = getattr(adapter, "default_gpu_model", None)
    if spec is not None and any(p.model is None and p.gpus > 0 for p in spec.parts):
        found.append(Source("model", None, default_model, "the request names no model: the upstream's default"))
    if spec is not None and spec.walltime_s is not None and not any(s.quantity == "walltime" for s in found):
        found.append(Source("walltime", None, spec.walltime_s, "the request sets none: the configured default"))
    return tuple(found)
