"""The upstream budget (workers/upstream_budget.py: RELAY_UPSTREAM_RPS) on a real Redis.

Two gates on one Redis stand for two workers. Each test pins one rule of the shared budget;
its docstring names it. Counts per second are taken with the wall clock the gate and Redis
script use (``time.time()``), read right after each ``acquire()`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.devtools.embedded_redis import RedisServer, free_port
from relay.settings import Settings
from relay.store import Store
from relay.store import limits as limits_module
from relay.store.limits import Limits
from tests.conftest import WorkerFactory, early_in_a_second, eventually
from workers import feeds
from workers.upstream_budget import Paused, UpstreamGate


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


class CountingLimits:
    """The store's limits, counting the gate's round trips for tokens."""

    def __init__(self, limits: Limits) -> None:
        self._store = limits
        self.token_calls = 0

    async def upstream_tokens(self, want: int, rps: float) -> tuple[int, int]:
        self.token_calls += 1
        return await self._store.upstream_tokens(want, rps)

    async def pause_upstream(self, pause_ms: int) -> None:
        await self._store.pause_upstream(pause_ms)

    async def upstream_pause_left_ms(self) -> int:
        return await self._store.upstream_pause_left_ms()


async def test_two_gates_together_never_exceed_rps_in_any_second(store: Store) -> None:
    """Rule: the RELAY_UPSTREAM_RPS budget is shared through Redis: two gates (two workers),
    each with requests queued at once, together pass at most ``rps`` requests in any one
    second -- and do use the budget."""
    rps = 50
    gates = [UpstreamGate(store.limits, rps), UpstreamGate(store.limits, rps)]
    stamps: list[tuple[int, float]] = []  # (gate, when acquire returned)
    second = await early_in_a_second(0.2)

    async def caller(g: int) -> None:
        while True:
            await gates[g].acquire()
            stamps.append((g, time.time()))

    callers = [asyncio.create_task(caller(g)) for g in (0, 1) for _ in range(4)]
    await asyncio.sleep(second + 1.3 - time.time())  # the rest of this second and the next
    for task in callers:
        task.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    per_second = Counter(int(t) for _, t in stamps)
    assert max(per_second.values()) <= rps, per_second
    assert per_second[second + 1] == rps, per_second  # a full second: all of it used
    assert {g for g, _ in stamps} == {0, 1}


async def test_every_callers_wait_is_counted(store: Store) -> None:
    """``relay_upstream_wait_seconds_total`` is the time requests waited for the budget:
    the callers queued behind the one at the head wait too. 12 callers at 4 per second wait
    about 0+...+(2 s each for the last 4): over 10 s in all, not the ~2 s of the head."""
    from relay.metrics import UPSTREAM_WAIT

    gate = UpstreamGate(store.limits, 4)
    await early_in_a_second(0.2)
    before = UPSTREAM_WAIT._value.get()
    began = time.monotonic()
    await asyncio.gather(*(gate.acquire() for _ in range(12)))
    took = time.monotonic() - began
    waited = UPSTREAM_WAIT._value.get() - before
    assert 1.5 < took < 3.5, took
    assert waited > 3 * took, (waited, took)


async def test_tokens_are_spent_only_in_the_second_they_were_granted_for(
    store: Store,
) -> None:
    """Rule: a gate spends its locally held tokens only within the second they were granted
    for: in the next second it asks Redis again, and waits when the other workers have spent
    that second's budget already."""
    rps = 50  # chunks of 5: the first acquire leaves 4 tokens held
    gate = UpstreamGate(store.limits, rps)
    second = await early_in_a_second()
    await gate.acquire()
    assert int(time.time()) == second
    # the other workers spend the whole budget of the next second
    await store.redis.set(c.UPSTREAM_RATE_KEY.format("") + str(second + 1), rps, px=5000)
    await asyncio.sleep(second + 1.01 - time.time())
    await gate.acquire()  # 4 tokens held from the last second: none of them may be used
    assert time.time() >= second + 2


async def test_a_request_sent_in_the_last_100_ms_of_a_second_counts_in_the_next_too(
    store: Store,
) -> None:
    """Rule: a request sent in the last ``UPSTREAM_SEND_MARGIN_MS`` of a second may reach the
    upstream in the next one (a CI run counted 21 requests in one of the upstream's seconds
    with a cap of 20, the 21st sent at ~999 ms). Tokens granted before the margin are not
    spent in it; tokens granted in it are charged to both seconds, and when the next second's
    budget is spent already the gate waits for it."""
    rps = 50  # chunks of 5
    rate = c.UPSTREAM_RATE_KEY.format("")
    margin = c.UPSTREAM_SEND_MARGIN_MS / 1000
    second = await early_in_a_second()
    granted, ms = await store.limits.upstream_tokens(1, rps)
    assert granted == 1 and ms <= 1000 * (1 - margin)  # a life that ends where the margin starts
    limits = CountingLimits(store.limits)
    gate = UpstreamGate(limits, rps)  # type: ignore[arg-type]
    await gate.acquire()  # 4 tokens held ...
    await asyncio.sleep(second + 1 - margin + 0.01 - time.time())  # ... into the margin
    await gate.acquire()  # not one of them: 5 new ones, counted in this second and the next
    assert limits.token_calls == 2 and int(time.time()) == second
    assert [int(await store.redis.get(rate + str(s)) or 0) for s in (second, second + 1)] == [
        11,
        5,
    ]
    # the other workers have spent the next second's budget: nothing is sent in the margin
    await store.redis.set(rate + str(second + 1), rps, px=5000)
    gate = UpstreamGate(store.limits, rps)
    await gate.acquire()
    assert int(time.time()) == second + 2


async def test_a_pause_set_by_one_gate_holds_the_other(store: Store) -> None:
    """Rule: a pause after a 429, set through one gate, holds every gate on the same Redis:
    the other waits until it ends, or raises ``Paused`` (with the pause's end) when the pause
    is longer than its *max_pause*."""
    pausing, other = UpstreamGate(store.limits, 50), UpstreamGate(store.limits, 50)
    await pausing.pause(1.5)  # (well above max_pause, also on a machine slowed by others)
    until = pausing.paused_until
    with pytest.raises(Paused):
        await pausing.acquire(max_pause=0.2)
    with pytest.raises(Paused) as raised:
        await other.acquire(max_pause=0.2)
    # (the same end, give or take the two round trips between: far from the 1.5 s pause)
    assert abs(raised.value.until - until) < 0.15
    await other.acquire()  # no max_pause: it waits the pause out
    assert time.time() >= int(until * 1000) / 1000


async def test_a_later_pause_is_not_shortened_by_an_earlier_one(store: Store) -> None:
    """Rule: pauses keep the later end: a short pause set after a long one (two workers'
    429s) does not cut the long one short."""
    first, second = UpstreamGate(store.limits, 50), UpstreamGate(store.limits, 50)
    await first.pause(5)
    await second.pause(0.1)
    with pytest.raises(Paused) as raised:
        await UpstreamGate(store.limits, 50).acquire(max_pause=1)
    assert raised.value.until > time.time() + 4


async def test_tokens_are_taken_from_redis_in_chunks(store: Store) -> None:
    """Rule: tokens come from Redis a chunk at a time (rps/10, at most 64): a busy gate makes
    far fewer than one Redis round trip per request."""
    counting = CountingLimits(store.limits)
    gate = UpstreamGate(counting, 1000)  # type: ignore[arg-type]
    await early_in_a_second(0.5)
    for _ in range(256):
        await gate.acquire()
    assert counting.token_calls <= 256 // 64 + 1  # one more if a second ended meanwhile
    assert counting.token_calls >= 256 // 64


@contextlib.asynccontextmanager
async def following(gate: UpstreamGate) -> AsyncIterator[None]:
    """*gate* follows the pause feed (subscribed on entry) until the block ends."""
    subscribed = asyncio.Event()
    task = asyncio.create_task(gate.follow_pauses(subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        yield
    finally:
        gate.stop_following()
        await asyncio.wait_for(task, 3)


async def test_a_pause_holds_a_gate_that_has_tokens_left(store: Store) -> None:
    """Rule (module docstring: "A 429 from the upstream pauses every worker"): a gate that
    still holds tokens of this second does not use them while another worker's pause runs:
    it learns of the pause as it is set (the pause feed), without a round trip of its own."""
    holder, pausing = UpstreamGate(store.limits, 1000), UpstreamGate(store.limits, 1000)
    async with following(holder):
        await early_in_a_second(0.5)
        await holder.acquire()  # takes a chunk of 64: 63 held
        await pausing.pause(2)
        await eventually(lambda: holder.paused_until > time.time() + 1, what="the pause heard")
        with pytest.raises(Paused):
            await holder.acquire(max_pause=0.5)


async def test_a_short_pause_heard_is_waited_out_with_the_tokens_held(store: Store) -> None:
    """Rule: a pause shorter than the caller's *max_pause* is waited out, also by a gate
    that holds tokens of this second (it heard the pause through the feed)."""
    holder, pausing = UpstreamGate(store.limits, 1000), UpstreamGate(store.limits, 1000)
    async with following(holder):
        await early_in_a_second(0.3)
        await holder.acquire()  # 63 held
        await pausing.pause(1.0)
        # (heard with at least 0.6 s of it left, so the wait below is measurable)
        await eventually(lambda: holder.paused_until > time.time() + 0.6, what="the pause heard")
        t0 = time.monotonic()
        await holder.acquire(max_pause=2)
        assert time.monotonic() - t0 >= 0.5


async def test_the_pause_feed_comes_back_after_its_connection_is_lost(
    store: Store, redis: Redis
) -> None:
    """Rule: a gate following the pauses subscribes again when its connection drops (a
    Redis restart or a killed client), and hears the pauses set after that."""
    gate = UpstreamGate(store.limits, 1000)
    async with following(gate):
        pausing = UpstreamGate(store.limits, 1000)
        assert await redis.client_kill_filter(_type="pubsub") >= 1

        async def heard() -> bool:
            await pausing.pause(3)  # each a later end than the last: published
            return gate.paused_until > time.time() + 2

        await eventually(heard, every=0.2, what="a pause heard after the kill")


async def test_a_message_that_is_no_pause_is_skipped_and_the_feed_goes_on(
    store: Store, redis: Redis
) -> None:
    """Rule: a message on the pause channel that is not a pause length (a float, garbage, a
    negative) is logged and skipped; the pauses after it are heard."""
    gate = UpstreamGate(store.limits, 1000)
    async with following(gate):
        for junk in ("x", "-5", "nan", "1500.0"):
            await redis.publish(c.UPSTREAM_PAUSE_CHANNEL, junk)
        await eventually(lambda: gate.paused_until > time.time() + 1, what="1500.0 heard")
        await UpstreamGate(store.limits, 1000).pause(4)
        await eventually(lambda: gate.paused_until > time.time() + 3, what="the pause heard")


async def test_a_pause_shows_in_the_workers_gauge(
    make_worker: WorkerFactory, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """relay_upstream_paused_seconds: the seconds left of a 429 pause, from Redis, so a
    long one (up to an hour) that stops all polling is seen on a dashboard."""
    from relay.metrics import UPSTREAM_PAUSED
    from workers import health

    monkeypatch.setattr(health, "GAUGE_INTERVAL", 0.05)
    await make_worker()
    await store.limits.pause_upstream(120_000)
    await eventually(lambda: 100 < UPSTREAM_PAUSED._value.get() <= 120, what="the gauge")
    await store.redis.delete(c.UPSTREAM_PAUSE_KEY)
    await eventually(lambda: UPSTREAM_PAUSED._value.get() == 0, what="the gauge back to 0")


async def test_an_operator_ending_the_pause_wakes_every_gate_at_once(store: Store) -> None:
    """``clip-relay upstream resume`` (:meth:`Limits.resume_upstream`): a gate waiting out
    a one-hour pause with the tokens it holds goes on within a moment, and a new request is
    granted; the pause is gone from Redis."""
    waiting, pausing = UpstreamGate(store.limits, 1000), UpstreamGate(store.limits, 1000)
    async with following(waiting):
        await pausing.pause(3600)
        await eventually(lambda: waiting.paused_until > time.time() + 3000, what="the pause")
        blocked = asyncio.create_task(waiting.acquire())
        await asyncio.sleep(0.2)
        assert not blocked.done()
        left, _ = await store.limits.resume_upstream(lease_s=25)
        assert 3_590_000 < left <= 3_600_000
        await asyncio.wait_for(blocked, 2)
        assert waiting.paused_until == 0 and await store.limits.upstream_pause_left_ms() == 0
        await asyncio.wait_for(UpstreamGate(store.limits, 1000).acquire(), 2)  # Redis grants


async def test_a_gate_that_missed_the_end_of_a_pause_learns_it_from_redis(store: Store) -> None:
    """A gate whose subscription was away when the pause was ended reads it from Redis
    when it subscribes again (and every 10 s): it does not wait out the hour."""
    gate = UpstreamGate(store.limits, 1000)
    await gate.pause(3600)
    await store.limits.resume_upstream(lease_s=25)  # nobody subscribed: the message is lost
    assert gate.paused_until > time.time() + 3000
    async with following(gate):  # the catch-up on subscribing
        assert gate.paused_until == 0
        await asyncio.wait_for(gate.acquire(), 2)
    # and a pause it missed is learnt the same way
    await UpstreamGate(store.limits, 1000).pause(60)
    async with following(gate):
        assert gate.paused_until > time.time() + 50


class SlowPauseLimits(CountingLimits):
    """The store's limits, with a pause that reaches Redis only once let through."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.let_through = asyncio.Event()

    async def pause_upstream(self, pause_ms: int) -> None:
        await self.let_through.wait()
        await super().pause_upstream(pause_ms)

    def pause_feed(self) -> Any:
        return self._store.pause_feed()


async def test_the_periodic_catch_up_ends_a_pause_whose_end_was_missed_not_one_on_its_way(
    store: Store, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While subscribed, a gate reads the pause from Redis every CATCH_UP_S (here 0.1 s,
    the feed waking every 0.05 s):
    a pause ended without a message (the feed dropped it) ends for the gate too -- but not
    a pause of its own whose write to Redis is still under way (it is not in Redis yet)."""
    monkeypatch.setattr(feeds, "CATCH_UP_S", 0.1)
    monkeypatch.setattr(feeds, "WAIT_S", 0.05)
    slow = SlowPauseLimits(store.limits)
    gate = UpstreamGate(slow, 1000)  # type: ignore[arg-type]
    async with following(gate):
        pausing = asyncio.create_task(gate.pause(3600))
        await asyncio.sleep(0.5)  # several catch-ups, each finding no pause in Redis
        assert gate.paused_until > time.time() + 3000, "a catch-up undid our own pause"
        slow.let_through.set()
        await asyncio.wait_for(pausing, 2)
        assert await store.limits.upstream_pause_left_ms() > 3_000_000
        await redis.delete(c.UPSTREAM_PAUSE_KEY)  # ended, and the message lost
        await eventually(lambda: gate.paused_until == 0, what="the catch-up", timeout=2)
        await asyncio.wait_for(gate.acquire(), 2)


async def test_resuming_makes_the_polls_put_off_to_the_pause_end_due_not_leased_ones(
    store: Store, redis: Redis
) -> None:
    """The polls a poller put off to the pause's end are due at once -- and those put off
    to the end of an earlier, shorter pause that this longer one outlasts; a video whose
    poll is claimed (its lease deadline, 25 s away) and one due long after stay put."""
    await UpstreamGate(store.limits, 1000).pause(600)
    end_ms = int(await redis.get(c.UPSTREAM_PAUSE_KEY))
    now_ms = end_ms - 600_000
    await redis.zadd(
        c.POLL_SCHEDULE_KEY,
        {
            "put_off_1": end_ms + 1,
            "put_off_2": end_ms - 3,
            "earlier_pause": end_ms - 300_000,
            "leased": now_ms + 25_000,
            "later": end_ms + 60_000,
        },
    )
    left, moved = await store.limits.resume_upstream(lease_s=25)
    assert left > 590_000 and moved == 3
    scores = dict(await redis.zrange(c.POLL_SCHEDULE_KEY, 0, -1, withscores=True))
    for put_off in ("put_off_1", "put_off_2", "earlier_pause"):
        assert scores[put_off] <= now_ms + 5_000, put_off
    assert scores["leased"] == now_ms + 25_000 and scores["later"] == end_ms + 60_000
    assert await store.limits.resume_upstream(lease_s=25) == (0, 0)  # nothing left to end


async def test_resuming_moves_every_put_off_poll_a_bounded_chunk_a_call(
    store: Store, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More polls put off than one call moves (a bounded script): the calls go on until
    every one is due now, and the count is their total. Fails before: one call moved
    10,000 and ended the pause, so a second resume said "not paused" and the rest waited
    for the pause's end."""
    monkeypatch.setattr(limits_module, "RESUME_CHUNK", 7)
    script, calls = store.limits._resume, []

    async def counted(**kwargs: Any) -> Any:
        answer = await script(**kwargs)
        calls.append(int(answer[1]))
        return answer

    monkeypatch.setattr(store.limits, "_resume", counted)
    await UpstreamGate(store.limits, 1000).pause(600)
    end_ms = int(await redis.get(c.UPSTREAM_PAUSE_KEY))
    put_off = {f"v{i}": end_ms + i for i in range(30)}
    await redis.zadd(c.POLL_SCHEDULE_KEY, {**put_off, "later": end_ms + 60_000})
    left, moved = await store.limits.resume_upstream(lease_s=25)
    assert left > 590_000 and moved == 30 and calls == [7, 7, 7, 7, 2], calls
    scores = dict(await redis.zrange(c.POLL_SCHEDULE_KEY, 0, -1, withscores=True))
    assert all(scores[v] <= end_ms - 590_000 for v in put_off), scores
    assert scores["later"] == end_ms + 60_000


async def test_a_resume_that_stopped_part_way_is_carried_on_by_the_next(
    store: Store, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume whose first call ended the pause and moved one chunk, then stopped (a Redis
    error, Ctrl-C): the next resume finds the pause gone but its end kept, and moves the
    rest; once done, nothing is kept and a resume says there was no pause. Fails before:
    the next resume said "not paused" and the rest waited for the old pause's end (a
    review of this change)."""
    monkeypatch.setattr(limits_module, "RESUME_CHUNK", 7)
    await UpstreamGate(store.limits, 1000).pause(600)
    end_ms = int(await redis.get(c.UPSTREAM_PAUSE_KEY))
    put_off = {f"v{i}": end_ms + i for i in range(20)}
    await redis.zadd(c.POLL_SCHEDULE_KEY, put_off)
    keys = [c.UPSTREAM_PAUSE_KEY, c.POLL_SCHEDULE_KEY, c.UPSTREAM_RESUMING_KEY]
    args = [c.UPSTREAM_PAUSE_CHANNEL, 26_000, 5000, 7, 0]
    _, moved, _ = await store.limits._resume(keys=keys, args=args)  # the first call only
    assert moved == 7 and not await redis.exists(c.UPSTREAM_PAUSE_KEY)
    left, moved = await store.limits.resume_upstream(lease_s=25)
    assert left > 590_000 and moved == 13
    scores = dict(await redis.zrange(c.POLL_SCHEDULE_KEY, 0, -1, withscores=True))
    assert all(scores[v] <= end_ms - 590_000 for v in put_off), scores
    assert not await redis.exists(c.UPSTREAM_RESUMING_KEY)
    assert await store.limits.resume_upstream(lease_s=25) == (0, 0)
    # stopped part-way again, and a new, shorter pause set meanwhile: the next resume moves
    # the polls put off to the longer one's end too
    await UpstreamGate(store.limits, 1000).pause(600)
    end_ms = int(await redis.get(c.UPSTREAM_PAUSE_KEY))
    await redis.zadd(c.POLL_SCHEDULE_KEY, {f"w{i}": end_ms + i for i in range(10)})
    await store.limits._resume(keys=keys, args=args)
    await UpstreamGate(store.limits, 1000).pause(60)
    left, moved = await store.limits.resume_upstream(lease_s=25)
    assert moved == 3 and left < 61_000, (left, moved)


async def test_the_command_moves_no_claim_of_workers_with_a_longer_lease(
    store: Store, redis: Redis, redis_server: RedisServer
) -> None:
    """The operator's shell may lack the workers' RELAY_LEASE: the command keeps clear of
    any claim held up to 10 minutes (a review found a 78 s claim moved with the default 25)."""
    from relay.admin.upstream import run

    await UpstreamGate(store.limits, 1000).pause(80)
    end_ms = int(await redis.get(c.UPSTREAM_PAUSE_KEY))
    held = end_ms - 2_000  # a claim of workers with RELAY_LEASE=90, near the pause's end
    await redis.zadd(c.POLL_SCHEDULE_KEY, {"held": held})
    out = await run("resume", Settings(REDIS_URL=redis_server.url))  # type: ignore[call-arg]
    assert "upstream pause ended" in out and "0 put-off polls" in out
    assert await redis.zscore(c.POLL_SCHEDULE_KEY, "held") == held


async def test_a_worker_says_its_lease(store: Store, make_worker: WorkerFactory) -> None:
    await make_worker(lease=90)
    said = await eventually(store.limits.workers_lease_s, what="the worker's lease said")
    assert said == 90


async def test_a_shorter_lease_never_shortens_the_time_a_longer_one_is_kept(
    store: Store, redis: Redis, make_worker: WorkerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hash of leases lives as long as the longest said: a worker of RELAY_LEASE=900
    beside one of 30 keeps it 15 minutes, whichever wrote last (the last writer set it)."""
    from workers import health

    monkeypatch.setattr(health, "GAUGE_INTERVAL", 0.05)
    await make_worker(lease=900)
    await eventually(store.limits.workers_lease_s, what="the long lease said")
    await make_worker(lease=30)

    async def both() -> bool:
        return await redis.hlen(c.WORKER_LEASES_KEY) == 2

    await eventually(both, what="both leases said")
    for _ in range(20):  # (whichever wrote last: the last writer set it before)
        await asyncio.sleep(0.03)
        assert await redis.pttl(c.WORKER_LEASES_KEY) > 600_000
    assert await store.limits.workers_lease_s() == 900


async def test_the_command_keeps_clear_of_the_lease_the_workers_say(
    store: Store, redis: Redis, redis_server: RedisServer
) -> None:
    """A resume keeps clear of the longest lease the workers said (not 10 minutes), so the
    polls put off to a 2-minute pause's end move -- a tester found they never did, any
    pause under 10 minutes left alone -- while a claim of that lease stays. A lease said
    more than 10 minutes ago counts for nothing."""
    from relay.admin.upstream import run

    seconds, micros = await redis.time()
    redis_now = int(seconds) * 1000 + int(micros) // 1000
    await redis.hset(c.WORKER_LEASES_KEY, mapping={"90000": redis_now + 600_000, "25000": 1})
    assert await store.limits.workers_lease_s() == 90
    await UpstreamGate(store.limits, 1000).pause(120)
    end_ms = int(await redis.get(c.UPSTREAM_PAUSE_KEY))
    now_ms = end_ms - 120_000
    held = now_ms + 90_000  # a claim made now by a worker of RELAY_LEASE=90
    await redis.zadd(c.POLL_SCHEDULE_KEY, {"put_off": end_ms + 1, "held": held})
    out = await run("resume", Settings(REDIS_URL=redis_server.url))  # type: ignore[call-arg]
    assert "1 put-off polls due now" in out, out
    assert await redis.zscore(c.POLL_SCHEDULE_KEY, "held") == held
    assert (await redis.zscore(c.POLL_SCHEDULE_KEY, "put_off") or 0) <= now_ms + 5_000
    await redis.hset(c.WORKER_LEASES_KEY, mapping={"90000": "1", "700000": "2"})  # stale
    assert await store.limits.workers_lease_s() is None
    assert await redis.hlen(c.WORKER_LEASES_KEY) == 0  # (and dropped)


def test_the_command_says_why_redis_cannot_be_reached_never_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The error names the failure (redis-py's message: the address and errno), not only
    its type; the URL's password is never printed."""
    from relay.admin.upstream import main

    port = free_port()  # (nothing listens there)
    url = f"redis://:s3cret-pw@127.0.0.1:{port}/0"
    code = main(["status"], lambda: Settings(REDIS_URL=url))  # type: ignore[call-arg]
    err = capsys.readouterr().err
    assert code == 1 and f"127.0.0.1:{port}" in err and "Error 111" in err, err
    assert "s3cret-pw" not in err


def test_the_command_tells_a_refusal_from_an_unreachable_redis(
    redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Redis that answers with an error (here a database index it does not have) is a
    "Redis error", not "cannot reach Redis" (a review found the operator sent looking at
    the network)."""
    from relay.admin.upstream import main

    url = f"redis://127.0.0.1:{redis_server.port}/99"
    code = main(["status"], lambda: Settings(REDIS_URL=url))  # type: ignore[call-arg]
    err = capsys.readouterr().err
    assert code == 1 and "Redis error" in err and "out of range" in err, err
    assert "cannot reach" not in err


def test_the_command_exits_2_on_configuration_130_on_ctrl_c_and_masks_a_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration error exits 2 (as every command); Ctrl-C exits 130 and a resume
    says to run it again; a Redis error whose message holds the URL's password prints it
    as ***. (A mutation review, 2026-12-06: each could change unnoticed.)"""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from relay.admin import upstream as upstream_cli
    from relay.settings import ConfigError

    def broken() -> Settings:
        raise ConfigError("REDIS_URL: expected a redis:// URL")

    assert upstream_cli.main(["status"], broken) == 2
    assert "configuration error" in capsys.readouterr().err
    url = "redis://:s3cret-pw@127.0.0.1:9/0"

    async def interrupted(action: str, settings: Settings) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(upstream_cli, "run", interrupted)
    assert upstream_cli.main(["resume"], lambda: Settings(REDIS_URL=url)) == 130  # type: ignore[call-arg]
    err = capsys.readouterr().err
    assert "interrupted" in err and "upstream resume` again" in err

    async def leaky(action: str, settings: Settings) -> str:
        raise RedisConnectionError("could not log in as default with s3cret-pw")

    monkeypatch.setattr(upstream_cli, "run", leaky)
    assert upstream_cli.main(["status"], lambda: Settings(REDIS_URL=url)) == 1  # type: ignore[call-arg]
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "***" in err and "s3cret-pw" not in err
