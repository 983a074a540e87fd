"""Background tasks of the gateway's long-lived parts: stopping one, and a snapshot refreshed by one."""

import asyncio
import contextlib
import logging

from gateway.adapters.upstream import Upstream


async def cancel_and_wait(task: "asyncio.Task[None] | None") -> None:
    """Cancel a background task (if any) and wait until it has ended; its cancellation is not an error."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class RefreshedSource:
    """A snapshot of one upstream, read once at start and then again after every `_wait_s()` until `stop`.

    A subclass reads and stores its snapshot in `refresh` (True when it changed to a whole new
    read), reporting a failed read with `_failed`, and says the wait before the next read.
    """

    def __init__(self, upstream: Upstream, first_wait_s: float, task_name: str) -> None:
        self.upstream = upstream
        self.first_wait_s = first_wait_s
        self._task_name = task_name
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def refresh(self) -> bool:
        raise NotImplementedError

    def _wait_s(self) -> float:
        raise NotImplementedError

    def _failed(self, log: logging.Logger, message: str, exc: Exception) -> bool:
        """Log `message` (% the upstream's name and `exc`) for the first failure of a run only; False."""
        if not self._failing:
            log.warning(message, self.upstream.name, exc)
        self._failing = True
        return False

    async def _start_refreshing(self) -> None:
        """One read now (bounded by `first_wait_s`), then the background reads."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.refresh(), self.first_wait_s)
        self._task = asyncio.create_task(self._forever(), name=self._task_name)

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self._wait_s())
            await self.refresh()

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
