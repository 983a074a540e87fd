"""Render refusals as RFC 9457 problem+json, or in the scheduler's own dialect."""

import json
from collections.abc import Callable

from aiohttp import web

from gateway.core.codes import CODES, Code

Dialect = Callable[[str, int, str, str, str], tuple[str, bytes] | None]


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
    rendered = dialect(code.value, info.status, info.title, detail, decision_id) if dialect else None
    if rendered is None:
        content_type, body = "application/problem+json", problem_body(code, detail, decision_id, citation)
    else:
        content_type, body = rendered
    headers["Content-Type"] = content_type
    return web.Response(status=info.status, body=body, headers=headers)
