"""Reading a request body the gateway inspects: all of it up to the limit, whatever its segmentation.

`StreamReader.read(n)` returns what has arrived so far, not n bytes: a body sent in several TCP
segments (or chunks) would be cut at the first one. The reader loops until the end of the body,
keeps a running total, and stops the moment the total passes the limit without reading the rest.
Upstream answers the gateway inspects are read the same way (forward.fetch).
aiohttp's request decompression is off on the proxy listener (see app.py), so the bytes read here
are the bytes the client sent: the adapter decodes a gzip body once, bounded, and the upstream
receives these same bytes.
"""

import asyncio
import time
from dataclasses import dataclass

from aiohttp import StreamReader, web


class ClientClosed(Exception):
    """The client went away (hung up, or sent less than it declared) before the gateway could answer."""


class BodyTooLarge(Exception):
    """The body is longer than the limit; the rest of it was not read."""


class BodyTooSlow(Exception):
    """The body paused too long, or arrived slower than the minimum rate; the rest of it was not read."""


@dataclass(frozen=True, slots=True)
class Pace:
    """How slowly a body may arrive: no pause over `gap_s`, and after `gap_s` at least `min_rate_bytes_s` on average."""

    gap_s: float
    min_rate_bytes_s: float

    def wait_s(self, started: float, received: int, now: float) -> float:
        """How long the reader may wait for the next piece, given what arrived since `started`."""
        # The average rate holds while received >= rate * elapsed: the next piece is due by then.
        due = started + max(self.gap_s, received / self.min_rate_bytes_s)
        return min(self.gap_s, due - now)


async def read_bounded(stream: StreamReader, limit: int, pace: Pace | None = None) -> bytes:
    """Everything up to the end of `stream`, at most `limit` bytes; raises BodyTooLarge past it.

    `StreamReader.read(n)` returns what has arrived so far; this loops until the end. With a
    `pace`, a body that pauses or trickles past it raises BodyTooSlow (a slow client must not
    hold its task for as long as it likes).
    """
    # What has arrived already (a small body usually has, whole, with its head): no wait, no timer.
    arrived = stream.read_nowait()
    if len(arrived) > limit:
        raise BodyTooLarge
    if stream.at_eof():
        return arrived
    chunks: list[bytes] = [arrived] if arrived else []
    total = len(arrived)
    started = time.monotonic()
    while True:
        wait = None if pace is None else pace.wait_s(started, total, time.monotonic())
        if wait is not None and wait <= 0:
            raise BodyTooSlow
        try:
            async with asyncio.timeout(wait):
                chunk = await stream.readany()  # b"" only at the end
        except TimeoutError:
            raise BodyTooSlow from None
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge
        chunks.append(chunk)


async def read_limited(request: web.Request, limit: int, pace: Pace | None = None) -> bytes:
    """The whole body, at most `limit` bytes; raises BodyTooLarge or ClientClosed.

    A declared Content-Length over the limit is refused before a byte is read. After a refusal
    the connection must not carry another request (its body is half read): the caller's
    answer closes it (`close_after`).
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    try:
        return await read_bounded(request.content, limit, pace)
    except ConnectionError as exc:  # aiohttp sets ConnectionResetError("Connection lost") on the payload
        raise ClientClosed(str(exc) or type(exc).__name__) from None


def close_after(response: web.StreamResponse) -> web.StreamResponse:
    """Answer, then close the connection: the rest of a refused body is never read as a next request.

    aiohttp discards what still arrives for a bounded lingering time before it closes, so the
    client reads the answer instead of a reset.
    """
    response.force_close()
    return response


def client_gone(request: web.Request) -> bool:
    """Whether the client's connection has been lost (aiohttp drops the transport on connection_lost)."""
    return request.transport is None
