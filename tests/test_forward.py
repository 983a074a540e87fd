"""Which upstream failures leave a submission's lease held ("when in doubt, hold")."""

import aiohttp
import pytest

from gateway.core.codes import Code
from gateway.http.forward import classify


class _Key:
    host, port, ssl = "127.0.0.1", 1, None


REFUSED = aiohttp.ClientConnectorError(_Key(), OSError(111, "refused"))  # type: ignore[arg-type]
CASES = [
    ("connection-refused", REFUSED, Code.UPSTREAM_UNREACHABLE, False),
    ("connect-timeout", aiohttp.ConnectionTimeoutError(), Code.UPSTREAM_UNREACHABLE, False),
    ("read-timeout", aiohttp.SocketTimeoutError(), Code.UPSTREAM_TIMEOUT, True),
    ("overall-timeout", TimeoutError(), Code.UPSTREAM_TIMEOUT, True),
    ("disconnected", aiohttp.ServerDisconnectedError(), Code.UPSTREAM_UNREACHABLE, True),
]


@pytest.mark.parametrize(("case", "exc", "code", "sent"), CASES, ids=[c[0] for c in CASES])
def test_classify(case: str, exc: BaseException, code: Code, sent: bool) -> None:
    """Only failures before the request left (refused, connect timeout) allow a refund."""
    failure = classify(exc)
    assert (failure.code, failure.sent) == (code, sent)
