"""Where log lines go and how they look: one event per line, JSON (python-json-logger) or text.

Every line names the gateway instance that wrote it (a worker's `<instance_id>-w<i>`). An event's
fields travel as the record's `extra`: JSON gives each its own key; text appends them as
`key=value` after the message. In text, a value other than a plain word is quoted (Python's
repr, which escapes quotes, newlines and other control characters) and cut to 256 characters,
and the message itself is kept on one line, so client text can neither start a line nor fake a
field; JSON escapes the same by encoding. Tracebacks follow their line in text, and are one
`exc_info` string in JSON.
"""

import json
import logging
import re
import sys
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from gateway.config.logs import LogSettings

SHOWN_MAX = 256  # characters of one field value in a text line
_PLAIN = re.compile(r"[A-Za-z0-9._:/@+\-]+")
# Attributes every LogRecord has: anything else on a record is an event field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "instance"}


def _shown(value: Any) -> str:
    """A field value as a text line shows it: plain words as they are, anything else quoted and bounded."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        text = json.dumps(value, separators=(",", ":"), default=str)
        return text if len(text) <= SHOWN_MAX else repr(text[:SHOWN_MAX])
    text = str(value)
    return text if len(text) <= SHOWN_MAX and _PLAIN.fullmatch(text) else repr(text[:SHOWN_MAX])


def _one_line(text: str) -> str:
    """A message without line breaks: CR, LF and the Unicode line separators are shown escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


def event_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields an event carries beyond the standard ones (its `extra`)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    """`time LEVEL [instance] logger: message key=value ...`, then any traceback on the lines after it."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s [%(instance)s] %(name)s: %(message)s", defaults={"instance": "-"})

    def format(self, record: logging.LogRecord) -> str:
        record.message = _one_line(record.getMessage())
        record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        fields = event_fields(record)
        if fields:
            line += " " + " ".join(f"{key}={_shown(value)}" for key, value in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, instance and the event's fields."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


class InstanceFilter(logging.Filter):
    """Names the writing instance on every record, so each worker's lines say which worker wrote them."""

    def __init__(self, instance: str) -> None:
        super().__init__()
        self.instance = instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.instance = self.instance
        return True


class _Handler(logging.StreamHandler[TextIO]):
    """The handler `install` owns: replaced by the next `install`, never stacked."""


def chosen_format(settings: LogSettings, stream: TextIO) -> str:
    """`json` or `text`: `auto` is text on a terminal, JSON anywhere else (a pipe, a file, a container's log)."""
    if settings.format != "auto":
        return settings.format
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # a closed or odd stream is no terminal
        return "json"


def others_own_logging() -> bool:
    """Whether the root logger has handlers this module did not install (a test runner, an embedding program)."""
    return any(not isinstance(h, _Handler) for h in logging.getLogger().handlers)


def install(settings: LogSettings, instance: str = "-", stream: TextIO | None = None) -> str:
    """Send every log record (the gateway's, aiohttp's) to `stream` (standard error) in the chosen format, at
    the configured level and above; replaces a handler an earlier call installed. Returns the format used."""
    stream = sys.stderr if stream is None else stream
    fmt = chosen_format(settings, stream)
    handler = _Handler(stream)
    handler.setFormatter(json_formatter() if fmt == "json" else TextFormatter())
    handler.addFilter(InstanceFilter(instance))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    return fmt
