"""The deliverer's lanes and claims (workers/delivery/) on a real Redis and a real receiver.

The worker tests cover every delivery outcome end to end; these pin what only the deliverer
decides: events its poller claimed as it created them are sent without being read back, a
queued job whose claim another worker took over is not sent, a stop hands the claims of
jobs it never started back to the schedule at once, bodies are the same bytes on every
retry unless the clip links were refreshed, and a fan-out cut between two chunks by a dead
worker is finished by another without an event made twice or a watch left without one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import constants as c
from relay.devtools.embedded_redis import RedisServer
from relay.devtools.receiver import Receiver
from relay.domain import attempts
from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.crypto import SecretBox
from relay.domain.delivery import AttemptResult, DeliveryClaim, FinalEvent
from relay.domain.ids import event_id
from relay.domain.signing import generate_secret
from relay.domain.watch import SecretEntry, Watch
from relay.http.ssrf import CallbackPolicy
from relay.http.upstream import UpstreamClient
from relay.http.webhook import WebhookClient
from relay.settings import CallbackAllow, Settings
from relay.store import Store
from tests.conftest import WorkerFactory, eventually
from tests.test_store import fan_out, registered, result
from workers.delivery import Deliverer
from workers.delivery.bodies import Bodies
from workers.delivery.settle import Settler
from workers.finals import FINALIZE_CHUNK
from workers.poller import Poller
from workers.upstream_budget import UpstreamGate

CLIPS = [{"id": "a", "score": 90, "status": "completed", "downloadUrl": "https://cdn/a"}]
SECRET = generate_secret()
Created = list[DeliveryClaim]
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
    store: Store,
    base: str,
    n: int,
    *,
    path: str = "/hook",
    video: str = "vid_1",
    deliverer: Deliverer | None = None,
) -> Created:
    """*n* watches of *video* whose clips.ready was just created -- and claimed -- by "our
    poller" (which hands the video's clips to *deliverer*, as the worker's poller does)."""
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
    at = now_ms()
    clips = ClipSet(CLIPS)
    event = FinalEvent("clips.ready", at, "completed", clips_doc=clips.doc(), clips_ms=at)
    if deliverer is not None:
        deliverer.keep_clips(video, at, ClipSet.from_doc(event.clips_doc))
    lease_s = 30.0 if deliverer is None else deliverer.claimer.lease_s
    _, claimed = await store.deliveries.finalize(
        video, event, [w.id for w in watches], claim=n, lease_s=lease_s
    )
    return claimed


async def room_for_50(n: int, wait_s: float) -> int:
    return min(n, 50)


async def sim_video(sim: TestClient[web.Request, web.Application], **spec: Any) -> str:
    """A simulator video, completed at once unless *spec* says otherwise."""
    spec.setdefault("timeline", [{"status": "completed", "after": 0}])
    resp = await sim.post("/_sim/videos", json=spec)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def wait_settled(store: Store, n: int, timeout: float = 10) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = await store.watches.counts()
        if counts["delivered"] + counts["failed"] >= n or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.02)


async def all_due_at_once(store: Store, n: int) -> None:
    """The schedule holds *n* deliveries, every one due now (handed back, not leased)."""
    scores = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert len(scores) == n
    assert all(s <= now_ms() for s in scores.values()), scores


async def test_offered_events_are_delivered_without_a_read_back(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """What the poller claimed as it created the events goes to the lanes as it is: no
    claim, and no read of the video's clips (the poller handed them over)."""
    rec, base = hook
    d = await make_deliverer()
    reads: list[Any] = []
    read_back, read_clips = store.deliveries.claim, store.deliveries.clips_doc

    async def counting(**kw: Any) -> Any:
        got = await read_back(**kw)
        reads.extend(got)
        return got

    async def clips_read(video_id: str, event_at: int) -> Any:
        reads.append(video_id)
        return await read_clips(video_id, event_at)

    store.deliveries.claim = counting  # type: ignore[method-assign]
    store.deliveries.clips_doc = clips_read  # type: ignore[method-assign]
    created = await created_events(store, base, 40, deliverer=d)
    for claim in created:
        d.offer([claim])
    counts = await wait_settled(store, 40)
    assert counts["delivered"] == 40
    assert rec.received() == 40 and rec.duplicates() == 0
    assert reads == []  # every one sent as claimed, nothing read back from Redis
    w = created[0].watch
    assert w is not None
    attempt = (await store.watches.attempts(w))[0]
    assert attempt["statusCode"] == 204 and attempt["attempt"] == 1


async def test_a_fan_outs_chunks_do_not_each_cost_a_look_in_the_schedule(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """Claims a fan-out hands its deliverer chunk after chunk are sent without the
    claimer looking in the delivery schedule after each (a ``claim_due`` call and a
    next-due read that find nothing there): it looks idle_s (50 ms) apart at most."""
    rec, base = hook
    d = await make_deliverer()
    created = await created_events(store, base, 60, deliverer=d)
    looks: list[float] = []
    claim = store.deliveries.claim

    async def counting(**kw: Any) -> Any:
        looks.append(time.monotonic())
        return await claim(**kw)

    store.deliveries.claim = counting  # type: ignore[method-assign]
    began = time.monotonic()
    for i in range(0, 60, 2):
        d.offer(created[i : i + 2])
        await asyncio.sleep(0.01)
    spent = time.monotonic() - began
    assert (await wait_settled(store, 60))["delivered"] == 60
    assert rec.received() == 60 and rec.duplicates() == 0
    during = [t for t in looks if t <= began + spent]
    assert len(during) <= spent / 0.05 + 1, (len(during), spent)  # (it was one per offer: 30)


async def test_a_fan_out_short_of_room_makes_its_deliverer_look_in_the_schedule_again(
    store: Store, make_deliverer: DelivererFactory
) -> None:
    """When the deliverer has room for fewer of a fan-out's events than it makes, the rest
    are left due in the schedule: the offer of those it did claim ends the claimer's quiet
    spell (a look in the schedule when it next has room), where an offer alone would not."""
    d = await make_deliverer(delivery_concurrency=2)  # (room for 6 claims)
    await eventually(lambda: d.claimer.quiet, what="an empty look, and its quiet spell")
    # (a long spell, so that a loaded machine's pause between two lines cannot end it)
    d.claimer._quiet_until = asyncio.get_running_loop().time() + 60
    d.offer([])
    assert d.claimer.quiet  # (an offer alone: no look)
    assert await d.room(100, 0.0) < 100 and d.claimer.left_due
    d.offer([])
    assert not d.claimer.quiet and not d.claimer.left_due


async def test_what_a_fan_out_did_not_claim_is_sent_by_any_worker(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """A fan-out claims only what its deliverer has room for; another worker claims the
    rest from the schedule and builds their bodies from the video's stored clips (one read
    per video): every event arrives once, with the clips its filters pass."""
    rec, base = hook
    mine = await make_deliverer()
    created = await created_events(store, base, 30, deliverer=mine)
    handed = created[:10]
    await store.deliveries.extend([c.watch_id for c in created[10:]], created[0].deadline_ms, 0)
    reads: list[str] = []
    read_clips = store.deliveries.clips_doc

    async def clips_read(video_id: str, event_at: int) -> Any:
        reads.append(video_id)
        return await read_clips(video_id, event_at)

    store.deliveries.clips_doc = clips_read  # type: ignore[method-assign]
    await make_deliverer()  # another worker
    mine.offer(handed)
    assert (await wait_settled(store, 30))["delivered"] == 30
    await asyncio.sleep(0.1)
    assert rec.received() == 30 and rec.duplicates() == 0
    assert reads == ["vid_1"]  # the other worker read the clips once
    assert {e.event["data"]["clips"][0]["id"] for e in rec.events} == {"a"}


async def test_a_queued_job_whose_claim_was_taken_over_is_not_sent(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """With a lease no longer than an attempt, every queued job renews its claim first;
    the renewal fails for the one another worker took over meanwhile."""
    rec, base = hook
    rec.script("/slow", [204], delay=1.5)
    d = await make_deliverer(delivery_concurrency=1, lease=2.5, delivery_timeout=2)
    slow = await created_events(store, base, 1, path="/slow", deliverer=d)
    rest = await created_events(store, base, 3, video="vid_2", deliverer=d)
    d.offer(slow)
    d.offer(rest)
    # one lane claims up to four at a time: the slow one is on the wire, the next queued
    victim = rest[0].watch_id
    await eventually(
        lambda: victim in {job.watch.id for job in d.claimer.jobs}, what="the next one queued"
    )
    theirs = now_ms() + 60_000
    await store.redis.zadd(c.DELIVERY_SCHEDULE_KEY, {victim: theirs})
    await wait_settled(store, 3)
    await asyncio.sleep(0.2)
    got = {e.event["data"]["watchId"] for e in rec.events}
    assert victim not in got and len(got) == 3
    assert await store.redis.zscore(c.DELIVERY_SCHEDULE_KEY, victim) == theirs


async def _one_lane_sending(
    hook: tuple[Receiver, str],
    make_deliverer: DelivererFactory,
    store: Store,
    n: int,
    *,
    answer_s: float,
    timeout: float,
    keep_queued: bool = False,
) -> tuple[Receiver, Deliverer, Created]:
    """A one-lane deliverer offered *n* events of a receiver that answers after *answer_s*:
    returned once the first attempt is on the wire (waited for, not slept on: under load
    0.3 s was sometimes too short for it to start), the others queued (*keep_queued*: none
    handed back as slow)."""
    rec, base = hook
    rec.script("/hook", [204] * n, delay=answer_s)
    d = await make_deliverer(delivery_concurrency=1, lease=20, delivery_timeout=timeout)
    if keep_queued:
        d.claimer.keep = lambda origin: True
    created = await created_events(store, base, n, deliverer=d)
    d.offer(created)
    await eventually(lambda: rec.received() >= 1, timeout=5, what="the first attempt")
    return rec, d, created


async def test_stop_hands_back_the_claims_of_jobs_never_started(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    # (an answer 3 s after the request: 1.5 s was once over before the 0.2 s stop had cut
    # the attempt, the machine loaded by a second run of the suite)
    _, d, _ = await _one_lane_sending(hook, make_deliverer, store, 5, answer_s=3, timeout=4)
    await asyncio.sleep(0.05)
    stopped_at = now_ms()
    await d.stop(0.2)  # shorter than the attempt on the wire: it is cut
    scores = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert len(scores) == 5
    due_now = [m for m, s in scores.items() if s <= now_ms()]
    leased = [m for m, s in scores.items() if s > stopped_at + 10_000]
    assert len(due_now) == 4, scores  # handed back: the next worker takes them at once
    assert len(leased) == 1  # the cut attempt may have reached the receiver: its lease runs


async def test_a_stop_lets_the_attempt_on_the_wire_end_within_the_grace(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """Queued jobs start only while the grace leaves room for an attempt after them (the
    grace less the delivery timeout and a second); then the ones never started go back,
    and the attempts on the wire get the rest of the grace: every attempt that reached the
    receiver is recorded. Fails before: the queued jobs used the whole grace, the attempt
    on the wire when it ended got 0.5 s and was cut, unrecorded -- sent again after its
    lease (a review, 2026-12-08)."""
    rec, d, created = await _one_lane_sending(
        hook, make_deliverer, store, 5, answer_s=1.5, timeout=2, keep_queued=True
    )
    await d.stop(3.5)  # (queued jobs start for 1 s, the least; the one on the wire gets 3.5)
    recorded = 0
    for cl in created:
        w = await store.watches.get(cl.watch_id)
        assert w is not None
        recorded += len(await store.watches.attempts(w))
    assert rec.received() == recorded >= 1, (rec.received(), recorded)
    scores = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert len(scores) == 5 - recorded and all(s <= now_ms() for s in scores.values())


async def test_a_stop_hands_back_the_offered_claims_at_once(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """Claims a fan-out offered that no batch has taken yet go back as the stop begins, due
    for the next worker at once. Fails before: they were handed back only after the grace
    and the lanes (20 s by default, of a 25 s lease): unsent all that time."""
    _, d, _ = await _one_lane_sending(hook, make_deliverer, store, 12, answer_s=3, timeout=4)
    offered = {cl.watch_id for cl in d.claimer._offered}
    assert offered, "every claim was taken by a batch: nothing left offered"
    stopping = asyncio.create_task(d.stop(2.0))
    await asyncio.sleep(0.3)
    scores = await store.redis.zmscore(c.DELIVERY_SCHEDULE_KEY, sorted(offered))
    assert all(s is not None and s <= now_ms() for s in scores), scores
    await stopping


async def test_stop_hands_back_the_claims_of_a_batch_not_queued_yet(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """A batch still getting its clips (a read, or a link refresh waiting on the upstream)
    when the grace ends is cut there: its claims go back to the schedule at once with the
    queued jobs', not after their lease."""
    _, base = hook
    d = await make_deliverer(lease=20)
    created = await created_events(store, base, 5)  # (the clips are not kept: read first)
    reading = asyncio.Event()

    async def stuck(video_id: str, event_at: int) -> tuple[bytes, int] | None:
        reading.set()
        await asyncio.Event().wait()  # (the read never ends)
        return None

    store.deliveries.clips_doc = stuck  # type: ignore[method-assign]
    d.offer(created)
    await asyncio.wait_for(reading.wait(), 5)
    await d.stop(0.2)
    await all_due_at_once(store, 5)


async def test_a_stopping_deliverer_has_no_room_and_hands_late_offers_back(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """The poller's fan-out goes on while the deliverer stops beside it: it is told there
    is no room (its events stay due for any worker), and claims it made before it was
    told are handed back at once, not left to their lease. Fails before: room() counted
    the stopped deliverer's free slots, and the offers sat in a queue nobody read until
    their lease ran out (review, 2026-12-06)."""
    _, base = hook
    d = await make_deliverer(lease=20)
    assert await d.room(10, 0.0) == 10
    await d.stop(0.2)
    assert await d.room(10, 0.0) == 0
    created = await created_events(store, base, 5, deliverer=d)  # claimed before it knew
    d.offer(created)
    await d.claimer.handed_back()
    await all_due_at_once(store, 5)


async def test_stop_hands_back_a_batch_cut_in_a_link_refresh_under_its_renewed_claims(
    store: Store, redis: Redis, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """A batch whose clips document is gone waits on the upstream for them; meanwhile its
    claims are renewed (every third of the lease), which changes their token. Cut by the
    stop, they go back under the token they hold now."""
    _, base = hook
    d = await make_deliverer(lease=1.5)
    created = await created_events(store, base, 5)
    async for key in redis.scan_iter(match=c.SOURCE_PREFIX + "*"):
        await redis.delete(key)  # (the clips must be fetched again)
    fetching = asyncio.Event()

    async def upstream_never_answers(source: tuple[str, int]) -> int | None:
        fetching.set()
        await asyncio.Event().wait()
        return None

    d.claimer.links._fetch = upstream_never_answers  # type: ignore[method-assign]
    d.offer(created)
    await asyncio.wait_for(fetching.wait(), 5)
    await asyncio.sleep(1.2)  # two renewals
    renewed = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert all(s != created[0].deadline_ms for s in renewed.values())  # (a new token)
    await d.stop(0.2)
    await all_due_at_once(store, 5)


async def test_a_link_refresh_that_fails_on_redis_does_not_hold_the_batch(
    store: Store, redis: Redis, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """A refresh of a batch's clips that fails on the way (Redis errs while it takes the
    upstream budget or stores the clips) counts as clips that could not be had: the batch
    goes on (here: no document to build a body from, so each attempt is recorded failed
    without a request), not left to its lease. Fails before: the error failed the whole
    batch, whose claims then waited out their lease (review, 2026-12-06)."""
    rec, base = hook
    d = await make_deliverer(lease=20)
    created = await created_events(store, base, 3)
    async for key in redis.scan_iter(match=c.SOURCE_PREFIX + "*"):
        await redis.delete(key)  # (the clips must be fetched again)

    async def redis_fails(source: tuple[str, int]) -> int | None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1")

    d.claimer.links._fetch_once = redis_fails  # type: ignore[method-assign]
    d.offer(created)

    async def recorded() -> bool:
        got = [await store.watches.get(cl.watch_id) for cl in created]
        return all(w is not None and w.records == 1 for w in got)

    await eventually(recorded, timeout=5, what="an attempt recorded for each")
    assert rec.bodies("/hook") == []


async def test_a_batch_whose_read_fails_is_handed_back_not_left_to_its_lease(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """Redis fails while a claimed batch reads its clips: none of it started, so its
    claims are due again after a moment (AFTER_ERROR_S), not after the 20 s lease. Fails
    before: only a stop handed them back (review, 2026-12-06)."""
    _, base = hook
    d = await make_deliverer(lease=20)
    created = await created_events(store, base, 4)  # (the clips are not kept: read first)

    async def redis_fails(video_id: str, event_at: int) -> tuple[bytes, int] | None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1")

    store.deliveries.clips_doc = redis_fails  # type: ignore[method-assign]
    offered = now_ms()
    d.offer(created)
    await asyncio.sleep(0.5)
    scores = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert len(scores) == 4
    assert all(s <= offered + 5_000 for s in scores.values()), scores  # not the lease's 20 s


async def test_a_callback_the_policy_now_refuses_is_retried_unsent(
    store: Store, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    rec, base = hook
    d = await make_deliverer(callback_allow=CallbackAllow())  # loopback no longer opened
    created = await created_events(store, base, 3, deliverer=d)
    d.offer(created)
    deadline = time.monotonic() + 5
    watches = [cl.watch for cl in created if cl.watch is not None]
    while time.monotonic() < deadline:
        if all(await asyncio.gather(*(store.watches.attempts(w) for w in watches))):
            break
        await asyncio.sleep(0.02)
    for w in watches:
        (attempt,) = await store.watches.attempts(w)
        assert attempt["statusCode"] is None
        assert attempt["error"].startswith("refused: callback ")
    assert rec.received() == 0
    assert (await store.watches.counts())["delivering"] == 3  # retried later, not failed


async def test_the_flusher_outlives_an_error_in_a_flush(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes are recorded by one flusher task; an error in one flush (a bug) must not
    end it, or no attempt of this worker would be recorded again and every claim it sent
    would lapse and be sent again."""
    settler = Settler(store)
    real, calls = settler.flush, []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        await real()

    monkeypatch.setattr(settler, "flush", flaky)
    settler.start()
    record = attempts.record(1, now_ms(), 204, None, 3.2, None)
    settler.add(AttemptResult("wat_gone", "t", "clips.ready", 1, "ok", 1, record, 1), {})
    deadline = time.monotonic() + 5
    while (len(calls) < 2 or settler.pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(calls) >= 2 and not settler.pending
    await settler.stop()


async def test_outcomes_whose_recording_failed_are_recorded_later(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis away while recording: the outcomes are kept and recorded once it is back (the
    claims' leases are long) -- not dropped, which would send the events again after the
    lease and lose the attempts' records. (From a mutation review, 2026-12-06.)"""

    async def away() -> None:
        raise ConnectionError("Redis away")

    w, settler, calls = await _settling_one(store, monkeypatch, first_call=away)
    deadline = time.monotonic() + 5
    while settler.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await settler.stop()
    assert calls == [1, 1]
    await _delivered_once(store, w)


async def _settling_one(
    store: Store, monkeypatch: pytest.MonkeyPatch, first_call: Callable[[], Awaitable[None]]
) -> tuple[Watch, Settler, list[int]]:
    """A watch given its event and a running Settler holding its 2xx outcome, whose first
    ``settle`` call runs *first_call* before (if it returns) recording; the calls' sizes."""
    (w,) = await registered(store, 1)
    (made,) = await fan_out(store, [w])
    real, calls = store.deliveries.settle, []

    async def first_misbehaves(results: Any) -> Any:
        calls.append(len(results))
        if len(calls) == 1:
            await first_call()
        return await real(results)

    monkeypatch.setattr(store.deliveries, "settle", first_misbehaves)
    settler = Settler(store)
    settler.start()
    record = attempts.record(1, now_ms(), 204, None, 3.2, None)
    settler.add(result(made, "ok", record), {})
    return w, settler, calls


async def _delivered_once(store: Store, w: Watch) -> None:
    got = await store.watches.get(w.id)
    assert got is not None and got.status == "delivered"
    assert [r["statusCode"] for r in await store.watches.attempts(got)] == [204]


async def test_a_stop_that_cuts_a_flush_short_still_records_its_outcomes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop cancels a flush still waiting on Redis after STOP_WAIT_S; the outcomes it had
    taken are recorded by the stop's last flush. Fails before: the flush had taken them out
    of the buffer and the cancel dropped them -- attempts made, never recorded, and sent
    again after their leases (a review, 2026-12-08)."""
    import workers.delivery.settle as settle_module

    async def slow() -> None:
        await asyncio.sleep(60)  # (Redis slow: the stop does not wait for it)

    monkeypatch.setattr(settle_module, "STOP_WAIT_S", 0.2)
    w, settler, calls = await _settling_one(store, monkeypatch, first_call=slow)
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await settler.stop()
    assert calls == [1, 1] and not settler.pending
    await _delivered_once(store, w)


# --- bodies: the same bytes on every retry, fresh links after a refresh --------------------


async def test_a_batch_keeps_its_clips_documents_while_other_batches_load_theirs(
    store: Store, redis: Redis
) -> None:
    """Bodies keep the clips documents of the most recent fan-outs (here 2). A claimed batch
    holds those it needs until its jobs are queued: two other batches loading theirs
    meanwhile (as while the first waits on a link refresh) drop none of them -- a job
    queued without its clips could not be built, and would wait out its lease unsent."""
    doc = ClipSet(CLIPS).doc()  # type: ignore[arg-type]
    for k in range(4):
        await redis.hset(c.SOURCE_KEY.format(f"v{k}", 1000), mapping={"doc": doc, "at": 1000})

    def watch(video: str) -> Watch:
        w = Watch(id=f"wat_{video}", tenant="t", video_id=video, callback_url="http://x/")
        w.event_type, w.final_ms, w.clips_ms = "clips.ready", 1000, 1000
        return w

    bodies = Bodies(store, kept=2)
    mine = [watch("v0"), watch("v1")]
    async with bodies.held(mine) as missing:
        assert not missing
        for other in ("v2", "v3"):
            async with bodies.held([watch(other)]):
                pass
        assert all(bodies.clips(w) is not None for w in mine)
    assert len(bodies) == 2  # (the bound holds again once nothing is held)


async def _four_attempts(
    store: Store,
    sim: TestClient[web.Request, web.Application],
    hook: tuple[Receiver, str],
    make_worker: WorkerFactory,
    clips: list[dict[str, Any]],
    **settings: Any,
) -> list[bytes]:
    """One watch on a video with *clips*, its receiver failing three times (500) before a
    204, the worker on *settings* (a retry schedule of 0.2, 1.6, 0.2 s): the four bodies,
    all of the one event."""
    rec, base = hook
    path = "/four-" + uuid.uuid4().hex[:8]
    rec.script(path, [500, 500, 500, 204])
    vid = await sim_video(sim, clips=clips)
    await make_worker(retry_schedule=(0.2, 1.6, 0.2), **settings)
    w = Watch(
        id="wat_" + uuid.uuid4().hex[:24],
        tenant="acme",
        video_id=vid,
        callback_url=base + path,
        secrets=[SecretEntry(SECRET)],
        created_ms=now_ms(),
    )
    await store.watches.create(w, expire_after_s=3600)
    await wait_settled(store, 1, timeout=20)
    sent = rec.bodies(path)
    assert [status for _, _, status in sent] == [500, 500, 500, 204]
    assert {webhook_id for webhook_id, _, _ in sent} == {event_id(w.id, "clips.ready")}
    return [body for _, body, _ in sent]


async def test_every_retry_sends_the_same_bytes_until_the_links_are_refreshed(
    store: Store,
    sim: TestClient[web.Request, web.Application],
    hook: tuple[Receiver, str],
    make_worker: WorkerFactory,
) -> None:
    """A body is built from the watch and the video's stored clips wherever it is sent:
    every retry carries the same bytes (and the same ``webhook-id``); a retry made more than
    RELAY_LINK_REFRESH after the clips were fetched fetches them again, and that attempt
    and those after it carry the refreshed links -- the rest of the body unchanged."""
    clips = [{"score": 90}, {"score": 70}]
    first, second, third, fourth = await _four_attempts(
        store, sim, hook, make_worker, clips, link_refresh=1.0
    )
    assert first == second  # a plain retry: byte for byte
    assert third == fourth  # after the refresh: the refreshed body, again byte for byte
    assert third != first
    old, new = orjson.loads(first), orjson.loads(third)
    urls = [clip.pop("downloadUrl") for clip in old["data"]["clips"]]
    fresh = [clip.pop("downloadUrl") for clip in new["data"]["clips"]]
    assert all(a != b for a, b in zip(urls, fresh, strict=True))
    for clip in (*old["data"]["clips"], *new["data"]["clips"]):
        clip.pop("thumbnailUrl", None)
    assert old == new  # only the links changed: same timestamp, clips, metadata


async def test_a_link_refresh_adds_no_clip_that_rendered_after_the_event(
    store: Store,
    sim: TestClient[web.Request, web.Application],
    hook: tuple[Receiver, str],
    make_worker: WorkerFactory,
) -> None:
    """A clip left out of an event at the render timeout, rendered since, does not join
    the event's retries when a link refresh fetches the clips again: the refreshed body
    carries the same clips with fresh links (the same ``webhook-id``, the same clips)."""
    clips = [{"score": 90}, {"score": 70, "renderAfter": 1.0}]
    sent = await _four_attempts(
        store, sim, hook, make_worker, clips, link_refresh=1.0, render_timeout=0.3
    )
    first, fourth = orjson.loads(sent[0]), orjson.loads(sent[3])
    assert [clip["score"] for clip in first["data"]["clips"]] == [90]  # the 70 still renders
    assert [clip["score"] for clip in fourth["data"]["clips"]] == [90]  # (rendered by then)
    assert fourth["data"]["clips"][0]["downloadUrl"] != first["data"]["clips"][0]["downloadUrl"]


# --- a fan-out cut short between two chunks -----------------------------------------------


async def test_a_fan_out_cut_between_chunks_is_finished_by_another_worker(
    redis_server: RedisServer,
    store: Store,
    settings: Settings,
    sim: TestClient[web.Request, web.Application],
    hook: tuple[Receiver, str],
    make_worker: WorkerFactory,
) -> None:
    """A worker dies between two chunks of a video's fan-out (here: it stops for good
    inside its third finalize call, holding the video's claim and the events it claimed
    for itself). Another worker takes the video over after the lease, creates only the
    events still missing, and sends the dead worker's claimed ones after their lease: every
    watch gets its event exactly once, with one event id each."""
    rec, base = hook
    n = 500  # chunks of FINALIZE_CHUNK
    made = 2 * FINALIZE_CHUNK  # before the third call
    vid = await sim_video(sim, clips=[{"score": 90}])
    watches = [
        Watch(
            id=f"wat_cut_{i:04d}",
            tenant="acme",
            video_id=vid,
            callback_url=base + "/hook",
            secrets=[SecretEntry(SECRET)],
            created_ms=now_ms(),
        )
        for i in range(n)
    ]
    for start in range(0, n, 100):
        await asyncio.gather(
            *(store.watches.create(w, expire_after_s=3600) for w in watches[start : start + 100])
        )
    # the worker that dies: a poller whose deliverer is gone with it
    dead_redis = Redis.from_url(redis_server.url, decode_responses=True)
    dead_store = Store(dead_redis)
    frozen = asyncio.Event()
    real = dead_store.deliveries.finalize
    calls = 0

    async def finalize(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            frozen.set()
            await dead.leases.stop()  # a dead worker extends no claim either
            await asyncio.Event().wait()  # dead from here on
        return await real(*args, **kwargs)

    dead_store.deliveries.finalize = finalize  # type: ignore[method-assign]
    session = aiohttp.ClientSession()
    upstream = UpstreamClient(
        session, settings.scalereach_base_url, settings.scalereach_api_key, 2.0
    )
    dead = Poller(dead_store, upstream, UpstreamGate(dead_store.limits, 1000), settings)
    lost: list[str] = []
    dead.fan_out.on_events = lambda claims: lost.extend(cl.watch_id for cl in claims)
    dead.fan_out.room = room_for_50  # it had room for some, and claimed them as it created them
    dead.start()
    try:
        await asyncio.wait_for(frozen.wait(), 10)
        counts = await store.watches.counts()
        assert counts["delivering"] == made and counts["watching"] == n - made
        assert len(lost) == made  # (room for 50 each time: a whole chunk claimed)
        await make_worker()  # takes over after the lease (3 s here)
        await rec.wait_for(n, 30)
        await asyncio.sleep(0.3)
    finally:
        await dead.stop(0.1)
        await session.close()
        await dead_redis.aclose()
    assert rec.received() == n and rec.duplicates() == 0
    assert rec.unique_ids() == {event_id(w.id, "clips.ready") for w in watches}
    counts = await store.watches.counts()
    assert counts["delivered"] == n and counts["watching"] == counts["delivering"] == 0
    # the dead worker's events keep the clips document it stored (their bodies do not
    # change); the rest got the new worker's fetch: two documents, a reference per event
    sources = [k async for k in store.redis.scan_iter(f"{c.SOURCE_PREFIX}{vid}:*")]
    refs = sorted([int(await store.redis.hget(k, "refs")) for k in sources])  # type: ignore[misc]
    assert refs == sorted([made, n - made])


async def test_outcomes_still_pending_at_stop_are_recorded(
    store: Store,
    hook: tuple[Receiver, str],
    make_deliverer: DelivererFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attempts made, their outcomes not flushed yet when the deliverer stops: stopping
    records them (else each would be sent again once its lease ran out -- a duplicate; a
    mutation review found nothing checked it, the flush being 5 ms away)."""
    import workers.delivery.settle as settle

    monkeypatch.setattr(settle, "FLUSH_EVERY_S", 3600.0)  # nothing flushed but by the stop
    rec, base = hook
    d = await make_deliverer()
    for claim in await created_events(store, base, 5, deliverer=d):
        d.offer([claim])
    await eventually(lambda: rec.received() == 5, what="the five attempts")
    assert (await store.watches.counts())["delivered"] == 0  # (all five still pending)
    assert d.settler.pending == 5
    await d.stop(1.0)
    assert (await store.watches.counts())["delivered"] == 5
    assert await store.redis.zcard(c.DELIVERY_SCHEDULE_KEY) == 0


async def test_jobs_queued_past_their_first_lease_are_sent_once(
    store: Store,
    hook: tuple[Receiver, str],
    make_deliverer: DelivererFactory,
) -> None:
    """Six events to one origin that takes one at a time, 0.45 s each, on a 2 s lease: the
    later ones wait in their origin's queue past their first claim's deadline. Their claims
    are kept (the queued jobs' claims extended in batches, and each renewed right before
    its attempt when near its end), so no other worker takes one (a second deliverer
    claims from the same schedule meanwhile): every event arrives exactly once."""
    rec, base = hook
    rec.script("/slow", [204] * 6, delay=0.45)
    first = await make_deliverer(lease=2.0, origin_concurrency=1, delivery_timeout=1.0)
    await make_deliverer(lease=2.0, origin_concurrency=1, delivery_timeout=1.0)
    for claim in await created_events(store, base, 6, path="/slow", deliverer=first):
        first.offer([claim])
    counts = await wait_settled(store, 6, timeout=15)
    assert counts["delivered"] == 6, counts
    await asyncio.sleep(0.5)  # (a second send would have arrived by now)
    assert rec.received() == 6 and rec.duplicates() == 0


async def test_a_watch_taken_over_during_a_link_refresh_is_left_to_its_new_owner(
    store: Store, redis: Redis, hook: tuple[Receiver, str], make_deliverer: DelivererFactory
) -> None:
    """A batch waits on the upstream for its clips; meanwhile another worker takes one of
    its watches over (its claim's score is not ours any more). Once the refresh ends, that
    watch is neither sent nor recorded by us -- its new owner does it; the others go on.
    (A mutation review, 2026-12-06: nothing checked it.)"""
    rec, base = hook
    d = await make_deliverer(lease=20)
    created = await created_events(store, base, 3)
    async for key in redis.scan_iter(match=c.SOURCE_PREFIX + "*"):
        await redis.delete(key)  # (the clips must be fetched again)
    fetching, answer = asyncio.Event(), asyncio.Event()

    async def upstream_slow(source: tuple[str, int]) -> int | None:
        fetching.set()
        await answer.wait()
        return None  # (no clips: the others are recorded failed, without a request)

    d.claimer.links._fetch = upstream_slow  # type: ignore[method-assign]
    d.offer(created)
    await asyncio.wait_for(fetching.wait(), 5)
    taken = created[0].watch_id
    await redis.zadd(c.DELIVERY_SCHEDULE_KEY, {taken: now_ms() + 60_000}, xx=True)  # theirs
    answer.set()

    async def others_recorded() -> bool:
        got = [await store.watches.get(cl.watch_id) for cl in created[1:]]
        return all(w is not None and w.records == 1 for w in got)

    await eventually(others_recorded, timeout=5, what="the others' attempts recorded")
    await asyncio.sleep(0.2)
    mine = await store.watches.get(taken)
    assert mine is not None and mine.records == 0  # left to the worker that took it
    assert rec.bodies("/hook") == []
