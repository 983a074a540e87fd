"""The slurmrestd adapter on real request shapes: routes, GPU fields, walltime, updates, ids."""

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config.located import Problem, load_text
from gateway.config.schedulers import load_scheduler_options
from gateway.core.jobs import JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import RouteKind, RouteMatch, match_route
from gateway.schedulers import SlurmAdapter, SlurmOptions, build_adapter
from gateway.schedulers.slurm_facts import EMPTY, FactsUnreadable, SlurmFacts, parse_facts

OPTIONS = SlurmOptions(partition_time_limits={"gpu": 2880, "debug": 60}, default_time_limit_min=720)
ADAPTER = SlurmAdapter(OPTIONS)
SUBMIT = "/slurm/v0.0.38/job/submit"


def route(method: str, path: str, adapter: SlurmAdapter = ADAPTER) -> RouteMatch:
    found = match_route(adapter.routes(), method, path)
    assert found is not None, (method, path)
    return found


def submit(job: Any, *, adapter: SlurmAdapter = ADAPTER, key: str = "job", script: bool = True) -> JobSpec:
    doc: dict[str, Any] = {key: job}
    if script:
        doc["script"] = "#!/bin/bash\nsrun python train.py"
    body = json.dumps(doc).encode()
    return adapter.parse_submission(route("POST", SUBMIT, adapter), "application/json", None, body)


def job(**fields: Any) -> dict[str, Any]:
    """A v0.0.38 job description as the Slurm REST docs show it, with `fields` on top."""
    base: dict[str, Any] = {
        "name": "train-7b", "partition": "gpu", "account": "team-a", "time_limit": 120,
        "environment": {"PATH": "/usr/bin:/bin"}, "current_working_directory": "/home/u",
    }
    base.update(fields)
    return base


ROUTES = [
    ("POST", "/slurm/v0.0.38/job/submit", "slurm.job.submit", RouteKind.SUBMIT),
    ("POST", "/slurm/v0.0.42/job/submit", "slurm.job.submit", RouteKind.SUBMIT),
    ("GET", "/slurm/v0.0.36/job/17", "slurm.job.read", RouteKind.READ),
    ("POST", "/slurm/v0.0.40/job/17", "slurm.job.update", RouteKind.UPDATE),
    ("DELETE", "/slurm/v0.0.41/job/17", "slurm.job.cancel", RouteKind.CANCEL),
    ("GET", "/slurm/v0.0.38/jobs", "slurm.jobs", RouteKind.LIST),
    ("GET", "/slurm/v0.0.38/jobs/", "slurm.jobs.slash", RouteKind.LIST),
    ("GET", "/slurm/v0.0.38/ping", "slurm.ping", RouteKind.PLAIN_READ),
    ("GET", "/slurm/v0.0.39/diag", "slurm.diag", RouteKind.PLAIN_READ),
    ("GET", "/slurm/v0.0.38/partitions", "slurm.partitions", RouteKind.PLAIN_READ),
    ("GET", "/slurm/v0.0.38/nodes", "slurm.nodes", RouteKind.PLAIN_READ),
]


@pytest.mark.parametrize(("method", "path", "name", "kind"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_routes(method: str, path: str, name: str, kind: RouteKind) -> None:
    """Each slurmrestd path maps to its route and kind."""
    found = route(method, path)
    assert (found.route.name, found.route.kind) == (name, kind)


DENIED = [
    ("POST", "/slurm/v0.0.35/job/submit"),
    ("POST", "/slurm/v0.0.43/job/submit"),
    ("POST", "/slurm/latest/job/submit"),
    ("GET", "/slurmdb/v0.0.38/jobs"),
    ("PUT", "/slurm/v0.0.38/job/17"),
    ("GET", "/slurm/v0.0.38/reservations"),
    ("GET", "/openapi/v3"),
]


@pytest.mark.parametrize(("method", "path"), DENIED, ids=[f"{m} {p}" for m, p in DENIED])
def test_default_deny(method: str, path: str) -> None:
    """Unknown versions, accounting and unlisted paths match no route."""
    assert match_route(ADAPTER.routes(), method, path) is None


GPUS = [
    pytest.param(job(gpus="h100:2", tasks=1, nodes=[1, 4]), [(2, "h100", 1)], id="docs-example-gpus-per-job"),
    pytest.param(job(gpus=4), [(4, None, 1)], id="gpus-untyped-int"),
    pytest.param(job(gpus="gpu:h100:2"), [(2, "h100", 1)], id="gpus-with-gpu-prefix"),
    pytest.param(job(gpus_per_node="h100:8", nodes=[1, 4]), [(32, "h100", 1)], id="per-node-times-max-of-range"),
    pytest.param(job(gpus_per_node="h100:8", nodes="2-4"), [(32, "h100", 1)], id="per-node-string-range"),
    pytest.param(job(gpus_per_node="8", nodes=3), [(24, None, 1)], id="per-node-untyped"),
    pytest.param(job(gpus_per_task=1, tasks=16), [(16, None, 1)], id="per-task"),
    pytest.param(job(gpus_per_task="a100:2", tasks_per_node=4, nodes=2), [(16, "a100", 1)], id="per-task-per-node"),
    pytest.param(job(gpus_per_task=1, ntasks=6), [(6, None, 1)], id="ntasks-alias"),
    pytest.param(job(gpus_per_socket="h100:2", sockets_per_node=2, nodes=3), [(12, "h100", 1)], id="per-socket"),
    pytest.param(job(gres="gpu:h100:4,license:foo", nodes=2), [(8, "h100", 1)], id="gres-ignores-non-gpu"),
    pytest.param(job(gres="gpu:2"), [(2, None, 1)], id="gres-untyped"),
    pytest.param(job(gres="gpu"), [(1, None, 1)], id="gres-bare-gpu-is-one"),
    pytest.param(job(gres="gpu:h100"), [(1, "h100", 1)], id="gres-type-without-count"),
    pytest.param(job(tres_per_job="gres/gpu:h100:8"), [(8, "h100", 1)], id="tres-per-job"),
    pytest.param(job(tres_per_node="gres/gpu=8", nodes=2), [(16, None, 1)], id="tres-per-node-equals"),
    pytest.param(job(tres_per_node="gres/gpu:h100=4", nodes=2), [(8, "h100", 1)], id="tres-typed-equals"),
    pytest.param(job(tres_per_task="cpu=4,gres/gpu:h100=1", tasks=8), [(8, "h100", 1)], id="tres-per-task-list"),
    pytest.param(
        job(tres_per_socket="gres/gpu:1", sockets_per_node=2, nodes=2), [(4, None, 1)], id="tres-per-socket",
    ),
    pytest.param(job(gpus="h100:2", gpus_per_node="h100:4", nodes=2), [(8, "h100", 1)], id="largest-field-wins"),
    pytest.param(job(gpus="h100:16", gpus_per_node="h100:4", nodes=2), [(16, "h100", 1)], id="largest-job-total"),
    pytest.param(
        job(gpus="h100:2", gres="gpu:a100:4"), [(2, "h100", 1), (4, "a100", 1)], id="two-types-each-at-its-max",
    ),
    pytest.param(job(gres="gpu:h100:2,gpu:a100:1"), [(2, "h100", 1), (1, "a100", 1)], id="gres-two-types"),
    pytest.param(job(gpus="h100:8", array="0-99%10"), [(8, "h100", 10)], id="array-throttled"),
    pytest.param(job(gpus="h100:8", array="1,3,5"), [(8, "h100", 3)], id="array-list"),
    pytest.param(job(gpus="h100:8", array="0-99:2"), [(8, "h100", 50)], id="array-step"),
    pytest.param(job(gpus="h100:8", array="0-9"), [(8, "h100", 10)], id="array-unthrottled-all-copies"),
    pytest.param(job(gpus="h100:8", array="0-3%10"), [(8, "h100", 4)], id="array-throttle-above-size"),
    pytest.param(job(GPUS_PER_NODE="h100:8", NODES=2), [(16, "h100", 1)], id="upper-case-keys"),
    pytest.param(job(gpus_per_node=8, required_nodes="gpu[01-04]"), [(32, None, 1)], id="node-list-counts-hosts"),
    pytest.param(job(gpus_per_node=8, nodelist="a1,b[1-2,5]"), [(32, None, 1)], id="nodelist-alias-mixed"),
    pytest.param(job(gpus_per_node=8, nodes=0), [(8, None, 1)], id="zero-nodes-counts-one"),
    pytest.param(job(tasks=16, ntasks_per_gpu=4), [(4, None, 1)], id="ntasks-per-gpu-derives-gpus"),
    pytest.param(job(tasks=6, ntasks_per_tres=4), [(2, None, 1)], id="ntasks-per-tres-rounds-up"),
    pytest.param(job(tasks=4), [], id="cpu-only"),
    pytest.param(job(gpus="", gres=""), [], id="empty-strings"),
    pytest.param(job(gpus="h100:8", cpus_per_gpu=4, gpu_binding="closest"), [(8, "h100", 1)], id="benign-gpu-keys"),
    pytest.param(
        {
            "name": "v40", "partition": "gpu", "script": "#!/bin/bash\ntrue", "environment": ["PATH=/bin"],
            "time_limit": {"set": True, "infinite": False, "number": 90},
            "minimum_nodes": 2, "maximum_nodes": 4, "tres_per_node": "gres/gpu:h100:8",
        },
        [(32, "h100", 1)], id="v0.0.40-shape",
    ),
    pytest.param(job(gpus_per_node=1, nodes={"set": True, "infinite": False, "number": 5}), [(5, None, 1)],
                 id="nodes-number-struct"),
    pytest.param(job(gpus_per_node=1, minimum_nodes=True, nodes=3), [(3, None, 1)], id="v0.0.38-min-nodes-flag"),
]


@pytest.mark.parametrize(("description", "parts"), GPUS)
def test_gpu_fields(description: dict[str, Any], parts: list[tuple[int, str | None, int]]) -> None:
    """Every GPU-bearing field is multiplied out and the largest implied total is priced."""
    found = submit(description)
    assert [(p.gpus, p.model, p.concurrency) for p in found.parts] == parts


@pytest.mark.parametrize("key", ["jobs", "job"])
def test_heterogeneous_job(key: str) -> None:
    """A heterogeneous job prices one part per component and its longest walltime."""
    components = [
        job(gpus="h100:8", time_limit=60),
        job(gpus_per_node="a100:4", nodes=2, time_limit=120, environment={"EXPORTGATE_LINEAGE": "acme-7b"}),
    ]
    found = submit(components, key=key)
    assert [(p.gpus, p.model, p.concurrency) for p in found.parts] == [(8, "h100", 1), (8, "a100", 1)]
    assert found.walltime_s == 7200
    assert found.lineage == "acme-7b"


HET_PURPOSES = [
    pytest.param(("inference", "inference"), "inference", id="all-declare-the-same"),
    pytest.param(("inference", None), None, id="one-undeclared"),
    pytest.param(("inference", "training"), None, id="mixed"),
]


@pytest.mark.parametrize(("purposes", "expected"), HET_PURPOSES)
def test_heterogeneous_purpose_needs_every_component(purposes: tuple[str | None, ...], expected: str | None) -> None:
    """A purpose can exempt the whole job, so a heterogeneous job has one only if every component declares it."""
    components = [
        job(gpus="h100:8", environment={"PATH": "/bin", **({"EXPORTGATE_PURPOSE": p} if p else {})}) for p in purposes
    ]
    assert submit(components, key="jobs").purpose == expected


def test_script_optional_v40() -> None:
    """A v0.0.40 body with the script inside the job is read the same way."""
    found = submit(job(gpus="h100:1", script="#!/bin/bash\ntrue"), script=False)
    assert found.total_gpus == 1


WALLTIMES = [
    pytest.param({"time_limit": 120}, 7200.0, id="minutes-int"),
    pytest.param({"time_limit": "120"}, 7200.0, id="minutes-string"),
    pytest.param({"time_limit": "1:30:00"}, 5400.0, id="hours-minutes-seconds"),
    pytest.param({"time_limit": "2-00:00:00"}, 172_800.0, id="days-hours-minutes-seconds"),
    pytest.param({"time_limit": "10:30"}, 660.0, id="minutes-seconds-rounds-up"),
    pytest.param({"time_limit": {"set": True, "infinite": False, "number": 45}}, 2700.0, id="v40-struct"),
    pytest.param({"time_limit": {"set": True, "infinite": True, "number": 0}}, 172_800.0, id="infinite-gets-partition"),
    pytest.param({"time_limit": "UNLIMITED"}, 172_800.0, id="unlimited-string"),
    pytest.param({"time_limit": 0}, 172_800.0, id="zero-means-no-limit"),
    pytest.param({"time_limit": None}, 172_800.0, id="absent-gets-partition"),
    pytest.param({"time_limit": None, "partition": "debug"}, 3600.0, id="other-partition"),
    pytest.param({"time_limit": None, "partition": "debug,gpu"}, 172_800.0, id="partition-list-longest"),
    pytest.param({"time_limit": None, "partition": "scratch"}, 43_200.0, id="unlisted-partition-default"),
    pytest.param({"time_limit": None, "partition": None}, 43_200.0, id="no-partition-default"),
]


@pytest.mark.parametrize(("fields", "walltime"), WALLTIMES)
def test_walltime(fields: dict[str, Any], walltime: float) -> None:
    """time_limit is read in every form, and absent or infinite falls back to partition limits."""
    description = {k: v for k, v in job(gpus="h100:1", **fields).items() if v is not None}
    assert submit(description).walltime_s == walltime


@pytest.mark.parametrize(
    "fields", [{"time_limit": None}, {"time_limit": {"set": False}}, {"time_limit": "INFINITE"}],
    ids=["absent", "unset-struct", "infinite-string"],
)
def test_walltime_without_any_limit(fields: dict[str, Any]) -> None:
    """With no time limit and no configured partition limit the job cannot be priced."""
    bare = SlurmAdapter(SlurmOptions())
    description = {k: v for k, v in job(gpus="h100:1", **fields).items() if v is not None}
    with pytest.raises(JobSpecInvalid) as raised:
        submit(description, adapter=bare)
    assert raised.value.field == "time_limit"


def raw_submit(body: bytes, content_type: str | None = "application/json", encoding: str | None = None) -> JobSpec:
    return ADAPTER.parse_submission(route("POST", SUBMIT), content_type, encoding, body)


INVALID = [
    pytest.param(b'{"job": {"gpus": "h100:1", "gpus": "h100:8", "time_limit": 5}, "script": "x"}', None, None,
                 "body", id="duplicate-keys"),
    pytest.param(b'{"job": {"gpus": NaN, "time_limit": 5}}', None, None, "body", id="nan"),
    pytest.param(b'{"job": {"gpus": Infinity, "time_limit": 5}}', None, None, "body", id="infinity"),
    pytest.param(b'{"job": {"gpus": 1e400, "time_limit": 5}}', None, None, "body", id="overflowing-float"),
    pytest.param(b'[{"job": {}}]', None, None, "body", id="top-level-list"),
    pytest.param(b'{"job": {"gpus": 1}', None, None, "body", id="truncated"),
    pytest.param(b'\xff\xfe{}', None, None, "body", id="not-utf8"),
    pytest.param(b'{"job": {"gpus": 1, "time_limit": 5}}', None, "br", "content-encoding", id="brotli"),
    pytest.param(b'job: {gpus: 1}', "application/x-yaml", None, "content-type", id="yaml"),
    pytest.param(b'{"job": {"gpus": 1}}', "application/json; charset=utf-16", None, "content-type", id="utf16"),
    pytest.param(json.dumps({"job": job(gpus=True)}).encode(), None, None, "job.gpus", id="bool-is-not-a-count"),
    pytest.param(json.dumps({"job": job(gpus=-1)}).encode(), None, None, "job.gpus", id="negative"),
    pytest.param(json.dumps({"job": job(gpus="1.5")}).encode(), None, None, "job.gpus", id="fraction"),
    pytest.param(json.dumps({"job": job(gpus="h100:2k")}).encode(), None, None, "job.gpus", id="suffix"),
    pytest.param(json.dumps({"job": job(gpus_per_node=8, nodes=200_000)}).encode(), None, None,
                 "job.gpus_per_node", id="absurd-total"),
    pytest.param(json.dumps({"job": job(gpus=2_000_000)}).encode(), None, None, "job.gpus", id="absurd-count"),
    pytest.param(json.dumps({"job": job(gres="mps:100")}).encode(), None, None, "job.gres", id="gres-mps"),
    pytest.param(json.dumps({"job": job(gres="shard:2")}).encode(), None, None, "job.gres", id="gres-shard"),
    pytest.param(json.dumps({"job": job(gpus_per_board=2)}).encode(), None, None, "job.gpus_per_board",
                 id="unknown-gpu-field"),
    pytest.param(json.dumps({"job": job(tres_per_gpu="x")}).encode(), None, None, "job.tres_per_gpu",
                 id="unknown-tres-field"),
    pytest.param(json.dumps({"job": job(gpus_per_socket=2)}).encode(), None, None, "job.gpus_per_socket",
                 id="per-socket-without-sockets"),
    pytest.param(json.dumps({"job": job(gpus_per_task=1, tasks_per_core=2)}).encode(), None, None,
                 "job.tasks_per_core", id="per-task-unbounded-tasks"),
    pytest.param(json.dumps({"job": job(tasks=2, ntasks_per_gpu=0)}).encode(), None, None, "job.ntasks_per_gpu",
                 id="zero-tasks-per-gpu"),
    pytest.param(json.dumps({"job": job(tasks=2, ntasks=4)}).encode(), None, None, "job.ntasks",
                 id="alias-given-twice"),
    pytest.param(json.dumps({"job": job(gpus=1, array="5-1")}).encode(), None, None, "job.array", id="empty-array"),
    pytest.param(json.dumps({"job": job(gpus=1, array="0-9%0")}).encode(), None, None, "job.array",
                 id="zero-throttle"),
    pytest.param(json.dumps({"job": job(gpus_per_node=1, nodes="2-")}).encode(), None, None, "job.nodes",
                 id="open-node-range"),
    pytest.param(json.dumps({"job": job(gpus=1), "jobs": [job()]}).encode(), None, None, "body",
                 id="job-and-jobs"),
    pytest.param(b'{"script": "x"}', None, None, "job", id="no-job"),
    pytest.param(json.dumps({"job": job(gpus=1, time_limit="soon")}).encode(), None, None, "job.time_limit",
                 id="unreadable-time"),
]


@pytest.mark.parametrize(("body", "content_type", "encoding", "field"), INVALID)
def test_invalid_submissions(body: bytes, content_type: str | None, encoding: str | None, field: str) -> None:
    """Malformed, ambiguous or unpriceable submissions raise JobSpecInvalid naming the field."""
    with pytest.raises(JobSpecInvalid) as raised:
        raw_submit(body, content_type or "application/json", encoding)
    assert raised.value.field == field


def test_gzip_body_is_decoded() -> None:
    """A gzip-encoded submission is priced on its decoded content."""
    body = gzip.compress(json.dumps({"job": job(gpus="h100:4"), "script": "x"}).encode())
    assert raw_submit(body, encoding="gzip").total_gpus == 4


def test_gzip_second_member_refused() -> None:
    """A gzip body with a second member is refused: servers disagree on whether to read it."""
    first = gzip.compress(json.dumps({"job": job(gpus="h100:1")}).encode())
    with pytest.raises(JobSpecInvalid) as raised:
        raw_submit(first + gzip.compress(b"{}"), encoding="gzip")
    assert raised.value.field == "content-encoding"


LABELS = [
    pytest.param({"environment": {"PATH": "/bin", "EXPORTGATE_LINEAGE": "acme-7b", "EXPORTGATE_PURPOSE": "training"}},
                 "acme-7b", "training", id="environment-dict"),
    pytest.param({"environment": ["PATH=/bin", "EXPORTGATE_LINEAGE=acme-7b", "EXPORTGATE_PURPOSE=inference"]},
                 "acme-7b", "inference", id="environment-list"),
    pytest.param({"comment": "exportgate:lineage=acme-13b,purpose=training"}, "acme-13b", "training", id="comment"),
    pytest.param({"comment": "nightly run"}, None, None, id="plain-comment"),
]


@pytest.mark.parametrize(("fields", "lineage", "purpose"), LABELS)
def test_lineage_and_purpose(fields: dict[str, Any], lineage: str | None, purpose: str | None) -> None:
    """Lineage and purpose come from the job environment or an exportgate comment."""
    found = submit(job(gpus="h100:1", **fields))
    assert (found.lineage, found.purpose, found.name) == (lineage, purpose, "train-7b")


def update(body: Any) -> JobSpec | None:
    return ADAPTER.parse_update(route("POST", "/slurm/v0.0.38/job/42"), "application/json", None,
                                json.dumps(body).encode())


UPDATES = [
    pytest.param({"comment": "x", "nice": 10}, None, id="no-resources"),
    pytest.param({"name": "renamed", "environment": {"A": "B"}}, None, id="name-and-environment"),
    pytest.param({"gpus": "h100:4", "time_limit": 60}, [(4, "h100", 1)], id="bare-restatement"),
    pytest.param({"job": {"gpus_per_node": "h100:8", "nodes": 2, "time_limit": 60}}, [(16, "h100", 1)],
                 id="wrapped-restatement"),
    pytest.param({"TIME_LIMIT": 30, "GPUS": 2}, [(2, None, 1)], id="upper-case"),
]


@pytest.mark.parametrize(("body", "parts"), UPDATES)
def test_updates(body: Any, parts: list[tuple[int, str | None, int]] | None) -> None:
    """Updates without resource fields pass; complete restatements are priced as the new total."""
    found = update(body)
    if parts is None:
        assert found is None
    else:
        assert found is not None
        assert [(p.gpus, p.model, p.concurrency) for p in found.parts] == parts


NOT_ALLOWED = [
    pytest.param({"time_limit": 600}, id="walltime-only"),
    pytest.param({"gpus": "h100:8"}, id="gpus-without-walltime"),
    pytest.param({"gpus_per_node": "h100:8", "time_limit": 60}, id="per-node-without-nodes"),
    pytest.param({"gpus_per_task": 1, "nodes": 2, "time_limit": 60}, id="per-task-without-tasks"),
    pytest.param({"partition": "long"}, id="partition-only"),
    pytest.param({"nodes": 8}, id="nodes-only"),
    pytest.param({"gpus": "h100:8", "time_limit": {"set": True, "infinite": True}}, id="infinite-walltime"),
    pytest.param({"jobs": [{"gpus": 1}]}, id="heterogeneous"),
]


@pytest.mark.parametrize("body", NOT_ALLOWED)
def test_updates_not_allowed(body: Any) -> None:
    """Resource changes that do not restate enough to price the new total are refused."""
    with pytest.raises(JobUpdateNotAllowed):
        update(body)


RESPONSES = [
    pytest.param(200, {"meta": {}, "errors": [], "job_id": 42, "step_id": "BATCH"}, "42", id="v0.0.38"),
    pytest.param(200, {"job_id": 43, "result": {"job_id": 43, "step_id": "batch"}}, "43", id="v0.0.40"),
    pytest.param(200, {"result": {"job_id": 44}}, "44", id="result-only"),
    pytest.param(500, {"errors": [{"error_code": 2014}], "job_id": 45}, None, id="failed-submission"),
    pytest.param(200, {"errors": []}, None, id="no-id"),
]


@pytest.mark.parametrize(("status", "body", "job_id"), RESPONSES)
def test_job_id_from_response(status: int, body: dict[str, Any], job_id: str | None) -> None:
    """The job id comes from job_id or result.job_id of a successful response."""
    assert ADAPTER.job_id_from_response(route("POST", SUBMIT), status, json.dumps(body).encode()) == job_id


@pytest.mark.parametrize(("raw", "job_id"), [("123", "123"), ("123_4", "123"), ("123+1", "123")],
                         ids=["plain", "array-task", "het-component"])
def test_job_id_of(raw: str, job_id: str) -> None:
    """Array tasks and heterogeneous components belong to their base job id."""
    assert ADAPTER.job_id_of(route("GET", f"/slurm/v0.0.38/job/{raw}")) == job_id


REJECTIONS = [
    pytest.param(400, b'{"errors": [{"error": "environment must be set", "error_code": 2127}]}', True, id="400"),
    pytest.param(401, b"Authentication failure", True, id="401-plain-text"),
    pytest.param(500, b'{"errors": [{"error_code": 2014, "error": "Requested node configuration"}]}', True,
                 id="500-with-error-code"),
    pytest.param(500, b'{"errors": [{"error_number": 2002, "error": "Access/permission denied"}]}', True,
                 id="500-with-error-number"),
    pytest.param(500, b'{"errors": []}', False, id="500-empty-errors"),
    pytest.param(500, b"<html>Internal Server Error</html>", False, id="500-not-json"),
    pytest.param(500, b'{"errors": ["boom"]}', False, id="500-errors-not-objects"),
    pytest.param(502, b'{"errors": [{"error_code": 1}]}', False, id="502"),
    pytest.param(503, b"", False, id="503"),
    pytest.param(504, b"", False, id="504"),
    pytest.param(200, b'{"job_id": 1}', False, id="200"),
]


@pytest.mark.parametrize(("status", "body", "definitive"), REJECTIONS)
def test_definitive_rejection(status: int, body: bytes, definitive: bool) -> None:
    """Only Slurm's own error answers count as a refusal; gateway errors keep the lease."""
    assert ADAPTER.definitive_rejection(status, body) is definitive


def test_filter_listing() -> None:
    """A job listing keeps only owned jobs, by job id, array job id or het job id."""
    listing = {
        "meta": {"plugin": {}}, "errors": [],
        "jobs": [
            {"job_id": 1, "user_name": "a"},
            {"job_id": 2, "user_name": "b"},
            {"job_id": 5, "array_job_id": 3, "user_name": "a"},
            {"job_id": 7, "het_job_id": {"set": True, "infinite": False, "number": 6}},
        ],
    }
    owned = {"1", "3", "6"}.__contains__
    out = json.loads(ADAPTER.filter_listing(route("GET", "/slurm/v0.0.38/jobs"), json.dumps(listing).encode(), owned))
    assert [j["job_id"] for j in out["jobs"]] == [1, 5, 7]
    assert out["meta"] == {"plugin": {}}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"jobs": "x"}'], ids=["text", "list", "jobs-not-list"])
def test_filter_listing_unreadable(body: bytes) -> None:
    """An unreadable listing lists nothing rather than everything."""
    out = json.loads(ADAPTER.filter_listing(route("GET", "/slurm/v0.0.38/jobs"), body, lambda _: True))
    assert out["jobs"] == []


def test_refusal_is_problem_json() -> None:
    """Slurm clients get problem+json refusals (no dialect of their own)."""
    assert ADAPTER.refusal("quota_tenant_tpp", 429, "t", "d", "dec-1") is None


def test_options_loader() -> None:
    """scheduler_options for Slurm load into SlurmOptions, and bad values are located."""
    problems: list[Problem] = []
    node = load_text(
        "partition_time_limits: {gpu: 2880, debug: 60}\ndefault_time_limit_min: 720\n"
        "default_gpu_model: H100-SXM\nlineage_env: LINEAGE\n", "gateway.yaml",
    )
    loaded = load_scheduler_options("slurm", node, problems)
    assert problems == []
    assert loaded == SlurmOptions({"gpu": 2880, "debug": 60}, 720, "H100-SXM", "LINEAGE", "EXPORTGATE_PURPOSE")
    assert isinstance(build_adapter("slurm", loaded), SlurmAdapter)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("partition_time_limits: {gpu: -5}\n", "gateway.yaml:1: partition_time_limits.gpu: must be a positive"),
        ("partition_time_limits: [gpu]\n", "gateway.yaml:1: partition_time_limits: must be a mapping"),
        ("default_time_limit_min: 0\n", "gateway.yaml:1: default_time_limit_min: must be positive"),
        ("time_limit_min: 10\n", "gateway.yaml:1: time_limit_min: unknown key"),
    ],
    ids=["negative-limit", "limits-not-mapping", "zero-default", "unknown-key"],
)
def test_options_loader_problems(text: str, expected: str) -> None:
    """Bad Slurm options are reported as file:line: field: problem and build nothing."""
    problems: list[Problem] = []
    assert load_scheduler_options("slurm", load_text(text, "gateway.yaml"), problems) is None
    assert any(str(p).startswith(expected) for p in problems), problems


# --- cluster facts (slurmrestd /nodes and /partitions) and the pricing rules that need them ---

DATA = Path(__file__).parent / "data" / "slurm"


def captured_facts() -> SlurmFacts:
    """Facts from the payloads captured from the real slurmrestd 22.05 of tests/peers/slurm.sh (v0.0.38)."""
    nodes = json.loads((DATA / "nodes-v0.0.38.json").read_text())
    partitions = json.loads((DATA / "partitions-v0.0.38.json").read_text())
    return parse_facts(nodes, partitions)


def with_facts(facts: SlurmFacts = EMPTY, **options: Any) -> SlurmAdapter:
    return SlurmAdapter(SlurmOptions(partition_time_limits={"gpu": 2880}, **options), facts=lambda: facts)


def test_facts_from_captured_payloads() -> None:
    """Two nodes with 8 H100s each; `gpu` is the default partition; v0.0.38 does not report OverSubscribe."""
    facts = captured_facts()
    assert {n.name: (dict(n.gpus), n.partitions) for n in facts.nodes.values()} == {
        "g1": ({"h100": 8}, ("gpu", "excl")),
        "g2": ({"h100": 8}, ("gpu", "excl")),
    }
    assert facts.default_partition() == "gpu"
    assert [(p.name, p.total_nodes, p.exclusive) for p in facts.partitions.values()] == [
        ("gpu", 2, None),
        ("excl", 2, None),
    ]
    assert facts.node_gpus("gpu") == {"h100": 8} and facts.node_count("excl") == 2
    assert facts.node_gpus("nope") is None and facts.node_count("nope") is None


def test_facts_v0040_partition_shape_and_node_gres_forms() -> None:
    """v0.0.40+ partitions (data_parser: nodes.total, maximums.oversubscribe.jobs 0 = EXCLUSIVE); gres suffixes."""
    nodes = {"nodes": [{"name": "a1", "gres": "gpu:h100:4(S:0-1),mps:400,nic:1", "partitions": ["x"]}]}
    partitions = {
        "partitions": [
            {"name": "x", "nodes": {"configured": "a1", "total": 1}, "partition": {"state": ["UP"]},
             "maximums": {"oversubscribe": {"jobs": 0, "flags": []}}},
            {"name": "y", "nodes": {"total": 3}, "maximums": {"oversubscribe": {"jobs": 4, "flags": ["force"]}}},
        ]
    }  # fmt: skip
    facts = parse_facts(nodes, partitions)
    assert facts.node_gpus("x") == {"h100": 4}
    assert [(p.name, p.total_nodes, p.exclusive) for p in facts.partitions.values()] == [
        ("x", 1, True),
        ("y", 3, False),
    ]
    with pytest.raises(FactsUnreadable):
        parse_facts({"errors": []}, partitions)


@pytest.mark.parametrize(
    ("fields", "gpus"),
    [
        ({"tasks": 1, "exclusive": "exclusive"}, 8),  # v0.0.36..v0.0.38 sbatch word
        ({"tasks": 1, "exclusive": "exclusive", "gres": "gpu:h100:1"}, 8),
        ({"tasks": 1, "exclusive": True}, 8),  # v0.0.39+
        ({"tasks": 1, "exclusive": ["true"]}, 8),
        ({"tasks": 1, "exclusive": "topo"}, 8),  # v0.0.41+
        ({"tasks": 1, "shared": "none"}, 8),  # v0.0.39+ JOB_SHARED
        ({"tasks": 1, "oversubscribe": False}, 8),  # v0.0.39+: false is JOB_SHARED_NONE
        ({"tasks": 1, "exclusive": "exclusive", "nodes": 2}, 16),
        ({"tasks": 1, "exclusive": "user", "gpus": "h100:1"}, 1),  # measured: user keeps the node shared
        ({"tasks": 1, "exclusive": "oversubscribe", "gpus": "h100:1"}, 1),
        ({"tasks": 1, "shared": ["oversubscribe"], "gpus": "h100:1"}, 1),
        ({"tasks": 2, "tasks_per_node": 1, "gres": "gpu:h100:4"}, 8),  # 2 nodes x 4
        ({"tasks": 2, "cpus_per_task": 8, "gres": "gpu:h100:4"}, 8),
        ({"tasks": 64, "gres": "gpu:h100:4"}, 8),  # at most the partition's 2 nodes
        ({"tasks": 2, "gpus_per_node": "h100:3"}, 6),
        ({"tasks": 2, "sockets_per_node": 2, "gpus_per_socket": 1}, 4),
        ({"tasks": 2, "gres": "gpu:h100:4", "partition": "gpu,excl"}, 16),  # excl: whole nodes
        ({"tasks": 1, "gpus": "h100:2"}, 2),
    ],
)
def test_pricing_with_facts(fields: dict[str, Any], gpus: int) -> None:
    """Whole-node and per-node requests are priced as the most Slurm may allocate on the captured cluster."""
    adapter = with_facts(captured_facts(), exclusive_partitions=frozenset({"excl"}))
    spec = submit(job(**fields), adapter=adapter)
    assert sum(p.gpus for p in spec.parts) == gpus, spec.parts
    if gpus >= 8:
        assert {p.model for p in spec.parts} == {"h100"}


def test_exclusive_partition_prices_whole_nodes() -> None:
    adapter = with_facts(captured_facts(), exclusive_partitions=frozenset({"excl"}))
    spec = submit(job(tasks=1, partition="excl", gpus="h100:1"), adapter=adapter)
    assert [(p.gpus, p.model) for p in spec.parts] == [(8, "h100")]


def test_without_facts_per_node_is_bounded_by_tasks() -> None:
    """No facts: one node per task is still an upper bound, so nothing is refused and nothing undercounted."""
    spec = submit(job(tasks=64, gres="gpu:h100:4"), adapter=with_facts())
    assert sum(p.gpus for p in spec.parts) == 256
    assert sum(p.gpus for p in submit(job(tasks=1, gpus="h100:2"), adapter=with_facts()).parts) == 2


@pytest.mark.parametrize(
    ("options", "fields", "missing"),
    [
        ({}, {"tasks": 1, "exclusive": "exclusive"}, "GPUs per node of partition 'gpu' are not known"),
        ({}, {"tasks": 1, "exclusive": "exclusive", "partition": None}, "default partition is not known"),
        ({"exclusive_partitions": frozenset({"excl"})}, {"tasks": 1, "gpus": 1, "partition": None}, "may be exclusive"),
        ({"exclusive_partitions": frozenset({"excl"})}, {"tasks": 1, "gpus": 1, "partition": "excl"}, "'excl'"),
    ],
    ids=["exclusive", "exclusive-default-partition", "default-may-be-exclusive", "exclusive-partition"],
)
def test_unknown_facts_refuse(options: dict[str, Any], fields: dict[str, Any], missing: str) -> None:
    """A job whose price needs facts nobody has is refused job_spec_invalid, naming what is missing."""
    with pytest.raises(JobSpecInvalid) as info:
        submit(job(**fields), adapter=with_facts(**options))
    assert info.value.field == "job.partition" and missing in info.value.detail


def test_operator_overrides_stand_in_for_facts() -> None:
    """partition_node_gpus / partition_nodes price what slurmrestd has not told (yet), and win over it."""
    adapter = with_facts(partition_node_gpus={"gpu": {"h100": 4}}, partition_nodes={"gpu": 3})
    assert sum(p.gpus for p in submit(job(tasks=1, exclusive="exclusive"), adapter=adapter).parts) == 4
    assert sum(p.gpus for p in submit(job(tasks=9, gres="gpu:1"), adapter=adapter).parts) == 3


def test_facts_options_loader() -> None:
    problems: list[Problem] = []
    node = load_text(
        "facts_user: svc\nfacts_version: v0.0.40\nfacts_refresh_s: 30\nexclusive_partitions: [excl]\n"
        "partition_node_gpus: {gpu: 'h100:8', cpu: 0}\npartition_nodes: {gpu: 2}\n", "gateway.yaml",
    )  # fmt: skip
    assert load_scheduler_options("slurm", node, problems) is None
    assert [str(p) for p in problems] == [
        'gateway.yaml:5: partition_node_gpus.cpu: must be GPUs per node such as 8 or "h100:8"'
    ]
    problems = []
    text = "facts_user: svc\nexclusive_partitions: [excl]\npartition_node_gpus: {gpu: 'h100:8'}\n"
    node = load_text(text, "gateway.yaml")
    loaded = load_scheduler_options("slurm", node, problems)
    assert problems == [] and isinstance(loaded, SlurmOptions), text
    assert (loaded.facts_user, loaded.exclusive_partitions, loaded.partition_node_gpus) == (
        "svc", frozenset({"excl"}), {"gpu": {"h100": 8}}
    )  # fmt: skip


def test_parent_of_an_array_task() -> None:
    """slurmctld's record of task 12 (array 11, task 0) names its array; a job of its own names none."""
    body = json.dumps({"jobs": [{"job_id": 12, "array_job_id": 11, "array_task_id": 0, "het_job_id": 0}]}).encode()
    assert ADAPTER.parent_job_id("12", 200, body) == "11"
    assert ADAPTER.parent_job_id("13", 200, body) is None  # the answer must be about the job asked for
    alone = json.dumps({"jobs": [{"job_id": 11, "array_job_id": 11, "het_job_id": 0}]}).encode()
    assert ADAPTER.parent_job_id("11", 200, alone) is None
    v40 = {
        "jobs": [{"job_id": 21, "array_job_id": {"set": False, "number": 0}, "het_job_id": {"set": True, "number": 20}}]
    }
    assert ADAPTER.parent_job_id("21", 200, json.dumps(v40).encode()) == "20"
    assert ADAPTER.parent_job_id("12", 404, body) is None
