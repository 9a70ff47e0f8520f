"""Redis connections with explicit timeouts, so nothing hangs while Redis is away.

``REDIS_URL`` is a ``redis://``, ``rediss://`` or ``unix://`` URL, or a Sentinel URL:
``redis+sentinel://[[user]:password@]host:26379[,host2:26379…]/master-name[/db]``
(arq supports a single Redis or Sentinel, not Redis Cluster).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SOCKET_TIMEOUT = 3.0
SENTINEL_SCHEME = "redis+sentinel://"
T = TypeVar("T")

_resent: ContextVar[bool] = ContextVar("redis_resent", default=False)


def resent() -> bool:
    """A command of this task was sent again since :func:`clear_resent` (its connection
    failed: the first copy may have run, its reply lost)."""
    return _resent.get()


def clear_resent() -> None:
    """Start watching for a command sent again (:func:`resent`)."""
    _resent.set(False)


class _NotingRetry(Retry):
    """redis-py's retry, noting for the calling task when a command was sent again: a
    script that is safe to run twice may still answer its second run differently (an
    extension finds its claims already extended), and its caller can look."""

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[Any], Any]
    ) -> T:
        async def failed(error: Any) -> None:
            _resent.set(True)
            await fail(error)

        return await super().call_with_retry(do, failed)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where a Sentinel URL points: the sentinels, the master's name, the database."""

    hosts: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel(url: str) -> SentinelTarget:
    """Read a ``redis+sentinel://`` URL; ValueError (never echoing a password) otherwise."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError("not a redis+sentinel:// URL")
    rest = url[len(SENTINEL_SCHEME) :]
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, _, pw = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(pw) or None
    hosts = []
    for part in hostlist.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError("sentinels must be given as host:port[,host:port...]")
        hosts.append((host.strip("[]"), int(port)))
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError("expected /master-name[/db] after the sentinels")
    if len(segments) == 2 and not segments[1].isdigit():
        raise ValueError("the database must be a number")
    db = int(segments[1]) if len(segments) == 2 else 0
    return SentinelTarget(tuple(hosts), unquote(segments[0]), db, username, password)


def _options(timeout: float, read_timeout: float | None) -> dict[str, object]:
    return {
        "decode_responses": True,
        "socket_timeout": read_timeout,
        "socket_connect_timeout": timeout,
        # no health check: in redis-py 5 it can loop on a hung server while holding the
        # pool's lock; requests have their own deadline instead (relay.api.app)
        "health_check_interval": 0,
        # retried: a connection that failed (refused, reset, closed). Not retried: a timeout,
        # as the command may have run (or still be running) on a stalled Redis -- a script
        # run twice could record an attempt twice or answer a redelivery that worked with a
        # 409. The callers own that case (a pump's claims come back after the lease, an API
        # request answers 503). A connection closed after a command was sent can still
        # re-run it: every script is safe to run twice (docs/guarantees.md).
        "retry": _NotingRetry(
            ExponentialBackoff(cap=1.0, base=0.05),
            retries=2,
            supported_errors=(RedisConnectionError,),
        ),
        "retry_on_error": [RedisConnectionError],
    }


def connect(
    url: str, *, timeout: float = SOCKET_TIMEOUT, read_timeout: float | None = SOCKET_TIMEOUT
) -> Redis:
    """A client for *url* returning str values (through Sentinel for a Sentinel URL).

    *read_timeout* None leaves reads without a socket timeout: for callers that put their own
    deadline around each use (the API's requests), sparing redis-py's per-command timer.
    """
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        master: Redis = sentinel.master_for(
            target.master,
            redis_class=Redis,
            db=target.db,
            username=target.username,
            password=target.password,
            **_options(timeout, read_timeout),  # type: ignore[arg-type]
        )
        return master
    client: Redis = Redis.from_url(url, **_options(timeout, read_timeout))  # type: ignore[arg-type]
    return client


IDLE_KEPT = 4  # idle pooled connections kept by trim_idle


async def trim_idle(redis: Redis, keep: int = IDLE_KEPT) -> int:
    """Close the client's idle pooled connections beyond *keep*, least recently used first;
    how many were closed.

    A connection pool grows to the peak of concurrent commands and redis-py never closes an
    idle connection: after a burst, Redis would hold every one of them (and its buffers) for
    good. The API and the worker call this every few seconds. The pool takes connections
    from the end of its idle list (the most recently used), so the head is the coldest.
    """
    pool = redis.connection_pool
    idle: list[Any] = pool._available_connections  # redis-py 5 (pinned < 6)
    extra = idle[: max(len(idle) - keep, 0)]
    del idle[: len(extra)]
    for conn in extra:
        await conn.disconnect()
    return len(extra)


def arq_settings(url: str) -> RedisSettings:
    """arq's connection settings for the same Redis."""
    if url.startswith(SENTINEL_SCHEME):
        target = parse_sentinel(url)
        settings = RedisSettings(
            host=list(target.hosts),
            sentinel=True,
            sentinel_master=target.master,
            database=target.db,
            username=target.username,
            password=target.password,
        )
    else:  # read as the relay's own connections read it (arq's from_dsn reads less: '/')
        kw = parse_url(url)
        settings = RedisSettings(
            host=kw.get("host", "localhost"),
            port=kw.get("port", 6379),
            unix_socket_path=kw.get("path"),
            database=kw.get("db", 0),
            username=kw.get("username"),
            password=kw.get("password"),
            ssl=url.startswith("rediss://"),
        )
    settings.conn_timeout = int(SOCKET_TIMEOUT)
    settings.conn_retries = 60
    settings.conn_retry_delay = 1
    return settings
