"""aiohttp wiring: app factory, proxy handler, admin listener."""
