"""Load for the peers benchmark: wrk with a generated Lua script (saturation), and a fixed-rate client (paced).

Both return a Result: requests, requests/s, latency percentiles and the status-code counts, so a
row that is mostly errors shows as such.
"""

import asyncio
import contextlib
import json
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MARK = "PEERS_JSON "


@dataclass(frozen=True, slots=True)
class Request:
    """One request, sent the same way every time."""

    method: str
    path: str
    token: str
    body: str = ""

    def raw(self, host: str) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {self.token}"]
        if self.body or self.method == "POST":
            head += ["Content-Type: application/json", f"Content-Length: {len(self.body.encode())}"]
        return ("\r\n".join(head) + "\r\n\r\n" + self.body).encode()


@dataclass(slots=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    statuses: dict[str, int] = field(default_factory=dict)  # "200": n; "socket": errors with no status

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def count(self, ok: int) -> int:
        """Answers other than `ok` (socket errors included)."""
        return sum(n for code, n in self.statuses.items() if code != str(ok))


def _lua_string(text: str) -> str:
    level = "=" * 4
    assert f"]{level}]" not in text
    return f"[{level}[{text}]{level}]"


def wrk_script(req: Request) -> str:
    """wrk Lua: the fixed request, per-thread status counts, and one JSON line from done()."""
    lines = [
        f"wrk.method = {_lua_string(req.method)}",
        f"wrk.path = {_lua_string(req.path)}",
        f'wrk.headers["Authorization"] = {_lua_string("Bearer " + req.token)}',
    ]
    if req.body or req.method == "POST":
        lines += ['wrk.headers["Content-Type"] = "application/json"', f"wrk.body = {_lua_string(req.body)}"]
    return (
        "\n".join(lines)
        + f"""
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {{}} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local counts = {{}}
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do counts[code] = (counts[code] or 0) + n end
  end
  local parts = {{}}
  for code, n in pairs(counts) do table.insert(parts, string.format('"%d":%d', code, n)) end
  local e = summary.errors
  io.write(string.format(
    '{MARK}{{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"timeout":%d,"statuses":{{%s}}}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9), e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
end
"""
    )


def run_wrk(base: str, req: Request, script_dir: Path, *, seconds: float, connections: int, cpu: int | str) -> Result:
    """`wrk -t1 -c N -d S` pinned to `cpu`, with the script written under `script_dir`."""
    script = script_dir / f"wrk-{abs(hash((req, base)))}.lua"
    script.write_text(wrk_script(req))
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    cmd += ["--timeout", "10s", "-s", str(script), base]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARK)), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    doc = json.loads(line[len(MARK) :])
    statuses = {str(code): int(n) for code, n in doc["statuses"].items()}
    socket_errors = sum(int(doc[k]) for k in ("connect", "read", "write", "timeout"))
    if socket_errors:
        statuses["socket"] = socket_errors
    return Result(
        requests=int(doc["requests"]),
        seconds=int(doc["duration_us"]) / 1e6,
        p50_ms=int(doc["p50_us"]) / 1000,
        p99_ms=int(doc["p99_us"]) / 1000,
        p999_ms=int(doc["p999_us"]) / 1000,
        statuses=statuses,
    )


async def _read_answer(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response (Content-Length or chunked); return its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def paced(base: str, req: Request, *, rate: float, seconds: float, connections: int = 64) -> Result:
    """Open loop: a request every 1/rate s for `seconds`, on up to `connections` keep-alive connections.

    Latency runs from the moment a request is written to the end of its answer. A request that
    finds every connection busy waits in a client-side queue; that wait is counted too, so a
    saturated peer cannot hide behind the client.
    """
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    raw = req.raw(f"{host}:{port}")
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[float] = []
    statuses: Counter[str] = Counter()

    async def lane() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (due := await queue.get()) is not None:
                started = time.perf_counter()
                queued = max(0.0, started - due - 0.002)  # more than 2 ms behind schedule: a client-side wait
                writer.write(raw)
                try:
                    status = await _read_answer(reader)
                except (OSError, asyncio.IncompleteReadError):
                    statuses["socket"] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.perf_counter() - started + queued)
                statuses[str(status)] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    lanes = [asyncio.create_task(lane()) for _ in range(connections)]
    total = int(rate * seconds)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(due)
    for _ in lanes:
        queue.put_nowait(None)
    await asyncio.gather(*lanes)
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=1000, method="inclusive") if len(latencies) > 1 else [0.0] * 999
    return Result(total, elapsed, q[499] * 1000, q[989] * 1000, q[998] * 1000, dict(statuses))
