"""The deliverer's lanes and claims (workers/delivery/) on a real Redis and a real receiver.

The worker tests cover every delivery outcome end to end; these pin what only the deliverer
decides: events offered by this worker's poller are sent without being read back, a queued
job whose claim another worker took over is not sent, and a stop hands the claims of jobs it
never started back to the schedule at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.devtools.receiver import Receiver
from relay.domain import events
from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.crypto import SecretBox
from relay.domain.delivery import NewEvent
from relay.domain.signing import generate_secret
from relay.domain.watch import SecretEntry, Watch
from relay.http.ssrf import CallbackPolicy
from relay.http.webhook import WebhookClient
from relay.settings import CallbackAllow, Settings
from relay.store import Store
from workers.delivery import Deliverer

CLIPS = [{"id": "a", "score": 90, "status": "completed", "downloadUrl": "https://cdn/a"}]
SECRET = generate_secret()
Created = list[tuple[Watch, NewEvent, int]]
DelivererFactory = Callable[..., Awaitable[Deliverer]]


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


@pytest.fixture
def hook(receiver: tuple[Receiver, str]) -> tuple[Receiver, str]:
    """The verifying receiver, knowing the watches' secret, and its base URL."""
    rec, _ = receiver
    rec.add_secret(SECRET)
    return receiver


@pytest.fixture
async def make_deliverer(store: Store, settings: Settings) -> AsyncIterator[DelivererFactory]:
    """Start deliverers (lanes, claim loop, flusher) as the worker does; stopped after."""
    made: list[tuple[Deliverer, WebhookClient]] = []

    async def start(**overrides: Any) -> Deliverer:
        s = settings.model_copy(update=overrides)
        policy = CallbackPolicy(s.callback_allow)
        client = WebhookClient(policy, timeout=s.delivery_timeout)
        upstream: Any = None  # no clip links get old here: the upstream is never asked
        d = Deliverer(store, client, s, box=SecretBox(""), upstream=upstream, gate=upstream)
        d.start()
        made.append((d, client))
        return d

    yield start
    for d, client in made:
        await d.stop(1.0)
        await client.close()


async def created_events(
    store: Store, base: str, n: int, *, path: str = "/hook", video: str = "vid_1"
) -> Created:
    """*n* watches of *video* whose clips.ready was just created (by "our poller")."""
    watches = [
        Watch(
            id=f"wat_{video}_{i:04d}",
            tenant="acme",
            video_id=video,
            callback_url=base + path,
            secrets=[SecretEntry(SECRET)],
            created_ms=now_ms(),
        )
        for i in range(n)
    ]
    await asyncio.gather(*(store.watches.create(w, expire_after_s=3600) for w in watches))
    specs = await store.watches.specs([w.id for w in watches])
    at = now_ms()
    made = [events.clips_ready(w, ClipSet(CLIPS), at, at) for w in specs]
    created, at = await store.deliveries.finalize(video, made)
    by_id = {w.id: w for w in specs}
    return [(by_id[ev.watch_id], ev, at) for ev in created]


async def wait_settled(store: Store, n: int, timeout: float = 10) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = await store.watches.counts()
        if counts["delivered"] + counts["failed"] >= n or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.02)


async def test_offered_events_are_delivered_without_a_read_back(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    rec, base = hook
    d = await make_deliverer()
    created = await created_events(store, base, 40)
    reads = []
    read_back = store.deliveries.claim

    async def counting(**kw: Any) -> Any:
        got = await read_back(**kw)
        reads.extend(got)
        return got

    store.deliveries.claim = counting  # type: ignore[assignment,method-assign]
    for w, ev, at in created:
        d.offer([(w, ev)], at)
    counts = await wait_settled(store, 40)
    assert counts["delivered"] == 40
    assert rec.received() == 40 and rec.duplicates() == 0
    assert reads == []  # every one claimed as offered, none read back from Redis
    attempt = (await store.watches.attempts(created[0][0].id))[0]
    assert attempt["statusCode"] == 204 and attempt["attempt"] == 1


async def test_offers_taken_by_another_worker_are_left_to_it(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    rec, base = hook
    created = await created_events(store, base, 10)
    taken = {w.id for w, _, _ in created[:4]}
    await store.redis.zadd(c.DELIVERY_SCHEDULE_KEY, dict.fromkeys(taken, now_ms() + 60_000))
    d = await make_deliverer()
    d.offer([(w, ev) for w, ev, _ in created], created[0][2])
    await wait_settled(store, 6)
    await asyncio.sleep(0.2)
    got = {e.event["data"]["watchId"] for e in rec.events}
    assert got == {w.id for w, _, _ in created} - taken
    assert (await store.watches.counts())["delivering"] == 4  # still the other worker's


async def test_a_queued_job_whose_claim_was_taken_over_is_not_sent(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """With a lease no longer than an attempt, every queued job renews its claim first;
    the renewal fails for the one another worker took over meanwhile."""
    rec, base = hook
    rec.script("/slow", [204], delay=0.5)
    d = await make_deliverer(delivery_concurrency=1, lease=2.5, delivery_timeout=2)
    slow = await created_events(store, base, 1, path="/slow")
    await asyncio.sleep(0.01)
    rest = await created_events(store, base, 3, video="vid_2")
    d.offer([(w, ev) for w, ev, _ in slow + rest], slow[0][2])
    # one lane claims two at a time: the slow one is on the wire, the next one is queued
    await asyncio.sleep(0.2)
    victim = rest[0][0].id
    assert victim in {job.watch.id for job in d.claimer.jobs}
    theirs = now_ms() + 60_000
    await store.redis.zadd(c.DELIVERY_SCHEDULE_KEY, {victim: theirs})
    await wait_settled(store, 3)
    await asyncio.sleep(0.2)
    got = {e.event["data"]["watchId"] for e in rec.events}
    assert victim not in got and len(got) == 3
    assert await store.redis.zscore(c.DELIVERY_SCHEDULE_KEY, victim) == theirs


async def test_stop_hands_back_the_claims_of_jobs_never_started(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    rec, base = hook
    rec.script("/hook", [204] * 5, delay=1.5)
    d = await make_deliverer(delivery_concurrency=1, lease=20, delivery_timeout=2)
    created = await created_events(store, base, 5)
    d.offer([(w, ev) for w, ev, _ in created], created[0][2])
    await asyncio.sleep(0.3)  # one on the wire, four queued
    stopped_at = now_ms()
    await d.stop(0.2)  # shorter than the attempt on the wire: it is cut
    scores = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert len(scores) == 5
    due_now = [m for m, s in scores.items() if s <= now_ms()]
    leased = [m for m, s in scores.items() if s > stopped_at + 10_000]
    assert len(due_now) == 4, scores  # handed back: the next worker takes them at once
    assert len(leased) == 1  # the cut attempt may have reached the receiver: its lease runs


async def test_a_callback_the_policy_now_refuses_is_retried_unsent(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    rec, base = hook
    d = await make_deliverer(callback_allow=CallbackAllow())  # loopback no longer opened
    created = await created_events(store, base, 3)
    d.offer([(w, ev) for w, ev, _ in created], created[0][2])
    deadline = time.monotonic() + 5
    ids = [w.id for w, _, _ in created]
    while time.monotonic() < deadline:
        if all(await asyncio.gather(*(store.watches.attempts(i) for i in ids))):
            break
        await asyncio.sleep(0.02)
    for w, _, _ in created:
        (attempt,) = await store.watches.attempts(w.id)
        assert attempt["statusCode"] is None
        assert attempt["error"].startswith("refused: callback ")
    assert rec.received() == 0
    assert (await store.watches.counts())["delivering"] == 3  # retried later, not failed
