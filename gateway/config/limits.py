"""The `limits:` and `shutdown:` sections of gateway.yaml: what a client may cost, and how the gateway stops."""

from dataclasses import dataclass

from gateway.config.fields import Fields
from gateway.config.located import Node, Problem


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one client: body size, how long its request may take to arrive, open connections."""

    max_body_bytes: int = 1 << 20
    # A code package upload (Ray's working_dir / py_modules zip), read whole before it is forwarded.
    max_package_bytes: int = 100 << 20
    # From the first byte of a request (or the connection's opening) to the end of its headers.
    head_timeout_s: float = 10.0
    # The longest pause between two pieces of a body the gateway reads.
    body_timeout_s: float = 10.0
    # After the first body_timeout_s, a body must arrive at least this fast on average.
    body_min_rate_bytes_s: float = 1024.0
    # A keep-alive connection with no request in flight is closed after this.
    idle_timeout_s: float = 60.0
    # Open proxy connections per process; beyond it a new connection gets 503 and is closed.
    max_connections: int = 4096


@dataclass(frozen=True, slots=True)
class Shutdown:
    """SIGTERM: unready at once, keep serving `drain_s`, then finish in-flight requests within `grace_s`."""

    drain_s: float = 5.0
    grace_s: float = 20.0


LIMIT_KEYS = (
    "max_body_bytes",
    "max_package_bytes",
    "head_timeout_s",
    "body_timeout_s",
    "body_min_rate_bytes_s",
    "idle_timeout_s",
    "max_connections",
)


def _positive(fields: Fields, key: str, default: float, *, integer: bool = False) -> float:
    value: float = fields.integer(key, int(default)) if integer else fields.number(key, default)
    if value <= 0:
        node = fields.child(key)
        assert node is not None  # only a present value can be out of range
        fields.problems.append(node.problem("must be positive"))
        return default
    return value


def load_limits(node: Node | None, problems: list[Problem]) -> Limits:
    """Every limit must be positive; a problem names the limit's own line."""
    if node is None:
        return Limits()
    f = Fields(node, problems, LIMIT_KEYS)
    d = Limits()
    return Limits(
        max_body_bytes=int(_positive(f, "max_body_bytes", d.max_body_bytes, integer=True)),
        max_package_bytes=int(_positive(f, "max_package_bytes", d.max_package_bytes, integer=True)),
        head_timeout_s=_positive(f, "head_timeout_s", d.head_timeout_s),
        body_timeout_s=_positive(f, "body_timeout_s", d.body_timeout_s),
        body_min_rate_bytes_s=_positive(f, "body_min_rate_bytes_s", d.body_min_rate_bytes_s),
        idle_timeout_s=_positive(f, "idle_timeout_s", d.idle_timeout_s),
        max_connections=int(_positive(f, "max_connections", d.max_connections, integer=True)),
    )


def load_shutdown(node: Node | None, problems: list[Problem]) -> Shutdown:
    """`drain_s` may be 0 (no drain); `grace_s` must be positive."""
    if node is None:
        return Shutdown()
    f = Fields(node, problems, ("drain_s", "grace_s"))
    d = Shutdown()
    drain: float = f.number("drain_s", d.drain_s)
    if drain < 0:
        child = f.child("drain_s")
        assert child is not None
        problems.append(child.problem("must be 0 or more"))
        drain = d.drain_s
    return Shutdown(drain_s=drain, grace_s=_positive(f, "grace_s", d.grace_s))
