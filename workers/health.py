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
from relay.domain import clock
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
from relay.store.reseal import say_keys
from relay.store.watches import counts_of

log = logs.get("workers.worker")
GAUGE_INTERVAL = 5.0
QUEUES = (
    ("poll", c.POLL_SCHEDULE_KEY),
    ("delivery", c.DELIVERY_SCHEDULE_KEY),
    ("expiry", c.EXPIRY_SCHEDULE_KEY),
)


def _status(status: str, code: int = 200) -> web.Response:
    """A probe's answer, as the API's (``{"status":...}``, application/json, orjson)."""
    return web.Response(
        body=orjson.dumps({"status": status}), status=code, content_type="application/json"
    )


async def gauges(store: Store, lease_s: float, keys_held: str = "none") -> None:
    """Refresh the queue-depth, watch-count, upstream-pause and Redis-memory gauges every
    GAUGE_INTERVAL seconds, forever, in one round trip, learn Redis' clock again from it,
    say the worker's *lease_s* (how far its claims reach: ``clip-relay upstream resume``
    keeps clear of them), and close the Redis connections a burst left idle beyond a few."""
    lease = str(int(lease_s * 1000))
    # (said for 10 minutes, or the lease if longer: a stalled loop's claims stay covered)
    said_for = max(c.WORKER_LEASE_SEEN_MS, int(lease_s * 1000))
    unreachable, down = logs.Every(60.0), False
    refused = logs.Every(60.0)
    while True:
        try:
            pipe = store.redis.pipeline(transaction=False)
            now = clock.now_ms()
            pipe.hset(c.WORKER_LEASES_KEY, lease, str(now + said_for))
            # (a shorter lease's worker never cuts a longer one's time: NX sets a new
            # key's, GT only lengthens it -- GT alone never sets one on a key without)
            pipe.pexpire(c.WORKER_LEASES_KEY, said_for, nx=True)
            pipe.pexpire(c.WORKER_LEASES_KEY, said_for, gt=True)
            say_keys(pipe, keys_held, now)  # (what `secrets reseal` checks first)
            # (not a transaction, needlessly: a TTL lost between the two, by a crash, is set
            # again by the NX 5 s later)
            writes = len(pipe)
            for _, key in QUEUES:
                pipe.zcard(key)
                pipe.zcount(key, "-inf", now)  # (due: a claim's score is its lease's end)
            pipe.hgetall(c.WATCH_COUNTS_KEY)
            pipe.get(c.UPSTREAM_PAUSE_KEY)  # the pause's end, Redis ms
            pipe.info("memory")  # (~1 KB of text every 5 s: nothing beside the deliveries)
            pipe.time()
            sent = clock.local_ms()
            # (a write refused -- Redis full, a replica -- leaves the reads to be done: before,
            # every gauge froze at its value of before, and the memory gauges showed a full
            # Redis as 57 % used while it refused writes; a tester's run, 2026-12-07)
            results = await pipe.execute(raise_on_error=False)
            failed = [r for r in results if isinstance(r, Exception)]
            for r in results[writes:]:
                if isinstance(r, Exception):
                    raise r
            if failed and refused.due():
                log.warning(
                    "redis refuses the worker's notes (its lease, its keys); gauges go on",
                    error=f"{type(failed[0]).__name__}: {failed[0]}"[:300],
                )
            *sizes, counts, pause_end, memory, (secs, micros) = results[writes:]
            now = int(secs) * 1000 + int(micros) // 1000
            clock.observe(now, sent, clock.local_ms())  # (Redis' clock: learnt again)
            UPSTREAM_PAUSED.set(max(0, int(pause_end or 0) - now) / 1000)
            REDIS_MEMORY.labels("used").set(int(memory.get("used_memory", 0)))
            REDIS_MEMORY.labels("max").set(int(memory.get("maxmemory", 0)))
            for (queue, _), depth, due in zip(QUEUES, sizes[::2], sizes[1::2], strict=True):
                QUEUE_DEPTH.labels(queue).set(depth)
                QUEUE_DUE.labels(queue).set(due)
            for status, n in counts_of(counts).items():
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
