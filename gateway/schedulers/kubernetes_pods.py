"""Kubernetes Job and Pod objects as JobSpecs: GPUs per pod, GPU model, deadline, labels."""

from collections.abc import Mapping
from typing import Any

from gateway.core.jobs import JobPart, JobSpec, JobSpecInvalid
from gateway.core.pricing import CANDIDATE_SEPARATOR
from gateway.schedulers.base import bounded, count, key_name, mapping, parameters, shown, text

# Extended resources that are whole GPUs; other GPU-looking resources (MIG slices, shared
# GPUs, Gaudi, Intel GPUs) cannot be priced and are refused.
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
_GPU_LIKE = ("gpu", "nvidia.com/", "amd.com/", "habana.ai/", "gaudi")
# Pod annotations through which a GPU-sharing scheduler (KAI's `gpu-fraction`, `gpu-memory`)
# hands out GPUs that no container requests: they cannot be priced and are refused.
_SHARING_ANNOTATIONS = ("gpu-fraction", "gpu-memory", "gpu-fraction-num-devices")
# Node labels that pin the GPU product (NVIDIA GPU feature discovery, AMD node labeller).
PRODUCT_LABELS = ("nvidia.com/gpu.product", "amd.com/gpu.product-name")


def _quantity(value: Any, where: str) -> int:
    """A GPU quantity: an int or a string of digits ("8"); "1.5", "-1", "1k" are refused."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise JobSpecInvalid(where, f"GPU quantity {shown(value)} must be a whole number")
    return count(value, where)


def container_gpus(container: Any, where: str) -> int:
    """GPUs one container holds: per resource, the larger of its limit and request."""
    if not isinstance(container, dict):
        raise JobSpecInvalid(where, "a container must be a JSON object")
    resources = mapping(container.get("resources"), f"{where}.resources")
    if resources.get("claims"):
        raise JobSpecInvalid(f"{where}.resources.claims", "dynamic resource claims cannot be priced")
    found: dict[str, int] = {}
    for section in ("limits", "requests"):
        for raw_key, value in mapping(resources.get(section), f"{where}.resources.{section}").items():
            key, lowered = key_name(raw_key), raw_key.lower()
            if lowered in GPU_RESOURCES:
                n = _quantity(value, f"{where}.resources.{section}.{key}")
                found[lowered] = max(found.get(lowered, 0), n)
            elif any(word in lowered for word in _GPU_LIKE):
                raise JobSpecInvalid(f"{where}.resources.{section}.{key}", "this GPU resource cannot be priced")
    return sum(found.values())


def _containers(spec: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise JobSpecInvalid(f"{where}.{key}", "must be a list")
    return value


def no_gpu_sharing(metadata: Mapping[str, Any], where: str) -> None:
    """Refuse a pod (template) whose annotations ask a GPU-sharing scheduler for GPU slices."""
    notes = mapping(metadata.get("annotations"), f"{where}.annotations")
    for key in notes:
        if key.lower().rsplit("/", 1)[-1] in _SHARING_ANNOTATIONS:
            raise JobSpecInvalid(f"{where}.annotations.{key_name(key)}", "shared GPU slices cannot be priced")


def pod_gpus(spec: Mapping[str, Any], where: str) -> int:
    """GPUs one pod holds: all containers, plus sidecars, plus the largest plain init container.

    Kubernetes' effective request is max(sum(containers) + sidecars, each init container);
    sum + max over-counts that on purpose, so no pod holds more than it was priced at.
    """
    main = sum(
        container_gpus(c, f"{where}.containers[{i}]") for i, c in enumerate(_containers(spec, "containers", where))
    )
    sidecars = 0
    largest_init = 0
    for i, c in enumerate(_containers(spec, "initContainers", where)):
        n = container_gpus(c, f"{where}.initContainers[{i}]")
        if isinstance(c, dict) and c.get("restartPolicy") == "Always":
            sidecars += n  # a sidecar keeps running beside the main containers
        else:
            largest_init = max(largest_init, n)
    if spec.get("resourceClaims"):
        raise JobSpecInvalid(f"{where}.resourceClaims", "dynamic resource claims cannot be priced")
    pod_level = mapping(spec.get("resources"), f"{where}.resources")
    level = container_gpus({"resources": pod_level}, where) if pod_level else 0
    return bounded(max(main + sidecars + largest_init, level), where)


def gpu_model(spec: Mapping[str, Any], where: str) -> str | None:
    """The GPU product a pod is pinned to; several allowed products are joined with "|".

    nodeSelector wins (it is ANDed with affinity). Required node affinity terms are ORed:
    the model is pinned only if every term pins it with `In`.
    """
    selector = mapping(spec.get("nodeSelector"), f"{where}.nodeSelector")
    chosen = sorted({v for k, v in selector.items() if k in PRODUCT_LABELS and isinstance(v, str)})
    if chosen:
        return CANDIDATE_SEPARATOR.join(chosen)
    affinity = mapping(mapping(spec.get("affinity"), f"{where}.affinity").get("nodeAffinity"), where)
    required = mapping(affinity.get("requiredDuringSchedulingIgnoredDuringExecution"), where)
    terms = required.get("nodeSelectorTerms")
    if not isinstance(terms, list) or not terms:
        return None
    values: set[str] = set()
    for term in terms:
        pinned: set[str] = set()
        expressions = term.get("matchExpressions") if isinstance(term, dict) else None
        for expr in expressions if isinstance(expressions, list) else []:
            if not isinstance(expr, dict) or expr.get("key") not in PRODUCT_LABELS:
                continue
            if expr.get("operator") == "In" and isinstance(expr.get("values"), list):
                pinned |= {v for v in expr["values"] if isinstance(v, str)}
        if not pinned:
            return None  # this term lets the pod land on any GPU node
        values |= pinned
    return CANDIDATE_SEPARATOR.join(sorted(values))


def deadline_s(value: Any, where: str) -> float | None:
    if value is None:
        return None
    seconds = count(value, where, strings=False)
    if seconds < 1:
        raise JobSpecInvalid(where, "must be at least 1 second")
    return float(seconds)


def expect_object(doc: Mapping[str, Any], kind: str, api_version: str) -> None:
    if doc.get("kind") not in (None, kind):
        raise JobSpecInvalid("kind", f"this route takes a {kind}, not {shown(doc.get('kind'))}")
    if doc.get("apiVersion") not in (None, api_version):
        raise JobSpecInvalid("apiVersion", f"this route takes {api_version}, not {shown(doc.get('apiVersion'))}")


def job_spec(
    doc: Mapping[str, Any],
    *,
    is_pod: bool,
    default_walltime_s: float | None,
    lineage_label: str,
    purpose_label: str,
    params_label: str,
) -> JobSpec:
    """A batch/v1 Job (or v1 Pod) object as a JobSpec."""
    metadata = mapping(doc.get("metadata"), "metadata")
    spec = mapping(doc.get("spec"), "spec")
    if is_pod:
        expect_object(doc, "Pod", "v1")
        pod, where, parallelism = spec, "spec", 1
        no_gpu_sharing(metadata, "metadata")
        walltime = deadline_s(spec.get("activeDeadlineSeconds"), "spec.activeDeadlineSeconds")
    else:
        expect_object(doc, "Job", "batch/v1")
        template = mapping(spec.get("template"), "spec.template")
        pod, where = mapping(template.get("spec"), "spec.template.spec"), "spec.template.spec"
        no_gpu_sharing(mapping(template.get("metadata"), "spec.template.metadata"), "spec.template.metadata")
        raw = spec.get("parallelism")
        parallelism = 1 if raw is None else count(raw, "spec.parallelism", strings=False)
        # A pod-level deadline does not bound a Job: retries and completions run after it.
        walltime = deadline_s(spec.get("activeDeadlineSeconds"), "spec.activeDeadlineSeconds")
    if walltime is None:
        walltime = default_walltime_s
    if walltime is None:
        raise JobSpecInvalid("activeDeadlineSeconds", "unbounded: set activeDeadlineSeconds on the Job")
    gpus = pod_gpus(pod, where)
    bounded(gpus * parallelism, "spec.parallelism")
    parts = (JobPart(gpus, gpu_model(pod, where), parallelism),) if gpus else ()
    labels = mapping(metadata.get("labels"), "metadata.labels")
    notes = mapping(metadata.get("annotations"), "metadata.annotations")
    return JobSpec(
        parts=parts,
        walltime_s=walltime,
        purpose=text(labels.get(purpose_label)) or text(notes.get(purpose_label)),
        lineage=text(labels.get(lineage_label)) or text(notes.get(lineage_label)),
        name=text(metadata.get("name")) or text(metadata.get("generateName")),
        parameters=declared_parameters(labels, notes, params_label),
    )


def declared_parameters(labels: Mapping[str, Any], notes: Mapping[str, Any], label: str) -> float | None:
    """The parameter count an object's label (or, when no label names it, annotation) `label` declares."""
    if labels.get(label) is not None:
        return parameters(labels[label], f"metadata.labels.{key_name(label)}")
    return parameters(notes.get(label), f"metadata.annotations.{key_name(label)}")
