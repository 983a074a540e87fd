"""`POST /admin/v1/explain`: read the question (JSON), explain it dry, answer the explanation (JSON).

```json
{"tenant": "acme-us", "method": "POST", "path": "/slurm/v0.0.38/job/submit",
 "body": {"job": {...}}, "at": "2027-01-01"}
```

`tenant` or `token` (one of them); `body` (any JSON, sent as the request body) or `body_text`
(a string, sent as is); `content_type` (default `application/json`); `idempotency_key`; `at`
(an ISO 8601 date or date-time, naive taken as UTC, or epoch seconds). Anything else, or a
value of the wrong kind, is 400 `request_malformed`.
"""

import json
import re
from typing import Any

from aiohttp import web

from gateway.adapters.quota import BackendUnavailable
from gateway.config.admin import AdminToken
from gateway.core.codes import Code
from gateway.core.explain import parse_at
from gateway.http.explain import Explainer, Question
from gateway.http.problems import refusal
from gateway.schedulers.base import load_json

FIELDS = frozenset({"tenant", "token", "method", "path", "body", "body_text", "content_type", "idempotency_key", "at"})
_METHOD = re.compile(r"^[A-Z]{1,16}$")
_TEXT_LIMITS = {"tenant": 128, "token": 8192, "path": 4096, "content_type": 256, "idempotency_key": 256}


class Malformed(ValueError):
    """The question cannot be read; the message says which field and why."""


def _text(doc: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise Malformed(f"{key}: required")
        return None
    if not isinstance(value, str) or not value or len(value) > _TEXT_LIMITS.get(key, 1 << 20):
        raise Malformed(f"{key}: must be a non-empty string of at most {_TEXT_LIMITS.get(key, 1 << 20)} characters")
    return value


def question(doc: Any) -> Question:
    """The question a request body asks; raises Malformed."""
    if not isinstance(doc, dict):
        raise Malformed("the body must be a JSON object")
    unknown = sorted(set(doc) - FIELDS)
    if unknown:
        raise Malformed(f"{unknown[0][:64]}: unknown field")
    tenant, token = _text(doc, "tenant"), _text(doc, "token")
    if (tenant is None) == (token is None):
        raise Malformed("tenant, token: give exactly one")
    method = _text(doc, "method", required=True) or ""
    if not _METHOD.match(method):
        raise Malformed("method: an HTTP method in capitals (GET, POST, ...)")
    path = _text(doc, "path", required=True) or ""
    if not path.startswith("/"):
        raise Malformed("path: must start with /")
    if "body" in doc and "body_text" in doc:
        raise Malformed("body, body_text: give at most one")
    body = None
    if "body" in doc:
        body = json.dumps(doc["body"]).encode()
    elif (text := _text(doc, "body_text")) is not None:
        body = text.encode("utf-8", "surrogatepass")
    at = doc.get("at")
    try:
        when = None if at is None else parse_at(at)
    except ValueError as exc:
        raise Malformed(f"at: {exc}") from None
    return Question(
        method=method, path=path, tenant_id=tenant, token=token, body=body,
        content_type=_text(doc, "content_type") or "application/json",
        idempotency_key=_text(doc, "idempotency_key"), at=when,
    )  # fmt: skip


class ExplainApi:
    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer

    async def explain(self, request: web.Request, who: AdminToken) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return refusal(Code.BODY_TOO_LARGE, "the question exceeds the admin listener's body limit", "admin")
        try:
            asked = question(load_json(raw) if raw else None)
        except Malformed as exc:
            return refusal(Code.REQUEST_MALFORMED, str(exc), "admin")
        except ValueError as exc:
            return refusal(Code.REQUEST_MALFORMED, f"the body is not JSON: {str(exc)[:120]}", "admin")
        try:
            answer = await self.explainer.explain(asked)
        except BackendUnavailable as exc:  # every store read is caught inside; this is the last line
            return refusal(Code.BACKEND_UNAVAILABLE, str(exc), "admin")
        return web.json_response(answer, headers={"Cache-Control": "no-store"})
