"""KubeRay RayCluster/RayJob and Kubeflow PyTorchJob through the Kubernetes adapter: pricing, refusals, patches, ids.

The objects below are written for these tests. Those named `sample_*` keep exactly the fields
that decide GPUs and walltime (kinds, groups, replicas, GPU resources, deadlines) of a published
sample, named with its repository, path and commit; images, commands, volumes and the like are
left out, since they price nothing. The arithmetic a person does on each sample is in its comment.
"""

import copy
import json
from typing import Any

import pytest

from gateway.core.jobs import JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import RouteKind, RouteMatch, match_route
from gateway.schedulers import KubernetesAdapter, KubernetesOptions

ADAPTER = KubernetesAdapter(KubernetesOptions())
DAY = KubernetesAdapter(KubernetesOptions(default_walltime_s=86400))
JSON = "application/json"
RC = "/apis/ray.io/v1/namespaces/team-a/rayclusters"
RJ = "/apis/ray.io/v1/namespaces/team-a/rayjobs"
PT = "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"
KUBERAY = "ray-project/kuberay@feeaf72facab4881ba2b179248bb67315634e229"
TRAINING_OPERATOR = "kubeflow/training-operator@078ec30ff26649a07d2e28893c332d4cef70e233 (release-1.9)"


def gpus(n: int | str, **extra: Any) -> dict[str, Any]:
    """A container limiting and requesting `n` NVIDIA GPUs."""
    res = {"cpu": "1", "nvidia.com/gpu": n}
    return {"name": "c", "image": "i", "resources": {"limits": res, "requests": dict(res)}, **extra}


def cpu() -> dict[str, Any]:
    return {"name": "c", "image": "i", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}


def template(*containers: dict[str, Any], **pod: Any) -> dict[str, Any]:
    return {"spec": {"containers": list(containers), **pod}}


def group(name: str, pod: dict[str, Any], **counts: Any) -> dict[str, Any]:
    return {"groupName": name, "rayStartParams": {}, "template": pod, **counts}


# KUBERAY ray-operator/config/samples/ray-cluster.verl.yaml: head only, 4 GPUs -> 4 x 1 pod = 4.
SAMPLE_VERL = {
    "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "verl-cluster"},
    "spec": {"rayVersion": "2.43.0", "headGroupSpec": {"rayStartParams": {}, "template": template(gpus("4"))}},
}  # fmt: skip

# KUBERAY ray-operator/config/samples/pytorch-resnet-image-classifier/ray-job.pytorch-image-classifier.yaml:
# CPU head (0) + group gpu-group replicas 4, min 4, max 4 of 1 GPU -> 0 + 1 x max(4, 4, 4) = 4.
SAMPLE_IMAGE_CLASSIFIER = {
    "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"generateName": "pytorch-image-classifier-"},
    "spec": {
        "shutdownAfterJobFinishes": True,
        "entrypoint": "python fine-tune-pytorch-resnet-image-classifier.py",
        "rayClusterSpec": {
            "rayVersion": "2.46.0",
            "headGroupSpec": {"rayStartParams": {}, "template": template(cpu())},
            "workerGroupSpecs": [group("gpu-group", template(gpus("1")), replicas=4, minReplicas=4, maxReplicas=4)],
        },
    },
}  # fmt: skip

# KUBERAY ray-operator/config/samples/ray-job.batch-inference.yaml: head 4 GPUs on T4 nodes, no workers -> 4.
SAMPLE_BATCH_INFERENCE = {
    "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "rayjob-sample"},
    "spec": {
        "entrypoint": "python /home/ray/samples/sample_code.py",
        "rayClusterSpec": {"rayVersion": "2.46.0", "headGroupSpec": {"rayStartParams": {}, "template": template(
            gpus("4"), nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"})}},
    },
}  # fmt: skip

# KUBERAY ray-operator/config/samples/ray-job.use-existing-raycluster.yaml: clusterSelector -> refused.
SAMPLE_EXISTING_CLUSTER = {
    "apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "rayjob-use-existing-raycluster"},
    "spec": {"entrypoint": "python -c 'import ray'", "clusterSelector": {"ray.io/cluster": "ray-cluster-kuberay"}},
}  # fmt: skip

# TRAINING_OPERATOR examples/pytorch/deepspeed-demo/pytorch_deepspeed_demo.yaml (and
# mnist/v1/pytorch_job_mnist_nccl.yaml, the same counts): Master 1 replica x 1 GPU + Worker 1 replica x 1 GPU = 2.
SAMPLE_DEEPSPEED = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "pytorch-deepspeed-demo"},
    "spec": {"pytorchReplicaSpecs": {
        "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template(gpus(1))},
        "Worker": {"replicas": 1, "restartPolicy": "OnFailure", "template": template(gpus(1))},
    }},
}  # fmt: skip

# TRAINING_OPERATOR examples/pytorch/elastic/imagenet/imagenet.yaml: elastic Worker replicas 2, min 1, max 3,
# CPU only -> 0 GPUs (priced, nothing held); GPU_ELASTIC below gives each of its pods 8 GPUs.
SAMPLE_ELASTIC = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "elastic-example-imagenet"},
    "spec": {
        "elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": 1, "maxReplicas": 3, "maxRestarts": 100},
        "pytorchReplicaSpecs": {"Worker": {"replicas": 2, "restartPolicy": "OnFailure", "template": template(cpu())}},
    },
}  # fmt: skip


def changed(doc: dict[str, Any], *path: Any, value: Any) -> dict[str, Any]:
    """A deep copy of `doc` with the item at `path` set to `value` (None removes it)."""
    out = copy.deepcopy(doc)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is None:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value
    return out


GPU_ELASTIC = changed(SAMPLE_ELASTIC, "spec", "pytorchReplicaSpecs", "Worker", "template", value=template(gpus(8)))
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
AUTOSCALED = {
    "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "big"},
    "spec": {
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {"template": template(cpu())},
        "workerGroupSpecs": [
            group("h100", template(gpus(8), nodeSelector=H100),
                  replicas=1, minReplicas=0, maxReplicas=10, numOfHosts=2),
            group("cpu", template(cpu()), replicas=5, minReplicas=5, maxReplicas=50),
        ],
    },
}  # fmt: skip
SUBMITTER = changed(SAMPLE_IMAGE_CLASSIFIER, "spec", "submitterPodTemplate", value=template(gpus(1)))
WORKERS = ("spec", "workerGroupSpecs", 0)
RC_WORKERS = ("spec", "rayClusterSpec", "workerGroupSpecs", 0)

# (id, adapter, path, object, GPUs in all, [(GPUs per pod, model, pods)], walltime)
TABLE = [
    ("sample-verl", DAY, RC, SAMPLE_VERL, 4, [(4, None, 1)], 86400),  # no deadline: the default
    ("sample-image-classifier", DAY, RJ, SAMPLE_IMAGE_CLASSIFIER, 4, [(1, None, 4)], 86400),
    ("sample-batch-inference", DAY, RJ, SAMPLE_BATCH_INFERENCE, 4, [(4, None, 1)], 86400),
    ("sample-deepspeed", DAY, PT, SAMPLE_DEEPSPEED, 2, [(1, None, 1), (1, None, 1)], 86400),
    ("sample-elastic-cpu", DAY, PT, SAMPLE_ELASTIC, 0, [], 86400),
    # elastic Worker: 8 GPUs x max(replicas 2, minReplicas 1, maxReplicas 3) = 24
    ("elastic-gpu", DAY, PT, GPU_ELASTIC, 24, [(8, None, 3)], 86400),
    # h100 group: 8 GPUs x max(1, 0, 10) x numOfHosts 2 = 160; the CPU head and group hold none
    ("autoscaled", DAY, RC, AUTOSCALED, 160, [(8, "NVIDIA-H100-80GB-HBM3", 20)], 86400),
    # autoscaling off, no maxReplicas: KubeRay clamps replicas into [min, max]: 8 x max(1, 0) x 2 = 16
    ("no-autoscaling-no-max", DAY, RC, changed(changed(AUTOSCALED, "spec", "enableInTreeAutoscaling", value=False),
                                              *WORKERS, "maxReplicas", value=None), 16,
     [(8, "NVIDIA-H100-80GB-HBM3", 2)], 86400),
    # minReplicas above maxReplicas: KubeRay runs minReplicas: 8 x max(1, 12, 10) x 2 = 192
    ("min-above-max", DAY, RC, changed(AUTOSCALED, *WORKERS, "minReplicas", value=12), 192,
     [(8, "NVIDIA-H100-80GB-HBM3", 24)], 86400),
    # the autoscaler container sits in the head pod (2), the history collector in every pod (1 each):
    # head 0 + 2 + 1 = 3; h100 pods 8 + 1 = 9 x 20 = 180; cpu pods 0 + 1 = 1 x 50 = 50; 3 + 180 + 50 = 233
    ("sidecars", DAY, RC, changed(changed(AUTOSCALED, "spec", "autoscalerOptions",
                                          value={"resources": {"limits": {"nvidia.com/gpu": "2"}}}),
                                  "spec", "historyServerOptions",
                                  value={"collectorOptions": {"resources": {"requests": {"nvidia.com/gpu": 1}}}}),
     233, [(3, None, 1), (9, "NVIDIA-H100-80GB-HBM3", 20), (1, None, 50)], 86400),
    # the submitter pod's GPU: 4 workers x 1 + submitter 1 = 5
    ("submitter-pod", DAY, RJ, SUBMITTER, 5, [(1, None, 4), (1, None, 1)], 86400),
    # a deadline with shutdownAfterJobFinishes bounds the cluster: 3600 s + ttlSecondsAfterFinished 60 s
    ("rayjob-deadline", ADAPTER, RJ, changed(changed(SAMPLE_IMAGE_CLASSIFIER, "spec", "activeDeadlineSeconds",
                                                     value=3600), "spec", "ttlSecondsAfterFinished", value=60),
     4, [(1, None, 4)], 3660),
    # the cluster outlives a job that does not shut it down: the default, never less than the deadline
    ("rayjob-deadline-no-shutdown", DAY, RJ, changed(changed(SAMPLE_IMAGE_CLASSIFIER, "spec", "activeDeadlineSeconds",
                                                             value=172800), "spec", "shutdownAfterJobFinishes",
                                                     value=None), 4, [(1, None, 4)], 172800),
    ("pytorch-deadline", ADAPTER, PT, changed(SAMPLE_DEEPSPEED, "spec", "runPolicy",
                                              value={"activeDeadlineSeconds": 7200}), 2,
     [(1, None, 1), (1, None, 1)], 7200),
    # PyTorchJob replicas default to 1: Worker 1 x 4 GPUs
    ("pytorch-default-replicas", DAY, PT, changed(SAMPLE_DEEPSPEED, "spec", "pytorchReplicaSpecs",
                                                  value={"Worker": {"template": template(gpus(4))}}), 4,
     [(4, None, 1)], 86400),
    ("empty-cluster-selector", DAY, RJ, changed(SAMPLE_BATCH_INFERENCE, "spec", "clusterSelector", value={}), 4,
     [(4, None, 1)], 86400),
]  # fmt: skip


def route(method: str, path: str) -> RouteMatch:
    found = match_route(ADAPTER.routes(), method, path)
    assert found is not None, (method, path)
    return found


def create(adapter: KubernetesAdapter, path: str, doc: Any) -> JobSpec:
    return adapter.parse_submission(route("POST", path), JSON, None, json.dumps(doc).encode())


@pytest.mark.parametrize(("adapter", "path", "doc", "total", "parts", "walltime"), [t[1:] for t in TABLE],
                         ids=[t[0] for t in TABLE])  # fmt: skip
def test_pricing_table(
    adapter: KubernetesAdapter, path: str, doc: Any, total: int, parts: list[Any], walltime: float
) -> None:
    """Each object is priced at the most GPUs its controller may run at once, for its whole life."""
    found = create(adapter, path, doc)
    assert found.total_gpus == total
    assert [(p.gpus, p.model, p.concurrency) for p in found.parts] == parts
    assert found.walltime_s == walltime


def test_labels_and_name() -> None:
    """Lineage and purpose come from the object's labels or annotations, as for Jobs."""
    doc = changed(SAMPLE_DEEPSPEED, "metadata", "labels", value={"exportgate.io/model-lineage": "acme-7b"})
    doc["metadata"]["annotations"] = {"exportgate.io/purpose": "training"}
    found = create(DAY, PT, doc)
    assert (found.lineage, found.purpose, found.name) == ("acme-7b", "training", "pytorch-deepspeed-demo")


def test_v1alpha1_has_no_deadline() -> None:
    """ray.io/v1alpha1 RayJobs have no activeDeadlineSeconds (the API server drops it): it bounds nothing there."""
    doc = changed(SAMPLE_IMAGE_CLASSIFIER, "spec", "activeDeadlineSeconds", value=3600)
    assert create(ADAPTER, RJ, doc).walltime_s == 3600
    alpha = {**doc, "apiVersion": "ray.io/v1alpha1"}
    with pytest.raises(JobSpecInvalid) as raised:
        create(ADAPTER, RJ.replace("/v1/", "/v1alpha1/"), alpha)
    assert raised.value.field == "spec.activeDeadlineSeconds"
    assert create(DAY, RJ.replace("/v1/", "/v1alpha1/"), alpha).total_gpus == 4


HEAD_POD = ("spec", "headGroupSpec", "template")
INVALID = [
    ("existing-cluster", DAY, RJ, SAMPLE_EXISTING_CLUSTER, "spec.clusterSelector"),
    ("cluster-without-default-walltime", ADAPTER, RC, SAMPLE_VERL, "spec"),
    ("rayjob-without-deadline", ADAPTER, RJ, SAMPLE_IMAGE_CLASSIFIER, "spec.activeDeadlineSeconds"),
    ("rayjob-deadline-with-deletion-strategy", ADAPTER, RJ,
     changed(changed(SAMPLE_IMAGE_CLASSIFIER, "spec", "activeDeadlineSeconds", value=3600), "spec",
             "deletionStrategy", value={"onSuccess": {"policy": "DeleteNone"}}), "spec.activeDeadlineSeconds"),
    ("pytorch-without-deadline", ADAPTER, PT, SAMPLE_DEEPSPEED, "spec.runPolicy.activeDeadlineSeconds"),
    ("autoscaling-without-max", DAY, RC, changed(AUTOSCALED, *WORKERS, "maxReplicas", value=None),
     "spec.workerGroupSpecs[0].maxReplicas"),
    ("max-replicas-string", DAY, RJ, changed(SAMPLE_IMAGE_CLASSIFIER, *RC_WORKERS, "maxReplicas", value="4"),
     "spec.rayClusterSpec.workerGroupSpecs[0].maxReplicas"),
    ("negative-hosts", DAY, RC, changed(AUTOSCALED, *WORKERS, "numOfHosts", value=-1),
     "spec.workerGroupSpecs[0].numOfHosts"),
    ("absurd-max", DAY, RC, changed(AUTOSCALED, *WORKERS, "maxReplicas", value=2147483647),
     "spec.workerGroupSpecs[0].maxReplicas"),
    ("absurd-total", DAY, RC, changed(AUTOSCALED, *WORKERS, "maxReplicas", value=100_000),
     "spec.workerGroupSpecs[0].maxReplicas"),
    ("groups-not-a-list", DAY, RC, changed(AUTOSCALED, "spec", "workerGroupSpecs", value={"g": {}}),
     "spec.workerGroupSpecs"),
    ("autoscaling-not-bool", DAY, RC, changed(AUTOSCALED, "spec", "enableInTreeAutoscaling", value="true"),
     "spec.enableInTreeAutoscaling"),
    ("no-head", DAY, RC, changed(SAMPLE_VERL, "spec", "headGroupSpec", value=None), "spec.headGroupSpec"),
    ("fractional-gpu", DAY, RC, changed(SAMPLE_VERL, *HEAD_POD, value=template(gpus("0.5"))),
     "spec.headGroupSpec.template.spec.containers[0].resources.limits.nvidia.com/gpu"),
    ("mig-in-init-container", DAY, RC, changed(SAMPLE_VERL, *HEAD_POD, value=template(
        cpu(), initContainers=[{"name": "i", "resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}])),
     "spec.headGroupSpec.template.spec.initContainers[0].resources.limits.nvidia.com/mig-1g.10gb"),
    # KUBERAY ray-operator/config/samples/ray-cluster.kai-gpu-sharing.yaml: workers ask KAI for half a GPU
    ("kai-gpu-fraction", DAY, RC, changed(AUTOSCALED, *WORKERS, "template", "metadata",
                                          value={"annotations": {"gpu-fraction": "0.5"}}),
     "spec.workerGroupSpecs[0].template.metadata.annotations.gpu-fraction"),
    ("pytorch-worker-twice", DAY, PT, changed(SAMPLE_DEEPSPEED, "spec", "pytorchReplicaSpecs", "worker",
                                              value={"replicas": 9, "template": template(gpus(8))}),
     "spec.pytorchReplicaSpecs.worker"),
    ("pytorch-no-replica-specs", DAY, PT, changed(SAMPLE_DEEPSPEED, "spec", "pytorchReplicaSpecs", value=None),
     "spec.pytorchReplicaSpecs"),
    ("pytorch-elastic-max-string", DAY, PT, changed(GPU_ELASTIC, "spec", "elasticPolicy", "maxReplicas", value="3"),
     "spec.elasticPolicy.maxReplicas"),
    ("rayjob-without-cluster", DAY, RJ, changed(SAMPLE_BATCH_INFERENCE, "spec", "rayClusterSpec", value=None),
     "spec.rayClusterSpec"),
    ("kind-mismatch", DAY, RC, {**SAMPLE_VERL, "kind": "RayService"}, "kind"),
    ("version-mismatch", DAY, RC, {**SAMPLE_VERL, "apiVersion": "ray.io/v1alpha1"}, "apiVersion"),
]  # fmt: skip


@pytest.mark.parametrize(("adapter", "path", "doc", "field"), [t[1:] for t in INVALID], ids=[t[0] for t in INVALID])
def test_refused(adapter: KubernetesAdapter, path: str, doc: Any, field: str) -> None:
    """Unreadable, unbounded or ambiguous objects are refused naming the field, never priced low."""
    with pytest.raises(JobSpecInvalid) as raised:
        create(adapter, path, doc)
    assert raised.value.field == field


def test_kai_annotation_refused_on_jobs_too() -> None:
    """The GPU-sharing annotation is refused on a plain Job's pod template as well."""
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {
        "activeDeadlineSeconds": 60, "template": {"metadata": {"annotations": {"gpu-memory": "2000"}},
                                                  "spec": {"containers": [cpu()]}}}}  # fmt: skip
    with pytest.raises(JobSpecInvalid) as raised:
        create(ADAPTER, "/apis/batch/v1/namespaces/team-a/jobs", job)
    assert raised.value.field == "spec.template.metadata.annotations.gpu-memory"


ROUTES = [
    (method, base + suffix, kind)
    for base in (RC, RJ, PT, RC.replace("/v1/", "/v1alpha1/"), RJ.replace("/v1/", "/v1alpha1/"))
    for method, suffix, kind in (
        ("POST", "", RouteKind.SUBMIT), ("GET", "", RouteKind.LIST), ("GET", "/x", RouteKind.READ),
        ("GET", "/x/status", RouteKind.READ), ("DELETE", "/x", RouteKind.CANCEL), ("PATCH", "/x", RouteKind.UPDATE),
        ("PUT", "/x", RouteKind.UPDATE),
    )
] + [("GET", "/apis/ray.io/v1", RouteKind.PLAIN_READ),
      ("GET", "/apis/kubeflow.org/v1", RouteKind.PLAIN_READ)]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "kind"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_routes(method: str, path: str, kind: RouteKind) -> None:
    assert route(method, path).route.kind == kind


DENIED = [
    ("POST", "/apis/ray.io/v1/namespaces/team-a/rayservices"),
    ("POST", "/apis/ray.io/v1/namespaces/team-a/raycronjobs"),
    ("POST", "/apis/kubeflow.org/v1/namespaces/team-a/tfjobs"),
    ("POST", "/apis/kubeflow.org/v1/namespaces/team-a/mpijobs"),
    ("POST", "/apis/kubeflow.org/v1alpha1/namespaces/team-a/pytorchjobs"),
    ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs"),
    ("PUT", RC + "/x/status"), ("PATCH", PT + "/x/scale"), ("GET", "/apis/ray.io/v1/rayclusters"), ("DELETE", RJ),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), DENIED, ids=[f"{m} {p}" for m, p in DENIED])
def test_other_custom_resources_match_no_route(method: str, path: str) -> None:
    """Other CRDs, status and scale writes, cluster-wide lists and collection deletes stay route_not_allowed."""
    assert match_route(ADAPTER.routes(), method, path) is None


def test_ids_name_the_resource() -> None:
    """A custom resource's id names its resource, so a Job and a RayCluster called alike never share a lease."""
    assert ADAPTER.job_id_of(route("GET", RC + "/train")) == "team-a/rayclusters.ray.io/train"
    assert ADAPTER.job_id_of(route("DELETE", RC.replace("/v1/", "/v1alpha1/") + "/train")) == (
        "team-a/rayclusters.ray.io/train")  # fmt: skip
    assert ADAPTER.job_id_of(route("GET", PT + "/train")) == "team-a/pytorchjobs.kubeflow.org/train"
    assert ADAPTER.job_id_of(route("GET", "/apis/batch/v1/namespaces/team-a/jobs/train")) == "team-a/train"
    created = json.dumps({"metadata": {"name": "rayjob-x1", "namespace": "team-a"}}).encode()
    assert ADAPTER.job_id_from_response(route("POST", RJ), 201, created) == "team-a/rayjobs.ray.io/rayjob-x1"
    path = "/apis/ray.io/v1/namespaces/team-a/rayjobs/rayjob-x1"
    assert ADAPTER.status_path("team-a/rayjobs.ray.io/rayjob-x1") == path
    assert ADAPTER.status_path("team-a/widgets.example.com/x") is None  # not a resource the gateway prices
    assert ADAPTER.status_path("team-a/rayjobs.ray.io/a/b") is None


def _not_found(group: str, plural: str) -> bytes:
    """The API server's answer for an object that is gone (as its Status carries it)."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound",
                       "message": f'{plural}.{group} "x" not found', "details": {"name": "x", "group": group,
                       "kind": plural}, "code": 404}).encode()  # fmt: skip


def test_custom_resources_are_held_while_they_exist() -> None:
    """Reconciliation holds a RayCluster or RayJob until it is deleted, a PyTorchJob until it has ended."""
    cluster = {"kind": "RayCluster", "apiVersion": "ray.io/v1", "status": {"state": "ready"}}
    done_job = {"kind": "RayJob", "apiVersion": "ray.io/v1", "status": {"jobDeploymentStatus": "Complete"}}
    running = {"kind": "PyTorchJob", "status": {"conditions": [{"type": "Running", "status": "True"}]}}
    ended = [{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}]
    succeeded = {"kind": "PyTorchJob", "status": {"conditions": ended}}
    assert ADAPTER.job_view(200, json.dumps(cluster).encode()).over is False
    assert ADAPTER.job_view(200, json.dumps(done_job).encode()).over is False  # its cluster may outlive it
    assert ADAPTER.job_view(200, json.dumps(running).encode()).over is False
    assert ADAPTER.job_view(200, json.dumps(succeeded).encode()).over is True
    assert ADAPTER.job_view(404, _not_found("ray.io", "rayclusters")).over is True
    assert ADAPTER.job_view(404, _not_found("kubeflow.org", "pytorchjobs")).over is True
    assert ADAPTER.job_view(404, _not_found("batch", "jobs")).over is None  # a Pod may share a Job's id


def test_listing_keeps_owned_objects() -> None:
    listing = {
        "kind": "RayClusterList",
        "apiVersion": "ray.io/v1",
        "metadata": {},
        "items": [
            {"metadata": {"name": "mine", "namespace": "team-a"}},
            {"metadata": {"name": "train", "namespace": "team-a"}},
        ],
    }
    owned = {"team-a/rayclusters.ray.io/mine", "team-a/train"}.__contains__  # "team-a/train" is a Job's id
    out = json.loads(ADAPTER.filter_listing(route("GET", RC), json.dumps(listing).encode(), owned))
    assert [i["metadata"]["name"] for i in out["items"]] == ["mine"]


MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PASS = [
    (RC, {"metadata": {"labels": {"a": "b"}}}, MERGE), (RC, {"spec": {"suspend": True}}, MERGE),
    (RJ, {"spec": {"suspend": True}}, MERGE), (PT, {"spec": {"runPolicy": {"suspend": True}}}, MERGE),
    (PT, [{"op": "replace", "path": "/spec/runPolicy/suspend", "value": True}], JSON_PATCH),
    (RC, [{"op": "add", "path": "/metadata/annotations/x", "value": "y"}], JSON_PATCH),
]  # fmt: skip
REFUSED = [
    (RC, {"spec": {"workerGroupSpecs": [{"groupName": "h100", "replicas": 64}]}}, MERGE),
    (RC, {"spec": {"enableInTreeAutoscaling": True}}, MERGE), (RC, {"spec": {"suspend": False}}, MERGE),
    (RJ, {"spec": {"rayClusterSpec": {"headGroupSpec": {}}}}, MERGE),
    (RJ, {"spec": {"activeDeadlineSeconds": 1}}, MERGE), (PT, {"spec": {"runPolicy": {"suspend": False}}}, MERGE),
    (PT, {"spec": {"elasticPolicy": {"maxReplicas": 99}}}, MERGE),
    (PT, {"spec": {"runPolicy": {"suspend": True, "activeDeadlineSeconds": 9}}}, MERGE),
    (RC, [{"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 99}], JSON_PATCH),
    (PT, [{"op": "replace", "path": "/spec/pytorchReplicaSpecs/Worker/replicas", "value": 99}], JSON_PATCH),
    (RJ, [{"op": "remove", "path": "/spec/suspend"}], JSON_PATCH), (RC, {"$patch": "replace"}, MERGE),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "content_type"), PASS, ids=[str(i) for i in range(len(PASS))])
def test_patches_changing_nothing_held(path: str, body: Any, content_type: str) -> None:
    assert ADAPTER.parse_update(route("PATCH", path + "/x"), content_type, None, json.dumps(body).encode()) is None


@pytest.mark.parametrize(("path", "body", "content_type"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_patches_changing_what_is_held_are_refused(path: str, body: Any, content_type: str) -> None:
    """Replicas, groups, templates, autoscaling, deadlines, unsuspending: refused; PUT the whole object instead."""
    with pytest.raises(JobUpdateNotAllowed):
        ADAPTER.parse_update(route("PATCH", path + "/x"), content_type, None, json.dumps(body).encode())


def test_put_prices_the_new_object() -> None:
    bigger = changed(AUTOSCALED, *WORKERS, "maxReplicas", value=20)  # 8 x 20 x 2 = 320
    found = DAY.parse_update(route("PUT", RC + "/big"), JSON, None, json.dumps(bigger).encode())
    assert found is not None and found.total_gpus == 320
