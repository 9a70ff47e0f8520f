"""The worker's own small HTTP server on RELAY_METRICS_PORT, as the API has: ``/healthz``
(liveness: the process answers; a Redis outage is no reason to restart it), ``/readyz``
(Redis answers, within a second) and ``/metrics``, with the queue-depth and watch-count
gauges kept fresh in the background. It starts before the worker waits for Redis, so a
worker started during an outage is seen alive, not ready."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay import constants as c
from relay import logs
from relay.metrics import (
    QUEUE_DEPTH,
    QUEUE_DUE,
    REDIS_MEMORY,
    REDIS_UP,
    UPSTREAM_PAUSED,
    WATCHES,
    exposition,
)
from relay.settings import Settings
from relay.store import Store
from relay.store.connection import trim_idle
from relay.store.upkeep import worker_round

log = logs.get("workers.worker")
GAUGE_INTERVAL = 5.0


def _status(status: str, code: int = 200) -> web.Response:
    """A probe's answer, as the API's (``{"status":...}``, application/json, orjson)."""
    return web.Response(
        body=orjson.dumps({"status": status}), status=code, content_type="application/json"
    )


async def gauges(store: Store, lease_s: float, keys_held: str = "none") -> None:
    """Refresh the queue-depth, watch-count, upstream-pause and Redis-memory gauges every
    GAUGE_INTERVAL seconds, forever, in one round trip that also says the worker's *lease_s*
    and *keys_held* (:func:`relay.store.upkeep.worker_round`), and close the Redis
    connections a burst left idle beyond a few."""
    unreachable, down = logs.Every(60.0), False
    refused = logs.Every(60.0)
    while True:
        try:
            got = await worker_round(store.redis, lease_s, keys_held)
            if got.refused is not None and refused.due():
                log.warning(
                    "redis refuses the worker's notes (its lease, its keys); gauges go on",
                    error=f"{type(got.refused).__name__}: {got.refused}"[:300],
                )
            UPSTREAM_PAUSED.set(got.pause_left_ms / 1000)
            REDIS_MEMORY.labels("used").set(got.memory_used)
            REDIS_MEMORY.labels("max").set(got.memory_max)
            for queue, (depth, due) in got.queues.items():
                QUEUE_DEPTH.labels(queue).set(depth)
                QUEUE_DUE.labels(queue).set(due)
            for status, n in got.watches.items():
                WATCHES.labels(status).set(n)
            await trim_idle(store.redis)  # a burst's connections do not stay open for good
            if down:
                log.info("redis reachable again for the gauges")
                unreachable.reset()
            down = False
            REDIS_UP.set(1)
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
            if unreachable.due():  # (the gauges from Redis keep their last values)
                log.warning("redis unreachable for the gauges", error=type(exc).__name__)
            down = True
            REDIS_UP.set(0)
            UPSTREAM_PAUSED.set(0)  # (not a stale pause for as long as Redis is away)
        except Exception as exc:  # Redis answered with an error (BUSY, MISCONF, ...)
            if unreachable.due():
                log.warning("gauges failed", error=f"{type(exc).__name__}: {exc}"[:300])
            UPSTREAM_PAUSED.set(0)  # (not a stale pause)
        await asyncio.sleep(GAUGE_INTERVAL)


async def serve(
    settings: Settings, store: Store, started: Callable[[], bool] = lambda: True
) -> web.AppRunner | None:
    """Start the server on RELAY_METRICS_PORT (None when it is 0: off); the caller cleans
    the runner up at shutdown, before it closes Redis. ``/readyz`` also needs *started*:
    the pumps running (not yet, or no more while the worker stops)."""

    async def healthz(_: web.Request) -> web.Response:
        return _status("ok")

    async def readyz(_: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(c.PROBE_REDIS_S):
                await store.redis.ping()
        except Exception:  # (first: a worker waiting for Redis says so)
            return _status("unavailable", 503)
        if not started():
            return _status("starting or stopping", 503)
        return _status("ok")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=exposition(), content_type="text/plain", charset="utf-8")

    if settings.metrics_port == 0:
        return None
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.metrics_port)
    try:
        await site.start()
    except BaseException:  # e.g. the port in use
        await runner.cleanup()
        raise
    return runner
