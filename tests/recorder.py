"""An upstream that accepts every request and keeps the exact bytes and headers it received."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.harness import Stack, running_stack
from tests.redis_server import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Recorder:
    """Answers like slurmrestd's submit (a new job id, no errors) whatever it is sent.

    `pause_s` > 0 writes each answer in two pieces that far apart; `gzip_when_accepted` compresses
    answers for clients that accept gzip, as the Kubernetes API server does.
    """

    requests: list[Received] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    pause_s: float = 0.0
    gzip_when_accepted: bool = False

    @property
    def bodies(self) -> list[bytes]:
        return [r.body for r in self.requests]

    def app(self) -> web.Application:
        async def any_route(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.requests.append(Received(request.method, request.path_qs, CIMultiDict(request.headers), body))
            answer = json.dumps({"job_id": next(self.ids), "errors": []}).encode()
            headers = {"Content-Type": "application/json"}
            if self.gzip_when_accepted and "gzip" in request.headers.get("Accept-Encoding", ""):
                answer, headers["Content-Encoding"] = gzip.compress(answer), "gzip"
            if not self.pause_s:
                return web.Response(body=answer, headers=headers)
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            await response.write(answer[:10])
            await asyncio.sleep(self.pause_s)
            await response.write(answer[10:])
            await response.write_eof()
            return response

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", any_route)
        return app


@asynccontextmanager
async def recorded_stack(
    tmp_path: Path, recorder: Recorder | None = None, **config: Any
) -> AsyncIterator[tuple[Stack, Recorder]]:
    """A gateway (as running_stack starts it) whose upstream is a Recorder that does not decompress; yields both."""
    recorder = recorder or Recorder()
    # No auto_decompress: tests compare the bytes the gateway sent with the bytes the client sent.
    runner = web.AppRunner(recorder.app(), access_log=None, auto_decompress=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with running_stack(tmp_path, upstream_url=f"http://127.0.0.1:{port}", **config) as stack:
            yield stack, recorder
    finally:
        await runner.cleanup()
