"""Header hygiene: hop-by-hop removal, client credential stripping, X-Forwarded-*, client IP."""

import functools
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

METHOD_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # an HTTP method (RFC 9110 token), bounded
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 section 7.6.1 plus the de-facto ones proxies drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
    }
)
# Credentials and identity assertions only the gateway may set toward the upstream.
STRIPPED_EXACT = frozenset(
    {
        "authorization",
        "cookie",
        "x-ray-authorization",
        "host",
        "content-length",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
    }
)
STRIPPED_PREFIXES = ("x-slurm-", "impersonate-", "x-exportgate-")
# Envoy keeps these toward the upstream whatever it is told: it refuses to remove Host (and pseudo-headers),
# and owns the length and the X-Forwarded-* it sets.
ENVOY_KEPT = frozenset({"host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})


def _connection_tokens(headers: Mapping[str, str] | CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    getall = getattr(headers, "getall", None)
    values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def upstream_request_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop, credentials and identity assertions."""
    drop = HOP_BY_HOP | _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop or lower in STRIPPED_EXACT or lower.startswith(STRIPPED_PREFIXES):
            continue
        out.add(name, value)
    return out


def stripped_names(headers: Mapping[str, str], keep: frozenset[str] = frozenset()) -> set[str]:
    """The lower-case names of the client's credential and identity headers (those the proxy strips), but `keep`.

    A decision entry's front proxy forwards itself; it is told which of these to drop.
    """
    return {
        lower
        for lower in (name.lower() for name in headers)
        if lower not in keep and (lower in STRIPPED_EXACT or lower.startswith(STRIPPED_PREFIXES))
    }


def envoy_removed(client: Mapping[str, str], answer: Mapping[str, str]) -> list[str]:
    """What Envoy's ext_authz (HTTP or gRPC) is told to remove from an allowed request, sorted: the client's
    headers the proxy strips, but those Envoy keeps and those the answer sets (they overwrite the client's)."""
    return sorted(stripped_names(client, ENVOY_KEPT | {name.lower() for name in answer}))


def downstream_response_headers(incoming: CIMultiDictProxy[str], *, keep_length: bool) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop ones."""
    drop = HOP_BY_HOP | _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in drop or (lower == "content-length" and not keep_length):
            continue
        out.add(name, value)
    return out


def _trusted(address: str, proxies: Sequence[IPNetwork]) -> bool:
    return len(address) <= 64 and _trusted_in(address, tuple(proxies))


@functools.lru_cache(maxsize=4096)  # parsing an address costs more than the rest of this stage
def _trusted_in(address: str, proxies: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def is_address(text: str) -> bool:
    """Whether a forwarded hop is an IP address (longer than any address's text: not one, and not cached)."""
    return len(text) <= 64 and _parses(text)


@functools.lru_cache(maxsize=4096)
def _parses(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def forwarded_chain(xff_values: Iterable[str]) -> list[str]:
    """The addresses of X-Forwarded-For headers, in order."""
    return [part.strip() for value in xff_values for part in value.split(",") if part.strip()]


def client_ip(peer: str | None, xff_values: Iterable[str], proxies: Sequence[IPNetwork]) -> str:
    """The peer, or when the peer is a trusted proxy, the rightmost untrusted X-Forwarded-For hop."""
    if peer is None:
        return "unknown"
    if not _trusted(peer, proxies):
        return peer
    for hop in reversed(forwarded_chain(xff_values)):
        if not is_address(hop):
            return peer  # a garbled chain is not evidence; fall back to the peer
        if not _trusted(hop, proxies):
            return hop
    return peer


def forwarded_headers(
    peer: str | None, xff_values: Iterable[str], proxies: Sequence[IPNetwork], proto: str, host: str
) -> dict[str, str]:
    """X-Forwarded-* toward the upstream; a client's own chain is kept only from trusted peers."""
    chain = forwarded_chain(xff_values) if peer and _trusted(peer, proxies) else []
    chain.append(peer or "unknown")
    return {"X-Forwarded-For": ", ".join(chain), "X-Forwarded-Proto": proto, "X-Forwarded-Host": host}


async def hide_server_software(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: answers name the gateway, never its Python/aiohttp or the scheduler's versions.

    Like nginx (which drops an upstream's `Server` unless told to pass it), a forwarded answer does not
    tell tenants which scheduler release runs behind the gateway.
    """
    response.headers[hdrs.SERVER] = "exportgate"
