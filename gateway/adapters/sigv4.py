"""AWS Signature Version 4 for the object store: check a client's signature, sign toward the store, presign.

Every signature is computed by botocore's own signer (`botocore.auth.S3SigV4Auth` and
`S3SigV4QueryAuth`), never by hand: the gateway recomputes what the client's signature must be
from the request as it arrived (its raw path, its query, exactly the headers it says it signed,
its `x-amz-content-sha256`, its `x-amz-date`) with the secret the registry holds for the access
key, and compares in constant time. Toward the store it signs its own request with the
credentials it holds, the payload hash passed through (the store checks the body against it).
"""

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_PRESIGN_S = 604800  # SigV4's own limit: seven days
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FIELD = re.compile(r"\s*([A-Za-z]+)\s*=\s*([^,\s]*)\s*")
# Payload forms passed through to the store as they are: a hash of the body, no hash, or aws-chunked with
# unsigned chunks and a trailing checksum (SDKs over TLS). Signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD)
# chain each chunk's signature to the client's key, so the store could not check them after re-signing.
PASSED_PAYLOADS = (UNSIGNED_PAYLOAD, STREAMING_UNSIGNED_TRAILER)


class SigV4Error(Exception):
    """A client's SigV4 authentication that does not verify; `s3_code` is the error S3 itself would give."""

    def __init__(self, s3_code: str, detail: str) -> None:
        super().__init__(detail)
        self.s3_code = s3_code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SigV4Claim:
    """What a request says about its signature: who, when, for which scope, over which headers."""

    key_id: str
    scope_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    presigned: bool
    expires_s: int | None = None

    @property
    def when(self) -> datetime:
        return datetime.strptime(self.amz_date, _AMZ_DATE).replace(tzinfo=UTC)


def is_sigv4(authorization: str | None, query: Sequence[tuple[str, str]]) -> bool:
    """Whether a request uses SigV4 (header or presigned query) rather than a bearer token."""
    if authorization is not None and authorization.strip().startswith(ALGORITHM):
        return True
    return any(k == "X-Amz-Algorithm" for k, _ in query)


def _credential(value: str) -> tuple[str, str, str, str]:
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts):
        raise SigV4Error("AuthorizationHeaderMalformed", "the credential is not KEY/DATE/REGION/SERVICE/aws4_request")
    return parts[0], parts[1], parts[2], parts[3]


def _signed_headers(value: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or any(not n or n != n.strip().lower() for n in names):
        raise SigV4Error("AuthorizationHeaderMalformed", "SignedHeaders is not a ;-list of lower-case names")
    if "host" not in names:
        raise SigV4Error("AuthorizationHeaderMalformed", "SignedHeaders must include host")
    return names


def _amz_date(value: str | None) -> str:
    if value is None:
        raise SigV4Error("AccessDenied", "x-amz-date is missing")
    try:
        datetime.strptime(value, _AMZ_DATE)
    except ValueError:
        raise SigV4Error("AccessDenied", "x-amz-date is not YYYYMMDDTHHMMSSZ") from None
    return value


def claim_from_header(authorization: str, headers: Mapping[str, str]) -> SigV4Claim:
    """`Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`."""
    rest = authorization.strip()[len(ALGORITHM) :]
    fields: dict[str, str] = {}
    for part in rest.split(","):
        found = _FIELD.fullmatch(part)
        if found is None or found.group(1) in fields:
            raise SigV4Error("AuthorizationHeaderMalformed", "the Authorization header cannot be read")
        fields[found.group(1)] = found.group(2)
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise SigV4Error("AuthorizationHeaderMalformed", "Credential, SignedHeaders and Signature are required")
    key_id, day, region, service = _credential(fields["Credential"])
    return SigV4Claim(key_id, day, region, service, _signed_headers(fields["SignedHeaders"]),
                      fields["Signature"], _amz_date(headers.get("x-amz-date")), presigned=False)  # fmt: skip


def claim_from_query(query: Sequence[tuple[str, str]]) -> SigV4Claim:
    """A presigned URL's `X-Amz-*` query parameters."""
    params: dict[str, str] = {}
    for k, v in query:
        if k.startswith("X-Amz-") and k in params:
            raise SigV4Error("AuthorizationQueryParametersError", f"{k} is repeated")
        params[k] = v
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise SigV4Error("AuthorizationQueryParametersError", f"X-Amz-Algorithm must be {ALGORITHM}")
    needed = ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature")
    missing = [k for k in needed if k not in params]
    if missing:
        raise SigV4Error("AuthorizationQueryParametersError", f"missing {', '.join(missing)}")
    if "X-Amz-Security-Token" in params:
        raise SigV4Error("InvalidToken", "temporary credentials (X-Amz-Security-Token) are not accepted")
    expires = params["X-Amz-Expires"]
    if not expires.isdigit() or not 1 <= int(expires) <= MAX_PRESIGN_S:
        raise SigV4Error("AuthorizationQueryParametersError", "X-Amz-Expires must be 1..604800 seconds")
    key_id, day, region, service = _credential(params["X-Amz-Credential"])
    return SigV4Claim(key_id, day, region, service, _signed_headers(params["X-Amz-SignedHeaders"]),
                      params["X-Amz-Signature"], _amz_date(params["X-Amz-Date"]), presigned=True,
                      expires_s=int(expires))  # fmt: skip


def check_scope(claim: SigV4Claim, region: str, now: float, skew_s: int, max_expires_s: int | None = None) -> None:
    """The credential scope names this store (date of `x-amz-date`, region, `s3`), and the time is right:
    within `skew_s` of the gateway's clock, or for a presigned URL, not yet expired."""
    if claim.service != SERVICE or claim.region != region:
        raise SigV4Error("AuthorizationHeaderMalformed", f"the credential scope must be for region {region}, "
                                                         f"service {SERVICE}")  # fmt: skip
    if claim.scope_date != claim.amz_date[:8]:
        raise SigV4Error("AuthorizationHeaderMalformed", "the credential scope's date is not x-amz-date's")
    signed = claim.when
    clock = datetime.fromtimestamp(now, UTC)
    if signed - clock > timedelta(seconds=skew_s):
        raise SigV4Error("RequestTimeTooSkewed", "the request's signing time is ahead of the gateway's clock")
    if not claim.presigned:
        if clock - signed > timedelta(seconds=skew_s):
            raise SigV4Error("RequestTimeTooSkewed", "the request's signing time is too far in the past")
        return
    assert claim.expires_s is not None
    if max_expires_s is not None and claim.expires_s > max_expires_s:
        raise SigV4Error("AccessDenied", f"a presigned URL may live at most {max_expires_s} s")
    if clock > signed + timedelta(seconds=claim.expires_s):
        raise SigV4Error("AccessDenied", "Request has expired")


def _only(request: AWSRequest, signed: Sequence[str]) -> HTTPHeaders:
    """The request's headers that the client named as signed, and no others."""
    out = HTTPHeaders()
    for name in signed:
        for value in request.headers.get_all(name) or []:
            out[name] = value
    return out


class _Exactly(S3SigV4Auth):
    """botocore's S3 signer over exactly the headers the client signed, at the client's time."""

    def __init__(self, credentials: Credentials, region: str, signed: Sequence[str]) -> None:
        super().__init__(credentials, SERVICE, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return _only(request, self._signed)


class _ExactlyQuery(S3SigV4QueryAuth):
    """botocore's presigned-URL signer over exactly the headers the URL signed."""

    def __init__(self, credentials: Credentials, region: str, signed: Sequence[str], expires: int) -> None:
        super().__init__(credentials, SERVICE, region, expires)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return _only(request, self._signed)


def verify(
    claim: SigV4Claim,
    secret: str,
    method: str,
    raw_path: str,
    query: Sequence[tuple[str, str]],
    headers: Any,
) -> None:
    """Raise SigV4Error unless the client's signature is what `secret` gives over the request as it arrived.

    `raw_path` is the path as sent (still percent-encoded: S3's canonical URI); `query` the decoded
    pairs; `headers` the client's (a multidict: repeated headers are joined, as SigV4 says).
    """
    present = {name.lower() for name in headers}
    absent = [name for name in claim.signed_headers if name not in present]
    if absent:
        raise SigV4Error("AccessDenied", f"signed headers {', '.join(absent)} are missing")
    signed_values = HTTPHeaders()
    getall = getattr(headers, "getall", None)
    for name in claim.signed_headers:
        values = getall(name) if getall else [headers[name]]
        signed_values[name] = ",".join(" ".join(v.split()) for v in values)
    credentials = Credentials(claim.key_id, secret)
    request = AWSRequest(method=method.upper(), url="http://gateway" + raw_path)
    request.headers = signed_values
    request.context["timestamp"] = claim.amz_date
    if claim.presigned:
        assert claim.expires_s is not None
        # A list keeps repeated names (botocore's canonical query sorts and encodes pairs either way).
        request.params = cast(Any, [(k, v) for k, v in query if k != "X-Amz-Signature"])
        signer: SigV4Auth = _ExactlyQuery(credentials, claim.region, claim.signed_headers, claim.expires_s)
    else:
        if "x-amz-content-sha256" not in claim.signed_headers:
            raise SigV4Error("InvalidRequest", "x-amz-content-sha256 must be signed")
        request.params = cast(Any, list(query))
        signer = _Exactly(credentials, claim.region, claim.signed_headers)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected.encode(), claim.signature.encode()):
        raise SigV4Error("SignatureDoesNotMatch", "the request signature does not match the one computed with "
                                                  "the access key's secret")  # fmt: skip


def payload_hash(value: str | None, *, signed: bool) -> str:
    """The `x-amz-content-sha256` to pass on (checked form), for a SigV4 client; bearer clients send none."""
    if value is None:
        return UNSIGNED_PAYLOAD
    if value in PASSED_PAYLOADS or _HEX64.match(value):
        return value
    if value.startswith("STREAMING-"):
        detail = "payloads (signed aws-chunked) are not supported through the gateway; sign the whole payload"
        raise SigV4Error("NotImplemented", f"{value[:48]} {detail} or send UNSIGNED-PAYLOAD")
    raise SigV4Error("InvalidArgument", "x-amz-content-sha256 is not a SHA-256 hex digest or a known form")


class _Upstream(S3SigV4Auth):
    """botocore's S3 signer with the payload hash given (the body streams past, the store checks it)."""

    def __init__(self, credentials: Credentials, region: str, payload: str) -> None:
        super().__init__(credentials, SERVICE, region)
        self._payload = payload

    def payload(self, request: AWSRequest) -> str:
        return self._payload


def sign_upstream(method: str, url: str, headers: Mapping[str, str], key_id: str, secret: str, region: str,
                  payload: str) -> dict[str, str]:  # fmt: skip
    """The headers that authenticate the gateway's request at the store: `headers` (all signed), the payload
    hash, `X-Amz-Date` and `Authorization`, signed with the gateway's own credentials now."""
    request = AWSRequest(method=method.upper(), url=url, headers=dict(headers))
    _Upstream(Credentials(key_id, secret), region, payload).add_auth(request)
    return dict(request.headers.items())


def presign_url(url: str, key_id: str, secret: str, region: str, expires_s: int) -> str:
    """A presigned GET URL for `url`, signed now with (`key_id`, `secret`), valid `expires_s` seconds."""
    request = AWSRequest(method="GET", url=url)
    S3SigV4QueryAuth(Credentials(key_id, secret), SERVICE, region, expires_s).add_auth(request)
    return str(request.url)


def derived_secret(presign_key: bytes, tenant_id: str) -> str:
    """The secret of a tenant's presign credential: an HMAC of its id under the gateway's presign key."""
    return hmac.new(presign_key, b"exportgate-presign/1\0" + tenant_id.encode(), hashlib.sha256).hexdigest()
