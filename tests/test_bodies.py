"""Request bodies over real sockets: read whole whatever their segmentation, bounded, gzip decoded once,
forwarded as priced, and clients that hang up or send malformed requests counted and logged as theirs."""

import asyncio
import gzip
import json
import logging
import shutil
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong

from gateway.core.leases import QUOTA_SLOT
from gateway.http.client_faults import ClientFaultFilter
from tests.harness import (
    E2E_TENANTS,
    SLURM_ROUTES,
    SUBMIT,
    Stack,
    call,
    ledger_records,
    running_stack,
    wait_for_record,
    wait_until,
)
from tests.recorder import Recorder, recorded_stack

JSON = {"Content-Type": "application/json"}
LIMIT = 65536  # limits.max_body_bytes in the harness's gateway.yaml
H100 = 15832.0  # TPP of one H100; capped-ae's cap is two


def job_body(gpus: str = "h100:1", *, script: str = "#!/bin/bash\ntrue", name: str = "t") -> bytes:
    """A valid slurmrestd v0.0.38 submission."""
    spec = {"name": name, "partition": "gpu", "time_limit": 60, "gpus": gpus, "environment": {"PATH": "/usr/bin"}}
    return json.dumps({"job": spec, "script": script}).encode()


def request_head(stack: Stack, sub: str, *, length: int | None, path: str = SUBMIT, extra: str = "") -> bytes:
    """A POST head as a client writes it: Content-Length, or chunked when `length` is None."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {stack.idp.token(sub)}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n{extra}\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def read_response(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and the Content-Length body of one response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout_s)
    return int(lines[0].split()[1]), headers, body


async def send(writer: asyncio.StreamWriter, pieces: list[tuple[float, bytes]]) -> None:
    """Write each piece after its pause: a pause longer than a round trip makes a separate TCP segment."""
    for pause, data in pieces:
        if pause:
            await asyncio.sleep(pause)
        writer.write(data)
        await writer.drain()


def sample(stack: Stack, route_kind: str, status_class: str) -> float:
    value = stack.server.metrics.registry.get_sample_value(
        "exportgate_requests_total", {"route_kind": route_kind, "status_class": status_class}
    )
    return value or 0.0


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records at ERROR or above, or carrying a traceback."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.fixture
async def recorded(tmp_path: Path) -> AsyncIterator[tuple[Stack, Recorder]]:
    async with recorded_stack(tmp_path) as pair:
        yield pair


# -- item 2: the whole body, whatever its segmentation ------------------------------------------------

BODY = job_body("h100:2")
SEGMENTED = [
    ("two-segments-0.3s-apart", len(BODY), [(0.0, BODY[:60]), (0.3, BODY[60:])]),
    ("chunked-in-three-pieces", None, [(0.0, chunk(BODY[:50])), (0.1, chunk(BODY[50:100])),
                                       (0.1, chunk(BODY[100:]) + b"0\r\n\r\n")]),
    ("byte-by-byte-tail", len(BODY), [(0.0, BODY[:-3]), *[(0.05, BODY[i : i + 1]) for i in range(len(BODY) - 3,
                                                                                               len(BODY))]]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "length", "pieces"), SEGMENTED, ids=[c[0] for c in SEGMENTED])
async def test_segmented_body_is_read_whole(
    recorded: tuple[Stack, Recorder], case: str, length: int | None, pieces: list[tuple[float, bytes]]
) -> None:
    """A body arriving in pieces is priced whole and forwarded byte for byte."""
    stack, recorder = recorded
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.listen_port)
    writer.write(request_head(stack, "acme-us", length=length))
    await send(writer, pieces)
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 200, body
    assert recorder.bodies == [BODY]


async def test_540_kb_submission_is_read_whole(tmp_path: Path) -> None:
    """A valid 540 KB submission under a 1 MiB limit is priced and forwarded whole."""
    body = job_body("h100:1", script="#!/bin/bash\n" + "# padding\n" * 54_000)
    assert 540_000 <= len(body) < 1 << 20
    async with recorded_stack(tmp_path, limits="max_body_bytes: 1048576") as (stack, recorder):
        status, answer, _ = await call(stack, "POST", SUBMIT, "acme-us", data=body, headers=JSON)
        assert status == 200, answer
        assert recorder.bodies == [body]


# -- item 2: over the limit, 413 at once, and the connection is not reused ------------------------------

OVER = [
    # (case, declared Content-Length or None for chunked, what is sent before the answer, the rest)
    ("content-length-declared-over", LIMIT + 1, b"", b"x" * (LIMIT + 1)),
    ("chunked-over", None, chunk(b" " * 40_000) + chunk(b" " * 40_000), b"0\r\n\r\n"),
    ("content-length-sent-over", LIMIT + 100_000, b" " * (LIMIT + 10), b" " * 99_990),
]


@pytest.mark.parametrize(("case", "length", "first", "rest"), OVER, ids=[c[0] for c in OVER])
async def test_body_over_the_limit_is_413_and_closes(
    recorded: tuple[Stack, Recorder], case: str, length: int | None, first: bytes, rest: bytes
) -> None:
    """Past the limit the answer is 413 body_too_large before the rest is sent, and the connection then closes."""
    stack, recorder = recorded
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.listen_port)
    writer.write(request_head(stack, "acme-us", length=length) + first)
    await writer.drain()
    status, headers, body = await read_response(reader)  # the rest of the body has not been sent yet
    assert (status, json.loads(body)["code"]) == (413, "body_too_large")
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"].lower() == "close"
    # A next request on the same connection is never answered: the half-read body cannot desynchronise it.
    writer.write(rest + b"GET /slurm/v0.0.38/ping HTTP/1.1\r\nHost: gw\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    writer.close()
    assert recorder.requests == []


# -- item 5: a client that hangs up is "client closed", never a 5xx or an ERROR --------------------------

HANGUPS = [
    # (case, declared Content-Length or None for chunked, what is sent before hanging up)
    ("headers-only", 1000, b""),
    ("content-length-lie", 1000, job_body()[:100]),
    ("chunked-cut", None, chunk(job_body()[:100])),
]


@pytest.mark.parametrize(("case", "length", "sent"), HANGUPS, ids=[c[0] for c in HANGUPS])
async def test_hangup_mid_body_is_client_closed_and_reserves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, length: int | None, sent: bytes
) -> None:
    """A client gone mid-body is counted client_closed at INFO, holds no quota, and its cap stays whole."""
    caplog.set_level(logging.INFO)
    async with running_stack(tmp_path, registry=E2E_TENANTS) as stack:
        _, writer = await asyncio.open_connection("127.0.0.1", stack.settings.listen_port)
        writer.write(request_head(stack, "capped-ae", length=length) + sent)
        await writer.drain()
        await asyncio.sleep(0.3)  # the handler is waiting for the rest of the body
        writer.close()
        await wait_until(lambda: sample(stack, "submit", "client_closed") == 1, 3.0)
        assert sample(stack, "submit", "5xx") == 0
        store = stack.server.store
        assert store is not None
        assert await store.counter_value(QUOTA_SLOT, "tenant:capped-ae", stack.server.clock()) == 0
        assert stack.standin.requests == []
        # The whole cap (two H100s) is still there for the next submission.
        status, answer, _ = await call(stack, "POST", SUBMIT, "capped-ae", data=job_body("h100:2"), headers=JSON)
        assert status == 200, answer
        assert [r["kind"] for r in ledger_records(stack) if r.get("route") == "slurm.job.submit"] == ["decision"]
    assert errors(caplog) == []
    assert any("client closed" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


async def test_client_leaving_before_the_answer_is_client_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that leaves while the upstream is slow is client_closed, not the 504 nobody received."""
    caplog.set_level(logging.INFO)
    timeout_s = 0.5
    async with running_stack(tmp_path, timeout_s=timeout_s) as stack:
        _, writer = await asyncio.open_connection("127.0.0.1", stack.settings.listen_port)
        # The stand-in answers after the gateway's timeout (that would be a 504), soon enough to let the stack stop.
        token = stack.idp.token("acme-us")
        writer.write(
            f"GET /standin/hang?seconds={2 * timeout_s} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}"
            "\r\n\r\n".encode()
        )
        await writer.drain()
        await wait_until(lambda: any(r["path"].startswith("/standin/hang") for r in stack.standin.requests))
        writer.close()
        await wait_until(lambda: sample(stack, "plain_read", "client_closed") == 1, 3.0)
        assert sample(stack, "plain_read", "5xx") == 0
    assert errors(caplog) == []


# -- item 5's siblings: malformed requests aiohttp refuses itself are INFO lines, not ERROR tracebacks -----

MALFORMED = [
    ("bad-chunk-size", b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n"),
    ("header-too-long", b"GET /x HTTP/1.1\r\nHost: gw\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n"),
    ("bad-header-name", b"GET /x HTTP/1.1\r\nHost: gw\r\nBad Name: x\r\n\r\n"),
    ("length-and-chunked", b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
    ("bad-version", b"GET /x HTTP/9.z\r\nHost: gw\r\n\r\n"),
]


@pytest.mark.parametrize(("case", "raw"), MALFORMED, ids=[c[0] for c in MALFORMED])
async def test_malformed_request_is_400_logged_at_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, raw: bytes
) -> None:
    """A request aiohttp cannot parse gets 400 and one INFO line, no ERROR and no traceback."""
    caplog.set_level(logging.INFO)
    async with running_stack(tmp_path) as stack:
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.listen_port)
        writer.write(raw)
        await writer.drain()
        status, _, _ = await read_response(reader)
        writer.close()
        assert status == 400
    assert errors(caplog) == []
    assert any(r.name == "aiohttp.server" and "malformed request" in r.getMessage() for r in caplog.records)


FAULTS = [
    ("bad-message", BadHttpMessage("Invalid character in chunk size"), logging.INFO),
    ("line-too-long", LineTooLong("header line", "8190"), logging.INFO),
    ("client-reset", ConnectionResetError("Connection lost"), logging.INFO),
    ("gateway-bug", KeyError("job"), logging.ERROR),
    ("server-side-processing-error", HttpProcessingError(code=500, message="oops"), logging.ERROR),
]


@pytest.mark.parametrize(("case", "exc", "level"), FAULTS, ids=[c[0] for c in FAULTS])
def test_only_client_faults_are_downgraded(case: str, exc: BaseException, level: int) -> None:
    """aiohttp's ERROR records about a client's fault become INFO without a traceback; any other stays ERROR."""
    logger = logging.getLogger("aiohttp.server")
    message, args = "Error handling request from %s", ("127.0.0.1",)
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, message, args, (type(exc), exc, None))
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        kept = ClientFaultFilter().filter(record)
    finally:
        logger.setLevel(previous)
    assert kept and record.levelno == level
    assert (record.exc_info is None) == (level == logging.INFO)
    assert record.getMessage().startswith("Error handling request from 127.0.0.1")


# -- item 3: gzip decoded exactly once, and the upstream receives what was priced ------------------------


def submitted(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in ledger_records(stack) if r.get("kind") == "decision" and r.get("route") == "slurm.job.submit"]


async def post_with_curl(stack: Stack, data: bytes, path: Path, headers: dict[str, str]) -> int:
    """POST a file as `curl --data-binary @file` does, returning the status."""
    args = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{path}"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    proc = await asyncio.create_subprocess_exec(*args, stack.url + SUBMIT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return int(out)


async def post_with_aiohttp(stack: Stack, data: bytes, path: Path, headers: dict[str, str]) -> int:
    """POST the file's bytes with an explicit Content-Encoding, as curl would send them."""
    async with (
        aiohttp.ClientSession() as client,
        client.post(stack.url + SUBMIT, data=data, headers=headers) as resp,
    ):
        return resp.status


CLIENTS = [("curl", post_with_curl), ("aiohttp", post_with_aiohttp)]


@pytest.mark.parametrize(("client", "post"), CLIENTS, ids=[c[0] for c in CLIENTS])
async def test_gzip_submission_is_priced_and_forwarded_as_sent(
    recorded: tuple[Stack, Recorder], tmp_path: Path, client: str, post: Any
) -> None:
    """An ordinary gzip body is priced on its content and the upstream receives the same gzip bytes."""
    if client == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    stack, recorder = recorded
    compressed = gzip.compress(job_body("h100:4"))
    path = tmp_path / "job.json.gz"
    path.write_bytes(compressed)
    headers = {**stack.auth("acme-us"), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    assert await post(stack, compressed, path, headers) == 200
    assert recorder.bodies == [compressed]
    assert recorder.requests[0].headers["Content-Encoding"] == "gzip"
    [record] = submitted(stack)
    assert record["job"]["parts"][0]["gpus"] == 4


def bomb() -> bytes:
    """A valid-looking submission whose script is 64 MiB of spaces: about 64 KB gzipped."""
    head, tail = job_body(script="@").split(b"@")
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(head)]
    block = b" " * (1 << 20)
    parts += [packer.compress(block) for _ in range(64)]
    return b"".join([*parts, packer.compress(tail), packer.flush()])


ENCODED = [
    ("gzip-twice", gzip.compress(gzip.compress(job_body())), ["gzip"], 400),
    ("gzip-header-twice", gzip.compress(job_body()), ["gzip", "gzip"], 400),
    ("deflate", zlib.compress(job_body()), ["deflate"], 400),
    ("gzip-label-on-plain-json", job_body(), ["gzip"], 400),
    ("bomb", bomb(), ["gzip"], 400),
]


@pytest.mark.parametrize(("case", "data", "encodings", "status"), ENCODED, ids=[c[0] for c in ENCODED])
async def test_bodies_not_decodable_exactly_once_are_refused(
    tmp_path: Path, case: str, data: bytes, encodings: list[str], status: int
) -> None:
    """Bodies that are not one bounded gzip member are refused job_spec_invalid, quickly, and never forwarded."""
    async with recorded_stack(tmp_path, limits="max_body_bytes: 1048576") as (stack, recorder):
        assert len(data) < 1 << 20
        headers: list[tuple[str, str]] = [*stack.auth("acme-us").items(), ("Content-Type", "application/json")]
        headers += [("Content-Encoding", e) for e in encodings]
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as client,
            client.post(stack.url + SUBMIT, data=data, headers=headers) as resp,
        ):
            body = await resp.json(content_type=None)
        assert (resp.status, body["code"]) == (status, "job_spec_invalid")
        assert time.monotonic() - started < 2.0
        assert recorder.requests == []


async def test_gzip_body_on_a_plain_route_passes_through_untouched(tmp_path: Path) -> None:
    """A gzip body on a route the gateway does not inspect reaches the upstream as sent, header included."""
    echo = SLURM_ROUTES + '      - {name: echo, methods: [POST], path: "/standin/echo", kind: plain_read}\n'
    compressed = gzip.compress(b'{"anything": "at all"}' * 100)
    async with recorded_stack(tmp_path, upstream_extra=echo) as (stack, recorder):
        headers = {"Content-Encoding": "gzip", **JSON}
        assert (await call(stack, "POST", "/standin/echo", "acme-us", data=compressed, headers=headers))[0] == 200
        assert recorder.bodies == [compressed]
        assert recorder.requests[0].headers["Content-Encoding"] == "gzip"


# -- item 2's and 3's siblings on the answer side: upstream answers the gateway reads ---------------------

ANSWERS = [
    ("answer-in-two-segments", lambda: Recorder(pause_s=0.3), {}),
    ("client-accepts-gzip", lambda: Recorder(gzip_when_accepted=True), {"Accept-Encoding": "gzip, deflate"}),
]


@pytest.mark.parametrize(("case", "make", "extra"), ANSWERS, ids=[c[0] for c in ANSWERS])
async def test_submission_answer_is_read_whole_and_plain(
    tmp_path: Path, case: str, make: Callable[[], Recorder], extra: dict[str, str]
) -> None:
    """The scheduler's answer is read to its end and asked for uncompressed, so the job id is found and owned."""
    recorder = make()
    async with recorded_stack(tmp_path, recorder) as (stack, _):
        headers = {**stack.auth("acme-us"), "Content-Type": "application/json", **extra}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as client,
            client.post(stack.url + SUBMIT, data=job_body(), headers=headers) as resp,
        ):
            assert resp.status == 200
            assert json.loads(await resp.read()) == {"job_id": 1, "errors": []}
        settle = await wait_for_record(stack, "settle")
        assert settle["job_id"] == "1"
        assert recorder.requests[0].headers["Accept-Encoding"] == "identity"
