"""Structured logging: JSON lines in production, a readable console elsewhere.

Every module logs through `get_logger(__name__)`; events are short lowercase phrases
("hopped", "strand failed") with the facts as keyword arguments.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_level = _LEVELS["info"]


def configure(log_format: str = "console", level: str = "info") -> None:
    """Install the structlog pipeline; safe to call more than once."""
    global _level
    _level = _LEVELS[level]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks never show local variables: they hold master keys, client keys and stdin.
    renderer: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.ExceptionRenderer(
            ExceptionDictTransformer(show_locals=False)))
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False))
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=_LEVELS[level], stream=sys.stderr, format="%(message)s")


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def enabled(level: str) -> bool:
    """Whether events at `level` are kept: lets a hot path skip building an event's fields."""
    return _LEVELS[level] >= _level
