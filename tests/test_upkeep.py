"""The API's upkeep round (``relay.api.app._upkeep`` over :mod:`relay.store.upkeep`): what a
replica says of itself to Redis every few seconds, on a real Redis. (The worker's round is
tested through its gauges: tests/test_health.py.)"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from relay import constants as c
from relay import logs
from relay.api import app as app_module
from relay.api.app import _upkeep
from relay.domain import clock
from relay.store.upkeep import worker_round
from tests.conftest import eventually


async def test_the_api_says_its_keys_and_a_refused_note_is_logged_not_hidden(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note of the keys held lands every round; Redis full (noeviction) refuses it, and
    a warning says so once a minute while the other steps (Redis' clock) go on. Fails
    before: every step's failure was suppressed without a word, so an API unseen by
    `secrets reseal` gave no sign of it (a review, 2026-12-08)."""
    task = asyncio.create_task(_upkeep(redis, "k1", every_s=0.05))
    try:
        await eventually(
            lambda: redis.hexists(c.KEYS_SEEN_KEY, "k1"), what="the API's note of its keys"
        )
        before = await redis.config_get("maxmemory", "maxmemory-policy")
        used = int((await redis.info("memory"))["used_memory"])
        # (logs captured before Redis is full: a round may run while the test awaits the
        # CONFIG SET's reply, and its line -- once a minute -- would be missed; CI found it)
        with capture_logs() as lines:
            # (a logger made now: relay.api's own may be cached already, past capture_logs,
            # once a test of the suite has set logging up -- tests/test_logs.py does)
            monkeypatch.setattr(app_module, "log", logs.get("relay.api"))
            try:
                await redis.config_set("maxmemory-policy", "noeviction")
                await redis.config_set("maxmemory", str(used // 2))
                monkeypatch.setattr(clock, "_offset_ms", 600_000)  # (10 min off)

                async def logged() -> bool:
                    return any("upkeep failed" in e["event"] for e in lines)

                await eventually(logged, what="the refused note logged")
                await eventually(
                    lambda: abs(clock.offset_ms()) < 1000, what="Redis' clock learnt all the same"
                )
                await asyncio.sleep(0.3)  # (more rounds: still one line)
            finally:
                await redis.config_set("maxmemory", before["maxmemory"])
                await redis.config_set("maxmemory-policy", before["maxmemory-policy"])
        said = [e for e in lines if "upkeep failed" in e["event"]]
        assert len(said) == 1, said
        assert said[0]["step"] == "keys held" and "OutOfMemory" in said[0]["error"], said
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_worker_round_reads_its_gauges_and_says_its_lease(redis: Redis) -> None:
    await redis.zadd(c.POLL_SCHEDULE_KEY, {"v1": 1, "v2": clock.now_ms() + 60_000})
    got = await worker_round(redis, 25.0, "k1")
    assert got.queues["poll"] == (2, 1)
    assert got.queues["delivery"] == (0, 0) and got.queues["expiry"] == (0, 0)
    assert got.refused is None and got.pause_left_ms == 0 and got.memory_used > 0
    assert set(got.watches) == set(c.WATCH_STATUSES)
    assert await redis.hexists(c.WORKER_LEASES_KEY, "25000")
    assert await redis.hexists(c.KEYS_SEEN_KEY, "k1")
