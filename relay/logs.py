"""Logging: structlog everywhere, stdlib loggers (arq, aiohttp) routed through the same chain.

JSON lines (serialized by orjson) in containers, a console renderer on a terminal. Context
such as ``request_id``, ``watch_id``, ``video_id`` and ``event_id`` is bound with
``structlog.contextvars`` and lands on every line logged inside that context.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, BinaryIO, cast

import orjson
import structlog

_secrets: tuple[str, ...] = ()
REDACTED = "[redacted]"


class _Output:
    """Where :func:`lines` writes: set by :func:`setup` (None until then, and on a console)."""

    stream: Any = None  # a binary stream (an _Unfailing), in JSON mode
    level = logging.INFO
    processors: tuple[Any, ...] = ()  # the chain every line passes, as setup() made it


class _Unfailing:
    """A binary stream whose writes never raise. A log that cannot be written (a closed
    pipe to the collector, a full disk) must not stop what is being logged: its lines are
    dropped and counted (:attr:`dropped`), as the stdlib's handlers drop theirs."""

    __slots__ = ("__weakref__", "_stream", "dropped")

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.dropped = 0  # writes and flushes that failed

    def write(self, data: bytes) -> int:
        try:
            return self._stream.write(data)
        except (OSError, ValueError):  # (ValueError: a closed file)
            self.dropped += 1
            return 0

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):  # (a buffered stream fails here: what it held is lost)
            self.dropped += 1


def dropped() -> int:
    """Log writes (and flushes of what was written) that failed since :func:`setup` (0 on
    a console: the stdlib's handler reports its own, on stderr)."""
    stream = _Output.stream
    return stream.dropped if isinstance(stream, _Unfailing) else 0


# values of these types are rendered as they are and can carry no secret; anything else
# (a string, a container, an object that orjson renders with str()) is checked
_PLAIN: frozenset[type] = frozenset({int, float, bool, type(None)})


def register_secrets(values: Iterable[str]) -> None:
    """Never let these values reach a log line, whatever logs them (defence in depth)."""
    global _secrets
    _secrets = tuple(sorted({*_secrets, *(v for v in values if v and len(v) >= 6)}))


def _leaks(text: str) -> bool:
    # a plain loop: any() and its generator cost more, on every string of every line
    for secret in _secrets:  # noqa: SIM110
        if secret in text:
            return True
    return False


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
    if type(value) in _PLAIN:
        return value
    return _scrub(str(value))


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: replace registered secret values wherever they appear.

    On every line, so the common case is cheap: a plain value is passed over, a string is
    searched for the secrets and rewritten only when it holds one.
    """
    if not _secrets:
        return event_dict
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            if _leaks(value):
                event_dict[key] = _scrub(value)
        elif kind not in _PLAIN:
            event_dict[key] = _scrub(value)
    return event_dict


class _Second:
    """The formatted second of the last timestamp (consecutive lines share it)."""

    at = -1
    text = ""


def timestamp(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``timestamp``, RFC 3339 UTC with microseconds -- what structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes, always with six digits, at half the cost."""
    second, micros = divmod(round(time.time() * 1e6), 1_000_000)  # rounded, as datetime does
    if second != _Second.at:
        _Second.at, _Second.text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event_dict["timestamp"] = f"{_Second.text}.{micros:06d}Z"
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


def setup(fmt: str = "json", level: int = logging.INFO, stream: BinaryIO | None = None) -> None:
    """Configure structlog and the stdlib root logger once per process, writing to
    *stream* (default: stderr).

    JSON goes the fast way: structlog renders with orjson straight to stderr's bytes (a
    fraction of the cost of the stdlib bridge, which matters at thousands of delivery lines
    per second). Lines from stdlib loggers (arq, aiohttp) are rendered by the same
    processors and land in the same stream.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        timestamp,
        structlog.processors.format_exc_info,
        _logger_field,
        redact,
    ]
    renderer: Any
    binary = _Unfailing(sys.stderr.buffer if stream is None else stream)
    text = sys.stderr if stream is None else io.TextIOWrapper(stream, write_through=True)
    _Output.stream, _Output.level = (None if fmt == "console" else binary), level
    _Output.processors = tuple(shared)
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=text.isatty())
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
            logger_factory=structlog.BytesLoggerFactory(cast(BinaryIO, binary)),
            wrapper_class=structlog.make_filtering_bound_logger(level),
            cache_logger_on_first_use=True,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(text)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # one line per request is the API's own job; aiohttp's access log would double it
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def lines(name: str, event: str, rows: Iterable[dict[str, Any]]) -> None:
    """Log ``event`` at info once per row, with the row's fields: the lines that
    ``get(name).info(event, **row)`` would write, one after another.

    For hot paths that log in batches (the deliverer's one line per attempt): in JSON mode
    the lines pass the same processors and renderer, and go out in one write instead of
    one write each. On a console they go through structlog line by line.
    """
    if _Output.stream is None:
        logger = get(name)
        for row in rows:
            logger.info(event, **row)
        return
    if _Output.level > logging.INFO:
        return
    rendered = []
    for row in rows:
        row["logger_name"] = name  # as get(name) binds it
        row["event"] = event
        for processor in _Output.processors:
            row = processor(None, "info", row)
        rendered.append(orjson.dumps(row, default=str))
    if rendered:
        rendered.append(b"")
        _Output.stream.write(b"\n".join(rendered))
        _Output.stream.flush()


def get(name: str) -> Any:
    """A logger for module *name* (its lines carry ``logger``: *name*).

    Lazy: it is assembled at its first use, so module-level loggers created before
    :func:`setup` still get the configured pipeline.
    """
    return structlog.get_logger(logger_name=name)


class Every:
    """A repeated line logged at most once per *seconds*: ``if every.due(): log...``. The
    first call is due; :meth:`reset` (the condition cleared) makes the next one due."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: float | None = None

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is None or now - self._last >= self.seconds:
            self._last = now
            return True
        return False

    def reset(self) -> None:
        self._last = None


class Sampled:
    """Lines said of many things at once -- one per video when the upstream fails for all
    of them, one per origin when a worker's network fails -- logged at most *burst* times
    per *seconds* for each event name; the ones left out are counted in the next line's
    ``others``."""

    def __init__(self, seconds: float, burst: int = 1) -> None:
        self.seconds = seconds
        self.burst = burst
        self._window: dict[str, tuple[float, int]] = {}  # event -> (its start, lines said)
        self._left: dict[str, int] = {}

    def say(self, emit: Callable[..., Any], event: str, **fields: Any) -> bool:
        """``emit(event, **fields)`` (a logger's method) if *event* is due, with ``others``
        when lines were left out before it; whether it was said."""
        others = self.due(event)
        if others is None:
            return False
        emit(event, **fields, **({"others": others} if others else {}))
        return True

    def due(self, event: str) -> int | None:
        """None: leave this line out; else how many of *event* were left out before it."""
        now = time.monotonic()
        start, said = self._window.get(event, (now, 0))
        if now - start >= self.seconds:
            start, said = now, 0
        if said >= self.burst:
            self._left[event] = self._left.get(event, 0) + 1
            return None
        self._window[event] = (start, said + 1)
        return self._left.pop(event, 0)
