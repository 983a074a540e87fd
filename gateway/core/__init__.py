"""Pure decision logic: no I/O, no clock reads, no asyncio."""
