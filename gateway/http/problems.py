"""Render refusals as RFC 9457 problem+json, or in the scheduler's own dialect."""

import json
from collections.abc import Callable

from aiohttp import web

from gateway.core.codes import CODES, Code

Dialect = Callable[[str, int, str, str, str], tuple[str, bytes] | None]
REALM = "exportgate"


def _description(detail: str) -> str:
    """RFC 6750 error_description allows printable ASCII without quote or backslash."""
    kept = "".join(c for c in detail if 0x20 <= ord(c) <= 0x7E and c not in '"\\')
    return kept[:200]


def www_authenticate(code: Code, detail: str) -> str | None:
    """The RFC 6750 challenge for a bearer-token refusal, or None for other refusals."""
    if code is Code.AUTH_MISSING:  # no credentials: no error attribute (RFC 6750 section 3.1)
        return f'Bearer realm="{REALM}"'
    if code is Code.AUTH_INVALID:
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{_description(detail)}"'
    if code is Code.ROLE_INSUFFICIENT:
        return f'Bearer realm="{REALM}", error="insufficient_scope", error_description="{_description(detail)}"'
    return None


def problem_body(code: Code, detail: str, decision_id: str, citation: str = "") -> bytes:
    info = CODES[code]
    body: dict[str, object] = {
        "type": f"https://exportgate.dev/problems/{code.value}",
        "title": info.title,
        "status": info.status,
        "code": code.value,
        "detail": detail,
        "decision_id": decision_id,
    }
    if citation:
        body["citation"] = citation
    return json.dumps(body).encode()


def refusal(
    code: Code,
    detail: str,
    decision_id: str,
    *,
    citation: str = "",
    retry_after: int | None = None,
    dialect: Dialect | None = None,
) -> web.Response:
    """One refusal response; the scheduler's dialect wins when it has one."""
    info = CODES[code]
    headers = {"X-Exportgate-Decision-Id": decision_id, "Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, retry_after))
    challenge = www_authenticate(code, detail)
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    rendered = dialect(code.value, info.status, info.title, detail, decision_id) if dialect else None
    if rendered is None:
        content_type, body = "application/problem+json", problem_body(code, detail, decision_id, citation)
    else:
        content_type, body = rendered
    headers["Content-Type"] = content_type
    return web.Response(status=info.status, body=body, headers=headers)
