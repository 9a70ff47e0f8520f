"""One clock: schedule scores, leases and the upstream budget's seconds are Redis' (TIME in
the scripts), not each worker's -- on a real Redis.

A worker whose clock is 30 s ahead is made in-process: the modules that read the time
(``now_ms`` in the store, ``time`` in the clock and the upstream gate) see this host's clock
plus 30 s, while a correct worker's claims and budget are already in Redis.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest
from redis.asyncio import Redis

import relay.domain.clock
import relay.store.deliveries
import relay.store.limits
import relay.store.videos
import workers.upstream_budget
from relay import constants as c
from relay.domain import attempts
from relay.store import Store, timesync
from tests.conftest import ApiFactory, auth, early_in_a_second
from tests.test_store import fan_out, registered, result
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
    claimed, _ = await store.deliveries.claim_expiry_batch(limit=10, lease_s=10)
    assert sorted(claimed) == sorted(w.id for w in expiring)
    score = int(time.time() * 1000) + 20_000  # due in 20 s
    await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {later[0].id: score}, xx=True)

    skew(monkeypatch)
    ahead = Store(redis)
    assert await ahead.deliveries.claim(limit=10, lease_s=10) == []
    assert await _claim_videos(ahead, 10) == []
    assert (await ahead.deliveries.claim_expiry_batch(limit=10, lease_s=10))[0] == []


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


async def test_a_replica_10_min_off_schedules_the_first_poll_and_expiry_on_redis_clock(
    redis: Redis, store: Store
) -> None:
    """Rule: a new watch's video is due for its first poll at Redis' now, and the watch
    expires RELAY_WATCH_TIMEOUT after it, whatever the clock of the API replica that
    registered it says (its created ms only tell how long the timeout is). Fails before:
    both scores were the replica's own times, so one 10 min ahead left the video unpolled
    for 10 min, and one 10 min behind expired its watches 10 min early."""
    real = int(time.time() * 1000)
    for video, off_ms in (("vid_ahead", 600_000), ("vid_behind", -600_000)):
        w = (await registered(store, 1, video=video))[0]  # (stored again: off by off_ms)
        await redis.flushall()
        skewed = replace(w, created_ms=real + off_ms)
        await store.watches.create(skewed, expire_after_s=900)
        secs, micros = await redis.time()
        now = int(secs) * 1000 + int(micros) // 1000
        poll = await redis.zscore(c.POLL_SCHEDULE_KEY, video)
        expiry = await redis.zscore(c.EXPIRY_SCHEDULE_KEY, w.id)
        assert poll is not None and expiry is not None
        assert now - 2_000 <= poll <= now, (video, poll - now)
        assert now + 898_000 <= expiry <= now + 900_000, (video, expiry - now)


async def test_a_worker_30_s_ahead_schedules_a_retry_by_redis_clock(
    redis: Redis, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: a retry is due its delay after Redis' now, whatever the clock of the worker
    that settles it says (it sends the delay; settle adds Redis' TIME). Fails before: the
    worker sent the due time its own clock made, so one 30 s ahead retried 30 s late (and
    one behind, early)."""
    (claim,) = await fan_out(store, await registered(store, 1), claim=1)
    skew(monkeypatch)
    ahead = relay.store.deliveries.now_ms()  # (the skewed worker's clock)
    failed = attempts.record(1, ahead, 500, None, 1.0, "HTTP 500")
    retry = result(claim, "retry", failed, next_due_ms=ahead + 60_000, last_error="HTTP 500")
    assert await Store(redis).deliveries.settle([retry]) == ["delivering"]
    secs, micros = await redis.time()
    now = int(secs) * 1000 + int(micros) // 1000
    due = await redis.zscore(c.DELIVERY_SCHEDULE_KEY, claim.watch_id)
    assert due is not None and now + 58_000 <= due <= now + 60_000, due - now


async def test_a_process_learns_redis_clock_at_once(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: a process whose clock is 30 s ahead learns Redis' clock from one probe
    (``relay.store.timesync``), so every time it computes (``now_ms``) is Redis' to a few
    ms. Fails before: only a worker's claims taught it, and the API never learnt it."""
    skew(monkeypatch)
    assert relay.domain.clock.now_ms() - int(time.time() * 1000) > SKEW_S * 1000 - 1_000
    assert await timesync.sync(redis)
    before = relay.domain.clock.now_ms()
    secs, micros = await redis.time()
    after = relay.domain.clock.now_ms()
    now = int(secs) * 1000 + int(micros) // 1000
    assert before - 100 <= now <= after + 100, (before - now, after - now)


async def test_the_api_learns_redis_clock_when_it_starts(
    make_api: ApiFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: an API replica 30 s ahead stamps a new watch's ``createdAt`` with Redis' time:
    it learns the offset as it starts (and every few seconds). Fails before: the API kept
    its own clock, so its watches were 30 s in the future (and its rate windows and secret
    graces off by as much)."""
    skew(monkeypatch)
    api = await make_api()
    resp = await api.post(
        "/v1/watches",
        json={"videoId": "vid_clock", "callbackUrl": "http://127.0.0.1:9/h"},
        headers=auth(),
    )
    assert resp.status == 201, await resp.text()
    created = datetime.fromisoformat((await resp.json())["createdAt"].replace("Z", "+00:00"))
    assert abs(created.timestamp() - time.time()) < 2, created


async def test_a_pause_is_timed_on_the_monotonic_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule: an upstream 429 pause lasts its length, whatever this host's wall clock does
    meanwhile: a step of its clock (NTP) neither lengthens nor ends it. Fails before: the
    poller compared the pause's wall-clock end with the wall clock."""
    gate = UpstreamGate(None, 10)  # type: ignore[arg-type]  # (no Redis: _hold only)
    gate._hold(5.0)
    assert 4.0 < gate.paused_s() <= 5.0
    skew(monkeypatch)  # the wall clock jumps 30 s ahead: the pause is still on
    assert 4.0 < gate.paused_s() <= 5.0


async def test_an_offset_learnt_while_redis_was_slow_is_replaced(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: an offset learnt from slow round trips (Redis busy as the process started) is
    replaced by the next probe no slower, even one over the usual 100 ms bound. Fails
    before: once learnt, a round trip over 100 ms taught nothing, so the first (and least
    exact) offset stayed for as long as Redis stayed slow."""
    real_time = redis.time
    delays = [0.4, 0.2]  # the second probe slow too (over 100 ms), but less

    async def slow_time() -> tuple[int, int]:
        await asyncio.sleep(delays.pop(0))
        return await real_time()

    monkeypatch.setattr(redis, "time", slow_time)
    assert await timesync.sync(redis, samples=1)
    skew(monkeypatch)  # this host's clock steps 30 s ahead; Redis is still slow
    assert await timesync.sync(redis, samples=1)
    secs, micros = await real_time()
    now = int(secs) * 1000 + int(micros) // 1000
    assert abs(relay.domain.clock.now_ms() - now) < 1_000


def test_an_observation_is_taught_only_by_a_quick_forward_round_trip() -> None:
    """The offset is Redis' time minus the midpoint of the round trip, and a reply slower
    than MAX_RTT_MS, or one "answered" before it was sent (the host's clock stepped back),
    teaches nothing (a mutation review: no test checked the gate or the midpoint)."""
    clock = relay.domain.clock
    assert clock.observe(1_000, 0, 100)  # the slowest reply that still teaches
    assert clock.offset_ms() == 950 and clock.learned_rtt_ms() == 100
    assert not clock.observe(10_000, 0, 101)  # too slow
    assert not clock.observe(10_000, 100, 50)  # backwards
    assert clock.offset_ms() == 950 and clock.learned_rtt_ms() == 100
    assert clock.observe(2_000, 1_000, 1_010)
    assert clock.offset_ms() == 995 and clock.learned_rtt_ms() == 10
