"""Envoy's ext_authz gRPC service (`envoy.service.auth.v3.Authorization/Check`) on its own listener.

Each Check is translated (gateway.http.envoy_check), decided by the one decision service every
entry point shares, and answered; this module only serves. Its messages are the generated ones
of the `xds-protos` package (Envoy's data-plane API as the gRPC project publishes it).

Shutdown follows the proxy's: `begin_stop` closes the port at once and gives in-flight Checks
`grace_s`; `stop` waits for that, so the gateway's parts close only after the last Check ends.
"""

import asyncio
import logging
from typing import Any, Protocol

import grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from gateway.core.codes import Code
from gateway.http.decision import Answer, Asked
from gateway.http.envoy_check import METHOD, SERVICE, Malformed, asked, check_response, denial, parse

log = logging.getLogger(__name__)
HEADER_ALLOWANCE = 1024 * 1024  # a Check's attributes and headers beside the largest body it may carry


class Decides(Protocol):
    """The decision service, as this listener uses it."""

    async def check(self, asked: Asked) -> Answer: ...


class ExtAuthzServer:
    """A grpc.aio server answering Envoy's Check with the decision service's answers."""

    def __init__(
        self,
        service: Decides,
        host: str,
        port: int,
        *,
        max_body_bytes: int,
        max_concurrent: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.service = service
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._options = [
            ("grpc.max_receive_message_length", max_body_bytes + HEADER_ALLOWANCE),
            ("grpc.so_reuseport", 1 if reuse_port else 0),  # several workers share the port, like the proxy's
        ]
        self._max_concurrent = max_concurrent
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Future[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port (a free one when `port` was 0)."""
        server = grpc.aio.server(options=self._options, maximum_concurrent_rpcs=self._max_concurrent)
        handler = grpc.unary_unary_rpc_method_handler(
            self.check, request_deserializer=parse, response_serializer=CheckResponse.SerializeToString
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),))
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpc says only that the bind failed (a taken port, an unknown host)
            await server.stop(None)
            raise OSError(f"envoy_grpc: cannot listen on {self.address}: {exc}") from None
        self._server = server
        await server.start()
        return self.port

    async def check(self, request: CheckRequest | Malformed, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """One Check: a denial for what cannot be read, else the decision service's answer."""
        try:
            translated = request if isinstance(request, Malformed) else asked(request)
            if isinstance(translated, Malformed):
                log.info("envoy_grpc: malformed Check from %s: %s", context.peer(), translated.detail)
                return denial(translated.code, translated.detail)
            return check_response(translated, await self.service.check(translated))
        except asyncio.CancelledError:
            raise
        except Exception:  # the last line of defence: a denial, never a gRPC error or a traceback to Envoy
            log.exception("envoy_grpc: unexpected error answering a Check")
            return denial(Code.BACKEND_UNAVAILABLE, "the gateway could not complete this check")

    def begin_stop(self, grace_s: float) -> None:
        """Close the port now; in-flight Checks get `grace_s` before they are cancelled."""
        if self._stopping is None and self._server is not None:
            self._stopping = asyncio.ensure_future(self._server.stop(grace_s))

    async def stop(self, grace_s: float) -> None:
        """begin_stop, then wait until the server has stopped."""
        self.begin_stop(grace_s)
        if self._stopping is not None:
            await self._stopping
