"""The per-key API rate limit (relay/api/throttle.py: RELAY_RATE_LIMIT) on a real Redis.

Two limiters on one Redis stand for two API replicas. Most tests call ``sync()`` themselves,
so what each replica knows at each step is exact; one test runs the background sync loop.
Each test pins one rule; its docstring names it. A test that counts within one second starts
early in a second, so the counting never straddles two.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.api.throttle import SYNC_EVERY, RateLimiter
from relay.store import Store
from relay.store.limits import Limits
from tests.conftest import early_in_a_second, eventually


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


class CountingLimits:
    """The store's limits, counting the limiter's syncs."""

    def __init__(self, limits: Limits) -> None:
        self._store = limits
        self.syncs = 0

    async def rate_add(
        self, second: int, counts: dict[str, int], ended: tuple[int, dict[str, int]] | None = None
    ) -> dict[str, int]:
        self.syncs += 1
        await self.on_its_way()
        return await self._store.rate_add(second, counts, ended)

    async def on_its_way(self) -> None:
        """A sync is on its way to Redis (a test's hook)."""


def admitted(limiter: RateLimiter, key: str, tries: int) -> int:
    """How many of *tries* requests of *key* the limiter lets through."""
    return sum(limiter.allow(key) for _ in range(tries))


async def shared_count(store: Store, key: str, second: int) -> int:
    raw = await store.redis.hget(c.RATE_LIMIT_KEY.format(second), key)  # type: ignore[misc]
    return int(raw or 0)


async def test_one_replica_allows_exactly_limit_per_second(store: Store) -> None:
    """Rule: one replica lets exactly ``limit`` requests of a key through in a second and
    refuses the rest; refused requests are not counted, and the shared counter expires."""
    limiter = RateLimiter(store.limits, 10)
    second = await early_in_a_second()
    assert [limiter.allow("k") for _ in range(15)] == [True] * 10 + [False] * 5
    await limiter.sync()
    assert not limiter.allow("k")
    assert int(time.time()) == second
    assert await shared_count(store, "k", second) == 10
    assert 0 < await store.redis.pttl(c.RATE_LIMIT_KEY.format(second)) <= 2000


class SlowLimits(CountingLimits):
    """The store's limits, each sync held on its way until released."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def on_its_way(self) -> None:
        self.entered.set()
        await self.release.wait()


async def test_requests_while_a_sync_is_on_its_way_count_what_it_carries(store: Store) -> None:
    """Rule: one replica admits exactly ``limit`` a second also while its counts are on
    their way to Redis (a sync's round trip): they are neither unsynced nor known yet, and
    were forgotten meanwhile (an operator's load test saw 66 a second at a limit of 50)."""
    limits = SlowLimits(store.limits)
    limiter = RateLimiter(limits, 10)  # type: ignore[arg-type]
    second = await early_in_a_second()
    assert admitted(limiter, "k", 6) == 6
    sync = asyncio.create_task(limiter.sync())
    await limits.entered.wait()
    assert admitted(limiter, "k", 10) == 4
    limits.release.set()
    await sync
    assert admitted(limiter, "k", 5) == 0
    assert int(time.time()) == second
    assert await shared_count(store, "k", second) == 6  # (the 4 are unsynced still)


async def test_a_failed_sync_keeps_counting_what_it_carried(store: Store) -> None:
    """Rule: a sync that fails (Redis away, or given up after SYNC_DEADLINE) does not
    forget the requests it was adding: they still count this second, and go with the next
    sync."""

    class FailingOnce(CountingLimits):
        async def on_its_way(self) -> None:
            if self.syncs == 1:
                raise ConnectionError("Redis away")

    limiter = RateLimiter(FailingOnce(store.limits), 10)  # type: ignore[arg-type]
    second = await early_in_a_second()
    assert admitted(limiter, "k", 10) == 10
    with pytest.raises(ConnectionError):
        await limiter.sync()
    assert admitted(limiter, "k", 10) == 0
    await limiter.sync()
    assert int(time.time()) == second
    assert await shared_count(store, "k", second) == 10


async def test_replicas_together_admit_at_most_limit_plus_what_the_others_admitted_unsynced(
    store: Store,
) -> None:
    """Rule: replicas share one count per key and second: a replica that has synced counts
    every replica's requests, so all together admit at most ``limit`` plus what the others
    admitted since a replica's last sync (exactly ``limit`` once all have synced)."""
    a, b = RateLimiter(store.limits, 10), RateLimiter(store.limits, 10)
    second = await early_in_a_second()
    assert admitted(a, "k", 6) == 6
    await a.sync()
    assert b.allow("k")
    await b.sync()  # b learns the total: 7
    assert admitted(b, "k", 10) == 3
    # a last synced at 6: since then b admitted 4, which a cannot know of yet
    assert admitted(a, "k", 10) == 4
    await a.sync()
    await b.sync()
    assert admitted(a, "k", 5) == 0 and admitted(b, "k", 5) == 0
    assert int(time.time()) == second
    assert await shared_count(store, "k", second) == 14  # limit + the 4 a could not know of


async def test_replicas_admit_their_part_of_the_limit(store: Store) -> None:
    """Rule (module docstring): from its second second on, a replica admits at most its part
    of the limit -- its share of the key's requests, admitted or refused, in the second
    before, when they were more than the limit -- so two replicas sharing a key's requests
    admit the limit together, not each the limit (a tester's 2 replicas at 20 a second
    admitted 34-36). Requests that move to one replica get the whole limit there from the
    next second on; a key under its limit is not split (a review: 15 requests moving to
    one replica were cut to 10)."""
    a, b = RateLimiter(store.limits, 20), RateLimiter(store.limits, 20)

    async def next_second(n: int) -> None:
        await a.sync()
        await b.sync()
        await a.sync()
        await asyncio.sleep(second + n + 0.01 - time.time())

    second = await early_in_a_second()
    # (a first second: neither knows a part yet, each admits up to the limit unsynced)
    assert admitted(a, "k", 12) == 12 and admitted(b, "k", 12) == 12
    await next_second(1)
    # each had half of the key's requests: each admits half of the limit, not all of it
    assert admitted(a, "k", 30) == 10 and admitted(b, "k", 30) == 10
    await a.sync()
    await b.sync()
    assert admitted(a, "k", 5) == 0 and admitted(b, "k", 5) == 0
    assert int(time.time()) == second + 1
    assert await shared_count(store, "k", second + 1) == 20
    await next_second(2)
    assert admitted(a, "k", 30) == 10  # every request at a now: its part, this second
    await next_second(3)
    assert admitted(a, "k", 30) == 20  # ... and all of it in the next
    await next_second(4)
    assert admitted(b, "k", 30) == 1  # then at b, which had none: one, this second
    await next_second(5)
    assert admitted(b, "k", 30) == 20
    # a key under its limit is not split: its requests may move as they like
    await next_second(6)
    assert admitted(a, "k", 1) == 1 and admitted(b, "k", 1) == 1
    await next_second(7)
    assert admitted(a, "k", 15) == 15
    assert admitted(b, "k", 5) == 5


async def test_an_idle_replica_learns_what_the_others_admitted(store: Store) -> None:
    """Rule (module docstring: a replica knows what the others admitted as of its last
    sync): with the sync loops running, a replica that had no requests of its own still
    learns the others' totals within a sync interval or two."""
    a, b = RateLimiter(store.limits, 10), RateLimiter(store.limits, 10)
    a.start()
    b.start()
    try:
        second = await early_in_a_second()
        assert admitted(a, "k", 10) == 10
        await asyncio.sleep(6 * SYNC_EVERY)  # a synced long ago; nobody admitted since
        assert int(time.time()) == second
        assert admitted(b, "k", 10) == 0
    finally:
        await a.stop()
        await b.stop()


async def test_what_a_second_admitted_unsynced_is_added_to_it_after_it_ended(
    store: Store,
) -> None:
    """Rule: every admitted request is counted in its own second, also one admitted in the
    last sync interval of a second -- whether a request or the sync loop sees the next
    second first (other replicas with a slower clock read that count)."""
    limiter = RateLimiter(store.limits, 10)
    second = await early_in_a_second()
    assert admitted(limiter, "k", 4) == 4
    await asyncio.sleep(second + 1.01 - time.time())  # the second ended, not synced
    assert admitted(limiter, "k", 1) == 1  # a request sees the next second first
    await limiter.sync()
    assert await shared_count(store, "k", second) == 4
    assert await shared_count(store, "k", second + 1) == 1
    assert admitted(limiter, "k", 2) == 2
    await asyncio.sleep(second + 2.01 - time.time())
    await limiter.sync()  # the sync sees the next second first
    assert await shared_count(store, "k", second + 1) == 3


async def test_counts_start_afresh_each_second(store: Store) -> None:
    """Rule: the limit is per one-second window: a key refused in one second is let through
    again, ``limit`` times, in the next (what the replica learnt of the last second does not
    carry over, and the shared counter is per second)."""
    limiter = RateLimiter(store.limits, 3)
    second = await early_in_a_second()
    assert admitted(limiter, "k", 5) == 3
    await limiter.sync()
    assert admitted(limiter, "k", 1) == 0
    await asyncio.sleep(second + 1.01 - time.time())
    assert admitted(limiter, "k", 5) == 3
    await limiter.sync()
    assert await shared_count(store, "k", second + 1) == 3


async def test_keys_are_limited_apart(store: Store) -> None:
    """Rule: each API key has its own count, here and in Redis: one key at its limit does
    not hold back another."""
    limiter = RateLimiter(store.limits, 2)
    second = await early_in_a_second()
    assert admitted(limiter, "tenant-a", 5) == 2
    assert admitted(limiter, "tenant-b", 5) == 2
    await limiter.sync()
    assert admitted(limiter, "tenant-a", 1) == 0
    assert admitted(limiter, "tenant-c", 5) == 2
    await limiter.sync()
    assert int(time.time()) == second
    counts = [await shared_count(store, k, second) for k in ("tenant-a", "tenant-b", "tenant-c")]
    assert counts == [2, 2, 2]


async def test_the_sync_loop_shares_counts_by_itself_until_stop(store: Store) -> None:
    """Rule: a started limiter adds its counts to Redis every SYNC_EVERY seconds without
    being asked; ``stop()`` ends the loop promptly, after a last sync of what was counted."""
    counting = CountingLimits(store.limits)
    limiter = RateLimiter(counting, 100)  # type: ignore[arg-type]
    second = await early_in_a_second()
    limiter.start()
    try:
        assert admitted(limiter, "k", 5) == 5
        await eventually(
            lambda: shared_count(store, "k", second), timeout=5, what="the loop's sync"
        )
        assert await shared_count(store, "k", second) == 5
        assert admitted(limiter, "k", 2) == 2  # counted, not yet synced
    finally:
        began = time.monotonic()
        await limiter.stop()
        took = time.monotonic() - began
    assert took < 2.0
    assert int(time.time()) == second
    assert await shared_count(store, "k", second) == 7  # the last sync, at stop
    syncs = counting.syncs
    assert limiter.allow("k")
    await asyncio.sleep(5 * SYNC_EVERY)
    assert counting.syncs == syncs  # stopped: nothing syncs any more


async def test_a_clock_stepping_a_few_ms_back_opens_no_second_window(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: the limiter's second never goes back. A new offset to Redis' clock may step
    this replica's time a few ms back across a second's start; the second it counts in
    stays the later one. Fails before: the step back (and the step forward again) each
    started a fresh count, so a key that had used its second got ``limit`` more."""
    import relay.api.throttle

    limiter = RateLimiter(store.limits, 10)
    second = await early_in_a_second()
    assert admitted(limiter, "k", 10) == 10
    await limiter.sync()
    now = time.time()
    monkeypatch.setattr(relay.api.throttle, "now_ms", lambda: int(now * 1000) - 1_000)
    assert admitted(limiter, "k", 5) == 0  # a step back to the second before: still full
    monkeypatch.setattr(relay.api.throttle, "now_ms", lambda: int(now * 1000))
    assert admitted(limiter, "k", 5) == 0  # and forward again: the same second, still full
    assert second == int(time.time())


async def test_totals_of_a_second_that_ended_during_the_sync_are_not_the_new_seconds(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync whose answer comes after the second rolled over (requests of the new second
    came in meanwhile) brings the old second's totals: they are not taken as the new
    second's, which would refuse requests the new second has room for (a mutation review,
    2026-12-06)."""
    import relay.api.throttle

    clock = {"ms": 1_000_000_000_000}
    monkeypatch.setattr(relay.api.throttle, "now_ms", lambda: clock["ms"])

    class RollingLimits:
        """The store's limits; the second rolls over while a sync is on its way."""

        async def rate_add(
            self,
            second: int,
            counts: dict[str, int],
            ended: tuple[int, dict[str, int]] | None = None,
        ) -> dict[str, int]:
            totals = await store.limits.rate_add(second, counts, ended)
            clock["ms"] += 1000
            assert limiter.allow("k")  # the new second's first request, during the sync
            return totals

    limiter = RateLimiter(RollingLimits(), limit=3)  # type: ignore[arg-type]
    assert [limiter.allow("k") for _ in range(3)] == [True] * 3  # the old second's limit
    await limiter.sync()  # (its totals: 3, the limit)
    assert limiter.allow("k") and limiter.allow("k")  # the new second: 3 of 3
    assert not limiter.allow("k")
