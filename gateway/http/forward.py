"""Carry a request to the upstream and its answer back: streamed bodies and WebSockets."""

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.core.codes import Code
from gateway.http.body import BodyTooLarge, read_bounded
from gateway.http.headers import downstream_response_headers


class UpstreamFailure(Exception):
    """The upstream could not be reached or did not answer; `sent` tells if the request left."""

    def __init__(self, code: Code, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.sent = sent


@dataclass(frozen=True, slots=True)
class Buffered:
    """A complete upstream answer, read because the gateway must look at it."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


async def _stream_body(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(64 * 1024):
        yield chunk


# Above this, a body already read is sent from a BytesIO (written in pieces, with its Content-Length)
# rather than as one bytes object (aiohttp warns that would hold the event loop): package uploads.
_WHOLE_BODY_BYTES = 1 << 20


def _request_data(request: web.Request, body: bytes | None) -> bytes | io.BytesIO | AsyncIterator[bytes] | None:
    if body is not None:
        return io.BytesIO(body) if len(body) > _WHOLE_BODY_BYTES else body
    if request.body_exists:
        return _stream_body(request)
    return None


def classify(exc: BaseException) -> UpstreamFailure:
    """What a client error means for the reservation: `sent` False only when the request never left."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        detail = "the scheduler's TLS certificate is not trusted (see the upstream's tls.ca_file)"
        return UpstreamFailure(Code.UPSTREAM_UNREACHABLE, detail, sent=False)
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return UpstreamFailure(Code.UPSTREAM_UNREACHABLE, "the TLS handshake with the scheduler failed", sent=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamFailure(Code.UPSTREAM_UNREACHABLE, "the scheduler refused the connection", sent=False)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # before ServerTimeoutError, its base class
        return UpstreamFailure(Code.UPSTREAM_UNREACHABLE, "no connection to the scheduler in time", sent=False)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamFailure(Code.UPSTREAM_TIMEOUT, "the scheduler did not answer in time", sent=True)
    return UpstreamFailure(Code.UPSTREAM_UNREACHABLE, "the scheduler connection failed", sent=True)


async def stream(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    body: bytes | None,
    observe: Callable[[float], None],
    extra_headers: dict[str, str],
    write_timeout_s: float = 10.0,
) -> web.StreamResponse:
    """Forward and stream the response back chunk by chunk (no full buffering).

    A client that stops reading would otherwise hold this task and an upstream connection from the
    shared pool for ever: each write must complete within `write_timeout_s`, or the client is cut off.
    """
    started = time.perf_counter()
    try:
        upstream = await session.request(
            request.method,
            URL(url, encoded=True),
            headers=headers,
            data=_request_data(request, body),
            allow_redirects=False,
        )
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise classify(exc) from exc
    observe(time.perf_counter() - started)
    try:
        if _small_whole(request, upstream):
            # A small answer with a Content-Length goes back as one write, headers and body together:
            # nothing to stream, and a write that fits the transport's buffer cannot stall on the client.
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise classify(exc) from exc
            small = web.Response(
                status=upstream.status,
                reason=upstream.reason,
                headers=downstream_response_headers(upstream.headers, keep_length=False),
                body=data,
            )
            small.headers.update(extra_headers)
            return small
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=downstream_response_headers(upstream.headers, keep_length=True),
        )
        response.headers.update(extra_headers)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                async with asyncio.timeout(write_timeout_s):
                    await response.write(chunk)
        except (TimeoutError, aiohttp.ClientError):
            # Headers are out; all we can do is cut the connection so the client sees a short body.
            # abort(), not close(): close() would wait to flush what a non-reading client never takes.
            transport = request.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            elif transport is not None:
                transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        upstream.release()


# Answers up to this size with a Content-Length are read whole and sent in one write (below the
# transport's default high-water mark, so the write never waits on a slow client).
SMALL_ANSWER_BYTES = 16 * 1024


def _small_whole(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """Whether the answer is a small body of known length that is sent as it is (not HEAD, 204 or 304), to a
    client that has taken everything written to it so far (one that has not is written to under the write
    timeout: aiohttp's own last write would wait on it for as long as it does not read)."""
    length = upstream.content_length
    transport = request.transport
    return (
        length is not None
        and 0 < length <= SMALL_ANSWER_BYTES
        and request.method != "HEAD"
        and upstream.status not in (204, 304)
        and upstream.status >= 200
        and transport is not None
        and transport.get_write_buffer_size() == 0
    )


async def fetch(
    request: web.Request,
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    body: bytes | None,
    observe: Callable[[float], None],
    limit: int,
) -> Buffered:
    """Forward and read the whole (bounded) answer, for responses the gateway inspects."""
    started = time.perf_counter()
    # The gateway reads this answer (job id, listing), and the session does not decompress.
    headers["Accept-Encoding"] = "identity"
    try:
        async with session.request(
            request.method,
            URL(url, encoded=True),
            headers=headers,
            data=_request_data(request, body),
            allow_redirects=False,
        ) as upstream:
            observe(time.perf_counter() - started)
            try:
                data = await read_bounded(upstream.content, limit)  # all of it, however it is segmented
            except BodyTooLarge:
                raise UpstreamFailure(
                    Code.UPSTREAM_UNREACHABLE, "the scheduler's answer was too large", sent=True
                ) from None
            return Buffered(upstream.status, downstream_response_headers(upstream.headers, keep_length=False), data)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise classify(exc) from exc


async def websocket(
    request: web.Request, session: aiohttp.ClientSession, url: str, headers: CIMultiDict[str]
) -> web.WebSocketResponse:
    """Proxy an authenticated WebSocket both ways until either side closes."""
    ws_url = "ws" + url[4:] if url.startswith("http") else url
    for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions"):
        headers.popall(name, None)
    try:
        upstream = await session.ws_connect(URL(ws_url, encoded=True), headers=headers, autoping=True)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise classify(exc) from exc
    client = web.WebSocketResponse(autoping=True)
    await client.prepare(request)

    async def pump_up() -> None:
        async for msg in client:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await upstream.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
        await upstream.close()

    async def pump_down() -> None:
        async for msg in upstream:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await client.send_str(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                await client.send_bytes(msg.data)
        await client.close()

    tasks = [asyncio.create_task(pump_up()), asyncio.create_task(pump_down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
        await client.close()
    return client
