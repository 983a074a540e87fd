"""`serve --workers N`: a supervisor running N gateway processes that share the proxy port (SO_REUSEPORT)."""

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from gateway.cli import loop
from gateway.config.settings import Settings, listeners_clash
from gateway.http.app import serve_forever

log = logging.getLogger(__name__)

BACKOFF_S = 0.5  # first restart delay; doubles after each quick death
MAX_BACKOFF_S = 30.0
STABLE_S = 10.0  # a worker that lived this long restarts at the first delay again
STOP_MARGIN_S = 15.0  # beyond a worker's drain and grace, and its 10 s to close its parts, before it is killed


def with_workers(settings: Settings, workers: int | None) -> tuple[Settings, str | None]:
    """Apply a `--workers` override; the second value is a problem that forbids starting."""
    where = f"{settings.source}: workers"
    if workers is not None:
        settings, where = replace(settings, workers=workers), f"--workers {workers}"
    if settings.workers < 1:
        return settings, f"{where}: must be at least 1"
    if settings.workers > 1 and settings.quota.store != "redis":
        return settings, f"{where}: more than one worker needs quota.store: redis ({settings.source} has no Redis)"
    clash = listeners_clash(settings)  # the admin ports move with the worker count: every listener again
    return settings, None if clash is None else f"{where}: {clash}"


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker `index` of several is instance `<id>-w<index>` with its admin listener on `admin_port + index`."""
    if settings.workers <= 1:
        return settings
    return replace(settings, instance_id=f"{settings.instance_id}-w{index}", admin_port=settings.admin_port + index)


def run_worker(settings: Settings, index: int) -> int:
    """A worker's life: serve until signalled, or until its supervisor is gone (then drain and exit)."""
    parent = os.getppid()

    async def main() -> None:
        served = asyncio.create_task(serve_forever(worker_settings(settings, index)))
        while not served.done():
            await asyncio.wait({served}, timeout=1.0)
            if os.getppid() != parent:  # orphaned: the supervisor died without telling us
                log.warning("worker %d: supervisor %d is gone; stopping", index, parent)
                os.kill(os.getpid(), signal.SIGTERM)
                await served
        served.result()

    loop.run(main())
    return 0


class Supervisor:
    """Starts the workers, forwards SIGTERM/SIGINT/SIGHUP to them and restarts any that die unasked."""

    def __init__(self, workers: int, config: Path | None, stop_grace_s: float = 30.0) -> None:
        self.workers = workers
        self.stop_grace_s = stop_grace_s
        self.config = None if config is None else config.resolve()
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()

    def argv(self, index: int) -> list[str]:
        config = ["--config", str(self.config)] if self.config is not None else []
        return [sys.executable, "-m", "gateway", "serve", *config, "--workers", str(self.workers),
                "--worker-index", str(index)]  # fmt: skip

    def signal_all(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    def stop(self, signum: int) -> None:
        self.stopping.set()
        self.signal_all(signum)

    async def keep(self, index: int) -> None:
        """Run worker `index`, restarting it with backoff until the supervisor is stopping."""
        delay = BACKOFF_S
        while not self.stopping.is_set():
            started = time.monotonic()
            proc = self.procs[index] = await asyncio.create_subprocess_exec(*self.argv(index))
            if self.stopping.is_set():  # told to stop while this one was being started
                proc.terminate()
            log.info("worker %d started (pid %d)", index, proc.pid)
            code = await proc.wait()
            if self.stopping.is_set():
                break
            delay = BACKOFF_S if time.monotonic() - started >= STABLE_S else min(delay * 2, MAX_BACKOFF_S)
            log.error("worker %d (pid %d) exited with %d; restarting in %.1f s", index, proc.pid, code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self.signal_all, signal.SIGHUP)
        keepers = [asyncio.create_task(self.keep(i)) for i in range(self.workers)]
        await self.stopping.wait()
        _, pending = await asyncio.wait(keepers, timeout=self.stop_grace_s)
        for proc in self.procs.values():
            if proc.returncode is None:
                log.error("worker pid %d did not stop within %.0f s; killing it", proc.pid, self.stop_grace_s)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await asyncio.gather(*(proc.wait() for proc in self.procs.values()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def serve(settings: Settings, config: Path | None, worker_index: int | None) -> int:
    """Serve in this process (one worker, or as worker `worker_index`), or supervise `settings.workers`."""
    if worker_index is not None:
        return run_worker(settings, worker_index)
    if settings.workers <= 1:
        loop.run(serve_forever(settings))
        return 0
    log.info("supervising %d workers on %s:%d", settings.workers, settings.listen_host, settings.listen_port)
    grace = settings.shutdown.drain_s + settings.shutdown.grace_s + STOP_MARGIN_S
    loop.run(Supervisor(settings.workers, config, grace).run())
    return 0
