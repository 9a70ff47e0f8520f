"""Logging: structlog everywhere, stdlib loggers (arq, aiohttp) routed through the same chain.

JSON lines (serialized by orjson) in containers, a console renderer on a terminal. Context
such as ``request_id``, ``watch_id``, ``video_id`` and ``event_id`` is bound with
``structlog.contextvars`` and lands on every line logged inside that context.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson
import structlog

_secrets: set[str] = set()
REDACTED = "[redacted]"


def register_secrets(values: Iterable[str]) -> None:
    """Never let these values reach a log line, whatever logs them (defence in depth)."""
    _secrets.update(v for v in values if v and len(v) >= 6)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace registered secret values wherever they appear."""
    if not _secrets:
        return event_dict
    for key, value in event_dict.items():
        event_dict[key] = _scrub(value)
    return event_dict


def _logger_field(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Name the logger ``logger`` whichever way it was given (see :func:`get`)."""
    name = event_dict.pop("logger_name", None)
    if name is not None:
        event_dict["logger"] = name
    return event_dict


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def setup(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure structlog and the stdlib root logger once per process.

    JSON goes the fast way: structlog renders with orjson straight to stderr's bytes (a
    fraction of the cost of the stdlib bridge, which matters at thousands of delivery lines
    per second). Lines from stdlib loggers (arq, aiohttp) are rendered by the same
    processors and land in the same stream.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _logger_field,
        redact,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                structlog.stdlib.add_logger_name,
                *shared,
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        structlog.configure(
            processors=[*shared, structlog.processors.JSONRenderer(serializer=orjson.dumps)],
            logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
            wrapper_class=structlog.make_filtering_bound_logger(level),
            cache_logger_on_first_use=True,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # one line per request is the API's own job; aiohttp's access log would double it
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(name: str) -> Any:
    """A logger for module *name* (its lines carry ``logger``: *name*).

    Lazy: it is assembled at its first use, so module-level loggers created before
    :func:`setup` still get the configured pipeline.
    """
    return structlog.get_logger(logger_name=name)
