"""The floor of this stack: a bare aiohttp + uvloop pass-through proxy (no auth, no policy, no ledger).

`python -m bench.bare_proxy PORT UPSTREAM_URL`: one ClientSession with keep-alive connections to the
upstream; request and response bodies are streamed through; hop-by-hop headers are dropped.
"""

import asyncio
import importlib
import sys
from collections.abc import Mapping

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host",
    )
)  # fmt: skip


def _end_to_end(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


def proxy_app(upstream: str) -> web.Application:
    """Every method and path forwarded to `upstream` as it came."""
    session: dict[str, aiohttp.ClientSession] = {}

    async def open_session(app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        session["s"] = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close_session(app: web.Application) -> None:
        await session["s"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        data = request.content if request.body_exists else None
        async with session["s"].request(
            request.method, upstream + request.path_qs, headers=_end_to_end(request.headers), data=data
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status, headers=_end_to_end(upstream_response.headers)
            )
            if upstream_response.content_length is not None:
                response.content_length = upstream_response.content_length
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_chunked(65536):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    uvloop = importlib.import_module("uvloop")  # a bench-only dependency; imported by name so mypy needs no stubs
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(proxy_app(upstream), host="127.0.0.1", port=port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
