"""Shared fixtures: real redis-server processes on free ports."""

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisProcess, start_redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """One redis-server for the whole session; tests use distinct key prefixes or flush it."""
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may kill and restart."""
    server = start_redis()
    yield server
    server.stop()
