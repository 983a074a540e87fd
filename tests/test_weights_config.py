"""Strict loading of what the object-store upstream needs: its scheduler options, and the registry's access keys."""

from pathlib import Path

import pytest

from gateway.adapters.ledger.signing import generate
from gateway.adapters.sigv4 import SigV4Error, claim_from_header, claim_from_query, payload_hash
from gateway.config.located import ConfigError, load_text
from gateway.config.registry import load_registry
from gateway.config.settings import parse_settings
from gateway.schedulers.s3 import NotAllowed, S3Op, classify, filtered_listing, parse_listing, split_query
from tests.harness import tenant


def _settings(tmp_path: Path, options: str) -> list[str]:
    if (tmp_path / "keys").exists():
        return _parse(tmp_path, options)
    (tmp_path / "keys").mkdir()
    generate(tmp_path / "keys" / "ledger-signing.pem", tmp_path / "keys" / "ledger-signing.pub.pem")
    return _parse(tmp_path, options)


def _parse(tmp_path: Path, options: str) -> list[str]:
    text = f"upstreams:\n  - name: weights\n    url: http://store:9000\n    scheduler: s3\n{options}"
    try:
        parse_settings(load_text(text, "gateway.yaml"), tmp_path, {})
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_s3_options_are_checked(tmp_path: Path) -> None:
    assert _settings(tmp_path, "") == [
        "gateway.yaml:2: upstreams[0].scheduler_options: the s3 upstream needs scheduler_options "
        "(access_key_id, secret_access_key)"
    ]
    ok = "    scheduler_options:\n      access_key_id: {env: K}\n      secret_access_key: {file: s}\n"
    assert _settings(tmp_path, ok) == []
    literal = "    scheduler_options:\n      access_key_id: AKIA123\n      secret_access_key: {file: s}\n"
    assert _settings(tmp_path, literal) == [
        "gateway.yaml:6: upstreams[0].scheduler_options.access_key_id: must be {file: PATH} or {env: NAME}, "
        "never the secret itself"
    ]
    bad = ok + "      presign_max_s: 0\n      colour: red\n    routes: [{path: /x, kind: plain_read}]\n"
    problems = _settings(tmp_path, bad)
    assert any("presign_max_s: must be 1..604800" in p for p in problems), problems
    assert any("colour: unknown key" in p for p in problems), problems
    assert any("routes: an s3 upstream takes no routes" in p for p in problems), problems


def test_registry_access_keys_read_their_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "a.secret").write_text("a-secret-0123456789abcdef\n")
    (tmp_path / "short.secret").write_text("short\n")
    store = "\n    object_store:\n      buckets: [models]\n      access_keys: [{{id: {id}, secret_file: {file}}}]"
    good = tenant("a", "US/US/US", store.format(id="EGA00000001", file="a.secret"))
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants:" + good + "\n")
    registry = load_registry(path)
    found = registry.access_key("EGA00000001")
    assert found is not None and found[0].id == "a" and found[1].secret == "a-secret-0123456789abcdef"
    assert "a-secret" not in repr(found[1]) and registry.access_key("EGNOPE00001") is None
    twice = tenant("b", "US/US/US", store.format(id="EGA00000001", file="a.secret"))
    short = tenant("c", "US/US/US", store.format(id="EGC00000001", file="short.secret"))
    missing = tenant("d", "US/US/US", store.format(id="EGD00000001", file="nowhere.secret"))
    licence = tenant("e", "US/US/US", "\n    licences: [{id: W1, lifts: [weights]}]")
    path.write_text("tenants:" + good + twice + short + missing + licence + "\n")
    with pytest.raises(ConfigError) as raised:
        load_registry(path)
    problems = "\n".join(str(p) for p in raised.value.problems)
    assert "access key EGA00000001 is already 'a'" in problems
    assert "short.secret must hold one secret of at least 16 characters" in problems
    assert "cannot read" in problems and "nowhere.secret" in problems
    assert "lineage: required: a weights licence names the lineage it covers" in problems
    assert "a-secret-0123456789abcdef" not in problems


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "op"),
    [
        ("GET", "/models/a/b.bin", "", {}, S3Op.GET_OBJECT),
        ("HEAD", "/models/a%20b.bin", "versionId=3", {}, S3Op.HEAD_OBJECT),
        ("PUT", "/models/a", "x-id=PutObject", {}, S3Op.PUT_OBJECT),
        ("POST", "/models/a", "uploads", {}, S3Op.CREATE_MULTIPART),
        ("PUT", "/models/a", "partNumber=1&uploadId=u", {}, S3Op.UPLOAD_PART),
        ("POST", "/models/a", "uploadId=u", {}, S3Op.COMPLETE_MULTIPART),
        ("DELETE", "/models/a", "uploadId=u", {}, S3Op.ABORT_MULTIPART),
        ("DELETE", "/models/a", "", {}, S3Op.DELETE_OBJECT),
        ("GET", "/models", "list-type=2&prefix=a%2F&encoding-type=url", {}, S3Op.LIST_V2),
        ("GET", "/models", "marker=x", {}, S3Op.LIST_V1),
        ("GET", "/", "", {}, None),
        ("PUT", "/models", "", {}, None),
        ("GET", "/models", "acl", {}, None),
        ("POST", "/models", "delete", {}, None),
        ("GET", "/models/a", "tagging", {}, None),
        ("GET", "/models/a", "uploadId=u", {}, None),
        ("PUT", "/models/a", "", {"x-amz-copy-source": "/other/b"}, None),
        ("GET", "/models/a/../b", "", {}, None),
        ("GET", "/models/a/%2E%2E/b", "", {}, None),
        ("GET", "/Bad_Bucket/a", "", {}, None),
        ("GET", "/models/a", "versionId=1&versionId=2", {}, None),
        ("GET", "/models/a%0Ab", "", {}, None),
    ],
)
def test_only_the_weights_operations_are_allowed(method: str, path: str, query: str, headers: dict[str, str],
                                                 op: S3Op | None) -> None:  # fmt: skip
    if op is None:
        with pytest.raises(NotAllowed):
            classify(method, path, split_query(query), headers)
    else:
        assert classify(method, path, split_query(query), headers).op is op


def test_requests_are_forwarded_in_canonical_encoding() -> None:
    s3 = classify("GET", "/models/a%20b/c~d+e", split_query("response-content-type=a%2Fb&x-id=GetObject"), {})
    assert (s3.bucket, s3.key) == ("models", "a b/c~d+e")
    assert s3.path() == "/models/a%20b/c~d%2Be"
    assert s3.query_string() == "response-content-type=a%2Fb&x-id=GetObject"


def test_listing_filter_keeps_the_document() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Name>models</Name><KeyCount>3</KeyCount><EncodingType>url</EncodingType>"
        b"<Contents><Key>a%20b</Key><ETag>&quot;1&quot;</ETag></Contents>"
        b"<Contents><Key>secret/w.bin</Key><ETag>&quot;2&quot;</ETag></Contents>"
        b"<Contents><Key>c</Key><ETag>&quot;3&quot;</ETag></Contents></ListBucketResult>"
    )
    root, entries, encoded = parse_listing(body)
    assert encoded and [e.key for _, e in entries] == ["a b", "secret/w.bin", "c"]
    out, hidden = filtered_listing(root, entries, lambda e: not e.key.startswith("secret/"))
    assert hidden == 1 and b"secret" not in out and b"<KeyCount>2</KeyCount>" in out
    assert b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' in out and b"ns0:" not in out
    with pytest.raises(ValueError):
        parse_listing(b"<Error><Code>NoSuchBucket</Code></Error>")


def test_sigv4_claims_are_read_strictly() -> None:
    header = ("AWS4-HMAC-SHA256 Credential=EGK0000001/20260101/us-east-1/s3/aws4_request, "
              "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=abc")  # fmt: skip
    claim = claim_from_header(header, {"x-amz-date": "20260101T000000Z"})
    assert (claim.key_id, claim.region) == ("EGK0000001", "us-east-1")
    assert claim.signed_headers == ("host", "x-amz-content-sha256", "x-amz-date")
    for broken in (header.replace("Credential=EGK0000001/", "Credential="), header.replace("host;", "")):
        with pytest.raises(SigV4Error):
            claim_from_header(broken, {"x-amz-date": "20260101T000000Z"})
    with pytest.raises(SigV4Error):
        claim_from_header(header, {})
    credential = "K1234567/20260101/us-east-1/s3/aws4_request"
    query = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", credential),
             ("X-Amz-Date", "20260101T000000Z"), ("X-Amz-Expires", "999999"), ("X-Amz-SignedHeaders", "host"),
             ("X-Amz-Signature", "abc")]  # fmt: skip
    with pytest.raises(SigV4Error, match="604800"):
        claim_from_query(query)
    assert payload_hash("UNSIGNED-PAYLOAD", signed=True) == "UNSIGNED-PAYLOAD"
    with pytest.raises(SigV4Error) as raised:
        payload_hash("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", signed=True)
    assert raised.value.s3_code == "NotImplemented"
