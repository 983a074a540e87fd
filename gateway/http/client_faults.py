"""Client faults aiohttp meets before the gateway's handler logs as INFO lines, not ERROR tracebacks.

aiohttp answers a malformed request (bad request line, header or chunk framing, a header too
long) with 400 itself and logs it on `aiohttp.server` with `logger.exception`: an ERROR and a
traceback for what is the client's fault, noise that hides the gateway's own faults. The filter
rewrites exactly those records, and those of a client that vanished, to one INFO line; every
other record (the gateway's or aiohttp's own faults) is left as it is.
"""

import logging

from aiohttp.http_exceptions import HttpProcessingError

AIOHTTP_SERVER = "aiohttp.server"


def client_fault(exc: BaseException | None) -> str | None:
    """A one-line description when `exc` is the client's fault, else None."""
    if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
        message = exc.message.strip().splitlines()[0] if exc.message.strip() else ""
        return f"malformed request ({exc.code} {type(exc).__name__}: {message[:200]})"
    if isinstance(exc, ConnectionError):
        return f"client closed the connection ({type(exc).__name__})"
    return None


class ClientFaultFilter(logging.Filter):
    """Turn aiohttp's ERROR records about client faults into INFO records without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.exc_info:
            return True
        fault = client_fault(record.exc_info[1])
        if fault is None:
            return True
        record.msg = f"{record.getMessage()}: {fault}"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        # The logger let the record through as an ERROR; as an INFO it must pass the level again.
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


_FILTER = ClientFaultFilter()


def install() -> None:
    """Attach the filter to aiohttp's server logger once per process."""
    logger = logging.getLogger(AIOHTTP_SERVER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
