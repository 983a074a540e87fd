"""The event loop the gateway serves on: uvloop where it installs (Linux, macOS), else asyncio's own.

uvloop runs aiohttp's transports and timers in C (libuv); the gateway's own code is unchanged and
its tests run on asyncio's loop, so both loops are exercised (the process tests start the CLI).
"""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop when it is there."""
    try:
        import uvloop
    except ImportError:  # a platform without uvloop wheels: asyncio's loop serves the same
        return asyncio.run(main)
    return uvloop.run(main)
