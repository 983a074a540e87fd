"""The configured generic JSON adapter, its options loader, and build_adapter."""

import json
from typing import Any

import pytest

from gateway.config.located import Problem, load_text
from gateway.config.schedulers import load_scheduler_options
from gateway.core.jobs import JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import RouteKind, RouteMatch, match_route
from gateway.schedulers import (
    GenericAdapter,
    GenericOptions,
    KubernetesAdapter,
    KubernetesOptions,
    RayAdapter,
    RayOptions,
    SlurmOptions,
    build_adapter,
)

OPTIONS = GenericOptions(
    submit_path="/v1/jobs",
    gpus_field="resources.gpus",
    job_id_field="job.id",
    job_path="/v1/jobs/{job_id}",
    list_path="/v1/jobs",
    cancel_path="/v1/jobs/{job_id}/cancel",
    plain_read_paths=("/v1/health",),
    model_field="resources.gpu_type",
    walltime_field="limits.hours",
    walltime_unit="h",
    concurrency_field="replicas",
    lineage_field="labels.lineage",
    purpose_field="labels.purpose",
    name_field="name",
    list_items_field="data.jobs",
    list_id_field="id",
)
ADAPTER = GenericAdapter(OPTIONS)

SUBMISSION: dict[str, Any] = {
    "name": "train-7b",
    "resources": {"gpus": 8, "gpu_type": "H100"},
    "limits": {"hours": 2},
    "replicas": 3,
    "labels": {"lineage": "acme-7b", "purpose": "training"},
}


def route(method: str, path: str, adapter: GenericAdapter = ADAPTER) -> RouteMatch:
    found = match_route(adapter.routes(), method, path)
    assert found is not None, (method, path)
    return found


def submit(doc: Any, adapter: GenericAdapter = ADAPTER) -> JobSpec:
    match = route("POST", adapter.options.submit_path, adapter)
    return adapter.parse_submission(match, "application/json", None, json.dumps(doc).encode())


ROUTES = [
    ("POST", "/v1/jobs", RouteKind.SUBMIT), ("GET", "/v1/jobs", RouteKind.LIST),
    ("GET", "/v1/jobs/j-1", RouteKind.READ), ("DELETE", "/v1/jobs/j-1", RouteKind.CANCEL),
    ("POST", "/v1/jobs/j-1/cancel", RouteKind.CANCEL), ("GET", "/v1/health", RouteKind.PLAIN_READ),
]


@pytest.mark.parametrize(("method", "path", "kind"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_routes(method: str, path: str, kind: RouteKind) -> None:
    """Configured paths become routes of the expected kind."""
    assert route(method, path).route.kind == kind


@pytest.mark.parametrize(("method", "path"), [("PUT", "/v1/jobs/j-1"), ("GET", "/v1/admin")], ids=["put", "other"])
def test_default_deny(method: str, path: str) -> None:
    """Anything not configured matches no route."""
    assert match_route(ADAPTER.routes(), method, path) is None


def test_submission() -> None:
    """GPUs, model, walltime with its unit, concurrency and labels come from the configured paths."""
    found = submit(SUBMISSION)
    assert [(p.gpus, p.model, p.concurrency) for p in found.parts] == [(8, "H100", 3)]
    assert (found.walltime_s, found.lineage, found.purpose, found.name) == (7200.0, "acme-7b", "training", "train-7b")


UNITS = [("s", 90, 90.0), ("min", 90, 5400.0), ("h", "1.5", 5400.0)]


@pytest.mark.parametrize(("unit", "value", "seconds"), UNITS, ids=[u[0] for u in UNITS])
def test_walltime_units(unit: str, value: Any, seconds: float) -> None:
    """The walltime field is read in its configured unit."""
    adapter = GenericAdapter(GenericOptions(submit_path="/jobs", gpus_field="gpus", walltime_field="t",
                                            walltime_unit=unit))
    assert submit({"gpus": 1, "t": value}, adapter).walltime_s == seconds


def test_list_index_paths_and_defaults() -> None:
    """Dot paths index into lists, and absent fields take the configured defaults."""
    adapter = GenericAdapter(GenericOptions(submit_path="/jobs", gpus_field="tasks.0.gpus", default_walltime_s=600))
    found = submit({"tasks": [{"gpus": 4}]}, adapter)
    assert ([(p.gpus, p.model, p.concurrency) for p in found.parts], found.walltime_s) == ([(4, None, 1)], 600)
    assert submit({"tasks": []}, adapter).parts == ()


def enc(**changes: Any) -> bytes:
    doc = json.loads(json.dumps(SUBMISSION))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = doc
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    return json.dumps(doc).encode()


INVALID = [
    pytest.param(enc(resources__gpus=-2), "resources.gpus", id="negative"),
    pytest.param(enc(resources__gpus=2.5), "resources.gpus", id="fraction"),
    pytest.param(enc(resources__gpus=True), "resources.gpus", id="bool"),
    pytest.param(enc(resources__gpus=5_000_000), "resources.gpus", id="absurd"),
    pytest.param(enc(replicas=400_000), "resources.gpus", id="absurd-total"),
    pytest.param(enc(resources__gpu_type=7), "resources.gpu_type", id="model-not-string"),
    pytest.param(enc(limits__hours=None), "limits.hours", id="no-walltime"),
    pytest.param(enc(limits__hours=-1), "limits.hours", id="negative-walltime"),
    pytest.param(enc(limits__hours="later"), "limits.hours", id="walltime-not-number"),
    pytest.param(b'{"resources": {"gpus": 1, "gpus": 9}}', "body", id="duplicate-keys"),
    pytest.param(b'{"resources": {"gpus": Infinity}}', "body", id="infinity"),
    pytest.param(b"[]", "body", id="not-an-object"),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_invalid_submissions(body: bytes, field: str) -> None:
    """Unreadable counts, walltimes and bodies raise JobSpecInvalid naming the field."""
    with pytest.raises(JobSpecInvalid) as raised:
        ADAPTER.parse_submission(route("POST", "/v1/jobs"), "application/json", None, body)
    assert raised.value.field == field


@pytest.mark.parametrize(("content_type", "encoding"), [("text/yaml", None), ("application/json", "deflate")],
                         ids=["yaml", "deflate"])
def test_body_format_refused(content_type: str, encoding: str | None) -> None:
    """Bodies that are not plain or gzip JSON are refused."""
    with pytest.raises(JobSpecInvalid):
        ADAPTER.parse_submission(route("POST", "/v1/jobs"), content_type, encoding, enc())


def test_no_updates() -> None:
    """The generic adapter has no priced updates."""
    with pytest.raises(JobUpdateNotAllowed):
        ADAPTER.parse_update(route("GET", "/v1/jobs/x"), None, None, b"{}")


@pytest.mark.parametrize(
    ("status", "body", "job_id"),
    [(201, b'{"job": {"id": "j-9"}}', "j-9"), (200, b'{"job": {"id": 12}}', "12"), (201, b'{"id": "x"}', None),
     (500, b'{"job": {"id": "j-9"}}', None), (201, b"created", None)],
    ids=["string-id", "int-id", "wrong-path", "failed", "not-json"],
)
def test_job_id_from_response(status: int, body: bytes, job_id: str | None) -> None:
    """The job id is read at the configured path of a successful response."""
    assert ADAPTER.job_id_from_response(route("POST", "/v1/jobs"), status, body) == job_id


def test_definitive_rejection() -> None:
    """Client errors are definitive refusals; server and gateway errors are not."""
    assert [ADAPTER.definitive_rejection(s, b"") for s in (400, 409, 500, 502)] == [True, True, False, False]


def test_filter_listing_nested() -> None:
    """Only the configured item list is filtered, keeping owned ids and the rest of the body."""
    body = {"data": {"jobs": [{"id": "a"}, {"id": "b"}, {"id": 3}], "next": None}, "total": 3}
    owned = {"a", "3"}.__contains__
    out = json.loads(ADAPTER.filter_listing(route("GET", "/v1/jobs"), json.dumps(body).encode(), owned))
    assert out == {"data": {"jobs": [{"id": "a"}, {"id": 3}], "next": None}, "total": 3}


def test_filter_listing_top_level_array() -> None:
    """Without an item path the listing is a top-level array, filtered by the job id path."""
    adapter = GenericAdapter(GenericOptions(submit_path="/j", gpus_field="g", job_id_field="id", list_path="/j"))
    out = adapter.filter_listing(route("GET", "/j", adapter), b'[{"id": "a"}, {"id": "b"}]', {"b"}.__contains__)
    assert json.loads(out) == [{"id": "b"}]
    assert adapter.filter_listing(route("GET", "/j", adapter), b"nope", lambda _: True) == b"[]"


def test_options_need_job_id_placeholder() -> None:
    """A job path without {job_id} is a configuration error."""
    with pytest.raises(ValueError, match="job_id"):
        GenericOptions(submit_path="/j", gpus_field="g", job_path="/j/current")


def test_options_loader() -> None:
    """A generic upstream's scheduler_options load into GenericOptions."""
    text = (
        "submit_path: /v1/jobs\njob_path: /v1/jobs/{job_id}\nlist_path: /v1/jobs\ngpus_field: resources.gpus\n"
        "model_field: resources.gpu_type\nwalltime_field: limits.hours\nwalltime_unit: h\njob_id_field: job.id\n"
        "plain_read_paths: [/v1/health]\n"
    )
    problems: list[Problem] = []
    loaded = load_scheduler_options("generic", load_text(text, "gateway.yaml"), problems)
    assert problems == []
    assert isinstance(loaded, GenericOptions)
    assert (loaded.walltime_unit, loaded.job_id_field, loaded.plain_read_paths) == ("h", "job.id", ("/v1/health",))
    assert isinstance(build_adapter("generic", loaded), GenericAdapter)


BAD = [
    pytest.param("gpus_field: g\nwalltime_field: t\n", "gateway.yaml:1: submit_path: required", id="no-submit-path"),
    pytest.param("submit_path: /j\nwalltime_field: t\n", "gateway.yaml:1: gpus_field: required", id="no-gpus-field"),
    pytest.param("submit_path: /j\ngpus_field: g\n",
                 "gateway.yaml:1: (top): needs walltime_field or default_walltime_s", id="no-walltime-source"),
    pytest.param("submit_path: j\ngpus_field: g\nwalltime_field: t\n",
                 "gateway.yaml:1: submit_path: pattern 'j' must start with '/'", id="relative-path"),
    pytest.param("submit_path: /j\njob_path: /j/x\ngpus_field: g\nwalltime_field: t\n",
                 "gateway.yaml:2: job_path: must contain {job_id}", id="job-path-without-id"),
    pytest.param("submit_path: /j\ngpus_field: a..b\nwalltime_field: t\n",
                 "gateway.yaml:2: gpus_field: must be a dot path like resources.gpus", id="bad-dot-path"),
    pytest.param("submit_path: /j\ngpus_field: g\nwalltime_field: t\nwalltime_unit: days\n",
                 "gateway.yaml:4: walltime_unit: 'days' is not one of s, min, h", id="bad-unit"),
    pytest.param("submit_path: /j\ngpus_field: g\nwalltime_field: t\ngpu_field: g\n",
                 "gateway.yaml:4: gpu_field: unknown key", id="unknown-key"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_options_loader_problems(text: str, expected: str) -> None:
    """Bad generic options are reported as file:line: field: problem and build nothing."""
    problems: list[Problem] = []
    assert load_scheduler_options("generic", load_text(text, "gateway.yaml"), problems) is None
    assert expected in [str(p) for p in problems]


def test_loader_kind_problems() -> None:
    """An unknown kind, or a generic upstream without options, is located at the upstream."""
    parent = load_text("upstreams:\n  - name: a\n    scheduler: pbs\n", "gateway.yaml").raw["upstreams"].raw[0]
    problems: list[Problem] = []
    assert load_scheduler_options("pbs", None, problems, parent) is None
    assert load_scheduler_options("generic", None, problems, parent) is None
    assert [str(p) for p in problems] == [
        "gateway.yaml:2: upstreams[0].scheduler: unknown scheduler 'pbs'; known: slurm, kubernetes, ray, generic, s3",
        "gateway.yaml:2: upstreams[0].scheduler_options: the generic scheduler needs scheduler_options "
        "(paths and fields)",
    ]


def test_loader_kind_none() -> None:
    """A plain-proxy upstream (scheduler: none) has no options, and giving some is a problem."""
    problems: list[Problem] = []
    assert load_scheduler_options("none", None, problems) is None
    assert problems == []
    assert load_scheduler_options("none", load_text("x: 1\n", "gateway.yaml"), problems) is None
    assert [str(p) for p in problems] == ["gateway.yaml:1: (top): scheduler 'none' takes no scheduler_options"]


def test_build_adapter() -> None:
    """build_adapter pairs each kind with its own options and refuses mismatches."""
    assert isinstance(build_adapter("kubernetes", KubernetesOptions()), KubernetesAdapter)
    assert isinstance(build_adapter("ray", RayOptions()), RayAdapter)
    assert build_adapter("ray", RayOptions()).name == "ray"
    with pytest.raises(ValueError, match="needs its own options"):
        build_adapter("ray", SlurmOptions())
    with pytest.raises(ValueError, match="unknown scheduler"):
        build_adapter("pbs", SlurmOptions())
