"""Route tables: (methods, path pattern, kind) entries matched against normalised paths."""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class RouteKind(StrEnum):
    """What a route does to jobs; decides which checks and ledger waits apply."""

    SUBMIT = "submit"
    READ = "read"
    CANCEL = "cancel"
    UPDATE = "update"
    LIST = "list"
    PLAIN_READ = "plain_read"

    @property
    def changes_jobs(self) -> bool:
        """Routes that create or change a job's resources (priced, KYC-gated, waited on)."""
        return self in (RouteKind.SUBMIT, RouteKind.UPDATE)


_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`/slurm/{version}/job/{job_id}` -> a regex where each `{name}` is one path segment."""
    if not pattern.startswith("/"):
        raise ValueError(f"pattern {pattern!r} must start with '/'")
    parts = _PARAM.split(pattern)
    regex = ""
    for i, part in enumerate(parts):
        regex += f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part)
    return re.compile(f"^{regex}$")


@dataclass(frozen=True, slots=True)
class Route:
    """One allowed (methods, pattern) pair and what kind of request it is."""

    name: str
    methods: frozenset[str]
    pattern: str
    kind: RouteKind
    regex: re.Pattern[str] = field(compare=False, repr=False)
    websocket: bool = False

    @classmethod
    def of(cls, name: str, methods: Iterable[str], pattern: str, kind: RouteKind, websocket: bool = False) -> "Route":
        return cls(
            name,
            frozenset(m.upper() for m in methods),
            pattern,
            kind,
            compile_pattern(pattern),
            websocket,
        )


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    params: Mapping[str, str]

    @property
    def job_id(self) -> str | None:
        return self.params.get("job_id")


def match_route(routes: Iterable[Route], method: str, path: str) -> RouteMatch | None:
    """The first route allowing `method` on `path`; HEAD is allowed wherever GET is."""
    method = method.upper()
    for route in routes:
        allowed = method in route.methods or (method == "HEAD" and "GET" in route.methods)
        if not allowed:
            continue
        found = route.regex.match(path)
        if found:
            return RouteMatch(route, MappingProxyType(found.groupdict()))
    return None


class MatchMemo:
    """`match_route`, remembered per (route table, method, path) for paths up to 256 characters.

    A table is named by identity and kept by its entries (a reloaded table misses); matches are frozen
    and their params read-only. Emptied when it holds `size` entries (job ids make paths many).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: dict[tuple[int, str, str], tuple[tuple[Route, ...], RouteMatch | None]] = {}

    def match(self, routes: tuple[Route, ...], method: str, path: str) -> RouteMatch | None:
        if len(path) > 256:
            return match_route(routes, method, path)
        key = (id(routes), method, path)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is routes:
            return hit[1]
        found = match_route(routes, method, path)
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[key] = (routes, found)
        return found


def allowed_methods(routes: Iterable[Route], path: str) -> frozenset[str]:
    """Every method some route allows on `path` (HEAD wherever GET is): the `Allow` of a 405."""
    found: set[str] = set()
    for route in routes:
        if route.regex.match(path):
            found |= route.methods
    if "GET" in found:
        found.add("HEAD")
    return frozenset(found)


def unbound_param(params: Mapping[str, str], bind: Mapping[str, str], identity: Mapping[str, str]) -> str | None:
    """The first path parameter the tenant filled with something other than its own identity.

    `bind` maps a path parameter (a Kubernetes namespace, say) to the `upstream_identity`
    field it must equal; a tenant without that field may use no such route (fail closed).
    """
    for param, field_name in bind.items():
        if param in params and params[param] != identity.get(field_name):
            return param
    return None
