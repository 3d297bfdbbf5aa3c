"""Structured logs: JSON lines on stdout (console rendering on a terminal) via structlog.

A request id bound in a context variable appears on every line logged while serving that request.

Our own lines take structlog's fast road: a level-filtering logger (a line below the level costs
one method call, not a processor chain) that renders with orjson and writes to stdout itself.
Lines of the standard library's loggers (uvicorn, asyncio) go through a handler with the same
processors, so both look alike. Measured: the per-request line went from ~275 µs through the
standard library to a fraction of that.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import FilteringBoundLogger


def _json(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info"
) -> None:
    """Route structlog and the standard library (uvicorn, asyncio) through one renderer."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_json)

    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[_name_key, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Access lines duplicate our own request log line, which carries the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # GDAL's own messages (at info) repeat the error the terrain's opening reports.
    logging.getLogger("rasterio").setLevel(logging.WARNING)


def get_logger(name: str) -> FilteringBoundLogger:
    """A logger whose lines carry ``"logger": name``."""
    # Lazy (configured on first use, after the CLI has read its settings); "logger" itself is
    # a parameter name of structlog.get_logger, so the name travels as _logger.
    logger: FilteringBoundLogger = structlog.get_logger(_logger=name)
    return logger


def _name_key(_: Any, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    name = event.pop("_logger", None)
    if name is not None:
        event["logger"] = name
    return event
