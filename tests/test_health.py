"""The worker's gauges read from Redis (workers/health.py ``gauges``), on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from relay import constants as c
from relay.devtools.embedded_redis import free_port
from relay.domain.clock import now_ms
from relay.metrics import QUEUE_DEPTH, QUEUE_DUE, REDIS_MEMORY, REDIS_UP
from relay.store import Store
from tests.conftest import eventually
from workers import health


@contextlib.asynccontextmanager
async def running(store: Store) -> AsyncIterator[None]:
    task = asyncio.create_task(health.gauges(store, 25.0))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(autouse=True)
def _often(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "GAUGE_INTERVAL", 0.05)


async def test_the_backlog_is_what_is_due_not_every_member(redis: Redis) -> None:
    """``relay_queue_depth`` counts every member of a schedule: claims in flight and retries
    due hours away too, so dead receivers looked like a backlog workers could clear (a
    review, 2026-12-06). ``relay_queue_due`` counts those due now or overdue."""
    now = now_ms()
    await redis.zadd(
        c.DELIVERY_SCHEDULE_KEY,
        {"overdue": now - 60_000, "due": now - 1, "claimed": now + 25_000, "retry": now + 3.6e6},
    )
    await redis.zadd(c.POLL_SCHEDULE_KEY, {"v1": now - 5, "v2": now + 10_000})
    async with running(Store(redis)):

        def seen() -> bool:
            return QUEUE_DEPTH.labels("delivery")._value.get() == 4

        await eventually(seen, what="the gauges")
    assert QUEUE_DUE.labels("delivery")._value.get() == 2
    assert QUEUE_DEPTH.labels("poll")._value.get() == 2
    assert QUEUE_DUE.labels("poll")._value.get() == 1
    assert QUEUE_DUE.labels("expiry")._value.get() == 0
    assert REDIS_UP._value.get() == 1


async def test_redis_memory_is_a_gauge_against_its_maxmemory(redis: Redis) -> None:
    """``relay_redis_memory_bytes{kind="used"|"max"}`` is what Redis' INFO says: the alert
    an operator needs before registrations answer 503 (an operator's review: the container's
    memory was the only measure, and it is far from maxmemory)."""
    before = await redis.config_get("maxmemory")
    await redis.config_set("maxmemory", str(64 * 1024 * 1024))
    try:
        async with running(Store(redis)):

            def seen() -> bool:
                return REDIS_MEMORY.labels("max")._value.get() == 64 * 1024 * 1024

            await eventually(seen, what="the memory gauges")
        used = REDIS_MEMORY.labels("used")._value.get()
        info = await redis.info("memory")
        assert used > 0 and abs(used - int(info["used_memory"])) < 1024 * 1024
    finally:
        await redis.config_set("maxmemory", before["maxmemory"])


async def test_a_worker_that_cannot_reach_redis_says_so(redis: Redis) -> None:
    """The gauges failed silently (a debug line) and kept their last values: an alert on
    them stayed quiet through an outage. ``relay_redis_up`` turns 0 and a warning says why,
    once a minute at most; back, it turns 1 and a line says so."""
    dead = Redis(port=free_port(), socket_connect_timeout=0.5)
    with capture_logs() as lines:
        async with running(Store(dead)):
            await eventually(lambda: REDIS_UP._value.get() == 0, what="redis down")
            await asyncio.sleep(0.3)  # (several rounds fail: one line)
        async with running(Store(redis)):
            await eventually(lambda: REDIS_UP._value.get() == 1, what="redis up")
    await dead.aclose()
    said = [e["event"] for e in lines if "gauges" in e["event"]]
    assert said == ["redis unreachable for the gauges"], said
    assert next(e for e in lines if e["event"] == said[0])["error"] == "ConnectionError"


async def test_the_gauges_go_on_while_redis_refuses_writes(redis: Redis) -> None:
    """Redis full (noeviction) refuses the worker's note of its lease, but the gauges read
    on: the memory gauges show it at its maxmemory, the queues as they are, and a warning
    (once a minute at most) says the notes are refused. Fails before: the note's refusal
    failed the whole round, every gauge kept its value of before and the "Redis filling
    up" ratio read 57 % while Redis refused writes (a tester's run, 2026-12-07)."""
    before = await redis.config_get("maxmemory", "maxmemory-policy")
    await redis.zadd(c.DELIVERY_SCHEDULE_KEY, {"w1": now_ms() - 1000, "w2": now_ms() - 1000})
    used = int((await redis.info("memory"))["used_memory"])
    try:
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", str(used // 2))
        with capture_logs() as lines:
            async with running(Store(redis)):

                def seen() -> bool:
                    return (
                        REDIS_MEMORY.labels("max")._value.get() == used // 2
                        and QUEUE_DEPTH.labels("delivery")._value.get() == 2
                    )

                await eventually(seen, what="the gauges of a full Redis")
        assert REDIS_MEMORY.labels("used")._value.get() > used // 2
        assert REDIS_UP._value.get() == 1
        said = [e for e in lines if "refuses the worker's notes" in e["event"]]
        assert len(said) == 1 and "OutOfMemory" in said[0]["error"], lines
    finally:
        await redis.config_set("maxmemory", before["maxmemory"])
        await redis.config_set("maxmemory-policy", before["maxmemory-policy"])
