"""The pub/sub feeds (relay/store/feeds.py, workers/feeds.py) on a real Redis: what a worker
hears, what it catches up on after missing it, and that nothing ends its feed but a stop."""

from __future__ import annotations

import asyncio
from types import TracebackType

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from relay import constants as c
from relay.domain.origin import origin_tag
from relay.store import Store
from relay.store.feeds import Feed
from tests.conftest import WorkerFactory, eventually
from workers import feeds
from workers.feeds import Follower

ORIGIN = ("http", "127.0.0.1", 9)


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_a_close_is_recorded_for_workers_that_missed_it_and_kept_ten_minutes(
    store: Store, redis: Redis
) -> None:
    """``closed_since`` gives the closes after a time (none at a worker's first look, its
    circuits being new) and Redis' now for the next look; records older than ten minutes
    are dropped by the next close."""
    tags, first = await store.circuits.closed_since(None)
    assert tags == [] and abs(first - await redis_ms(redis)) < 1000
    await redis.zadd(c.CIRCUIT_CLOSES_KEY, {"stale": first - 700_000})
    await store.circuits.close(["abc123"])
    await store.circuits.close(["def456", "ghi789", "def456"])
    await store.circuits.close([])  # nothing to close: no call
    tags, later = await store.circuits.closed_since(first - 1)
    assert sorted(tags) == ["abc123", "def456", "ghi789"] and later >= first
    assert await redis.zscore(c.CIRCUIT_CLOSES_KEY, "stale") is None
    assert 0 < await redis.pttl(c.CIRCUIT_CLOSES_KEY) <= 600_000
    assert (await store.circuits.closed_since(later + 1))[0] == []


class FlakyFeed:
    """A feed whose first subscription fails (a lost connection), then hands out messages."""

    opened = 0

    def __init__(self, messages: list[str]) -> None:
        self.messages = messages

    async def __aenter__(self) -> FlakyFeed:
        FlakyFeed.opened += 1
        if FlakyFeed.opened == 1:
            raise RedisConnectionError("lost")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def next(self, within: float) -> str | None:
        if self.messages:
            return self.messages.pop(0)
        await asyncio.sleep(min(within, 0.01))
        return None


async def test_a_follower_subscribes_again_catches_up_and_skips_a_bad_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lost subscription is made again (after RETRY_S); the catch-up runs after each
    subscription and every CATCH_UP_S; a message its handler fails on is skipped."""
    monkeypatch.setattr(feeds, "RETRY_S", 0.01)
    monkeypatch.setattr(feeds, "CATCH_UP_S", 0.05)
    heard: list[str] = []
    catch_ups = 0

    def on_message(message: str) -> None:
        if message == "bad":
            raise ValueError(message)
        heard.append(message)

    async def on_subscribed() -> None:
        nonlocal catch_ups
        catch_ups += 1

    FlakyFeed.opened = 0
    feed = FlakyFeed(["one", "bad", "two"])
    follower = Follower(lambda: feed, on_message, "test", on_subscribed)  # type: ignore[arg-type,return-value]
    ready = asyncio.Event()
    task = asyncio.create_task(follower.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 2)
        await eventually(lambda: heard == ["one", "two"], what="both good messages")
        await eventually(lambda: catch_ups >= 3, what="periodic catch-ups")
        assert FlakyFeed.opened == 2
    finally:
        follower.stop()
        await asyncio.wait_for(task, 3)


async def test_a_worker_that_missed_a_close_catches_up(
    make_worker: WorkerFactory, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close recorded but never heard (the message lost while the worker's feed was
    reconnecting) closes the worker's circuit at its next catch-up."""
    monkeypatch.setattr(feeds, "CATCH_UP_S", 0.2)
    worker = await make_worker()
    breakers = worker.ctx["runtime"].deliverer.breakers
    for _ in range(breakers.failures):
        breakers.record(ORIGIN, False)
    assert breakers.open_origins == 1
    await asyncio.sleep(0.05)  # (after the worker's first look)
    await redis.zadd(c.CIRCUIT_CLOSES_KEY, {origin_tag(ORIGIN): await redis_ms(redis)})
    await eventually(lambda: breakers.open_origins == 0, what="the missed close applied")


async def test_a_feed_gives_its_connection_back_when_subscribing_fails(redis: Redis) -> None:
    """A subscription that fails (Redis away) closes what it took, and says so."""
    away = Redis.from_url("redis://127.0.0.1:9/0", decode_responses=True)
    try:
        with pytest.raises(RedisConnectionError):
            async with Feed(away, "cr:test"):
                pass
    finally:
        await away.aclose()


async def test_a_stop_ends_a_follower_waiting_for_a_message_at_once(redis: Redis) -> None:
    """A follower waiting on a real feed ends as soon as it is stopped, and a message sent
    meanwhile is still heard; its task's own cancellation is not taken for a stop. Fails
    before: the stop was seen only when the wait ended (WAIT_S, a second), so every worker's
    shutdown waited a second per feed."""
    heard: list[str] = []
    follower = Follower(lambda: Feed(redis, "cr:test:feed"), heard.append, "test")
    ready = asyncio.Event()
    task = asyncio.create_task(follower.run(ready))
    await asyncio.wait_for(ready.wait(), 2)
    await redis.publish("cr:test:feed", "hello")
    await eventually(lambda: heard == ["hello"], what="the message")
    await asyncio.sleep(0.05)  # (waiting for the next one now)
    loop = asyncio.get_running_loop()
    started = loop.time()
    follower.stop()
    await asyncio.wait_for(task, 3)
    assert loop.time() - started < 0.3

    other = Follower(lambda: Feed(redis, "cr:test:feed"), heard.append, "test")
    ready = asyncio.Event()
    task = asyncio.create_task(other.run(ready))
    await asyncio.wait_for(ready.wait(), 2)
    task.cancel()  # not a stop: the task ends cancelled
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3)

    for stop_first in (True, False):  # a stop and a cancel in one turn: still cancelled
        other = Follower(lambda: Feed(redis, "cr:test:feed"), heard.append, "test")
        ready = asyncio.Event()
        task = asyncio.create_task(other.run(ready))
        await asyncio.wait_for(ready.wait(), 2)
        await asyncio.sleep(0.05)
        if stop_first:
            other.stop()
            task.cancel()
        else:
            task.cancel()
            other.stop()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 3)
        assert task.cancelled(), stop_first
