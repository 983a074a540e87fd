"""Connection guard for the proxy listener: a cap on open connections and a deadline on each request head.

aiohttp bounds idle keep-alive (its `keepalive_timeout`) but not a client that opens a connection and
sends half a request line, or its headers a byte at a time; a few hundred such sockets would hold a
task each for as long as they like. The guard closes them after `head_timeout_s`, and refuses
connections beyond `max_connections` with a 503 at once rather than letting them queue.
Body timeouts are the reader's job (gateway/http/body.py): only the handler knows a body is awaited.
"""

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.config.limits import Limits

log = logging.getLogger(__name__)


def _raw_refusal(status: int, reason: str, code: str, detail: str) -> bytes:
    body = (
        f'{{"type":"https://exportgate.dev/problems/{code}","title":"{reason}","status":{status},'
        f'"code":"{code}","detail":"{detail}"}}'
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
    ).encode()
    return head + body


OVERLOADED = _raw_refusal(
    503, "Service Unavailable", "too_many_connections", "the gateway has too many open connections; retry shortly"
)
HEAD_TIMEOUT = _raw_refusal(
    408, "Request Timeout", "request_timeout", "the request line and headers did not arrive in time"
)


@dataclass(slots=True)
class Guard:
    """Shared by every connection of one listener: the limits, the open count, and what to report."""

    limits: Limits
    on_open: Callable[[int], None] = lambda n: None
    on_refused: Callable[[str], None] = lambda reason: None
    open: int = 0
    handlers: set["GuardedHandler"] = field(default_factory=set)


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with the guard's connection cap and head deadline.

    The head deadline runs while no request is being handled and none is queued: from the
    connection's opening, and from the first byte of each later request on a kept-alive
    connection. It ends when aiohttp has parsed a complete request head.
    """

    def __init__(self, manager: web.Server, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_deadline: asyncio.TimerHandle | None = None
        self._heads_seen = 0
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.open >= guard.limits.max_connections:
            self._refused = True
            guard.on_refused("max_connections")
            assert isinstance(transport, asyncio.Transport)
            transport.write(OVERLOADED)
            transport.close()
            return
        guard.open += 1
        guard.handlers.add(self)
        guard.on_open(guard.open)
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._disarm()
        if self in self._guard.handlers:
            self._guard.handlers.discard(self)
            self._guard.open -= 1
            self._guard.on_open(self._guard.open)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # A connection that closes after its answer (a refusal lingering over an unread body) needs no
        # deadline for a next head: aiohttp's lingering is bounded and no further request is read.
        if self._head_deadline is None and self._keepalive and self._between_requests():
            self._arm()
        super().data_received(data)
        if self._request_count != self._heads_seen:  # aiohttp parsed one or more complete heads
            self._heads_seen = self._request_count
            self._disarm()

    def _between_requests(self) -> bool:
        # A WebSocket keeps its upgrading request current for its whole life, so it never counts as idle here.
        return self._current_request is None and not self._messages

    def _arm(self) -> None:
        self._disarm()
        self._heads_seen = self._request_count
        self._head_deadline = self._loop.call_later(self._guard.limits.head_timeout_s, self._head_late)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if self.transport is None or not self._between_requests() or self._request_count != self._heads_seen:
            return  # a request is being handled: its body reader has its own deadlines
        self._guard.on_refused("head_timeout")
        log.info("closing a connection whose request head did not arrive within %.1f s",
                 self._guard.limits.head_timeout_s)  # fmt: skip
        self.transport.write(HEAD_TIMEOUT)
        self.force_close()


class GuardedSite(web.BaseSite):
    """A TCP listener whose connections are GuardedHandlers of the runner's server.

    With `ssl_context` it terminates TLS; a handshake must finish within the head deadline (the
    guard sees a connection only once its handshake is done)."""

    __slots__ = ("_guard", "_handler_args", "_host", "_port", "_reuse_port", "_tls")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: Guard,
        *,
        reuse_port: bool = False,
        handler_args: dict[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner)
        self._host, self._port, self._guard, self._reuse_port = host, port, guard, reuse_port
        self._handler_args = handler_args or {}
        self._tls = ssl_context

    @property
    def name(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def factory() -> GuardedHandler:
            return GuardedHandler(server, loop=loop, guard=self._guard, **self._handler_args)

        handshake_s = self._guard.limits.head_timeout_s if self._tls is not None else None
        self._server = await loop.create_server(
            factory, self._host, self._port, reuse_address=True, reuse_port=self._reuse_port or None, backlog=1024,
            ssl=self._tls, ssl_handshake_timeout=handshake_s,
        )  # fmt: skip
