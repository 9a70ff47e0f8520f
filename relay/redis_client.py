"""Redis connections with explicit timeouts, so nothing hangs while Redis is away."""

from __future__ import annotations

from arq.connections import RedisSettings
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

SOCKET_TIMEOUT = 3.0


def connect(url: str, *, timeout: float = SOCKET_TIMEOUT) -> Redis:
    """A client for *url* (``redis://``, ``rediss://``, ``unix://``) returning str values."""
    client: Redis = Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return client


def arq_settings(url: str) -> RedisSettings:
    """arq's connection settings for the same Redis."""
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = int(SOCKET_TIMEOUT)
    settings.conn_retries = 60
    settings.conn_retry_delay = 1
    return settings
