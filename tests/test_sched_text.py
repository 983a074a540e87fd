"""Every adapter: a lone surrogate is refused in what a client sends and kept in what a scheduler answers."""

import json
from typing import Any

import pytest

from gateway.core.jobs import JobSpecInvalid
from gateway.core.routes import RouteMatch, match_route
from gateway.schedulers import SchedulerAdapter
from gateway.schedulers.base import load_json, try_json
from tests import test_sched_generic, test_sched_kubernetes, test_sched_ray, test_sched_slurm

ADAPTERS: dict[str, SchedulerAdapter] = {
    "slurm": test_sched_slurm.ADAPTER,
    "ray": test_sched_ray.ADAPTER,
    "kubernetes": test_sched_kubernetes.ADAPTER,
    "generic": test_sched_generic.ADAPTER,
}


def route(adapter: str, method: str, path: str) -> RouteMatch:
    found = match_route(ADAPTERS[adapter].routes(), method, path)
    assert found is not None, (adapter, method, path)
    return found


PARSED = [
    ("value", b'{"a": "\\ud800"}', "a"),
    ("key", b'{"\\udc00x": 1}', "\\udc00x"),
    ("nested-list", b'{"a": [1, {"k": ["ok", "\\udfff"]}]}', "a[1].k[1]"),
    ("top-level", b'"\\udbff"', "body"),
    ("reversed-pair", b'{"a": {"b": "\\udc00\\ud800"}}', "a.b"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in PARSED], ids=[c[0] for c in PARSED])
def test_request_bodies_with_a_lone_surrogate_are_refused(body: bytes, field: str) -> None:
    """The strict parser names the key or value holding it, escaped; the lenient one still reads it."""
    with pytest.raises(JobSpecInvalid) as refused:
        load_json(body)
    assert refused.value.field == field
    assert try_json(body) is not None  # scheduler answers are read as they are


ACCEPTED = [
    ("pair", b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),
    ("escaped-backslash", b'{"a": "\\\\ud800"}', {"a": "\\ud800"}),
    ("raw-utf8", '{"a": "é😀"}'.encode(), {"a": "é😀"}),
]


@pytest.mark.parametrize(("body", "value"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_valid_text_is_accepted(body: bytes, value: Any) -> None:
    """Escaped surrogate pairs and text that only looks like an escape are ordinary text."""
    assert load_json(body) == value


SUBMISSIONS = [
    ("slurm", "POST", "/slurm/v0.0.38/job/submit", "application/json"),
    ("ray", "POST", "/api/jobs/", "application/json"),
    ("kubernetes", "POST", test_sched_kubernetes.JOBS, "application/json"),
    ("generic", "POST", "/v1/jobs", "application/json"),
]


@pytest.mark.parametrize(("adapter", "method", "path", "content_type"), SUBMISSIONS, ids=[s[0] for s in SUBMISSIONS])
def test_every_adapter_refuses_a_lone_surrogate_in_a_submission(
    adapter: str, method: str, path: str, content_type: str
) -> None:
    """Submissions are parsed strictly by every adapter (before anything is priced or reserved)."""
    body = json.dumps({"job": {"name": "\ud800"}, "metadata": {"lineage": "x"}}).encode()
    with pytest.raises(JobSpecInvalid, match="lone UTF-16 surrogate"):
        ADAPTERS[adapter].parse_submission(route(adapter, method, path), content_type, None, body)


def test_a_kubernetes_json_patch_with_a_lone_surrogate_is_refused() -> None:
    """Patches go through the same strict parser."""
    patch = json.dumps([{"op": "add", "path": "/metadata/labels/x", "value": "\udc00"}]).encode()
    match = route("kubernetes", "PATCH", f"{test_sched_kubernetes.JOBS}/train")
    with pytest.raises(JobSpecInvalid, match="lone UTF-16 surrogate"):
        ADAPTERS["kubernetes"].parse_update(match, "application/json-patch+json", None, patch)


LISTINGS: list[tuple[str, str, Any, str]] = [
    ("slurm", "/slurm/v0.0.38/jobs", {"jobs": [{"job_id": 1, "name": "\ud800"}]}, "1"),
    ("ray", "/api/jobs/", [{"type": "SUBMISSION", "submission_id": "s1", "entrypoint": "\udc00"}], "s1"),
    ("kubernetes", test_sched_kubernetes.JOBS,
     {"kind": "JobList", "items": [{"metadata": {"name": "a", "namespace": "team-a", "labels": {"\udfff": "x"}}}]},
     "team-a/a"),
    ("generic", "/v1/jobs", {"data": {"jobs": [{"id": "j1", "note": "\udbff"}]}}, "j1"),
]  # fmt: skip


@pytest.mark.parametrize(("adapter", "path", "listing", "owned"), LISTINGS, ids=[c[0] for c in LISTINGS])
def test_listings_keep_what_the_scheduler_wrote(adapter: str, path: str, listing: Any, owned: str) -> None:
    """A scheduler's listing holding a lone surrogate is filtered and re-sent as valid UTF-8, escapes intact."""
    out = ADAPTERS[adapter].filter_listing(
        route(adapter, "GET", path), json.dumps(listing).encode(), {owned}.__contains__
    )
    out.decode("utf-8")
    assert json.loads(out) == listing
