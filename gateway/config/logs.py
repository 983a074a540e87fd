"""The `log:` section of gateway.yaml, with EXPORTGATE_LOG_FORMAT and EXPORTGATE_LOG_LEVEL over it."""

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.fields import Fields
from gateway.config.located import Node, Problem, Where

FORMATS = ("json", "text", "auto")
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMAT_VAR = "EXPORTGATE_LOG_FORMAT"
LEVEL_VAR = "EXPORTGATE_LOG_LEVEL"


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How the gateway logs.

    `format` is `json` (one JSON object per line), `text` (one line per event, client text quoted) or
    `auto`: text when standard error is a terminal, JSON otherwise (a container's or a service
    manager's log pipe). `access` adds one access line per request beside its request event.
    """

    format: str = "auto"
    level: str = "info"
    access: bool = False


def _choice(value: str, options: tuple[str, ...]) -> str | None:
    lowered = value.strip().lower()
    return lowered if lowered in options else None


def load_log_settings(node: Node | None, env: Mapping[str, str], problems: list[Problem]) -> LogSettings:
    """The `log:` section (defaults when absent), then the variables over it; bad values are problems."""
    d = LogSettings()
    fmt, level, access = d.format, d.level, d.access
    if node is not None and node.raw is not None:
        f = Fields(node, problems, ("format", "level", "access"))
        fmt = f.choice("format", FORMATS, d.format)
        level = f.choice("level", LEVELS, d.level)
        access = f.flag("access", d.access)
    for var, options in ((FORMAT_VAR, FORMATS), (LEVEL_VAR, LEVELS)):
        if var not in env:
            continue
        chosen = _choice(env[var], options)
        if chosen is None:
            problems.append(Where.env(var).problem(f"{env[var][:64]!r} is not one of {', '.join(options)}"))
        elif var == FORMAT_VAR:
            fmt = chosen
        else:
            level = chosen
    return LogSettings(fmt, level, access)


def log_settings_from_env(env: Mapping[str, str]) -> LogSettings:
    """The variables alone, for the logging a command does before it reads any file; bad values are ignored
    here (`check` and `serve` report them)."""
    d = LogSettings()
    fmt = _choice(env.get(FORMAT_VAR, ""), FORMATS) or d.format
    level = _choice(env.get(LEVEL_VAR, ""), LEVELS) or d.level
    return LogSettings(fmt, level, d.access)
