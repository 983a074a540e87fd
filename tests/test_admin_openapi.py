"""The admin API's OpenAPI 3.1 document: valid, served, and exactly the routes the admin application serves."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from gateway.http.admin_openapi import document
from tests.admin_kit import tokens_file
from tests.harness import Stack, call, running_stack

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, admin_tokens_file=tokens_file(tmp_path)) as s:
        yield s


def test_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts it as OpenAPI 3.1, and every operation names its role or none."""
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    operations = [op for item in doc["paths"].values() for m, op in item.items() if m in METHODS]
    assert {op.get("x-exportgate-role") for op in operations} == {None, "read", "operate", "admin"}
    assert all((op["security"] == []) == ("x-exportgate-role" not in op) for op in operations)


async def test_document_lists_exactly_the_served_routes(stack: Stack) -> None:
    """Every (method, path) the admin application routes is in the document, and every one it lists is routed."""
    app = stack.server.admin_application()
    served = {
        (route.method.lower(), resource.canonical)
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD"  # aiohttp adds HEAD to every GET
    }
    listed = {(m, path) for path, item in document()["paths"].items() for m in item if m in METHODS}
    assert served == listed
    assert len(served) >= 13


async def test_document_is_served_without_a_token(stack: Stack) -> None:
    """GET /admin/v1/openapi.json answers the document itself, to anyone who reaches the admin listener."""
    status, body, headers = await call(stack, "GET", "/admin/v1/openapi.json", admin=True)
    assert (status, body) == (200, document())
    assert headers["Content-Type"].startswith("application/json")
