"""Route tables, path normal form and identity-bound path parameters."""

import pytest

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
