"""Expiry (workers/expirer.py, the expiry schedule ``cr:sched:expiry``) on a real Redis.

The expirer is a pump over the expiry schedule: a claim is a lease, so an expiry whose run
fails (Redis answering errors) comes back after the lease; and the schedule holds exactly
the watches still ``watching`` through every transition -- which is why no periodic scan
for watches past their deadline is needed (docs/guarantees.md, "Expiry").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from relay import constants as c
from relay.domain.clock import now_ms
from relay.store import Store
from tests.conftest import eventually
from tests.test_store import clips_ready, registered
from workers.expirer import Expirer


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


async def _watching(store: Store, ids: list[str]) -> set[str]:
    got = set()
    for wid in ids:
        w = await store.watches.get(wid)
        if w is not None and w.status == "watching":
            got.add(wid)
    return got


async def _scheduled(store: Store) -> set[str]:
    return set(await store.redis.zrange(c.EXPIRY_SCHEDULE_KEY, 0, -1))


async def test_expiries_that_meet_redis_errors_are_tried_again_soon(store: Store) -> None:
    """Rule: an expiry whose run fails (here its first two ``finalize`` calls meet a Redis
    connection error) is not lost and does not wait out its lease (30 s here): the batch's
    claims are handed back due RETRY_S (1 s) later, and every watch past its deadline ends,
    within seconds, with exactly one ``watch.expired``. Fails before issue 14: a failed
    batch kept its claims until the lease lapsed (30 s here; RELAY_LEASE, 25 s, in
    production)."""
    watches = await registered(store, 6, video="vid_x")
    for w in watches:
        await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {w.id: now_ms() - 1}, xx=True)
    real = store.deliveries.finalize
    failures = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise RedisConnectionError("Redis is loading the dataset in memory")
        return await real(*args, **kwargs)

    store.deliveries.finalize = flaky  # type: ignore[method-assign]
    expirer = Expirer(store, lease_s=30)
    expirer.start()
    try:
        await eventually(lambda: _all_gone(store), timeout=12, what="every watch expired")
    finally:
        await expirer.stop(1.0)
    assert failures == 2
    for w in watches:
        stored = await store.watches.get(w.id)
        assert stored is not None and stored.status == "delivering"
        assert stored.event_type == "watch.expired"
    assert await store.redis.zcard(c.DELIVERY_SCHEDULE_KEY) == 6  # one event each


async def _all_gone(store: Store) -> bool:
    return not await _scheduled(store)


async def test_the_expiry_schedule_holds_exactly_the_watching_watches(store: Store) -> None:
    """Rule: whatever happens to watches -- registered, cancelled, given their event by a
    fan-out, expired, a fan-out run twice, an expiry of a watch that has its event -- the
    expiry schedule holds exactly the watches still ``watching``: each script that changes
    one changes the other in the same step, so no watch can wait past its deadline without
    a timer. (Passes before issue 14 too: it pins the argument of docs/guarantees.md.)"""
    a = await registered(store, 10, video="vid_a")
    b = await registered(store, 10, video="vid_b")
    ids = [w.id for w in a + b]
    assert await _watching(store, ids) == await _scheduled(store) == set(ids)
    for w in a[:3] + b[:2]:
        await store.watches.cancel(w)
    assert await _watching(store, ids) == await _scheduled(store)
    event = clips_ready()
    chunk = [w.id for w in a]
    await store.deliveries.finalize("vid_a", event, chunk[:5], claim=2, lease_s=30)
    await store.deliveries.finalize("vid_a", event, chunk, claim=0)  # again, and the rest
    assert await _watching(store, ids) == await _scheduled(store)
    for w in b[5:]:
        await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {w.id: now_ms() - 1}, xx=True)
    await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {"wat_vid_a_acme_0009": 0})  # has its event
    expirer = Expirer(store, lease_s=5)
    expirer.start()
    left = {w.id for w in b[2:5]}  # cancelled: b[:2]; expired: b[5:]
    try:
        await eventually(lambda: _is(_scheduled(store), left), timeout=10, what="expiries")
        await asyncio.sleep(0.2)
    finally:
        await expirer.stop(1.0)
    assert await _watching(store, ids) == await _scheduled(store) == left
    for w in b[5:]:
        stored = await store.watches.get(w.id)
        assert stored is not None and stored.event_type == "watch.expired"


async def _is(got: Awaitable[set[str]], want: set[str]) -> bool:
    return await got == want


async def test_a_watch_whose_video_completed_is_not_expired_while_its_clips_render(
    store: Store,
) -> None:
    """``watch.expired`` is for a video that never finished: one that is ``completed``
    with its clips still rendering gets ``clips.ready`` by RELAY_RENDER_TIMEOUT after it.
    A review found ``watch.expired`` sent at the watch's deadline instead, and the clips
    never. Its expiry waits till the render wait's end (and a lease); a wait over for long
    with no event (its poller gone) expires it."""
    (w,) = await registered(store, 1, video="vid_r")
    video = c.VIDEO_KEY.format("vid_r")
    await store.redis.hset(video, mapping={"phase": "render", "completedAt": now_ms() - 1_000})
    await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {w.id: now_ms() - 1}, xx=True)
    expirer = Expirer(store, lease_s=5, render_s=60)
    expirer.start()
    try:

        async def put_off() -> bool:
            due = await store.redis.zscore(c.EXPIRY_SCHEDULE_KEY, w.id)
            return due is not None and due > now_ms() + 60_000

        await eventually(put_off, timeout=5, what="the expiry put off past the render wait")
        due = await store.redis.zscore(c.EXPIRY_SCHEDULE_KEY, w.id)
        assert due is not None and due <= now_ms() + 66_000, due  # (59 s left, and a lease)
        stored = await store.watches.get(w.id)
        assert stored is not None and stored.status == "watching"
        # the wait just over, no event yet: due again once it is 10 minutes late, in one step
        await store.redis.hset(video, "completedAt", now_ms() - 61_000)
        await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {w.id: now_ms() - 1}, xx=True)

        async def late() -> bool:
            due = await store.redis.zscore(c.EXPIRY_SCHEDULE_KEY, w.id)
            return due is not None and due > now_ms() + 590_000

        await eventually(late, timeout=5, what="the expiry put off till 10 minutes late")
        # the render wait long over, no event: its poller is gone; the watch expires
        await store.redis.hset(video, "completedAt", now_ms() - 3_600_000)
        await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {w.id: now_ms() - 1}, xx=True)
        await eventually(lambda: _all_gone(store), timeout=5, what="expired")
    finally:
        await expirer.stop(1.0)
    stored = await store.watches.get(w.id)
    assert stored is not None and stored.event_type == "watch.expired"
