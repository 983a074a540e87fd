"""The S3 API (path-style) of an object store holding model weights: its requests, listings and error dialect.

Not a scheduler: an `s3` upstream runs no jobs. The adapter satisfies the scheduler port (nothing to
price, own, reconcile or cancel) so an upstream can name it like any other; the requests themselves
are read by `classify` and served by gateway/http/objects.py. Only what a client needs to store and
fetch model weights is allowed: object GET, HEAD, PUT and DELETE, multipart uploads (create, upload
part, complete, abort) and ListObjects / ListObjectsV2. Everything else (bucket operations, ACLs,
tagging, copies, batch deletes, ...) is `route_not_allowed`.
"""

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from gateway.core.jobs import JobSpec, JobUpdateNotAllowed
from gateway.core.routes import Route, RouteKind, RouteMatch
from gateway.core.weights import WeightsOp
from gateway.schedulers.base import LiveJob
from gateway.schedulers.status import JobView

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
# The query parameters of SigV4 query authentication (a presigned URL); never forwarded.
PRESIGN_PARAMS = frozenset(
    {"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
     "X-Amz-Signature", "X-Amz-Security-Token"}
)  # fmt: skip
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where one of the gateway's own secrets is read at start: a file or an environment variable."""

    file: Path | None = None
    env: str | None = None


@dataclass(frozen=True, slots=True)
class S3Options:
    """An object store upstream: the credentials the gateway signs with, and how it checks its clients.

    `region` is the store's SigV4 region (clients sign for it too); `access_key_id` and
    `secret_access_key` are the gateway's own credentials at the store; `presign_secret` keys the
    presigned URLs the gateway mints (unset: a random key per process, so URLs do not survive a
    restart or reach another worker); `presign_max_s` bounds their life; `clock_skew_s` how far a
    client's signing time may be from the gateway's.
    """

    access_key_id: SecretSource = field(default_factory=SecretSource)
    secret_access_key: SecretSource = field(default_factory=SecretSource)
    region: str = "us-east-1"
    presign_secret: SecretSource | None = None
    presign_max_s: int = 900
    clock_skew_s: int = 900
    head_concurrency: int = 16


class S3Op(StrEnum):
    GET_OBJECT = "get_object"
    HEAD_OBJECT = "head_object"
    PUT_OBJECT = "put_object"
    DELETE_OBJECT = "delete_object"
    CREATE_MULTIPART = "create_multipart_upload"
    UPLOAD_PART = "upload_part"
    COMPLETE_MULTIPART = "complete_multipart_upload"
    ABORT_MULTIPART = "abort_multipart_upload"
    LIST_V2 = "list_objects_v2"
    LIST_V1 = "list_objects"

    @property
    def weights_op(self) -> WeightsOp:
        if self in (S3Op.GET_OBJECT, S3Op.HEAD_OBJECT):
            return WeightsOp.READ
        if self in (S3Op.LIST_V1, S3Op.LIST_V2):
            return WeightsOp.LIST
        if self in (S3Op.DELETE_OBJECT, S3Op.ABORT_MULTIPART):
            return WeightsOp.DELETE
        return WeightsOp.WRITE

    @property
    def route_kind(self) -> RouteKind:
        """How the ledger and the metrics class it: a listing, or a plain object request."""
        return RouteKind.LIST if self in (S3Op.LIST_V1, S3Op.LIST_V2) else RouteKind.PLAIN_READ


_COMMON = frozenset({"x-id"})
_RESPONSE = frozenset(
    {"response-content-type", "response-content-disposition", "response-content-encoding",
     "response-content-language", "response-cache-control", "response-expires"}
)  # fmt: skip
_LIST_V2 = frozenset(
    {"list-type", "prefix", "delimiter", "max-keys", "continuation-token", "start-after", "fetch-owner",
     "encoding-type"}
)  # fmt: skip
_ALLOWED: dict[S3Op, frozenset[str]] = {
    S3Op.GET_OBJECT: _COMMON | _RESPONSE | {"versionId", "partNumber"},
    S3Op.HEAD_OBJECT: _COMMON | {"versionId", "partNumber"},
    S3Op.PUT_OBJECT: _COMMON,
    S3Op.DELETE_OBJECT: _COMMON | {"versionId"},
    S3Op.CREATE_MULTIPART: _COMMON | {"uploads"},
    S3Op.UPLOAD_PART: _COMMON | {"partNumber", "uploadId"},
    S3Op.COMPLETE_MULTIPART: _COMMON | {"uploadId"},
    S3Op.ABORT_MULTIPART: _COMMON | {"uploadId"},
    S3Op.LIST_V2: _COMMON | _LIST_V2,
    S3Op.LIST_V1: _COMMON | {"prefix", "delimiter", "marker", "max-keys", "encoding-type"},
}


@dataclass(frozen=True, slots=True)
class S3Request:
    """One S3 request as the gateway reads it: the operation, bucket and key (decoded), and its query."""

    op: S3Op
    bucket: str
    key: str  # "" for bucket-level requests (listings)
    query: tuple[tuple[str, str], ...]  # decoded, without presign parameters

    @property
    def resource(self) -> str:
        return f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"

    def path(self) -> str:
        """The path in canonical encoding (what the gateway forwards and signs)."""
        return "/" + quote(self.bucket, safe="") + ("/" + quote(self.key, safe="/~") if self.key else "")

    def query_string(self) -> str:
        """The query in SigV4's canonical encoding, sorted."""
        pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in self.query)
        return "&".join(f"{k}={v}" for k, v in pairs)


class NotAllowed(ValueError):
    """A request outside the allowed S3 operations, or one whose bucket or key cannot be read safely."""


def split_query(raw_query: str) -> list[tuple[str, str]]:
    """Query pairs percent-decoded, blanks kept, `+` left as it is (S3 clients encode a space as %20)."""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _key_problem(key: str) -> str | None:
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return "the key is longer than 1024 bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "the key holds a control character"
    if any(segment in (".", "..") for segment in key.split("/")):
        return "the key holds a . or .. segment (stores may normalise it to another object)"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "the key is not UTF-8 text"
    return None


def classify(method: str, local_path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> S3Request:
    """The S3 request `method local_path?query` makes (path-style), or NotAllowed.

    `local_path` is the raw path as the store would see it (the upstream's prefix taken off).
    """
    raw = local_path.split("?", 1)[0]
    if not raw.startswith("/") or raw == "/":
        raise NotAllowed("bucket-level and service-level requests are not allowed")
    bucket_raw, _, key_raw = raw[1:].partition("/")
    bucket = unquote(bucket_raw)
    if not _BUCKET.match(bucket):
        raise NotAllowed(f"{bucket[:64]!r} is not a bucket name")
    try:
        key = unquote(key_raw, errors="strict") if key_raw else ""
    except UnicodeDecodeError:
        raise NotAllowed("the key is not UTF-8 text") from None
    problem = _key_problem(key) if key else None
    if problem is not None:
        raise NotAllowed(problem)
    names = [k for k, _ in query if k not in PRESIGN_PARAMS]
    params = dict((k, v) for k, v in query if k not in PRESIGN_PARAMS)
    if len(set(names)) != len(names):
        raise NotAllowed("a query parameter is repeated")
    method = method.upper()
    if any(h.lower() in ("x-amz-copy-source", "x-amz-copy-source-range") for h in headers):
        raise NotAllowed("copies are not allowed (read the object, then write it)")
    op = _op(method, bool(key), params)
    if op is None:
        raise NotAllowed(f"{method[:16]} {raw[:128]} with {sorted(params)[:8]} is not an allowed S3 operation")
    unknown = set(params) - _ALLOWED[op]
    if unknown:
        raise NotAllowed(f"query parameters {sorted(unknown)[:8]} are not allowed on {op.value}")
    return S3Request(op, bucket, key, tuple((k, v) for k, v in query if k not in PRESIGN_PARAMS))


def _op(method: str, has_key: bool, params: Mapping[str, str]) -> S3Op | None:
    if not has_key:
        if method not in ("GET", "HEAD"):
            return None
        if params.get("list-type") == "2":
            return S3Op.LIST_V2
        return S3Op.LIST_V1 if "list-type" not in params else None
    if "uploads" in params:
        return S3Op.CREATE_MULTIPART if method == "POST" else None
    if "uploadId" in params:
        if method == "PUT" and "partNumber" in params:
            return S3Op.UPLOAD_PART
        return {"POST": S3Op.COMPLETE_MULTIPART, "DELETE": S3Op.ABORT_MULTIPART}.get(method)
    return {"GET": S3Op.GET_OBJECT, "HEAD": S3Op.HEAD_OBJECT, "PUT": S3Op.PUT_OBJECT,
            "DELETE": S3Op.DELETE_OBJECT}.get(method)  # fmt: skip


# -- listings ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """One object of a listing: its key (decoded) and ETag."""

    key: str
    etag: str


def _tag(name: str) -> str:
    return f"{{{S3_NS}}}{name}"


def _find(parent: ET.Element, name: str) -> ET.Element | None:
    found = parent.find(_tag(name))
    return found if found is not None else parent.find(name)


def parse_listing(body: bytes) -> tuple[ET.Element, list[tuple[ET.Element, Listed]], bool]:
    """The ListBucketResult's root, each `Contents` with its object, and whether keys are URL-encoded.

    Raises ValueError for a body that is not a listing.
    """
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValueError(f"the listing is not XML: {exc}") from None
    if root.tag not in (_tag("ListBucketResult"), "ListBucketResult"):
        raise ValueError(f"the answer is a {root.tag[-40:]}, not a ListBucketResult")
    encoding = _find(root, "EncodingType")
    encoded = encoding is not None and (encoding.text or "").strip().lower() == "url"
    out = []
    for contents in [*root.findall(_tag("Contents")), *root.findall("Contents")]:
        key_el, etag_el = _find(contents, "Key"), _find(contents, "ETag")
        key = (key_el.text or "") if key_el is not None else ""
        etag = (etag_el.text or "") if etag_el is not None else ""
        out.append((contents, Listed(unquote(key) if encoded else key, etag)))
    return root, out, encoded


def filtered_listing(
    root: ET.Element, entries: Sequence[tuple[ET.Element, Listed]], keep: Callable[[Listed], bool]
) -> tuple[bytes, int]:
    """The listing without the objects `keep` refuses, KeyCount adjusted; and how many were left out."""
    hidden = 0
    for element, listed in entries:
        if not keep(listed):
            root.remove(element)
            hidden += 1
    count = _find(root, "KeyCount")
    if count is not None and (count.text or "").strip().isdigit():
        count.text = str(max(0, int(count.text or "0") - hidden))
    ET.register_namespace("", S3_NS)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True), hidden


# -- the error dialect --------------------------------------------------------------------------------

# The S3 error code an S3 client sees for each exportgate code (the exportgate code is in the message).
_S3_CODES = {
    "auth_missing": "AccessDenied",
    "auth_invalid": "AccessDenied",
    "method_not_allowed": "MethodNotAllowed",
    "body_too_large": "EntityTooLarge",
    "request_timeout": "RequestTimeout",
    "quota_tenant_tpp": "SlowDown",
    "quota_country_tpp": "SlowDown",
    "backend_unavailable": "ServiceUnavailable",
    "too_many_connections": "SlowDown",
    "upstream_unreachable": "ServiceUnavailable",
    "upstream_timeout": "ServiceUnavailable",
    "request_malformed": "InvalidRequest",
    "job_spec_invalid": "InvalidRequest",
    "request_in_progress": "OperationAborted",
}


def s3_error(code: str, detail: str, decision_id: str, resource: str, s3_code: str | None = None,
             citation: str = "") -> bytes:  # fmt: skip
    """An S3 `<Error>` document: `Code` as S3 clients know it, the exportgate code and detail in `Message`."""
    cited = f" ({citation})" if citation else ""
    parts = [
        f"<Code>{escape(s3_code or _S3_CODES.get(code, 'AccessDenied'))}</Code>",
        f"<Message>{escape(f'exportgate {code}: {detail}{cited}')}</Message>",
        f"<Resource>{escape(resource)}</Resource>",
        f"<RequestId>{escape(decision_id)}</RequestId>",
        f"<ExportgateCode>{escape(code)}</ExportgateCode>",
    ]
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>' + "".join(parts) + "</Error>").encode()


# -- the scheduler port -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class S3Adapter:
    """An object store behind the gateway: no jobs, so nothing to price, reconcile or cancel."""

    options: S3Options
    name: ClassVar[str] = "s3"

    @property
    def default_gpu_model(self) -> str | None:
        return None

    def routes(self) -> tuple[Route, ...]:
        return ()  # S3 requests are read by `classify`, not matched against a route table

    def parse_submission(self, match: RouteMatch, content_type: str | None, content_encoding: str | None,
                         body: bytes) -> JobSpec:  # fmt: skip
        raise JobUpdateNotAllowed("an object store runs no jobs")

    def parse_update(self, match: RouteMatch, content_type: str | None, content_encoding: str | None,
                     body: bytes) -> JobSpec | None:  # fmt: skip
        raise JobUpdateNotAllowed("an object store runs no jobs")

    def job_id_from_response(self, match: RouteMatch, status: int, body: bytes) -> str | None:
        return None

    def job_id_of(self, match: RouteMatch) -> str | None:
        return None

    def definitive_rejection(self, status: int, body: bytes) -> bool:
        return False

    def filter_listing(self, match: RouteMatch, body: bytes, owned: Callable[[str], bool]) -> bytes:
        return b""

    def status_path(self, job_id: str) -> str | None:
        return None

    def finished(self, status: int, body: bytes) -> bool | None:
        return None

    def job_view(self, status: int, body: bytes) -> JobView:
        return JobView(None)

    def cancel_target(self, raw_path: str) -> str:
        return raw_path

    def cancel_request(self, job_id: str) -> tuple[str, str] | None:
        return None

    def walltime_stop(self, job_id: str) -> tuple[str, str] | None:
        return None

    def shares_cluster_lease(self) -> bool:
        return False

    def live_jobs_path(self) -> str | None:
        return None

    def live_gpu_jobs(self, status: int, body: bytes, user: str | None) -> tuple[LiveJob, ...] | None:
        return None

    def refusal(self, code: str, status: int, title: str, detail: str, decision_id: str) -> tuple[str, bytes] | None:
        return None  # bearer clients get problem+json; S3 (SigV4) clients get the XML dialect per request
