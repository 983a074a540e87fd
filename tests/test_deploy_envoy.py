"""deploy/envoy stays loadable by Envoy and true to the gateway: its bootstrap parses strictly into Envoy's
config protos (xds-protos), it routes the Slurm adapter's routes where the decision core needs them, and
its clusters reach the listeners the gateway.yaml beside it opens."""

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

# Each typed_config's message must be known to protobuf's default pool for its Any to resolve.
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format

from gateway.config.located import load_text
from gateway.config.settings import Settings, parse_settings
from gateway.core.routes import Route
from gateway.http.decision import needs_proxy
from gateway.schedulers.slurm import ROUTES, SlurmAdapter, SlurmOptions

ENVOY = Path(__file__).resolve().parent.parent / "deploy" / "envoy"
EXT_AUTHZ = "envoy.filters.http.ext_authz"


def envoy_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ENVOY / "envoy.yaml").read_text())
    return loaded


def bootstrap(config: dict[str, Any]) -> Any:
    """The config as Envoy reads it: every field known, every Any resolved, every enum named right."""
    return json_format.ParseDict(config, Bootstrap(), ignore_unknown_fields=False)


def gateway_settings() -> Settings:
    return parse_settings(load_text((ENVOY / "gateway.yaml").read_text(), "deploy/envoy/gateway.yaml"), Path("/"), {})


def test_the_bootstrap_parses_into_envoys_protos() -> None:
    parsed = bootstrap(envoy_config())
    (listener,) = parsed.static_resources.listeners
    (network_filter,) = listener.filter_chains[0].filters
    assert network_filter.typed_config.type_url.endswith("HttpConnectionManager")


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _rename(node: dict[str, Any], old: str, new: str) -> None:
    node[new] = node.pop(old)


def _authz(config: dict[str, Any]) -> dict[str, Any]:
    authz: dict[str, Any] = _hcm(config)["http_filters"][0]["typed_config"]
    return authz


TYPOS: dict[str, Callable[[dict[str, Any]], None]] = {
    "misspelled top-level section": lambda c: _rename(c, "static_resources", "static_resource"),
    "misspelled field inside a typed_config": lambda c: _rename(_authz(c), "failure_mode_allow", "failure_mode_alow"),
    "unknown enum value": lambda c: _authz(c).update(transport_api_version="V4"),
    "unknown @type": lambda c: _hcm(c)["http_filters"][1]["typed_config"].update(
        {"@type": "type.googleapis.com/envoy.extensions.filters.http.routr.v3.Router"}
    ),
    "misspelled route field": lambda c: _rename(_hcm(c)["route_config"]["virtual_hosts"][0]["routes"][0], "match",
                                                "matches"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TYPOS))
def test_a_typo_fails_the_parse(case: str) -> None:
    """The check is not vacuous: each kind of slip Envoy would reject at load is rejected here."""
    config = copy.deepcopy(envoy_config())
    TYPOS[case](config)
    with pytest.raises(json_format.ParseError):
        bootstrap(config)


def test_ext_authz_fails_closed_before_the_router() -> None:
    """The Check filter runs before the router, over gRPC v3 to the gateway's cluster, and an error refuses."""
    filters = _hcm(envoy_config())["http_filters"]
    assert [f["name"] for f in filters] == [EXT_AUTHZ, "envoy.filters.http.router"]
    authz = filters[0]["typed_config"]
    assert authz["failure_mode_allow"] is False and authz["transport_api_version"] == "V3"
    assert authz["grpc_service"]["envoy_grpc"]["cluster_name"] == "exportgate_ext_authz"
    assert "http_service" not in authz


def _routes() -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _hcm(envoy_config())["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _matches(route: dict[str, Any], method: str, path: str) -> bool:
    """Envoy's route match for the subset this file uses (prefix, safe_regex on the path, exact :method)."""
    match = route["match"]
    if "prefix" in match and not path.startswith(match["prefix"]):
        return False
    if "safe_regex" in match and not re.fullmatch(match["safe_regex"]["regex"], path):
        return False
    assert set(match) <= {"prefix", "safe_regex", "headers"}, "a match this test cannot evaluate"
    for header in match.get("headers", []):
        assert header["name"] == ":method"
        if header["string_match"]["exact"] != method:
            return False
    return True


def envoy_route(method: str, path: str) -> dict[str, Any]:
    return next(route for route in _routes() if _matches(route, method, path))


def _authz_disabled(route: dict[str, Any]) -> bool:
    return bool(route.get("typed_per_filter_config", {}).get(EXT_AUTHZ, {}).get("disabled", False))


def _sample(route: Route) -> str:
    return route.pattern.replace("{version}", "v0.0.40").replace("{job_id}", "4242")


ADAPTER = SlurmAdapter(SlurmOptions())
CASES = [(route, method) for route in ROUTES for method in sorted(route.methods)]


@pytest.mark.parametrize(("route", "method"), CASES, ids=[f"{m} {r.name}" for r, m in CASES])
def test_each_slurm_route_goes_where_the_decision_core_needs_it(route: Route, method: str) -> None:
    """What only the full proxy can serve goes to it (ext_authz off); everything else is asked about first."""
    chosen = envoy_route(method, _sample(route))
    if needs_proxy(ADAPTER, route):
        assert (chosen["route"]["cluster"], _authz_disabled(chosen)) == ("exportgate_proxy", True)
    else:
        assert (chosen["route"]["cluster"], _authz_disabled(chosen)) == ("slurmrestd", False)


def test_nothing_reaches_the_scheduler_undecided() -> None:
    """ext_authz is off only on routes to exportgate's own proxy, which decides them itself."""
    for route in _routes():
        if _authz_disabled(route):
            assert route["route"]["cluster"] == "exportgate_proxy", route["name"]
    assert any(_authz_disabled(route) for route in _routes())


def _endpoint(cluster: str) -> tuple[str, int]:
    clusters = {c["name"]: c for c in envoy_config()["static_resources"]["clusters"]}
    address = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    return address["socket_address"]["address"], address["socket_address"]["port_value"]


def test_the_clusters_reach_what_the_gateway_yaml_opens() -> None:
    """The gateway.yaml beside it loads strictly, and Envoy's clusters name its Check, proxy and scheduler ports."""
    settings = gateway_settings()
    assert settings.envoy_grpc is not None
    assert _endpoint("exportgate_ext_authz")[1] == settings.envoy_grpc.port
    assert _endpoint("exportgate_proxy")[1] == settings.listen_port
    assert settings.upstreams[0].url.rstrip("/") == "http://{}:{}".format(*_endpoint("slurmrestd"))
    clusters = {c["name"]: c for c in envoy_config()["static_resources"]["clusters"]}
    options = clusters["exportgate_ext_authz"]["typed_extension_protocol_options"]
    assert (
        "http2_protocol_options"
        in options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["explicit_http_config"]
    )  # gRPC needs HTTP/2
