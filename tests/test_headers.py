"""Header hygiene and client IP resolution, as pure functions over header values."""

import ipaddress

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.http.headers import client_ip, forwarded_headers, upstream_request_headers

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))

CLIENT_IP = [
    ("untrusted-peer-ignores-xff", "203.0.113.9", ["1.2.3.4"], "203.0.113.9"),
    ("trusted-peer-believes-xff", "10.1.1.1", ["198.51.100.7"], "198.51.100.7"),
    ("rightmost-untrusted-hop", "10.1.1.1", ["1.2.3.4, 198.51.100.7, 10.2.2.2"], "198.51.100.7"),
    ("spoofed-left-hop-ignored", "10.1.1.1", ["6.6.6.6", "198.51.100.7"], "198.51.100.7"),
    ("all-trusted-falls-back-to-peer", "10.1.1.1", ["10.3.3.3"], "10.1.1.1"),
    ("garbage-hop-falls-back-to-peer", "10.1.1.1", ["not-an-ip"], "10.1.1.1"),
    ("no-xff", "10.1.1.1", [], "10.1.1.1"),
    ("ipv6-trusted", "fd00::1", ["2001:db8::5"], "2001:db8::5"),
    ("no-peer", None, ["1.2.3.4"], "unknown"),
]


@pytest.mark.parametrize(("case", "peer", "xff", "expected"), CLIENT_IP, ids=[c[0] for c in CLIENT_IP])
def test_client_ip(case: str, peer: str | None, xff: list[str], expected: str) -> None:
    """X-Forwarded-For is believed only from trusted proxies, and only up to the first untrusted hop."""
    assert client_ip(peer, xff, PROXIES) == expected


def test_forwarded_chain_kept_only_from_trusted_peers() -> None:
    """A trusted proxy's chain is extended; an untrusted client's chain is replaced by its address."""
    trusted = forwarded_headers("10.1.1.1", ["198.51.100.7"], PROXIES, "https", "gw.example")
    untrusted = forwarded_headers("203.0.113.9", ["1.2.3.4"], PROXIES, "http", "gw.example")
    assert trusted["X-Forwarded-For"] == "198.51.100.7, 10.1.1.1"
    assert untrusted["X-Forwarded-For"] == "203.0.113.9"
    assert trusted["X-Forwarded-Proto"] == "https" and trusted["X-Forwarded-Host"] == "gw.example"


def test_request_headers_drop_credentials_and_hop_by_hop() -> None:
    """Credentials, identity assertions and every hop-by-hop header (also those named in Connection) go."""
    incoming = CIMultiDictProxy(
        CIMultiDict(
            [
                ("Authorization", "Bearer t"),
                ("cookie", "a=b"),
                ("X-SLURM-USER-NAME", "root"),
                ("x-slurm-user-token", "t"),
                ("X-Ray-Authorization", "x"),
                ("Impersonate-Uid", "0"),
                ("X-Exportgate-Tier", "1"),
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("X-Secret-Hop", "1"),
                ("Transfer-Encoding", "chunked"),
                ("TE", "trailers"),
                ("Forwarded", "for=1.2.3.4"),
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
                ("Idempotency-Key", "k1"),
            ]
        )
    )
    out = upstream_request_headers(incoming)
    assert sorted(out.keys()) == ["Accept", "Content-Type", "Idempotency-Key"]
