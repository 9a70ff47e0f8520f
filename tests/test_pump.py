"""The pump (workers/pump.py) on a real Redis schedule.

A probe pump claims members of the poll schedule with the poller's own claim
(``Store.claim_videos``: a member's score moves to the lease deadline) and works on them as
each test says. Each test pins one rule of the pump; its docstring names it. "Never" rules
are checked with exact counts or with the scores Redis holds, "eventually" rules with a
generous deadline, so a loaded machine only makes them slower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.domain.clock import now_ms
from relay.store import Store
from tests.conftest import eventually
from workers.pump import IDLE_BACKOFF, Pump

SCHEDULE = c.POLL_SCHEDULE_KEY
LEASE = 0.5
CLOCK_MS = 5  # how far this process' clock and Redis' may disagree (both rounded to ms)
Work = Callable[[str, Callable[[], None]], Awaitable[None]]


class ProbePump(Pump[str]):
    """Claims schedule members as the poller does; records what its work did."""

    schedule = SCHEDULE
    name = "probe"

    def __init__(self, store: Store, work: Work, **options: Any) -> None:
        options.setdefault("concurrency", 4)
        options.setdefault("lease_s", LEASE)
        super().__init__(store, **options)
        self.behave = work
        self.claims: list[tuple[int, int, list[str]]] = []  # (ms before, ms after, members)
        self.started: dict[str, list[int]] = {}  # member -> when each of its works began (ms)
        self.finished: list[str] = []
        self.cancelled: list[str] = []
        self.active = 0  # items whose work is running now
        self.peak = 0

    async def claim(self, limit: int) -> Sequence[str]:
        before = now_ms()
        _, rows = await self.store.videos.claim(limit=limit, lease_s=self.lease_s)
        members = [state.video_id for state, _ in rows]
        self.claims.append((before, now_ms(), members))
        return members

    async def work(self, items: Sequence[str], release: Callable[[], None]) -> None:
        await asyncio.gather(*(self._item(m, release) for m in items))

    async def _item(self, member: str, release: Callable[[], None]) -> None:
        self.started.setdefault(member, []).append(now_ms())
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await self.behave(member, release)
            self.finished.append(member)
        except asyncio.CancelledError:
            self.cancelled.append(member)
            raise
        finally:
            self.active -= 1


PumpFactory = Callable[..., ProbePump]


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


@pytest.fixture
async def make_pump(store: Store) -> AsyncIterator[PumpFactory]:
    """Start probe pumps; every one is stopped after the test."""
    pumps: list[ProbePump] = []

    def start(work: Work | None = None, **options: Any) -> ProbePump:
        pump = ProbePump(store, work or done(store), **options)
        pump.start()
        pumps.append(pump)
        return pump

    yield start
    for pump in pumps:
        await pump.stop(0.2)


def done(store: Store) -> Work:
    """Work that finishes an item: it leaves the schedule."""

    async def work(member: str, release: Callable[[], None]) -> None:
        await store.redis.zrem(SCHEDULE, member)

    return work


async def schedule(store: Store, members: dict[str, int]) -> None:
    await store.redis.zadd(SCHEDULE, members)


async def score(store: Store, member: str) -> float | None:
    got: float | None = await store.redis.zscore(SCHEDULE, member)
    return got


async def test_claims_only_due_members(store: Store, make_pump: PumpFactory) -> None:
    """Rule: a pump claims only members whose score is due (<= now); a member scheduled for
    later is neither worked on nor leased, however often the pump looks."""
    now = now_ms()
    later = now + 60_000
    await schedule(store, {"due": now - 1, "later": later})
    pump = make_pump()
    await eventually(lambda: "due" in pump.finished, what="the due member worked")
    looked = len(pump.claims)
    await eventually(lambda: len(pump.claims) >= looked + 5, what="five more claims")
    assert "later" not in pump.started
    assert all("later" not in members for _, _, members in pump.claims)
    assert await score(store, "later") == later  # not leased either


async def test_a_claim_leases_the_member_until_it_lapses_then_another_pump_takes_it(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule (takeover): claiming moves the member's score to claim time + lease, so no other
    pump claims it while the lease runs; once it lapses (the first pump hangs, as a dead
    worker would), another pump claims it."""
    await schedule(store, {"m": now_ms() - 1})
    hung = asyncio.Event()  # never set: the first pump's work never ends

    async def hang(member: str, release: Callable[[], None]) -> None:
        await hung.wait()

    first = make_pump(hang, concurrency=1)  # full while it hangs: it claims nothing more
    await eventually(lambda: "m" in first.started, what="the first pump's claim")
    (before, after, _) = next(claim for claim in first.claims if claim[2] == ["m"])
    deadline = await score(store, "m")
    assert deadline is not None
    # (the deadline is Redis' clock, which the process' own agrees with to a few ms)
    assert before + LEASE * 1000 - CLOCK_MS <= deadline <= after + LEASE * 1000 + CLOCK_MS

    second = make_pump()
    await eventually(lambda: "m" in second.finished, timeout=10, what="the takeover")
    assert second.started["m"][0] >= deadline - CLOCK_MS  # never before the lease lapsed
    assert first.started["m"] == [first.started["m"][0]]  # the hung pump did not claim again


async def test_never_more_than_concurrency_items_in_flight(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule: at most ``concurrency`` claimed items are worked on at once, a slot freed by
    ``release()`` counting once (not again when its batch returns); with more due, the pump
    fills every slot."""
    now = now_ms()
    await schedule(store, {f"m{i:02d}": now - 100 + i for i in range(30)})

    async def work(member: str, release: Callable[[], None]) -> None:
        await asyncio.sleep(0.005 * (int(member[1:]) % 4))
        await store.redis.zrem(SCHEDULE, member)
        release()

    pump = make_pump(work, concurrency=3)
    await eventually(lambda: len(pump.finished) == 30, timeout=10, what="all 30 worked")
    assert pump.peak == 3
    assert all(len(members) <= 3 for _, _, members in pump.claims)
    assert sorted(pump.started) == [f"m{i:02d}" for i in range(30)]
    assert all(len(times) == 1 for times in pump.started.values())


async def test_release_frees_a_slot_before_the_batch_returns(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule: ``release()`` frees the item's slot at once: a pump whose only slot holds a
    released item still working claims the next due item."""
    now = now_ms()
    await schedule(store, {"first": now - 2, "next": now - 1})
    hold = asyncio.Event()

    async def work(member: str, release: Callable[[], None]) -> None:
        if member == "first":
            release()  # its slot is free; the batch goes on
            await hold.wait()
        await store.redis.zrem(SCHEDULE, member)

    pump = make_pump(work, concurrency=1)
    try:
        await eventually(lambda: "next" in pump.finished, what="the next item worked")
        assert "first" not in pump.finished  # ...while the released one was still working
    finally:
        hold.set()
    await eventually(lambda: "first" in pump.finished, what="the first item finished")


async def test_a_failed_batch_frees_its_slots_and_its_claims_come_back_after_the_lease(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule: work that raises frees its slots (the pump keeps claiming) and leaves its claims
    leased: the item is claimed again once the lease lapses, not before."""
    now = now_ms()
    await schedule(store, {"flaky": now - 2, "other": now - 1})
    failures = 0

    async def work(member: str, release: Callable[[], None]) -> None:
        nonlocal failures
        if member == "flaky" and failures == 0:
            failures += 1
            raise RuntimeError("boom")
        await store.redis.zrem(SCHEDULE, member)

    pump = make_pump(work, concurrency=1)
    await eventually(lambda: "other" in pump.finished, what="the next item after a failure")
    await eventually(lambda: "flaky" in pump.finished, timeout=10, what="the retry")
    (first_before, _, _), (_, again_after, _) = [
        claim for claim in pump.claims if "flaky" in claim[2]
    ]
    # (the lease is on Redis' clock, which the process' own agrees with to a few ms)
    assert again_after >= first_before + LEASE * 1000 - CLOCK_MS  # leased until then


async def test_wake_ends_the_idle_sleep(store: Store, make_pump: PumpFactory) -> None:
    """Rule: ``wake()`` ends an idle pump's sleep at once: work scheduled now is picked up
    long before ``idle_s`` (10 s here) has passed."""
    pump = make_pump(idle_s=10.0)
    await eventually(lambda: pump.claims, what="a first (empty) claim")
    await asyncio.sleep(0.2)  # the schedule is empty: the pump is asleep for idle_s
    await schedule(store, {"new": now_ms()})
    woken = time.monotonic()
    pump.wake()
    await eventually(lambda: "new" in pump.finished, timeout=4, what="the woken pump's claim")
    assert time.monotonic() - woken < 4


async def test_an_idle_pump_looks_less_often_and_still_sees_new_work_soon(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule: an idle pump's sleep doubles each time it finds nothing, up to IDLE_BACKOFF
    times idle_s (here 0.05 -> 0.4 s): over 2 s on an empty schedule it claims about 8
    times, not 40 (an idle worker's cost to Redis). Work scheduled by another process
    (no wake) is still claimed within that longest sleep."""
    pump = make_pump(idle_s=0.05)
    await asyncio.sleep(2.0)
    assert 4 <= len(pump.claims) <= 12, len(pump.claims)
    due = now_ms()
    await schedule(store, {"new": due})  # (as another process would: no wake)
    await eventually(lambda: "new" in pump.finished, timeout=4, what="the new member")
    # (the longest sleep, and a loaded loop's lateness: far below the 2 s an idle pump
    # without a cap on its backoff would have reached)
    assert pump.started["new"][0] - due <= 0.05 * IDLE_BACKOFF * 1000 + 450


class HandOverPump(ProbePump):
    """A probe pump that is also handed items directly, as the deliverer's claimer is
    handed the events its own fan-out claimed (the pump takes those first, then the
    schedule -- unless it found nothing due there a moment ago)."""

    def __init__(self, store: Store, work: Work, **options: Any) -> None:
        super().__init__(store, work, **options)
        self.given: list[str] = []

    def hand(self, members: list[str]) -> None:
        self.given += members
        self.nudge()

    def handed(self, limit: int) -> Sequence[str]:
        out, self.given = self.given[:limit], self.given[limit:]
        return out


async def test_a_nudge_ends_the_idle_sleep_for_what_was_handed_over_without_a_look(
    store: Store,
) -> None:
    """Rule: work handed to a pump directly (``nudge()``: a fan-out's own claims) ends its
    idle sleep at once -- taken long before ``idle_s`` (10 s here) -- and costs no look in
    the schedule, which had nothing due when the pump last looked."""
    pump = HandOverPump(store, done(store), idle_s=10.0)
    pump.start()
    try:
        await eventually(lambda: pump.claims, what="a first (empty) look")
        await asyncio.sleep(0.2)  # the schedule is empty: the pump is asleep for idle_s
        looked = len(pump.claims)
        handed = time.monotonic()
        pump.hand(["h"])
        await eventually(lambda: "h" in pump.started, timeout=4, what="the handed item")
        assert time.monotonic() - handed < 4
        assert len(pump.claims) == looked
    finally:
        await pump.stop(0.2)


async def test_work_handed_over_often_costs_a_look_in_the_schedule_per_idle_s_at_most(
    store: Store,
) -> None:
    """Rule: hand-overs every few ms (a fan-out's chunks) do not make the pump look in a
    schedule it found empty after each one: looks stay ``idle_s`` apart, as an idle pump's
    do. Work another process schedules meanwhile is still claimed within ``idle_s``.
    (Before: 100 hand-overs, 100 looks, each a claim and a next-due read finding nothing.)"""
    pump = HandOverPump(store, done(store), idle_s=0.1)
    pump.start()
    try:
        await eventually(lambda: pump.claims, what="a first (empty) look")
        looked, began = len(pump.claims), time.monotonic()
        for i in range(100):
            pump.hand([f"h{i}"])
            await asyncio.sleep(0.005)
        looks, spent = len(pump.claims) - looked, time.monotonic() - began
        assert looks <= spent / 0.1 + 1, (looks, spent)  # (looks idle_s apart, at most)
        await eventually(lambda: len(pump.started) >= 100, what="every handed item taken")
        due = now_ms()
        await schedule(store, {"scheduled": due})  # (as another process would: no wake)
        for i in range(100, 300):
            pump.hand([f"h{i}"])
            await asyncio.sleep(0.005)
            if "scheduled" in pump.started:
                break
        await eventually(lambda: "scheduled" in pump.started, what="the scheduled member")
        assert pump.started["scheduled"][0] - due <= 100 + 450  # idle_s, and lateness
    finally:
        await pump.stop(0.2)


async def test_the_idle_sleep_ends_when_the_next_member_is_due(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule: an idle pump sleeps only until the earliest member of the schedule is due (never
    the whole ``idle_s`` past it), and claims it then, not earlier."""
    due = now_ms() + 400
    await schedule(store, {"soon": due})
    pump = make_pump(idle_s=10.0)
    await eventually(lambda: "soon" in pump.finished, timeout=4, what="the member due soon")
    assert pump.started["soon"][0] >= due - CLOCK_MS  # (due is on Redis' clock)


async def test_stop_claims_nothing_more_and_waits_for_work_in_flight(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule: ``stop(grace)`` stops claiming at once and lets the work in flight finish
    within the grace (it is not cancelled)."""
    now = now_ms()
    await schedule(store, {"busy": now - 2})

    async def work(member: str, release: Callable[[], None]) -> None:
        await asyncio.sleep(0.3)
        await store.redis.zrem(SCHEDULE, member)

    pump = make_pump(work, concurrency=1)
    await eventually(lambda: "busy" in pump.started, what="work in flight")
    waiting = now - 1
    await schedule(store, {"waiting": waiting})  # due, and claimable once "busy" is done
    await pump.stop(5.0)
    assert pump.finished == ["busy"] and pump.cancelled == []
    claims = len(pump.claims)
    await asyncio.sleep(0.2)
    assert len(pump.claims) == claims
    assert "waiting" not in pump.started
    assert await score(store, "waiting") == waiting  # not claimed: the next worker's


async def test_stop_cancels_work_that_outlasts_the_grace(
    store: Store, make_pump: PumpFactory
) -> None:
    """Rule: ``stop(grace)`` waits for work in flight at most about *grace* seconds, then
    cancels it; the cancelled item's claim stays leased (it comes back after the lease)."""
    await schedule(store, {"slow": now_ms() - 1})

    async def work(member: str, release: Callable[[], None]) -> None:
        await asyncio.sleep(30)

    pump = make_pump(work, lease_s=60)
    await eventually(lambda: "slow" in pump.started, what="work in flight")
    began = time.monotonic()
    await pump.stop(0.3)
    took = time.monotonic() - began
    assert 0.29 <= took < 3.0
    assert pump.cancelled == ["slow"] and pump.finished == []
    leased = await score(store, "slow")
    assert leased is not None and leased > now_ms() + 50_000
