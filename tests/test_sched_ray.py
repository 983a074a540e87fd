"""The Ray Jobs adapter on the dashboard's real shapes: routes, GPUs, walltime, listings."""

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.adapters.ray_capacity import RayCapacitySource, reads_capacity
from gateway.adapters.upstream import Upstream
from gateway.config.located import Problem, load_text
from gateway.config.schedulers import load_scheduler_options
from gateway.config.upstreams import load_upstreams
from gateway.core.jobs import JobPart, JobSpec, JobSpecInvalid, JobUpdateNotAllowed
from gateway.core.routes import RouteKind, RouteMatch, match_route
from gateway.schedulers import RayAdapter, RayOptions
from gateway.schedulers.ray import PACKAGE_READ, PACKAGE_UPLOAD, package_uri, package_uris
from gateway.schedulers.ray import ROUTES as ROUTES_OF_RAY
from gateway.schedulers.ray_capacity import EMPTY as RAY_EMPTY
from gateway.schedulers.ray_capacity import NODES_PATH, CapacityUnreadable, RayCapacity, parse_nodes, widened
from tests.redis_server import free_port

ADAPTER = RayAdapter(RayOptions(pricing="entrypoint"))

SUBMISSION: dict[str, Any] = {
    "entrypoint": "python train.py",
    "submission_id": "optional-unique-id",
    "entrypoint_num_gpus": 2,
    "entrypoint_num_cpus": 0,
    "entrypoint_resources": {"accelerator_type:H100": 2},
    "entrypoint_memory": 0,
    "runtime_env": {"env_vars": {"K": "V"}},
    "metadata": {"user": "alice", "time_limit_min": "120"},
}


def route(method: str, path: str) -> RouteMatch:
    found = match_route(ADAPTER.routes(), method, path)
    assert found is not None, (method, path)
    return found


def submission(adapter: RayAdapter = ADAPTER, **changes: Any) -> JobSpec:
    doc = {**SUBMISSION, **changes}
    doc = {k: v for k, v in doc.items() if v is not None}
    return adapter.parse_submission(route("POST", "/api/jobs/"), "application/json", None, json.dumps(doc).encode())


ROUTES = [
    ("POST", "/api/jobs/", RouteKind.SUBMIT, False),
    ("GET", "/api/jobs/", RouteKind.LIST, False),
    ("GET", "/api/jobs/raysubmit_1", RouteKind.READ, False),
    ("DELETE", "/api/jobs/raysubmit_1", RouteKind.CANCEL, False),
    ("POST", "/api/jobs/raysubmit_1/stop", RouteKind.CANCEL, False),
    ("GET", "/api/jobs/raysubmit_1/logs", RouteKind.READ, False),
    ("GET", "/api/jobs/raysubmit_1/logs/tail", RouteKind.READ, True),
    ("GET", "/api/version", RouteKind.PLAIN_READ, False),
    ("GET", "/api/packages/gcs/_ray_pkg_0a1b.zip", RouteKind.PLAIN_READ, False),
    ("PUT", "/api/packages/gcs/_ray_pkg_0a1b.zip", RouteKind.PLAIN_READ, False),
]


@pytest.mark.parametrize(("method", "path", "kind", "websocket"), ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_routes(method: str, path: str, kind: RouteKind, websocket: bool) -> None:
    """Each Ray Jobs path maps to its kind; only log tailing upgrades to a WebSocket."""
    found = route(method, path)
    assert (found.route.kind, found.route.websocket) == (kind, websocket)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/jobs"),
        ("GET", "/api/cluster_status"),
        ("PUT", "/api/packages/s3/pkg.zip"),
        ("DELETE", "/api/packages/gcs/pkg.zip"),
        ("PUT", "/api/packages/gcs/a/b.zip"),
        ("GET", "/api/v0/tasks"),
        ("POST", "/api/jobs/x/logs"),
    ],
    ids=[
        "no-trailing-slash",
        "cluster-status",
        "package-other-protocol",
        "package-delete",
        "package-nested",
        "state-api",
        "post-logs",
    ],
)
def test_default_deny(method: str, path: str) -> None:
    """Dashboard paths outside the Jobs API match no route."""
    assert match_route(ADAPTER.routes(), method, path) is None


GPUS = [
    pytest.param({}, (2, "H100", 1), id="docs-example"),
    pytest.param({"entrypoint_num_gpus": 0.5, "entrypoint_resources": None}, (1, None, 1), id="fraction-rounds-up"),
    pytest.param(
        {"entrypoint_num_gpus": 2, "entrypoint_resources": {"accelerator_type:H100": 0.001}},
        (2, "H100", 1),
        id="accelerator-pin-fraction",
    ),
    pytest.param(
        {"entrypoint_num_gpus": 2, "entrypoint_resources": {"accelerator_type:A100-80G": 4}},
        (4, "A100-80G", 1),
        id="accelerator-amount-larger",
    ),
    pytest.param(
        {"entrypoint_num_gpus": None, "entrypoint_resources": {"accelerator_type:B200": 1}},
        (1, "B200", 1),
        id="accelerator-only",
    ),
    pytest.param(
        {"entrypoint_resources": {"accelerator_type:H100": 1, "accelerator_type:A100": 1}},
        (2, "A100|H100", 1),
        id="two-accelerator-types",
    ),
    pytest.param(
        {"entrypoint_resources": {"accelerator_type:H100": 1, "custom_disk": 4}},
        (2, "H100", 1),
        id="other-resources-ignored",
    ),
]


@pytest.mark.parametrize(("changes", "part"), GPUS)
def test_gpus(changes: dict[str, Any], part: tuple[int, str | None, int]) -> None:
    """GPUs come from entrypoint_num_gpus and accelerator_type resources, whichever is larger."""
    found = submission(**changes)
    assert [(p.gpus, p.model, p.concurrency) for p in found.parts] == [part]


def test_no_gpus() -> None:
    """A CPU-only entrypoint has no priced parts."""
    assert submission(entrypoint_num_gpus=None, entrypoint_resources=None).parts == ()


def test_walltime_lineage_purpose() -> None:
    """Walltime, lineage and purpose come from the metadata keys the operator names."""
    found = submission(metadata={"time_limit_min": "90.5", "model_lineage": "acme-7b", "purpose": "training"})
    assert (found.walltime_s, found.lineage, found.purpose, found.name) == (
        5430.0,
        "acme-7b",
        "training",
        "optional-unique-id",
    )


def test_custom_metadata_keys_and_default_walltime() -> None:
    """Configured keys are honoured, and a missing walltime falls back to the default."""
    adapter = RayAdapter(
        RayOptions(
            walltime_metadata_key="max_minutes", default_walltime_s=1800, lineage_key="lin", pricing="entrypoint"
        )
    )
    found = submission(adapter, metadata={"lin": "acme"})
    assert (found.walltime_s, found.lineage) == (1800, "acme")
    assert submission(adapter, metadata={"max_minutes": "10"}).walltime_s == 600


def raw(body: bytes) -> JobSpec:
    return ADAPTER.parse_submission(route("POST", "/api/jobs/"), "application/json", None, body)


def enc(**changes: Any) -> bytes:
    return json.dumps({**SUBMISSION, **changes}).encode()


INVALID = [
    pytest.param(enc(entrypoint_num_gpus=-1), "entrypoint_num_gpus", id="negative"),
    pytest.param(enc(entrypoint_num_gpus="2"), "entrypoint_num_gpus", id="string"),
    pytest.param(enc(entrypoint_num_gpus=True), "entrypoint_num_gpus", id="bool"),
    pytest.param(enc(entrypoint_num_gpus=5e6), "entrypoint_num_gpus", id="absurd"),
    pytest.param(b'{"entrypoint": "x", "entrypoint_num_gpus": NaN}', "body", id="nan"),
    pytest.param(
        b'{"entrypoint": "x", "entrypoint_num_gpus": 1, "entrypoint_num_gpus": 8}', "body", id="duplicate-keys"
    ),
    pytest.param(b'["python train.py"]', "body", id="not-an-object"),
    pytest.param(enc(entrypoint_resources={"GPU": 8}), "entrypoint_resources.GPU", id="gpu-resource"),
    pytest.param(enc(entrypoint_resources={"my_gpus": 8}), "entrypoint_resources.my_gpus", id="custom-gpu-resource"),
    pytest.param(
        enc(entrypoint_resources={"accelerator_type:": 1}),
        "entrypoint_resources.accelerator_type:",
        id="accelerator-without-type",
    ),
    pytest.param(
        enc(entrypoint_resources={"accelerator_type:H100": "1"}),
        "entrypoint_resources.accelerator_type:H100",
        id="accelerator-amount-string",
    ),
    pytest.param(enc(entrypoint_resources=[1]), "entrypoint_resources", id="resources-not-object"),
    pytest.param(enc(num_gpus=8), "num_gpus", id="unknown-gpu-field"),
    pytest.param(enc(metadata={"user": "alice"}), "metadata.time_limit_min", id="no-walltime"),
    pytest.param(enc(metadata={"time_limit_min": "soon"}), "metadata.time_limit_min", id="walltime-not-number"),
    pytest.param(enc(metadata={"time_limit_min": "0"}), "metadata.time_limit_min", id="walltime-zero"),
    pytest.param(enc(metadata={"time_limit_min": "inf"}), "metadata.time_limit_min", id="walltime-infinite"),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_invalid_submissions(body: bytes, field: str) -> None:
    """Unreadable GPU amounts, GPUs hidden in other resources and missing walltimes are refused."""
    with pytest.raises(JobSpecInvalid) as raised:
        raw(body)
    assert raised.value.field == field


def test_updates_not_allowed() -> None:
    """Ray has no update route; the adapter refuses any update it is asked to price."""
    with pytest.raises(JobUpdateNotAllowed):
        ADAPTER.parse_update(route("GET", "/api/jobs/x"), None, None, b"{}")


RESPONSES = [
    pytest.param(200, b'{"job_id": "raysubmit_a", "submission_id": "raysubmit_a"}', "raysubmit_a", id="both"),
    pytest.param(200, b'{"submission_id": "mine-1", "job_id": "02000000"}', "mine-1", id="submission-id-first"),
    pytest.param(200, b'{"job_id": "raysubmit_b"}', "raysubmit_b", id="job-id-only"),
    pytest.param(500, b"Traceback (most recent call last): ...", None, id="traceback"),
]


@pytest.mark.parametrize(("status", "body", "job_id"), RESPONSES)
def test_job_id_from_response(status: int, body: bytes, job_id: str | None) -> None:
    """The job id is the submission id the dashboard answers with."""
    assert ADAPTER.job_id_from_response(route("POST", "/api/jobs/"), status, body) == job_id


def test_job_id_of() -> None:
    """Job routes name the job by its submission id."""
    assert ADAPTER.job_id_of(route("POST", "/api/jobs/raysubmit_9/stop")) == "raysubmit_9"


@pytest.mark.parametrize(
    ("status", "definitive"),
    [(400, True), (404, True), (409, True), (422, True), (500, False), (502, False), (503, False), (200, False)],
    ids=["400", "404", "409", "422", "500-traceback", "502", "503", "200"],
)
def test_definitive_rejection(status: int, definitive: bool) -> None:
    """Client errors are definitive; a 500 traceback (maybe a duplicate of a live job) is not."""
    assert ADAPTER.definitive_rejection(status, b"Traceback ...") is definitive


def test_filter_listing() -> None:
    """A job listing keeps only owned submission ids, never matching Ray's internal job ids."""
    jobs = [
        {"type": "SUBMISSION", "submission_id": "raysubmit_a", "job_id": "01000000", "status": "RUNNING"},
        {"type": "SUBMISSION", "submission_id": "raysubmit_b", "job_id": "02000000", "status": "PENDING"},
        {"type": "DRIVER", "submission_id": None, "job_id": "03000000"},
    ]
    owned = {"raysubmit_a", "02000000", "03000000"}.__contains__
    out = json.loads(ADAPTER.filter_listing(route("GET", "/api/jobs/"), json.dumps(jobs).encode(), owned))
    assert [j["submission_id"] for j in out] == ["raysubmit_a"]


@pytest.mark.parametrize("body", [b"oops", b'{"jobs": []}'], ids=["text", "object"])
def test_filter_listing_unreadable(body: bytes) -> None:
    """A listing that is not a JSON array lists nothing."""
    assert ADAPTER.filter_listing(route("GET", "/api/jobs/"), body, lambda _: True) == b"[]"


def test_options_loader() -> None:
    """scheduler_options for Ray load into RayOptions; a non-positive default walltime is located."""
    problems: list[Problem] = []
    node = load_text("walltime_metadata_key: max_min\ndefault_walltime_s: 3600\ndefault_gpu_model: H100\n", "g.yaml")
    assert load_scheduler_options("ray", node, problems) == RayOptions("max_min", 3600.0, "H100")
    assert problems == []
    bad: list[Problem] = []
    assert load_scheduler_options("ray", load_text("default_walltime_s: -1\n", "g.yaml"), bad) is None
    assert [str(p) for p in bad] == ["g.yaml:1: default_walltime_s: must be positive"]
    assert load_scheduler_options("ray", None, []) == RayOptions()


@pytest.mark.parametrize(
    ("method", "route_"), [("GET", PACKAGE_READ), ("PUT", PACKAGE_UPLOAD)], ids=["exists-check", "upload"]
)
def test_package_routes(method: str, route_: object) -> None:
    """The CLI's package existence check and upload match the package routes and name the package's gcs URI."""
    found = route(method, "/api/packages/gcs/_ray_pkg_5f3e9a.zip")
    assert found.route == route_ and found.job_id is None
    assert package_uri(found) == "gcs://_ray_pkg_5f3e9a.zip"
    wheel = route(method, "/api/packages/gcs/my_lib-1.0+local-py3-none-any.whl")
    assert package_uri(wheel) == "gcs://my_lib-1.0+local-py3-none-any.whl"


@pytest.mark.parametrize("name", [".hidden.zip", "-x.zip", "a" * 300, "a b.zip", "a:b.zip"])
def test_package_uri_refuses_names_ray_does_not_make(name: str) -> None:
    """A name Ray never makes (leading dot or dash, too long, spaces, colons) names no package."""
    found = match_route(ADAPTER.routes(), "GET", f"/api/packages/gcs/{name}")
    assert found is not None and package_uri(found) is None


def uris(runtime_env: Any, encoding: str | None = None) -> tuple[str, ...]:
    return package_uris(encoding, json.dumps({**SUBMISSION, "runtime_env": runtime_env}).encode())


def test_package_uris_of_a_submission() -> None:
    """working_dir, py_modules and java_jars gcs URIs are collected once each; other URIs and fields are not."""
    env = {
        "working_dir": "gcs://_ray_pkg_aa.zip",
        "py_modules": ["gcs://_ray_pkg_bb.zip", "s3://bucket/m.zip", "gcs://_ray_pkg_aa.zip"],
        "java_jars": ["gcs://_ray_pkg_cc.zip"],
        "env_vars": {"DATA": "gcs://bucket/data"},
        "pip": ["torch"],
    }
    assert uris(env) == ("gcs://_ray_pkg_aa.zip", "gcs://_ray_pkg_bb.zip", "gcs://_ray_pkg_cc.zip")
    assert uris(None) == () and uris({"working_dir": "https://example.com/x.zip"}) == ()
    no_env = {k: v for k, v in SUBMISSION.items() if k != "runtime_env"}
    assert package_uris(None, json.dumps(no_env).encode()) == ()


def test_package_uris_of_a_gzip_submission() -> None:
    """A gzip body is read as the dashboard reads it."""
    body = gzip.compress(json.dumps({**SUBMISSION, "runtime_env": {"working_dir": "gcs://_ray_pkg_aa.zip"}}).encode())
    assert package_uris("gzip", body) == ("gcs://_ray_pkg_aa.zip",)


@pytest.mark.parametrize(
    ("runtime_env", "field"),
    [
        ({"working_dir": "GCS://_ray_pkg_aa.zip"}, "runtime_env.working_dir"),
        ({"working_dir": " gcs://_ray_pkg_aa.zip"}, "runtime_env.working_dir"),
        ({"working_dir": "gcs:_ray_pkg_aa.zip"}, "runtime_env.working_dir"),
        ({"py_modules": ["gcs://../x.zip"]}, "runtime_env.py_modules[0]"),
        ({"java_jars": ["gcs://"]}, "runtime_env.java_jars[0]"),
    ],
    ids=["upper-case", "leading-space", "no-slashes", "dot-dot", "no-name"],
)
def test_package_uris_refuse_other_spellings(runtime_env: Any, field: str) -> None:
    """A gcs URI in another spelling might still be read as a package by Ray: refused, naming the field."""
    with pytest.raises(JobSpecInvalid) as caught:
        uris(runtime_env)
    assert caught.value.field == field


def test_package_uris_need_an_object_runtime_env() -> None:
    with pytest.raises(JobSpecInvalid) as caught:
        uris(["gcs://_ray_pkg_aa.zip"])
    assert caught.value.field == "runtime_env"


def mounted(strip: bool, prefix: str = "/ray/") -> Upstream:
    problems: list[Problem] = []
    flag = str(strip).lower()
    text = f"- {{name: ray, url: 'http://ray:8265', prefix: {prefix}, scheduler: ray, strip_prefix: {flag}}}\n"
    (settings,) = load_upstreams(load_text(text, "g.yaml"), Path("."), problems)
    assert problems == []
    return Upstream(settings, ADAPTER.routes(), ADAPTER)


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ("/ray/api/version", "/api/version"),
        ("/ray/api/jobs/?x=1", "/api/jobs/?x=1"),
        ("/ray", "/"),
        ("/ray?x=1", "/?x=1"),
        ("/rayx/api/version", "/rayx/api/version"),
        ("/api/version", "/api/version"),
    ],
)
def test_strip_prefix(path: str, local: str) -> None:
    """A prefix-mounted Ray upstream with strip_prefix matches and forwards the dashboard's own paths."""
    upstream = mounted(True)
    assert upstream.local_path(path) == local
    assert upstream.url_for(upstream.local_path(path)) == "http://ray:8265" + local
    assert mounted(True, "/ray").local_path(path) == local
    assert mounted(False).local_path(path) == path  # the default: the path goes upstream unchanged


def test_strip_prefix_needs_a_prefix() -> None:
    problems: list[Problem] = []
    load_upstreams(
        load_text("- {url: 'http://ray:8265', scheduler: ray, strip_prefix: true}\n", "g.yaml"), Path("."), problems
    )
    assert [str(p) for p in problems] == ["g.yaml:1: [0].strip_prefix: needs a prefix other than '/'"]


def test_cluster_pricing_holds_the_whole_cluster_whatever_the_entrypoint_asks() -> None:
    """By default a Ray job is priced at its cluster's GPUs: its driver may claim all of them from inside."""
    cluster = RayAdapter(RayOptions(cluster_gpus={"H100": 8, "A100": 0}))
    for changes in ({"entrypoint_num_gpus": 0, "entrypoint_resources": None}, {}, {"entrypoint_num_gpus": 1}):
        assert submission(cluster, **changes).parts == (JobPart(8, "H100", 1),)
    mixed = RayAdapter(RayOptions(cluster_gpus={"H100": 8, "A100": 16}))
    assert submission(mixed).parts == (JobPart(16, "A100", 1), JobPart(8, "H100", 1))
    with pytest.raises(JobSpecInvalid) as refused:
        submission(RayAdapter(RayOptions()))
    assert "cluster_gpus" in str(refused.value)


def test_cluster_options_load_with_located_problems() -> None:
    """`pricing` and `cluster_gpus` load strictly; a bad count or pricing names its line and field."""
    problems: list[Problem] = []
    node = load_text("pricing: cluster\ncluster_gpus: {H100: 8}\n", "g.yaml")
    assert load_scheduler_options("ray", node, problems) == RayOptions(cluster_gpus={"H100": 8})
    assert problems == []
    bad: list[Problem] = []
    load_scheduler_options("ray", load_text("pricing: driver\ncluster_gpus:\n  H100: -1\n  A100: 2.5\n", "g.yaml"), bad)
    assert [str(p) for p in bad] == [
        "g.yaml:1: pricing: 'driver' is not one of cluster, entrypoint",
        "g.yaml:3: cluster_gpus.H100: must be a whole number of GPUs, 0 or more",
        "g.yaml:4: cluster_gpus.A100: must be a whole number of GPUs, 0 or more",
    ]


# -- the cluster's GPUs read from Ray (GET /api/v0/nodes) ---------------------------------------------------------

RAY_DATA = Path(__file__).parent / "data" / "ray"


def ray_answer(name: str) -> Any:
    """A real Ray 2.60 dashboard answer captured from tests/peers/ray.sh (head: 8 GPUs, accelerator_type:H100)."""
    return json.loads((RAY_DATA / name).read_text())


def with_nodes(*nodes: dict[str, Any]) -> Any:
    """The captured answer with its node list replaced (counts kept consistent)."""
    doc = ray_answer("nodes-alive-2.60.json")
    listing = doc["data"]["result"]
    listing.update(total=len(nodes), num_after_truncation=len(nodes), num_filtered=len(nodes), result=list(nodes))
    return doc


def ray_node(resources: dict[str, Any], state: str = "ALIVE", **labels: str) -> dict[str, Any]:
    (head,) = ray_answer("nodes-alive-2.60.json")["data"]["result"]["result"]
    return {**head, "state": state, "resources_total": resources, "labels": {**head["labels"], **labels}}


def test_ray_nodes_path_asks_for_every_alive_node() -> None:
    assert NODES_PATH.startswith("/api/v0/nodes?")
    assert "limit=10000" in NODES_PATH and "filter_keys=state" in NODES_PATH and "filter_values=ALIVE" in NODES_PATH


@pytest.mark.parametrize(
    ("capture", "gpus"),
    [
        ("nodes-alive-2.60.json", {"H100": 8}),  # the head alone
        ("nodes-alive-untyped-worker-2.60.json", {"H100": 8, None: 4}),  # + a worker with 4 GPUs of no type
        ("nodes-all-dead-worker-2.60.json", {"H100": 8}),  # unfiltered, the worker DEAD: not counted
    ],
)
def test_parse_real_ray_node_lists(capture: str, gpus: dict[str | None, int]) -> None:
    assert parse_nodes(ray_answer(capture)) == gpus


def test_a_limited_or_truncated_node_list_is_unreadable() -> None:
    """Ray listing only some nodes (its `limit`, or truncation at the source) would undercount: refused."""
    with pytest.raises(CapacityUnreadable, match="limited the node list"):
        parse_nodes(ray_answer("nodes-limit-1-2.60.json"))  # real: ?limit=1 of 2 nodes
    truncated = ray_answer("nodes-alive-2.60.json")
    truncated["data"]["result"]["total"] = 5
    with pytest.raises(CapacityUnreadable, match="truncated"):
        parse_nodes(truncated)
    partial = ray_answer("nodes-alive-2.60.json")
    partial["data"]["result"]["partial_failure_warning"] = "raylet timed out"
    with pytest.raises(CapacityUnreadable, match="partial"):
        parse_nodes(partial)


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"result": False, "msg": "Failed to list nodes", "data": {}},
        {"result": True, "data": {"result": {"total": 1}}},
        with_nodes({"state": "ALIVE"}),  # no resources_total
        with_nodes(ray_node({"GPU": "8"})),
        with_nodes(ray_node({"GPU": -1.0})),
        with_nodes(ray_node({"GPU": float("nan")})),
        with_nodes(ray_node({"GPU": 1e12})),
        with_nodes("node"),  # type: ignore[arg-type]
    ],
)
def test_unreadable_ray_node_lists(doc: Any) -> None:
    with pytest.raises(CapacityUnreadable):
        parse_nodes(doc)


def test_ray_node_models() -> None:
    """Models from `accelerator_type:*` resources and the `ray.io/accelerator-type` label; several are candidates."""
    nodes = with_nodes(
        ray_node({"GPU": 1.0, "accelerator_type:A100": 1.0}),  # auto-detected: the amount is 1, not a count
        ray_node({"GPU": 0.5, "accelerator_type:A100": 1.0}),  # a fraction of a GPU holds one
        ray_node({"GPU": 8.0}, **{"ray.io/accelerator-type": "H100"}),
        ray_node({"GPU": 2.0, "accelerator_type:H100": 1.0, "accelerator_type:A100": 1.0}),
        ray_node({"CPU": 64.0, "accelerator_type:TPU-V4": 1.0}),  # no GPU resource: no GPUs
        ray_node({"GPU": 4.0}, state="DEAD"),
    )
    assert parse_nodes(nodes) == {"A100": 2, "H100": 8, "A100|H100": 2}


def test_capacity_keeps_the_most_seen_per_model() -> None:
    """An autoscaling cluster that shrank may grow again: the peak per model since start stays."""
    big = with_nodes(ray_node({"GPU": 8.0, "accelerator_type:H100": 1.0}), ray_node({"GPU": 4.0}))
    small = with_nodes(
        ray_node({"GPU": 2.0, "accelerator_type:H100": 1.0}), ray_node({"GPU": 8.0, "accelerator_type:A100": 1.0})
    )
    first = widened(RAY_EMPTY, big)
    assert (first.loaded, first.nodes, first.gpus, first.peak) == (True, 2, {"H100": 8, None: 4}, {"H100": 8, None: 4})
    second = widened(first, small)
    assert second.gpus == {"H100": 2, "A100": 8}
    assert second.peak == {"H100": 8, None: 4, "A100": 8}


def cluster_adapter(capacity: RayCapacity, **options: Any) -> RayAdapter:
    return RayAdapter(RayOptions(**options), capacity=lambda: capacity)


def test_cluster_pricing_at_the_gpus_ray_lists() -> None:
    """Without cluster_gpus a Ray job is priced at the GPUs the real head lists (8 H100), whatever it asks."""
    adapter = cluster_adapter(widened(RAY_EMPTY, ray_answer("nodes-alive-2.60.json")))
    for changes in ({"entrypoint_num_gpus": 0, "entrypoint_resources": None}, {}, {"entrypoint_num_gpus": 1}):
        assert submission(adapter, **changes).parts == (JobPart(8, "H100", 1),)
    assert submission(adapter).total_gpus * 15832 == 8 * 15832


def test_configured_cluster_gpus_win_over_what_ray_lists() -> None:
    adapter = cluster_adapter(widened(RAY_EMPTY, ray_answer("nodes-alive-2.60.json")), cluster_gpus={"H100": 32})
    assert submission(adapter).parts == (JobPart(32, "H100", 1),)


def test_untyped_ray_gpus_are_priced_at_the_default_model_or_refused() -> None:
    capacity = widened(RAY_EMPTY, ray_answer("nodes-alive-untyped-worker-2.60.json"))
    assert submission(cluster_adapter(capacity, default_gpu_model="H100")).parts == (JobPart(12, "H100", 1),)
    assert submission(cluster_adapter(capacity, default_gpu_model="A100")).parts == (
        JobPart(4, "A100", 1),
        JobPart(8, "H100", 1),
    )
    with pytest.raises(JobSpecInvalid) as refused:
        submission(cluster_adapter(capacity))  # never priced low: refused
    assert "4 GPUs" in str(refused.value) and "default_gpu_model" in str(refused.value)
    assert "cluster_gpus" in str(refused.value)


def test_ray_capacity_unknown_names_both_fixes() -> None:
    with pytest.raises(JobSpecInvalid) as refused:
        submission(cluster_adapter(RAY_EMPTY))
    assert refused.value.field == "entrypoint_num_gpus"
    assert "cluster_gpus" in str(refused.value) and "/api/v0/nodes" in str(refused.value)


def test_pricing_after_the_cluster_shrank_holds_its_peak() -> None:
    seen = widened(RAY_EMPTY, ray_answer("nodes-alive-untyped-worker-2.60.json"))
    shrunk = widened(seen, ray_answer("nodes-all-dead-worker-2.60.json"))  # the 4-GPU worker died
    assert shrunk.gpus == {"H100": 8}
    assert submission(cluster_adapter(shrunk, default_gpu_model="H100")).parts == (JobPart(12, "H100", 1),)


def test_entrypoint_pricing_ignores_the_cluster() -> None:
    adapter = cluster_adapter(RAY_EMPTY, pricing="entrypoint")
    assert submission(adapter).parts == (JobPart(2, "H100", 1),)
    assert not reads_capacity(RayOptions(pricing="entrypoint"))
    assert not reads_capacity(RayOptions(cluster_gpus={"H100": 8}))
    assert reads_capacity(RayOptions())


def test_capacity_refresh_option() -> None:
    problems: list[Problem] = []
    node = load_text("capacity_refresh_s: 15\n", "g.yaml")
    assert load_scheduler_options("ray", node, problems) == RayOptions(capacity_refresh_s=15.0)
    assert problems == [] and RayOptions().capacity_refresh_s == 60.0
    bad: list[Problem] = []
    assert load_scheduler_options("ray", load_text("pricing: cluster\ncapacity_refresh_s: 0\n", "g.yaml"), bad) is None
    assert [str(p) for p in bad] == ["g.yaml:2: capacity_refresh_s: must be positive"]


class CapturedDashboard:
    """A loopback HTTP server answering GET /api/v0/nodes with real captured answers (and a 500) in turn."""

    def __init__(self, answers: list[tuple[int, bytes]]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str | None]] = []

    async def nodes(self, request: web.Request) -> web.Response:
        self.seen.append((request.path_qs, request.headers.get("Authorization")))
        status, body = self.answers[min(len(self.seen), len(self.answers)) - 1]
        return web.Response(status=status, body=body, content_type="application/json")


async def test_capacity_source_reads_ray_with_the_upstream_credentials() -> None:
    """The source reads the node list with the static credential, keeps the peak, and keeps it over failures."""
    answers = [
        (200, (RAY_DATA / "nodes-alive-untyped-worker-2.60.json").read_bytes()),
        (500, b'{"result": false, "msg": "boom"}'),
        (200, (RAY_DATA / "nodes-all-dead-worker-2.60.json").read_bytes()),
    ]
    dashboard = CapturedDashboard(answers)
    app = web.Application()
    app.router.add_get("/api/v0/nodes", dashboard.nodes)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    problems: list[Problem] = []
    text = (
        f"- {{name: ray, url: 'http://127.0.0.1:{port}', scheduler: ray,"
        " headers: {Authorization: {env: RAY_TOKEN, prefix: 'Bearer '}}}\n"
    )
    (settings,) = load_upstreams(load_text(text, "g.yaml"), Path("."), problems)
    assert problems == []
    options = RayOptions(capacity_refresh_s=3600)
    upstream = Upstream(settings, ROUTES_OF_RAY, RayAdapter(options))
    await upstream.start({"RAY_TOKEN": "s3cret"})
    source = RayCapacitySource(upstream, options)
    try:
        await source.start()
        assert source.snapshot().gpus == {"H100": 8, None: 4}
        assert dashboard.seen == [(NODES_PATH, "Bearer s3cret")]
        assert await source.refresh() is False  # a 500: the last capacity stays
        assert source.snapshot().peak == {"H100": 8, None: 4}
        assert await source.refresh() is True
        assert (source.snapshot().gpus, source.snapshot().peak) == ({"H100": 8}, {"H100": 8, None: 4})
    finally:
        await source.stop()
        await upstream.close()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("key", "value"),
    [("submission_id", "x" * 129), ("submission_id", "a\nforged"), ("job_id", "a b"), ("submission_id", 7)],
)
def test_a_job_id_the_client_chooses_is_held_to_the_key_alphabet(key: str, value: object) -> None:
    """Ray echoes the submission id back as the job id: it becomes the ownership key, so it must be a plain short id."""
    with pytest.raises(JobSpecInvalid, match="1 to 128"):
        submission(ADAPTER, **{key: value})
