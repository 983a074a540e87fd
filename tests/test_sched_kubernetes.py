"""The Kubernetes adapter on API-reference shapes: Jobs, Pods, patches, Status refusals."""

import copy
import json
from typing import Any

import pytest

from gateway.config.located import Problem, load_text
from gateway.config.schedulers import load_scheduler_options
from gateway.core.jobs import JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import RouteKind, RouteMatch, match_route
from gateway.schedulers import KubernetesAdapter, KubernetesOptions

ADAPTER = KubernetesAdapter(KubernetesOptions())
JOBS = "/apis/batch/v1/namespaces/team-a/jobs"
PODS = "/api/v1/namespaces/team-a/pods"
JSON = "application/json"

TRAIN_JOB: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "train-7b", "labels": {"exportgate.io/model-lineage": "acme-7b"}},
    "spec": {
        "parallelism": 4, "completions": 8, "activeDeadlineSeconds": 7200,
        "template": {"spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "containers": [{"name": "t", "image": "trainer:1", "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
            "restartPolicy": "Never"}},
    },
}


def route(method: str, path: str) -> RouteMatch:
    found = match_route(ADAPTER.routes(), method, path)
    assert found is not None, (method, path)
    return found


def train_job(**changes: Any) -> dict[str, Any]:
    """TRAIN_JOB with `changes` applied to its pod spec (or spec with `spec__`)."""
    doc = copy.deepcopy(TRAIN_JOB)
    pod = doc["spec"]["template"]["spec"]
    for key, value in changes.items():
        target, name = (doc["spec"], key[6:]) if key.startswith("spec__") else (pod, key)
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return doc


def container(limits: dict[str, Any] | None = None, requests: dict[str, Any] | None = None, **extra: Any) -> Any:
    resources = {k: v for k, v in (("limits", limits), ("requests", requests)) if v is not None}
    return {"name": "c", "image": "i", "resources": resources, **extra}


def create(doc: Any, path: str = JOBS, options: KubernetesOptions | None = None) -> JobSpec:
    adapter = KubernetesAdapter(options) if options else ADAPTER
    return adapter.parse_submission(route("POST", path), JSON, None, json.dumps(doc).encode())


def product_in(*values: str) -> dict[str, Any]:
    return {"key": "nvidia.com/gpu.product", "operator": "In", "values": list(values)}


def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    """Required node affinity with one nodeSelectorTerm per list of match expressions."""
    required = {"nodeSelectorTerms": [{"matchExpressions": t} for t in terms]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


ROUTES = [
    ("POST", JOBS, RouteKind.SUBMIT), ("GET", JOBS, RouteKind.LIST),
    ("GET", JOBS + "/train-7b", RouteKind.READ), ("GET", JOBS + "/train-7b/status", RouteKind.READ),
    ("DELETE", JOBS + "/train-7b", RouteKind.CANCEL), ("PATCH", JOBS + "/train-7b", RouteKind.UPDATE),
    ("PUT", JOBS + "/train-7b", RouteKind.UPDATE),
    ("POST", PODS, RouteKind.SUBMIT), ("GET", PODS, RouteKind.LIST), ("GET", PODS + "/p", RouteKind.READ),
    ("GET", PODS + "/p/log", RouteKind.READ), ("DELETE", PODS + "/p", RouteKind.CANCEL),
    ("PATCH", PODS + "/p", RouteKind.UPDATE), ("PUT", PODS + "/p", RouteKind.UPDATE),
    ("GET", "/version", RouteKind.PLAIN_READ), ("GET", "/api", RouteKind.PLAIN_READ),
    ("GET", "/apis", RouteKind.PLAIN_READ), ("GET", "/healthz", RouteKind.PLAIN_READ),
]


@pytest.mark.parametrize(("method", "path", "kind"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_routes(method: str, path: str, kind: RouteKind) -> None:
    """Each Kubernetes path maps to the expected kind."""
    assert route(method, path).route.kind == kind


DENIED = [
    ("DELETE", JOBS), ("PUT", JOBS + "/x/status"), ("POST", "/api/v1/namespaces/team-a/pods/p/exec"),
    ("GET", "/api/v1/namespaces/team-a/secrets"), ("POST", "/apis/batch/v1/namespaces/team-a/cronjobs"),
    ("GET", "/apis/batch/v1/jobs"),
]


@pytest.mark.parametrize(("method", "path"), DENIED, ids=[f"{m} {p}" for m, p in DENIED])
def test_default_deny(method: str, path: str) -> None:
    """Collections deletes, status writes, exec, secrets and cluster-wide lists match no route."""
    assert match_route(ADAPTER.routes(), method, path) is None


SUBMISSIONS = [
    pytest.param(TRAIN_JOB, JOBS, (8, "NVIDIA-H100-80GB-HBM3", 4), id="docs-example"),
    pytest.param(train_job(containers=[container(requests={"nvidia.com/gpu": 2})]), JOBS,
                 (2, "NVIDIA-H100-80GB-HBM3", 4), id="requests-int"),
    pytest.param(train_job(containers=[container({"nvidia.com/gpu": "2"}, {"nvidia.com/gpu": "4"})]), JOBS,
                 (4, "NVIDIA-H100-80GB-HBM3", 4), id="larger-of-limit-and-request"),
    pytest.param(train_job(containers=[container({"nvidia.com/gpu": "4"}), container({"nvidia.com/gpu": 2})]),
                 JOBS, (6, "NVIDIA-H100-80GB-HBM3", 4), id="containers-summed"),
    pytest.param(train_job(initContainers=[container({"nvidia.com/gpu": "1"}), container({"nvidia.com/gpu": "3"})]),
                 JOBS, (11, "NVIDIA-H100-80GB-HBM3", 4), id="plus-largest-init"),
    pytest.param(train_job(initContainers=[container({"nvidia.com/gpu": "1"}, restartPolicy="Always"),
                                           container({"nvidia.com/gpu": "2"})]),
                 JOBS, (11, "NVIDIA-H100-80GB-HBM3", 4), id="sidecar-init-runs-alongside"),
    pytest.param(train_job(containers=[container({"amd.com/gpu": "8"})],
                           nodeSelector={"amd.com/gpu.product-name": "AMD-Instinct-MI300X"}),
                 JOBS, (8, "AMD-Instinct-MI300X", 4), id="amd"),
    pytest.param(train_job(nodeSelector=None, affinity=affinity([product_in("NVIDIA-H200", "NVIDIA-A100-SXM4-80GB")])),
                 JOBS, (8, "NVIDIA-A100-SXM4-80GB|NVIDIA-H200", 4), id="affinity-several-products"),
    pytest.param(train_job(nodeSelector=None, affinity=affinity(
        [product_in("NVIDIA-H200")], [{"key": "zone", "operator": "In", "values": ["a"]}])),
                 JOBS, (8, None, 4), id="affinity-term-without-product"),
    pytest.param(train_job(affinity=affinity([product_in("NVIDIA-H200")])),
                 JOBS, (8, "NVIDIA-H100-80GB-HBM3", 4), id="node-selector-wins"),
    pytest.param(train_job(nodeSelector=None), JOBS, (8, None, 4), id="no-product-label"),
    pytest.param(train_job(spec__parallelism=None), JOBS, (8, "NVIDIA-H100-80GB-HBM3", 1), id="parallelism-default"),
    pytest.param({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                  "spec": {"activeDeadlineSeconds": 600, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"},
                           "containers": [container({"nvidia.com/gpu": "2"})]}},
                 PODS, (2, "NVIDIA-H200", 1), id="pod"),
]


@pytest.mark.parametrize(("doc", "path", "part"), SUBMISSIONS)
def test_submissions(doc: Any, path: str, part: tuple[int, str | None, int]) -> None:
    """GPUs per pod, pods at once and the pinned product are read from the object."""
    found = create(doc, path)
    assert [(p.gpus, p.model, p.concurrency) for p in found.parts] == [part]


def test_job_walltime_and_labels() -> None:
    """The Job's deadline is its walltime; lineage and purpose come from labels or annotations."""
    doc = train_job()
    doc["metadata"]["annotations"] = {"exportgate.io/purpose": "training"}
    found = create(doc)
    assert (found.walltime_s, found.lineage, found.purpose, found.name) == (7200.0, "acme-7b", "training", "train-7b")


def test_default_walltime_option() -> None:
    """Without a deadline the configured default walltime applies."""
    found = create(train_job(spec__activeDeadlineSeconds=None), options=KubernetesOptions(default_walltime_s=3600))
    assert found.walltime_s == 3600


def test_cpu_only_job() -> None:
    """A Job without GPU resources has no priced parts."""
    assert create(train_job(containers=[container({"cpu": "4", "memory": "8Gi"})])).parts == ()


def raw(body: bytes, content_type: str | None = JSON, path: str = JOBS) -> JobSpec:
    return ADAPTER.parse_submission(route("POST", path), content_type, None, body)


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


INVALID = [
    pytest.param(b"k8s\x00protobuf", "application/vnd.kubernetes.protobuf", "body", id="protobuf"),
    pytest.param(b"apiVersion: batch/v1\nkind: Job\n", "application/yaml", "body", id="yaml"),
    pytest.param(enc(TRAIN_JOB), None, "body", id="no-content-type"),
    pytest.param(b'{"kind": "Job", "kind": "Pod"}', JSON, "body", id="duplicate-keys"),
    pytest.param(b'{"spec": {"parallelism": NaN}}', JSON, "body", id="nan"),
    pytest.param(enc(train_job(containers=[container({"nvidia.com/gpu": "1.5"})])), JSON,
                 "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu", id="fractional-quantity"),
    pytest.param(enc(train_job(containers=[container({"nvidia.com/gpu": "-1"})])), JSON,
                 "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu", id="negative-quantity"),
    pytest.param(enc(train_job(containers=[container({"nvidia.com/gpu": "1k"})])), JSON,
                 "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu", id="suffixed-quantity"),
    pytest.param(enc(train_job(containers=[container({"nvidia.com/gpu": True})])), JSON,
                 "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu", id="bool-quantity"),
    pytest.param(enc(train_job(containers=[container({"nvidia.com/mig-1g.10gb": "1"})])), JSON,
                 "spec.template.spec.containers[0].resources.limits.nvidia.com/mig-1g.10gb", id="mig-slice"),
    pytest.param(enc(train_job(containers=[container({"nvidia.com/gpu.shared": "1"})])), JSON,
                 "spec.template.spec.containers[0].resources.limits.nvidia.com/gpu.shared", id="shared-gpu"),
    pytest.param(enc(train_job(resourceClaims=[{"name": "gpu"}])), JSON, "spec.template.spec.resourceClaims",
                 id="dra-claims"),
    pytest.param(enc(train_job(spec__activeDeadlineSeconds=None)), JSON, "activeDeadlineSeconds", id="no-deadline"),
    pytest.param(enc(train_job(spec__activeDeadlineSeconds=None, activeDeadlineSeconds=600)), JSON,
                 "activeDeadlineSeconds", id="pod-deadline-does-not-bound-a-job"),
    pytest.param(enc(train_job(spec__activeDeadlineSeconds="7200")), JSON, "spec.activeDeadlineSeconds",
                 id="deadline-string"),
    pytest.param(enc(train_job(spec__parallelism=2_000_000)), JSON, "spec.parallelism", id="absurd-parallelism"),
    pytest.param(enc(train_job(spec__parallelism=200_000)), JSON, "spec.parallelism", id="absurd-total"),
    pytest.param(enc({**TRAIN_JOB, "kind": "Pod"}), JSON, "kind", id="pod-on-jobs-route"),
    pytest.param(enc({**TRAIN_JOB, "apiVersion": "batch/v1beta1"}), JSON, "apiVersion", id="wrong-api-version"),
    pytest.param(enc(train_job(containers={"name": "c"})), JSON, "spec.template.spec.containers", id="containers-map"),
]


@pytest.mark.parametrize(("body", "content_type", "field"), INVALID)
def test_invalid_submissions(body: bytes, content_type: str | None, field: str) -> None:
    """Non-JSON bodies, unpriceable resources and unbounded Jobs raise JobSpecInvalid."""
    with pytest.raises(JobSpecInvalid) as raised:
        raw(body, content_type)
    assert raised.value.field == field


def patch(body: Any, content_type: str, path: str = JOBS + "/train-7b", method: str = "PATCH") -> JobSpec | None:
    return ADAPTER.parse_update(route(method, path), content_type, None, json.dumps(body).encode())


MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

UPDATES_PASS = [
    pytest.param({"metadata": {"labels": {"team": "x"}}}, MERGE, id="merge-labels"),
    pytest.param({"metadata": {"annotations": {"a": "b"}}}, STRATEGIC, id="strategic-annotations"),
    pytest.param({"spec": {"suspend": True}}, MERGE, id="suspend"),
    pytest.param({"spec": {"ttlSecondsAfterFinished": 60, "backoffLimit": 2}}, MERGE, id="non-resource-spec"),
    pytest.param([{"op": "add", "path": "/metadata/labels/x", "value": "y"}], JSON_PATCH, id="json-patch-labels"),
    pytest.param([{"op": "replace", "path": "/spec/suspend", "value": True}], JSON_PATCH, id="json-patch-suspend"),
    pytest.param([{"op": "test", "path": "/spec/parallelism", "value": 4}], JSON_PATCH, id="json-patch-test-only"),
]


@pytest.mark.parametrize(("body", "content_type"), UPDATES_PASS)
def test_updates_without_resources(body: Any, content_type: str) -> None:
    """Patches of labels, annotations or suspend: true change no resources."""
    assert patch(body, content_type) is None


UPDATES_REFUSED = [
    pytest.param({"spec": {"parallelism": 16}}, MERGE, id="merge-parallelism"),
    pytest.param({"spec": {"parallelism": 16, "template": TRAIN_JOB["spec"]["template"]}}, MERGE,
                 id="merge-with-template-still-merges"),
    pytest.param({"spec": {"suspend": False}}, MERGE, id="unsuspend"),
    pytest.param({"spec": {"activeDeadlineSeconds": 999_999}}, MERGE, id="extend-deadline"),
    pytest.param({"spec": {"template": {"spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-B200"}}}}},
                 STRATEGIC, id="strategic-node-selector"),
    pytest.param({"spec": {"$patch": "replace", "parallelism": 1}}, STRATEGIC, id="patch-directive"),
    pytest.param({"spec": None}, MERGE, id="spec-null"),
    pytest.param([{"op": "replace", "path": "/spec/parallelism", "value": 64}], JSON_PATCH,
                 id="json-patch-parallelism"),
    pytest.param([{"op": "remove", "path": "/spec/suspend"}], JSON_PATCH, id="json-patch-remove-suspend"),
    pytest.param([{"op": "add", "path": "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
                   "value": "8"}], JSON_PATCH, id="json-patch-template"),
    pytest.param([{"op": "replace", "path": "/spec", "value": {}}], JSON_PATCH, id="json-patch-whole-spec"),
    pytest.param([{"op": "copy", "from": "/metadata/x", "path": "/spec/parallelism"}], JSON_PATCH,
                 id="json-patch-copy"),
    pytest.param({"kind": "Job", "spec": {"parallelism": 2}}, "application/apply-patch+yaml", id="server-side-apply"),
]


@pytest.mark.parametrize(("body", "content_type"), UPDATES_REFUSED)
def test_updates_refused(body: Any, content_type: str) -> None:
    """Patches touching parallelism, template, deadline or unsuspend cannot be priced and are refused."""
    with pytest.raises(JobUpdateNotAllowed):
        patch(body, content_type)


def test_put_prices_full_object() -> None:
    """A PUT replaces the whole Job, so its new total is priced."""
    found = patch(train_job(spec__parallelism=16), JSON, method="PUT")
    assert found is not None
    assert [(p.gpus, p.concurrency) for p in found.parts] == [(8, 16)]


@pytest.mark.parametrize(
    ("method", "content_type", "body"),
    [("PATCH", MERGE, {"spec": {"containers": []}}), ("PUT", JSON, {"kind": "Pod", "spec": {}})],
    ids=["patch", "put"],
)
def test_pod_updates_change_no_resources(method: str, content_type: str, body: Any) -> None:
    """A pod's resources are immutable, so its updates are not priced."""
    assert patch(body, content_type, path=PODS + "/p", method=method) is None


@pytest.mark.parametrize(
    ("method", "content_type"),
    [("PATCH", "application/vnd.kubernetes.protobuf"), ("PATCH", "application/yaml"), ("PUT", "application/yaml"),
     ("PATCH", JSON)],
    ids=["patch-protobuf", "patch-yaml", "put-yaml", "patch-plain-json"],
)
def test_update_content_types(method: str, content_type: str) -> None:
    """Updates in a body type we cannot read are refused as invalid."""
    with pytest.raises(JobSpecInvalid):
        patch({"spec": {"parallelism": 1}}, content_type, method=method)


RESPONSES = [
    pytest.param(201, {"metadata": {"name": "train-7b", "namespace": "team-a", "uid": "u"}}, "team-a/train-7b",
                 id="created"),
    pytest.param(201, {"metadata": {"name": "train-x1y2"}}, "team-a/train-x1y2", id="namespace-from-path"),
    pytest.param(409, {"kind": "Status", "reason": "AlreadyExists"}, None, id="conflict"),
    pytest.param(201, {"metadata": {}}, None, id="no-name"),
]


@pytest.mark.parametrize(("status", "body", "job_id"), RESPONSES)
def test_job_id_from_response(status: int, body: Any, job_id: str | None) -> None:
    """The job id of a created object is "{namespace}/{name}"."""
    assert ADAPTER.job_id_from_response(route("POST", JOBS), status, json.dumps(body).encode()) == job_id


@pytest.mark.parametrize(("method", "path"), [("GET", JOBS + "/train-7b"), ("GET", PODS + "/train-7b/log")],
                         ids=["job", "pod-log"])
def test_job_id_of(method: str, path: str) -> None:
    """Item routes name the object as "{namespace}/{name}"."""
    assert ADAPTER.job_id_of(route(method, path)) == "team-a/train-7b"


STATUS = b'{"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}'
REJECTIONS = [
    pytest.param(409, STATUS, True, id="409-status"),
    pytest.param(403, STATUS.replace(b"AlreadyExists", b"Forbidden"), True, id="403-status"),
    pytest.param(422, STATUS.replace(b"AlreadyExists", b"Invalid"), True, id="422-status"),
    pytest.param(403, b"<html>forbidden</html>", False, id="403-not-status"),
    pytest.param(500, STATUS, False, id="500-status"),
    pytest.param(504, b"", False, id="504"),
]


@pytest.mark.parametrize(("status", "body", "definitive"), REJECTIONS)
def test_definitive_rejection(status: int, body: bytes, definitive: bool) -> None:
    """Only a 4xx Status from the API server counts as a refusal."""
    assert ADAPTER.definitive_rejection(status, body) is definitive


REFUSALS = [
    ("quota_tenant_tpp", 429, "TooManyRequests"), ("tier3_embargoed", 451, "Forbidden"),
    ("job_spec_invalid", 400, "BadRequest"), ("job_not_owned", 404, "NotFound"),
    ("licence_required", 403, "Forbidden"), ("backend_unavailable", 503, "ServiceUnavailable"),
    ("upstream_timeout", 504, "Timeout"), ("body_too_large", 413, "RequestEntityTooLarge"),
]


@pytest.mark.parametrize(("code", "status", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_status_refusal(code: str, status: int, reason: str) -> None:
    """Refusals are Status objects carrying the exportgate code and the decision id."""
    found = ADAPTER.refusal(code, status, "Title", "what happened", "dec-123")
    assert found is not None
    content_type, body = found
    doc = json.loads(body)
    assert content_type == "application/json"
    assert (doc["kind"], doc["apiVersion"], doc["status"], doc["code"], doc["reason"]) == (
        "Status", "v1", "Failure", status, reason)
    assert doc["metadata"] == {}
    assert code in doc["message"] and "dec-123" in doc["message"]
    causes = {c["reason"]: c["message"] for c in doc["details"]["causes"]}
    assert causes[code] == "what happened"
    assert causes["DecisionId"] == "dec-123"


def test_filter_job_list() -> None:
    """A JobList keeps only items whose "{namespace}/{name}" is owned."""
    listing = {"kind": "JobList", "apiVersion": "batch/v1", "metadata": {"resourceVersion": "9"}, "items": [
        {"metadata": {"name": "mine", "namespace": "team-a"}},
        {"metadata": {"name": "theirs", "namespace": "team-a"}},
        {"metadata": {"name": "also-mine"}},
        {"spec": {}},
    ]}
    owned = {"team-a/mine", "team-a/also-mine"}.__contains__
    out = json.loads(ADAPTER.filter_listing(route("GET", JOBS), json.dumps(listing).encode(), owned))
    assert [i["metadata"]["name"] for i in out["items"]] == ["mine", "also-mine"]
    assert out["metadata"] == {"resourceVersion": "9"}


def test_filter_table() -> None:
    """A server-side Table (kubectl get) keeps only owned rows."""
    table = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "columnDefinitions": [], "rows": [
        {"cells": ["mine"], "object": {"metadata": {"name": "mine", "namespace": "team-a"}}},
        {"cells": ["theirs"], "object": {"metadata": {"name": "theirs", "namespace": "team-a"}}},
    ]}
    owned = {"team-a/mine"}.__contains__
    out = json.loads(ADAPTER.filter_listing(route("GET", JOBS), json.dumps(table).encode(), owned))
    assert [r["cells"] for r in out["rows"]] == [["mine"]]


def test_filter_unreadable() -> None:
    """A listing that is not JSON (protobuf, a watch stream) lists nothing."""
    out = json.loads(ADAPTER.filter_listing(route("GET", JOBS), b"k8s\x00\x01", lambda _: True))
    assert out["items"] == []


def test_options_loader() -> None:
    """scheduler_options for Kubernetes load into KubernetesOptions; unknown keys are located."""
    problems: list[Problem] = []
    node = load_text("default_gpu_model: H100-SXM\ndefault_walltime_s: 86400\nlineage_label: acme/lineage\n", "g.yaml")
    assert load_scheduler_options("kubernetes", node, problems) == KubernetesOptions(
        "H100-SXM", 86400.0, "acme/lineage", "exportgate.io/purpose")
    assert problems == []
    bad: list[Problem] = []
    assert load_scheduler_options("kubernetes", load_text("\ndefault_walltime: 5\n", "g.yaml"), bad) is None
    assert [str(p) for p in bad] == ["g.yaml:2: default_walltime: unknown key"]
