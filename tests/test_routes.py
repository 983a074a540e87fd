"""Route tables, path normal form and identity-bound path parameters."""

import random

import pytest

from gateway.core import paths
from gateway.core.paths import canonical_or_none
from gateway.core.routes import Route, RouteKind, match_route, unbound_param

ROUTES = (
    Route.of("submit", ["POST"], "/slurm/{version}/job/submit", RouteKind.SUBMIT),
    Route.of("job", ["GET"], "/slurm/{version}/job/{job_id}", RouteKind.READ),
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/slurm/v0.0.38/job/submit", "submit"),
        ("GET", "/slurm/v0.0.38/job/42", "job"),
        ("HEAD", "/slurm/v0.0.38/job/42", "job"),
        ("DELETE", "/slurm/v0.0.38/job/42", None),
        ("GET", "/slurm/v0.0.38/job/42/extra", None),
        ("GET", "/slurm/v0.0.38/job/", None),
    ],
    ids=["submit", "read", "head-as-get", "method-not-listed", "longer-path", "empty-segment"],
)
def test_match_route(method: str, path: str, expected: str | None) -> None:
    """A request matches only a listed method and a whole pattern, one segment per placeholder."""
    found = match_route(ROUTES, method, path)
    assert (found.route.name if found else None) == expected


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/api/jobs/", True),
        ("/a//b", False),
        ("/a/./b", False),
        ("/a/../b", False),
        ("/a/%62", False),
        ("/a%2Fb", False),
        ("/a\\\\b", False),
        ("/../etc/passwd", False),
        ("relative", False),
        ("/a/%ff", False),
        ("/a/\x00", False),
        ("/a/b-c_d.e~f", True),
    ],
)
def test_canonical_paths(raw: str, canonical: bool) -> None:
    """Only paths already in normal form are routed."""
    assert (canonical_or_none(raw) is not None) is canonical


@pytest.mark.parametrize(
    ("params", "identity", "expected"),
    [
        ({"ns": "acme"}, {"k8s_namespace": "acme"}, None),
        ({"ns": "other"}, {"k8s_namespace": "acme"}, "ns"),
        ({"ns": "acme"}, {}, "ns"),
        ({"name": "x"}, {}, None),
    ],
    ids=["own-namespace", "foreign-namespace", "tenant-without-namespace", "route-without-the-param"],
)
def test_unbound_param(params: dict[str, str], identity: dict[str, str], expected: str | None) -> None:
    """A bound path parameter must equal the tenant's own identity field; a tenant without one fails closed."""
    assert unbound_param(params, {"ns": "k8s_namespace"}, identity) == expected


def test_plain_paths_are_taken_as_normal_form_exactly_when_normalising_keeps_them() -> None:
    """The fast path (no normalising for plain ASCII segments) answers what normalising does, on random paths
    mixing dots, slashes, percent-escapes, backslashes, controls and non-ASCII."""

    def by_normalising(raw: str) -> str | None:
        try:
            return raw if paths.normalise(raw) == raw else None
        except paths.PathRejected:
            return None

    rng = random.Random(5)
    alphabet = [*"/a.Z0_~-:@!$&'()*+,;=%\\ é\x00\x7f", "..", "./", "//", "%2e", "%2E", "%2f", "%41", "%ff"]
    for _ in range(50_000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        raw = "/" + raw if rng.random() < 0.8 else raw
        assert paths.canonical_or_none(raw) == by_normalising(raw), repr(raw)
    assert paths.canonical_or_none("/slurm/v0.0.38/job/12_3") == "/slurm/v0.0.38/job/12_3"
    assert paths.canonical_or_none("/slurm/v0.0.38/../job") is None
