"""One clock: schedule scores, leases and the upstream budget's seconds are Redis' (TIME in
the scripts), not each worker's -- on a real Redis.

A worker whose clock is 30 s ahead is made in-process: the modules that read the time
(``now_ms`` in the store, ``time`` in the clock and the upstream gate) see this host's clock
plus 30 s, while a correct worker's claims and budget are already in Redis.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from redis.asyncio import Redis

import relay.domain.clock
import relay.store.deliveries
import relay.store.limits
import relay.store.videos
import workers.upstream_budget
from relay import constants as c
from relay.store import Store
from tests.conftest import early_in_a_second
from tests.test_store import fan_out, registered
from workers.upstream_budget import UpstreamGate

SKEW_S = 30.0


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


def skew(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, this process' clock is SKEW_S ahead (monotonic time is not)."""
    real = time.time

    class Ahead:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def time() -> float:
            return real() + SKEW_S

    def now_ms() -> int:
        return int((real() + SKEW_S) * 1000)

    for module in (relay.store.deliveries, relay.store.videos, relay.store.limits):
        monkeypatch.setattr(module, "now_ms", now_ms, raising=False)
    monkeypatch.setattr(relay.domain.clock, "time", Ahead)
    monkeypatch.setattr(workers.upstream_budget, "time", Ahead)


async def _claim_videos(store: Store, lease_s: float) -> list[str]:
    got: Any = await store.videos.claim(limit=100, lease_s=lease_s)
    rows = got[1] if isinstance(got, tuple) else got  # (a list of rows before issue 14)
    return [state.video_id for state, *_ in rows]


async def test_a_worker_30_s_ahead_claims_no_live_lease(
    redis: Redis, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: a worker whose clock is 30 s ahead takes none of another worker's live claims
    (10 s leases on deliveries, a video's poll and expiries) and no expiry that is not due
    (20 s away). Fails before issue 14: it compared the schedules' scores with its own clock
    and took every one of them."""
    delivering = await fan_out(store, await registered(store, 3, video="vid_d"), claim=3)
    assert len(delivering) == 3
    for d in delivering:
        await store.redis.zadd(c.DELIVERY_SCHEDULE_KEY, {d.watch_id: 0}, xx=True)
    assert len(await store.deliveries.claim(limit=10, lease_s=10)) == 3
    await registered(store, 1, video="vid_p")
    expiring = await registered(store, 2, video="vid_e")
    later = await registered(store, 1, video="vid_later")
    await asyncio.sleep(0.05)  # (due at their registration's ms)
    polled = await _claim_videos(store, 10)  # every video is polled by the correct worker
    assert sorted(polled) == ["vid_d", "vid_e", "vid_later", "vid_p"]
    for w in expiring:  # due now: claimed by the correct worker
        await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {w.id: 0}, xx=True)
    claimed = await store.deliveries.claim_expiries(limit=10, lease_s=10)
    assert sorted(claimed) == sorted(w.id for w in expiring)
    score = int(time.time() * 1000) + 20_000  # due in 20 s
    await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {later[0].id: score}, xx=True)

    skew(monkeypatch)
    ahead = Store(redis)
    assert await ahead.deliveries.claim(limit=10, lease_s=10) == []
    assert await _claim_videos(ahead, 10) == []
    assert await ahead.deliveries.claim_expiries(limit=10, lease_s=10) == []


async def test_a_worker_30_s_ahead_gets_no_second_upstream_budget(
    redis: Redis, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: the upstream budget (RELAY_UPSTREAM_RPS) is counted in Redis' seconds, so a
    worker whose clock is 30 s ahead shares it with a correct one: once the correct worker
    has spent a second's budget, the other gets nothing more in that second (and does get
    its share in the next). Fails before issue 14: the buckets were keyed by each worker's
    own second, so the skewed worker got a whole second budget at once."""
    rps = 10
    await early_in_a_second(0.3)
    correct = UpstreamGate(store.limits, rps)
    second = int((await redis.time())[0])
    for _ in range(rps):
        await correct.acquire()
    assert int((await redis.time())[0]) == second  # (the budget of one Redis second)

    skew(monkeypatch)
    ahead = UpstreamGate(Store(redis).limits, rps)
    granted_in_second = 0

    async def take() -> int:
        nonlocal granted_in_second
        while True:
            await ahead.acquire()
            now = int((await redis.time())[0])
            if now != second:
                return now
            granted_in_second += 1

    assert await asyncio.wait_for(take(), 5) == second + 1
    assert granted_in_second == 0
