"""What a RayCluster, RayJob or PyTorchJob holds at most, as a JobSpec (one part per pod group).

GPUs per pod are read as for Jobs and Pods (kubernetes_pods.pod_gpus); the pods a group may
run at once are the most its controller may create:

* RayCluster (KubeRay): the head pod, plus per worker group max(replicas, minReplicas,
  maxReplicas) x numOfHosts. KubeRay clamps replicas into [minReplicas, maxReplicas] (minReplicas
  wins when they cross) and its autoscaler scales up to maxReplicas, so the largest of the three
  bounds it either way. With enableInTreeAutoscaling and no maxReplicas the API server defaults
  it to 2147483647: refused. The autoscaler's container (head pod) and the history-server
  collector (every pod) are counted too. A cluster has no deadline: `default_walltime_s` or refused.
* RayJob: its `rayClusterSpec` as above plus the `submitterPodTemplate` pod. Its walltime is
  activeDeadlineSeconds + ttlSecondsAfterFinished only when shutdownAfterJobFinishes deletes
  the cluster (and no deletionStrategy overrides it); else the cluster outlives the job and
  `default_walltime_s` (at least that sum) applies, or it is refused. ray.io/v1alpha1 has no
  activeDeadlineSeconds (the API server prunes it), so there it never bounds the job. A RayJob
  naming an existing cluster (`clusterSelector`) is refused: the gateway cannot tell whose
  cluster it selects.
* PyTorchJob (Kubeflow): per replica type, `replicas` (default 1); the Worker type with an
  elasticPolicy scales up to max(replicas, minReplicas, maxReplicas). Walltime:
  spec.runPolicy.activeDeadlineSeconds (the operator deletes the pods at it), else the default.
"""

from collections.abc import Mapping
from typing import Any

from gateway.core.jobs import JobPart, JobSpec, JobSpecInvalid
from gateway.schedulers.base import bounded, count, key_name, mapping, text
from gateway.schedulers.kubernetes_crds import PYTORCHJOB, RAYCLUSTER, RAYJOB, Crd
from gateway.schedulers.kubernetes_pods import (
    container_gpus,
    deadline_s,
    declared_parameters,
    expect_object,
    gpu_model,
    no_gpu_sharing,
    pod_gpus,
)


def _pod(group: Mapping[str, Any], where: str) -> tuple[Mapping[str, Any], str]:
    template = mapping(group.get("template"), f"{where}.template")
    no_gpu_sharing(mapping(template.get("metadata"), f"{where}.template.metadata"), f"{where}.template.metadata")
    return mapping(template.get("spec"), f"{where}.template.spec"), f"{where}.template.spec"


def _optional_count(group: Mapping[str, Any], key: str, where: str, default: int | None) -> int | None:
    value = group.get(key)
    return default if value is None else count(value, f"{where}.{key}", strings=False)


def _flag(spec: Mapping[str, Any], key: str, where: str) -> bool:
    value = spec.get(key)
    if value is not None and not isinstance(value, bool):
        raise JobSpecInvalid(f"{where}.{key}", "must be true or false")
    return value is True


def _part(gpus: int, pod: Mapping[str, Any], where: str, copies: int) -> list[JobPart]:
    bounded(gpus * copies, where)
    return [JobPart(gpus, gpu_model(pod, where), copies)] if gpus and copies else []


def ray_cluster_parts(spec: Mapping[str, Any], where: str) -> list[JobPart]:
    """The head pod and every worker group of a RayClusterSpec, at the most pods each may run."""
    autoscaling = _flag(spec, "enableInTreeAutoscaling", where)
    history = mapping(spec.get("historyServerOptions"), f"{where}.historyServerOptions")
    collector_where = f"{where}.historyServerOptions.collectorOptions"
    collector = container_gpus(mapping(history.get("collectorOptions"), collector_where), collector_where)
    autoscaler_where = f"{where}.autoscalerOptions"
    autoscaler = container_gpus(mapping(spec.get("autoscalerOptions"), autoscaler_where), autoscaler_where)
    if "headGroupSpec" not in spec:
        raise JobSpecInvalid(f"{where}.headGroupSpec", "required")
    head_where = f"{where}.headGroupSpec"
    head, pod_where = _pod(mapping(spec.get("headGroupSpec"), head_where), head_where)
    parts = _part(pod_gpus(head, pod_where) + autoscaler + collector, head, pod_where, 1)
    groups = spec.get("workerGroupSpecs")
    if groups is not None and not isinstance(groups, list):
        raise JobSpecInvalid(f"{where}.workerGroupSpecs", "must be a list")
    for i, raw in enumerate(groups or []):
        group_where = f"{where}.workerGroupSpecs[{i}]"
        group = mapping(raw, group_where)
        replicas = _optional_count(group, "replicas", group_where, 0)
        least = _optional_count(group, "minReplicas", group_where, 0)
        most = _optional_count(group, "maxReplicas", group_where, None)
        if most is None and autoscaling:
            raise JobSpecInvalid(
                f"{group_where}.maxReplicas",
                "unbounded: with enableInTreeAutoscaling the autoscaler may scale a group without maxReplicas "
                "to 2147483647 workers; set maxReplicas",
            )
        hosts = _optional_count(group, "numOfHosts", group_where, 1)
        assert replicas is not None and least is not None and hosts is not None
        copies = bounded(max(replicas, least, most or 0) * hosts, f"{group_where}.maxReplicas")
        pod, pod_where = _pod(group, group_where)
        per_pod = pod_gpus(pod, pod_where) + collector
        bounded(per_pod * copies, f"{group_where}.maxReplicas")
        parts += _part(per_pod, pod, pod_where, copies)
    return parts


def _ray_job(spec: Mapping[str, Any], version: str, default_walltime_s: float | None) -> tuple[list[JobPart], float]:
    selector = mapping(spec.get("clusterSelector"), "spec.clusterSelector")
    if selector:
        raise JobSpecInvalid(
            "spec.clusterSelector",
            "a RayJob on an existing RayCluster is not accepted: the gateway cannot tell whose cluster it selects; "
            "give the RayJob its own spec.rayClusterSpec",
        )
    if spec.get("rayClusterSpec") is None:
        raise JobSpecInvalid("spec.rayClusterSpec", "required (a RayJob without clusterSelector creates this cluster)")
    parts = ray_cluster_parts(mapping(spec.get("rayClusterSpec"), "spec.rayClusterSpec"), "spec.rayClusterSpec")
    submitter, sub_where = _pod({"template": spec.get("submitterPodTemplate")}, "spec")  # one pod at a time
    sub_where = "spec.submitterPodTemplate.spec"
    parts += _part(pod_gpus(submitter, sub_where), submitter, sub_where, 1)
    # v1alpha1 has no activeDeadlineSeconds: the API server prunes it, so nobody enforces it.
    deadline = deadline_s(spec.get("activeDeadlineSeconds"), "spec.activeDeadlineSeconds") if version == "v1" else None
    linger = _optional_count(spec, "ttlSecondsAfterFinished", "spec", 0) or 0
    shutdown = _flag(spec, "shutdownAfterJobFinishes", "spec")
    if deadline is not None and shutdown and spec.get("deletionStrategy") is None:
        return parts, deadline + linger  # the cluster is deleted ttlSecondsAfterFinished after the deadline
    if default_walltime_s is None:
        raise JobSpecInvalid(
            "spec.activeDeadlineSeconds",
            "unbounded: set activeDeadlineSeconds with shutdownAfterJobFinishes: true so the RayCluster is deleted "
            "when the job ends",
        )
    return parts, max(default_walltime_s, deadline + linger if deadline is not None else 0.0)


def _pytorch_job(spec: Mapping[str, Any], default_walltime_s: float | None) -> tuple[list[JobPart], float]:
    replica_specs = mapping(spec.get("pytorchReplicaSpecs"), "spec.pytorchReplicaSpecs")
    if not replica_specs:
        raise JobSpecInvalid("spec.pytorchReplicaSpecs", "required")
    seen: set[str] = set()
    elastic = mapping(spec.get("elasticPolicy"), "spec.elasticPolicy")
    parts: list[JobPart] = []
    for key, raw in replica_specs.items():
        where = f"spec.pytorchReplicaSpecs.{key_name(key)}"
        if key.lower() in seen:  # the operator renames `worker` to `Worker`: one of the two would be lost
            raise JobSpecInvalid(where, "names the same replica type as another key (types match case-insensitively)")
        seen.add(key.lower())
        group = mapping(raw, where)
        replicas = _optional_count(group, "replicas", where, 1)
        assert replicas is not None
        copies = replicas
        if key.lower() == "worker" and elastic:  # the HPA scales Worker replicas within the elastic bounds
            bounds = [_optional_count(elastic, k, "spec.elasticPolicy", 0) or 0 for k in ("minReplicas", "maxReplicas")]
            copies = max(replicas, *bounds)
        pod, pod_where = _pod(group, where)
        per_pod = pod_gpus(pod, pod_where)
        bounded(per_pod * copies, f"{where}.replicas")
        parts += _part(per_pod, pod, pod_where, copies)
    run = mapping(spec.get("runPolicy"), "spec.runPolicy")
    walltime = deadline_s(run.get("activeDeadlineSeconds"), "spec.runPolicy.activeDeadlineSeconds")
    walltime = default_walltime_s if walltime is None else walltime
    if walltime is None:
        raise JobSpecInvalid("spec.runPolicy.activeDeadlineSeconds", "unbounded: set it on the PyTorchJob")
    return parts, walltime


def training_spec(
    doc: Mapping[str, Any],
    crd: Crd,
    version: str,
    *,
    default_walltime_s: float | None,
    lineage_label: str,
    purpose_label: str,
    params_label: str,
) -> JobSpec:
    """A RayCluster, RayJob or PyTorchJob object as a JobSpec."""
    expect_object(doc, crd.kind, f"{crd.group}/{version}")
    metadata = mapping(doc.get("metadata"), "metadata")
    spec = mapping(doc.get("spec"), "spec")
    if crd is RAYCLUSTER:
        parts = ray_cluster_parts(spec, "spec")
        if default_walltime_s is None:
            raise JobSpecInvalid("spec", "a RayCluster has no deadline: it is priced only with default_walltime_s set")
        walltime = default_walltime_s
    elif crd is RAYJOB:
        parts, walltime = _ray_job(spec, version, default_walltime_s)
    elif crd is PYTORCHJOB:
        parts, walltime = _pytorch_job(spec, default_walltime_s)
    else:  # pragma: no cover - CRDS lists only these
        raise JobSpecInvalid("kind", f"{crd.kind} cannot be priced")
    bounded(sum(p.gpus * p.concurrency for p in parts), "spec")
    labels = mapping(metadata.get("labels"), "metadata.labels")
    notes = mapping(metadata.get("annotations"), "metadata.annotations")
    return JobSpec(
        parts=tuple(parts),
        walltime_s=walltime,
        purpose=text(labels.get(purpose_label)) or text(notes.get(purpose_label)),
        lineage=text(labels.get(lineage_label)) or text(notes.get(lineage_label)),
        name=text(metadata.get("name")) or text(metadata.get("generateName")),
        parameters=declared_parameters(labels, notes, params_label),
    )
