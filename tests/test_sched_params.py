"""A model's parameter count as each scheduler adapter reads it from a job body, next to the lineage.

Slurm: the environment variable EXPORTGATE_PARAMS (or `params=` in an `exportgate:` comment); Ray: the
metadata key `model_params`; Kubernetes: the label or annotation `exportgate.io/model-params`; the generic
adapter: its `params_field`. A positive, finite number ("1e23", "175000000000", or a JSON number) is the
job's `parameters`; anything else is refused as job_spec_invalid naming the field.
"""

import copy
import json
from typing import Any

import pytest

from gateway.config.located import Problem, load_text
from gateway.config.schedulers import load_scheduler_options
from gateway.core.jobs import JobSpec, JobSpecInvalid
from gateway.core.routes import match_route
from gateway.http.job_body import job_record
from gateway.schedulers import (
    GenericAdapter,
    GenericOptions,
    KubernetesAdapter,
    KubernetesOptions,
    RayAdapter,
    RayOptions,
    SlurmAdapter,
    SlurmOptions,
)
from gateway.schedulers.base import load_json
from gateway.schedulers.provenance import body_sources

SLURM = SlurmAdapter(SlurmOptions(default_time_limit_min=60))
RAY = RayAdapter(RayOptions(pricing="entrypoint"))
K8S = KubernetesAdapter(KubernetesOptions(default_walltime_s=3600))
GENERIC = GenericAdapter(GenericOptions(submit_path="/v1/jobs", gpus_field="gpus", walltime_field="hours",
                                        walltime_unit="h", lineage_field="labels.lineage",
                                        params_field="labels.params"))  # fmt: skip

VALID = [("1e23", 1e23), ("175000000000", 175e9), ("1.75E+11", 1.75e11), (" 4.05e11 ", 4.05e11)]
INVALID = ["", "lots", "-1e23", "0", "1e400", "nan", "inf", "0x10", "1_000", "1e23 params"]


def _parse(adapter: Any, path: str, doc: Any) -> JobSpec:
    match = match_route(adapter.routes(), "POST", path)
    assert match is not None
    spec: JobSpec = adapter.parse_submission(match, "application/json", None, json.dumps(doc).encode())
    return spec


# -- Slurm ----------------------------------------------------------------------------------------


def slurm(env: Any = None, comment: str | None = None, key: str = "job", components: int = 1) -> JobSpec:
    job: dict[str, Any] = {"name": "t", "partition": "gpu", "time_limit": 60, "gpus": "h100:1"}
    if env is not None:
        job["environment"] = env
    if comment is not None:
        job["comment"] = comment
    raw: Any = [copy.deepcopy(job) for _ in range(components)] if key == "jobs" else job
    return _parse(SLURM, "/slurm/v0.0.38/job/submit", {key: raw, "script": "#!/bin/bash\ntrue"})


@pytest.mark.parametrize(("value", "expected"), VALID)
def test_slurm_environment_declares_parameters(value: str, expected: float) -> None:
    """EXPORTGATE_PARAMS beside EXPORTGATE_LINEAGE, in a dict or a NAME=value list environment."""
    found = slurm({"PATH": "/bin", "EXPORTGATE_LINEAGE": "acme-7b", "EXPORTGATE_PARAMS": value})
    assert (found.lineage, found.parameters) == ("acme-7b", expected)
    listed = slurm(["PATH=/bin", f"EXPORTGATE_PARAMS={value}"])
    assert listed.parameters == expected


def test_slurm_comment_and_absence() -> None:
    """An `exportgate:` comment may carry `params=` like the lineage; no declaration is None."""
    assert slurm(comment="exportgate:lineage=acme,params=1e24").parameters == 1e24
    assert slurm({"PATH": "/bin"}).parameters is None
    assert slurm(comment="nightly").parameters is None


def test_slurm_heterogeneous_job_takes_the_largest() -> None:
    """Components run one model: the largest count any component declares is the job's."""
    doc = {"jobs": [{"name": "a", "partition": "gpu", "time_limit": 60, "gpus": "h100:1",
                     "environment": {"EXPORTGATE_PARAMS": "7e10"}},
                    {"name": "b", "partition": "gpu", "time_limit": 60, "gpus": "h100:1",
                     "environment": {"EXPORTGATE_PARAMS": "2e23"}}], "script": "#!/bin/bash"}  # fmt: skip
    assert _parse(SLURM, "/slurm/v0.0.38/job/submit", doc).parameters == 2e23


@pytest.mark.parametrize("value", INVALID)
def test_slurm_invalid_parameters_are_refused(value: str) -> None:
    with pytest.raises(JobSpecInvalid) as raised:
        slurm({"EXPORTGATE_PARAMS": value})
    assert raised.value.field == "job.environment.EXPORTGATE_PARAMS"
    assert "parameter count must be a positive number" in raised.value.detail


def test_slurm_invalid_parameters_fields() -> None:
    """The refusal names where the bad count was: a component's environment, or the comment."""
    with pytest.raises(JobSpecInvalid) as raised:
        slurm({"EXPORTGATE_PARAMS": "many"}, key="jobs", components=2)
    assert raised.value.field == "jobs[0].environment.EXPORTGATE_PARAMS"
    with pytest.raises(JobSpecInvalid) as raised:
        slurm(comment="exportgate:params=huge")
    assert raised.value.field == "job.comment"
    with pytest.raises(JobSpecInvalid) as raised:
        slurm({"EXPORTGATE_PARAMS": True})
    assert raised.value.field == "job.environment.EXPORTGATE_PARAMS"


def test_slurm_update_reads_parameters() -> None:
    """A priced update restates the job: its declaration is read as a submission's."""
    match = match_route(SLURM.routes(), "POST", "/slurm/v0.0.38/job/17")
    assert match is not None
    body = {"job": {"gpus": "h100:2", "time_limit": 60, "environment": {"EXPORTGATE_PARAMS": "3e23"}}}
    found = SLURM.parse_update(match, "application/json", None, json.dumps(body).encode())
    assert found is not None and found.parameters == 3e23


# -- Ray ------------------------------------------------------------------------------------------


def ray(metadata: dict[str, Any], adapter: RayAdapter = RAY) -> JobSpec:
    doc = {"entrypoint": "python train.py", "entrypoint_num_gpus": 1,
           "metadata": {"time_limit_min": "60", **metadata}}  # fmt: skip
    return _parse(adapter, "/api/jobs/", doc)


@pytest.mark.parametrize(("value", "expected"), [*VALID, (1e24, 1e24), (175_000_000_000, 175e9)])
def test_ray_metadata_declares_parameters(value: Any, expected: float) -> None:
    found = ray({"model_lineage": "acme-7b", "model_params": value})
    assert (found.lineage, found.parameters) == ("acme-7b", expected)
    assert ray({}).parameters is None


@pytest.mark.parametrize("value", [*INVALID, 0, -5, True, [1e23], {"n": 1}])
def test_ray_invalid_parameters_are_refused(value: Any) -> None:
    with pytest.raises(JobSpecInvalid) as raised:
        ray({"model_params": value})
    assert raised.value.field == "metadata.model_params"


def test_ray_parameters_key_is_configurable() -> None:
    adapter = RayAdapter(RayOptions(pricing="entrypoint", params_key="size"))
    assert ray({"size": "1e24", "model_params": "not read"}, adapter).parameters == 1e24


# -- Kubernetes (Jobs, Pods, the training CRDs) ------------------------------------------------------

JOB: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "train", "labels": {"exportgate.io/model-lineage": "acme-7b"}},
    "spec": {"activeDeadlineSeconds": 3600, "template": {"spec": {
        "containers": [{"name": "t", "image": "t", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        "restartPolicy": "Never"}}},
}  # fmt: skip
PYTORCHJOB: dict[str, Any] = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "ft"},
    "spec": {"runPolicy": {"activeDeadlineSeconds": 3600}, "pytorchReplicaSpecs": {"Master": {
        "replicas": 1, "template": {"spec": {"containers": [
            {"name": "t", "image": "t", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}},
}  # fmt: skip


def k8s(path: str, doc: dict[str, Any], *, labels: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None) -> JobSpec:  # fmt: skip
    out = copy.deepcopy(doc)
    out["metadata"].setdefault("labels", {}).update(labels or {})
    out["metadata"]["annotations"] = annotations or {}
    return _parse(K8S, path, out)


JOBS = "/apis/batch/v1/namespaces/team-a/jobs"
PYTORCH = "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"


@pytest.mark.parametrize(("path", "doc"), [(JOBS, JOB), (PYTORCH, PYTORCHJOB)], ids=["job", "pytorchjob"])
def test_kubernetes_label_or_annotation_declares_parameters(path: str, doc: dict[str, Any]) -> None:
    """The annotation `exportgate.io/model-params` (label values cannot hold "1.75e+11"), or a label of that name."""
    found = k8s(path, doc, annotations={"exportgate.io/model-params": "1.75e+11"})
    assert found.parameters == 1.75e11
    assert k8s(path, doc, labels={"exportgate.io/model-params": "1e24"}).parameters == 1e24
    assert k8s(path, doc).parameters is None


@pytest.mark.parametrize(("where", "field"), [("labels", "metadata.labels.exportgate.io/model-params"),
                                              ("annotations", "metadata.annotations.exportgate.io/model-params")])
def test_kubernetes_invalid_parameters_are_refused(where: str, field: str) -> None:
    for value in ["big", "-3", "1e999"]:
        with pytest.raises(JobSpecInvalid) as raised:
            k8s(JOBS, JOB, **{where: {"exportgate.io/model-params": value}})
        assert raised.value.field == field


def test_kubernetes_pod_declares_parameters() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"activeDeadlineSeconds": 60, "containers": [
               {"name": "t", "image": "t", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}  # fmt: skip
    assert k8s("/api/v1/namespaces/team-a/pods", pod, annotations={"exportgate.io/model-params": "2e23"}).parameters \
        == 2e23  # fmt: skip


# -- the generic adapter ---------------------------------------------------------------------------


def generic(labels: dict[str, Any]) -> JobSpec:
    return _parse(GENERIC, "/v1/jobs", {"gpus": 1, "hours": 1, "labels": labels})


@pytest.mark.parametrize(("value", "expected"), [*VALID, (3e23, 3e23)])
def test_generic_field_declares_parameters(value: Any, expected: float) -> None:
    found = generic({"lineage": "acme-7b", "params": value})
    assert (found.lineage, found.parameters) == ("acme-7b", expected)
    assert generic({}).parameters is None


@pytest.mark.parametrize("value", [*INVALID, False, -1])
def test_generic_invalid_parameters_are_refused(value: Any) -> None:
    with pytest.raises(JobSpecInvalid) as raised:
        generic({"params": value})
    assert raised.value.field == "labels.params"


# -- options, provenance and the ledger's job record -------------------------------------------------


@pytest.mark.parametrize(
    ("scheduler", "text", "attr", "default", "configured"),
    [
        ("slurm", "params_env: MODEL_PARAMS\n", "params_env", "EXPORTGATE_PARAMS", "MODEL_PARAMS"),
        ("ray", "params_key: size\n", "params_key", "model_params", "size"),
        ("kubernetes", "params_label: acme.io/params\n", "params_label", "exportgate.io/model-params",
         "acme.io/params"),
        ("generic", "submit_path: /v1/jobs\ngpus_field: gpus\ndefault_walltime_s: 60\nparams_field: meta.params\n",
         "params_field", None, "meta.params"),
    ],
)  # fmt: skip
def test_options_name_the_parameters_field(scheduler: str, text: str, attr: str, default: Any, configured: str) -> None:
    problems: list[Problem] = []
    loaded = load_scheduler_options(scheduler, load_text(text, "gateway.yaml"), problems)
    assert problems == [] and getattr(loaded, attr) == configured
    if scheduler != "generic":
        plain = load_scheduler_options(scheduler, load_text("{}\n", "gateway.yaml"), problems)
        assert problems == [] and getattr(plain, attr) == default


def test_explain_sources_name_the_parameters_field() -> None:
    body = {"job": {"name": "t", "partition": "gpu", "time_limit": 60, "gpus": "h100:1",
                    "environment": {"EXPORTGATE_PARAMS": "1e24"}}, "script": "x"}  # fmt: skip
    doc = load_json(json.dumps(body).encode())
    sources = [s for s in body_sources(SLURM, doc, None) if s.quantity == "parameters"]
    assert [(s.field, s.value) for s in sources] == [("job.environment.EXPORTGATE_PARAMS", "1e24")]
    ray_doc = {"metadata": {"model_params": "2e23"}}
    fields = [s.field for s in body_sources(RAY, ray_doc, None) if s.quantity == "parameters"]
    assert fields == ["metadata.model_params"]


def test_job_record_keeps_parameters() -> None:
    """The ledger's job record carries the declaration (None when there is none)."""
    found = slurm({"EXPORTGATE_LINEAGE": "acme", "EXPORTGATE_PARAMS": "1e24"})
    assert job_record(found)["parameters"] == 1e24
    assert job_record(slurm({"PATH": "/bin"}))["parameters"] is None
