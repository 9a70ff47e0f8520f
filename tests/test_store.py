"""The store's claim and fan-out primitives (relay/store/, its commands/*.lua) on a real Redis.

The worker tests drive these end to end; here each rule is pinned on its own: a fan-out
claims for its worker exactly what it was told to and schedules the rest, a claim's
deadline is its token, event creation is idempotent, a video's clips are stored once, a
watch (with its attempt records) stays one compact hash, and the per-tenant counts and
indexes follow every transition.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.domain import attempts, events
from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.delivery import AttemptResult, DeliveryClaim, FinalEvent
from relay.domain.ids import event_id
from relay.domain.watch import SecretEntry, Watch
from relay.store import SCRIPT_BATCH, Store, scripts

CLIPS = [
    {"id": "a", "score": 90, "status": "completed", "downloadUrl": "https://cdn/a"},
    {"id": "b", "score": 40, "status": "completed", "downloadUrl": "https://cdn/b"},
]


async def registered(
    store: Store, n: int, video: str = "vid_1", tenant: str = "acme"
) -> list[Watch]:
    """*n* watches of *video*, stored as the API stores them."""
    watches = [
        Watch(
            id=f"wat_{video}_{tenant}_{i:04d}",
            tenant=tenant,
            video_id=video,
            callback_url="http://127.0.0.1:9/hook",
            min_score=float(i % 100),
            metadata={"i": i},
            secrets=[SecretEntry(f"whsec_secret_{i}")],
            created_ms=now_ms(),
        )
        for i in range(n)
    ]
    await asyncio.gather(*(store.watches.create(w, expire_after_s=3600) for w in watches))
    return watches


def result(
    claim: DeliveryClaim,
    outcome: str,
    record: bytes,
    *,
    attempt: int = 1,
    record_no: int = 1,
    next_due_ms: int = 0,
    last_error: str = "",
) -> AttemptResult:
    """The outcome of an attempt made under *claim*."""
    return AttemptResult(
        claim.watch_id,
        "acme",
        "clips.ready",
        claim.deadline_ms,
        outcome,
        record_no,
        record,
        attempt,
        next_due_ms,
        last_error,
    )


def clips_ready(at: int | None = None) -> FinalEvent:
    at = now_ms() if at is None else at
    doc = ClipSet(CLIPS).doc()
    return FinalEvent("clips.ready", at, video_status="completed", clips_doc=doc, clips_ms=at)


async def fan_out(
    store: Store, watches: list[Watch], *, claim: int | None = None, event: FinalEvent | None = None
) -> list[DeliveryClaim]:
    """Give every watch its clips.ready as the poller does, in chunks of 200: the claims
    (all of them, unless *claim* says how many per chunk), or the ones created (deadline 0)."""
    event = event or clips_ready()
    made: list[DeliveryClaim] = []
    ids = [w.id for w in watches]
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        n, claimed = await store.deliveries.finalize(
            watches[0].video_id,
            event,
            chunk,
            claim=len(chunk) if claim is None else claim,
            lease_s=30,
        )
        made += claimed
        if claim == 0:
            made += [DeliveryClaim(w, None, 0) for w in chunk][:n]
    return made


async def fan_out_deadline(store: Store, watch_id: str) -> int:
    score = await store.redis.zscore(c.DELIVERY_SCHEDULE_KEY, watch_id)
    assert score is not None
    return int(score)


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


async def test_finalize_returns_what_it_created_and_is_idempotent(store: Store) -> None:
    watches = await registered(store, 5)
    made = await fan_out(store, watches)
    assert [m.watch_id for m in made] == [w.id for w in watches]
    assert await fan_out(store, watches) == []  # a second worker, or a re-run after a crash
    counts = await store.watches.counts()
    assert counts["delivering"] == 5 and counts["watching"] == 0
    assert (await store.watches.tenant_counts("acme"))["delivering"] == 5
    stored = await store.watches.get(watches[0].id)
    assert stored is not None and stored.status == "delivering"
    assert made[0].watch is not None
    assert stored.event_id == made[0].watch.event_id == event_id(watches[0].id, "clips.ready")
    assert await store.redis.hlen(c.VIDEO_WATCHES_KEY.format("vid_1")) == 0  # type: ignore[misc]
    with pytest.raises(ValueError, match="at most"):
        await store.deliveries.finalize("vid_1", clips_ready(), ["w"] * (SCRIPT_BATCH + 1))


async def test_finalize_claims_what_it_is_told_and_schedules_the_rest(store: Store) -> None:
    """The poller claims as many events as its deliverer has room for (sent without a
    read-back); the others are due at once for any worker. An id that does not wait on the
    video (no such watch, or cancelled) gets nothing."""
    watches = await registered(store, 6)
    ids = [w.id for w in watches] + ["wat_gone"]
    before = now_ms()
    n, made = await store.deliveries.finalize("vid_1", clips_ready(), ids, claim=4, lease_s=30)
    assert n == 6 and [m.watch_id for m in made] == ids[:4]
    assert all(m.deadline_ms > before + 20_000 for m in made)
    scores = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    # (due now on Redis' clock: well before the claims' 30 s leases, whatever the few ms
    # this process' clock and Redis' disagree by)
    assert sorted(m for m, s in scores.items() if s <= now_ms() + 10_000) == sorted(ids[4:6])
    assert await store.redis.hlen(c.VIDEO_WATCHES_KEY.format("vid_1")) == 0  # type: ignore[misc]
    # what is due is claimed by anyone; what was claimed is not
    claimed = await store.deliveries.claim(limit=10, lease_s=30)
    assert sorted(cl.watch_id for cl, _ in claimed) == sorted(ids[4:6])


async def test_finalize_paces_what_it_is_told_without_claiming_it(store: Store) -> None:
    """An event the fan-out paces (its origin would not start it soon) is due that many ms
    later and never claimed; the claim count applies to the others."""
    watches = await registered(store, 5)
    ids = [w.id for w in watches]
    later = [0, 1500, 0, 60_000, 0]
    before = now_ms()
    n, made = await store.deliveries.finalize(
        "vid_1", clips_ready(), ids, claim=2, lease_s=30, later_ms=later
    )
    after = now_ms()
    assert n == 5 and [m.watch_id for m in made] == [ids[0], ids[2]]
    scores = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    slack = 50  # ms: the script reads Redis' clock, this test its own
    assert before + 1500 - slack <= scores[ids[1]] <= after + 1500 + slack
    assert before + 60_000 - slack <= scores[ids[3]] <= after + 60_000 + slack
    assert scores[ids[4]] <= after + slack  # not claimed (the claim count was spent): due now
    claimed = await store.deliveries.claim(limit=10, lease_s=30)
    assert [cl.watch_id for cl, _ in claimed] == [ids[4]]


async def test_waiting_watches_come_round_robin_over_tenants_and_origins(store: Store) -> None:
    """A video's waiting watches, in fan-out order: one of each (tenant, callback origin)
    group in turn, each with its origin's tag -- 3 watches of a receiver registered after
    30 of another's are among the first 6."""
    many = await registered(store, 30, tenant="big")
    few = [
        Watch(
            id=f"wat_few_{i}",
            tenant="big",
            video_id="vid_1",
            callback_url=f"https://hooks.example:8443/few/{i}",
            secrets=[SecretEntry("whsec_x")],
            created_ms=now_ms(),
        )
        for i in range(3)
    ]
    for w in few:
        await store.watches.create(w, expire_after_s=3600)
    other = await registered(store, 2, tenant="small")
    order = await store.videos.waiting("vid_1")
    assert len(order) == 35
    assert {w.id for w in few} <= {wid for wid, _ in order[:9]}
    assert {w.id for w in other} <= {wid for wid, _ in order[:9]}
    tags = {wid: tag for wid, tag in order}
    assert len({tags[w.id] for w in many}) == 1 and tags[few[0].id] != tags[many[0].id]
    assert tags[few[0].id] == tags[few[1].id]  # one origin, whatever the path


async def test_a_fan_out_watch_matches_the_same_watch_read_back(store: Store) -> None:
    """A watch handed over in memory (finalize's own claim: the registration, and the state
    the script returns) looks exactly like the same watch claimed from Redis, field by
    field -- so its body is the same bytes, whoever builds it."""
    mine = {m.watch_id: m.watch for m in await fan_out(store, await registered(store, 3))}
    assert len(mine) == 3 and all(mine.values())
    deadline = await fan_out_deadline(store, next(iter(mine)))
    await store.deliveries.extend(list(mine), deadline, 0)
    read = await store.deliveries.claim(limit=10, lease_s=30)
    assert len(read) == 3
    clips = ClipSet.from_doc(ClipSet(CLIPS).doc())
    for claim, fetched in read:
        theirs, ours = claim.watch, mine[claim.watch_id]
        assert theirs is not None and ours is not None
        theirs.clips_ms = fetched
        assert ours.attempt_base == 0  # (never redelivered: the base only a redelivery sets)
        assert dataclasses.asdict(theirs) == dataclasses.asdict(ours)
        assert events.body(theirs, clips) == events.body(ours, clips)


async def test_a_claims_deadline_is_its_token(store: Store) -> None:
    made = await fan_out(store, await registered(store, 3), claim=3)
    ids = [m.watch_id for m in made]
    deadline = made[0].deadline_ms
    ours, renewed = await store.deliveries.extend(ids, deadline, 60)
    assert ours == set(ids) and renewed > deadline
    # the old token no longer works: somebody holding it lost the claim
    lost, _ = await store.deliveries.extend(ids, deadline, 60)
    assert lost == set()
    # handing back (lease 0) makes them due at once, for any worker
    back, _ = await store.deliveries.extend(ids[:2], renewed, 0)
    assert back == set(ids[:2])
    again = await store.deliveries.claim(limit=10, lease_s=30)
    assert sorted(cl.watch_id for cl, _ in again) == sorted(ids[:2])


async def test_hand_back_makes_each_group_due_after_its_delay_if_still_held(
    store: Store,
) -> None:
    """hand_back(): one pipeline of token-checked extends, each group due after its own
    delay; a claim taken over since (another token) is left as it is."""
    made = await fan_out(store, await registered(store, 4), claim=4)
    ids = [m.watch_id for m in made]
    token = made[0].deadline_ms
    _, other = await store.deliveries.extend(ids[3:], token, 60)  # taken over: a new token
    before = now_ms()
    await store.deliveries.hand_back([(ids[:2], token, 2.0), (ids[2:], token, 5.0)])
    after = now_ms()
    scores = await store.deliveries.claim_scores(ids)
    for score, delay in zip(scores[:3], (2.0, 2.0, 5.0), strict=True):
        assert score is not None
        assert before + delay * 1000 - 5 <= score <= after + delay * 1000 + 5
    assert scores[3] == other
    # more groups than one pipeline takes (64): every one lands
    many = await fan_out(store, await registered(store, 70), claim=70)
    token = many[0].deadline_ms
    before = now_ms()
    await store.deliveries.hand_back(
        [([m.watch_id], token, 1 + i / 10) for i, m in enumerate(many)]
    )
    scores = await store.deliveries.claim_scores([m.watch_id for m in many])
    assert all(
        score is not None and before + (1 + i / 10) * 1000 - 5 <= score
        for i, score in enumerate(scores)
    )


async def test_a_lost_claims_owner_changes_nothing_but_its_attempt_record(store: Store) -> None:
    """Every write of a claim's owner checks the claim (issue 14): once another worker holds
    it, the old owner's extension, hand-back and settle change neither the schedule nor the
    watch's status -- only the record of the attempt it made is kept -- and its claim check
    (the gate's ZMSCORE) sees a score that is not its token. (This held before issue 14
    too: it pins the audit of the owner's writes.)"""
    (mine,) = await fan_out(store, await registered(store, 1), claim=1)
    wid, old = mine.watch_id, mine.deadline_ms
    await store.deliveries.extend([wid], old, 0)  # lapsed: due for anyone
    [(theirs, _)] = await store.deliveries.claim(limit=1, lease_s=60)
    assert theirs.watch_id == wid and theirs.deadline_ms != old
    assert (await store.deliveries.extend([wid], old, 60))[0] == set()
    assert (await store.deliveries.extend([wid], old, 0))[0] == set()
    assert await store.deliveries.claim_scores([wid]) == [theirs.deadline_ms]
    record = attempts.record(1, now_ms(), 204, None, 1.0, None)
    assert await store.deliveries.settle([result(mine, "ok", record)]) == ["delivering"]
    assert await store.deliveries.claim_scores([wid]) == [theirs.deadline_ms]
    assert (await store.watches.counts())["delivering"] == 1
    assert mine.watch is not None
    assert len(await store.watches.attempts(mine.watch)) == 1


async def test_a_stale_idle_claim_does_not_take_a_redelivered_watch_off_the_schedule(
    store: Store,
) -> None:
    """A claimer that read its claimed watch as final (its read came after another worker's
    settle) takes it off the schedule only while the claim is still its own: a watch
    redelivered since is back under another score and stays due. Fails before: a plain
    ZREM took it off, and it stayed ``delivering`` for ever, never sent (review,
    2026-12-06)."""
    (mine,) = await fan_out(store, await registered(store, 1), claim=1)
    wid, token = mine.watch_id, mine.deadline_ms
    record = attempts.record(1, now_ms(), 204, None, 1.0, None)
    assert await store.deliveries.settle([result(mine, "ok", record)]) == ["delivered"]
    assert mine.watch is not None
    assert await store.watches.redeliver(mine.watch) == "ok"
    (due,) = await store.deliveries.claim_scores([wid])
    assert due is not None and due != token
    await store.deliveries.unschedule([wid], token)  # the stale read: "delivered, idle"
    assert await store.deliveries.claim_scores([wid]) == [due]
    [(again, _)] = await store.deliveries.claim(limit=5, lease_s=30)
    assert again.watch_id == wid and again.watch is not None
    assert again.watch.status == "delivering"
    # a claim still held with its token is taken off (a watch with nothing to send)
    await store.deliveries.unschedule([wid], again.deadline_ms)
    assert await store.deliveries.claim_scores([wid]) == [None]


async def test_the_new_owners_record_goes_after_the_old_owners_late_one(store: Store) -> None:
    """The old owner's attempt (its claim lapsed while it was on the wire) is settled after
    the new owner read the watch: both attempts stay listed, the new owner's numbered after
    the late one instead of over it -- whichever of them reached the receiver."""
    (mine,) = await fan_out(store, await registered(store, 1), claim=1)
    wid = mine.watch_id
    await store.deliveries.extend([wid], mine.deadline_ms, 0)  # lapsed: due for anyone
    [(theirs, _)] = await store.deliveries.claim(limit=1, lease_s=60)
    assert theirs.watch is not None and theirs.watch.records == 0
    ok = attempts.record(1, now_ms(), 200, None, 1.0, None)
    assert await store.deliveries.settle([result(mine, "ok", ok)]) == ["delivering"]
    failed = attempts.record(1, now_ms(), 500, None, 1.0, "HTTP 500")
    retry = result(theirs, "retry", failed, next_due_ms=now_ms() + 60_000, last_error="HTTP 500")
    for _ in range(2):  # (and a second run of that call, its reply lost, adds nothing)
        assert await store.deliveries.settle([retry]) == ["delivering"]
    watch = await store.watches.get(wid)
    assert watch is not None and watch.records == 2
    listed = await store.watches.attempts(watch)
    assert sorted(a["statusCode"] for a in listed) == [200, 500]


async def test_only_a_claim_from_the_schedule_pays_the_late_record_check(store: Store) -> None:
    """A claim made with its event (a fan-out's) had no owner before it: its settle writes
    its record without reading the slot first -- one command less per delivery. A claim
    from the schedule reads it (the check of the test above)."""

    async def hgets() -> int:
        stats = await store.redis.info("commandstats")
        return int(stats.get("cmdstat_hget", {}).get("calls", 0))

    claims = await fan_out(store, await registered(store, 4), claim=4)
    assert all(cl.first for cl in claims)
    record = attempts.record(1, now_ms(), 204, None, 1.0, None)
    before = await hgets()
    done = [replace(result(cl, "ok", record), first=True) for cl in claims[:2]]
    assert await store.deliveries.settle(done) == ["delivered"] * 2
    assert await hgets() == before
    assert (
        await store.deliveries.settle([result(cl, "ok", record) for cl in claims[2:]])
        == ["delivered"] * 2
    )
    assert await hgets() == before + 2


async def test_a_videos_clips_are_stored_once_with_a_reference_per_event(store: Store) -> None:
    """One clips document per fan-out, whatever its size: written by the first chunk that
    creates an event, referenced by each event; a refresh replaces it only with a newer
    fetch, and never creates one nobody refers to. A later fan-out of the same video (a
    watch registered after the first) gets a document of its own: the first one's events
    keep their bytes."""
    watches = await registered(store, 450)
    event = clips_ready()
    await fan_out(store, watches, event=event)
    at = event.at_ms
    key = c.SOURCE_KEY.format("vid_1", at)
    stored = await store.redis.hgetall(key)  # type: ignore[misc]
    assert stored == {"doc": event.clips_doc.decode(), "at": str(event.clips_ms), "refs": "450"}
    assert await store.deliveries.clips_doc("vid_1", at) == (event.clips_doc, event.clips_ms)
    assert not await store.deliveries.refresh_clips("vid_1", at, b"[]", at - 1)
    assert await store.deliveries.refresh_clips("vid_1", at, b"[1]", at + 1)
    assert await store.deliveries.clips_doc("vid_1", at) == (b"[1]", at + 1)
    assert not await store.deliveries.refresh_clips("vid_none", at, b"[]", now_ms())
    assert not await store.redis.exists(c.SOURCE_KEY.format("vid_none", at))
    (late,) = await registered(store, 1, tenant="late")
    later = clips_ready(at + 5)
    await fan_out(store, [late], event=later)
    assert await store.deliveries.clips_doc("vid_1", at) == (b"[1]", at + 1)
    assert await store.deliveries.clips_doc("vid_1", at + 5) == (later.clips_doc, at + 5)
    # nothing per watch holds a body
    assert [k async for k in store.redis.scan_iter("cr:e:*")] == []
    assert stored["refs"] == "450"


async def test_a_fan_out_where_nothing_is_created_stores_no_clips(store: Store) -> None:
    watches = await registered(store, 2)
    for w in watches:
        await store.watches.cancel(w)
    assert await fan_out(store, watches) == []
    assert [k async for k in store.redis.scan_iter(c.SOURCE_PREFIX + "*")] == []


async def test_settle_in_several_script_calls_moves_every_watch_on(store: Store) -> None:
    n = SCRIPT_BATCH + 5
    made = await fan_out(store, await registered(store, n, video="big"))
    later = now_ms() + 60_000
    results = [
        result(
            m,
            "retry" if i % 2 else "ok",
            attempts.record(1, now_ms(), 500 if i % 2 else 204, None, 1.5, None),
            next_due_ms=later if i % 2 else 0,
            last_error="HTTP 500" if i % 2 else "",
        )
        for i, m in enumerate(made)
    ]
    statuses = await store.deliveries.settle(results)
    assert statuses == ["delivering" if i % 2 else "delivered" for i in range(n)]
    counts = await store.watches.counts()
    assert counts["delivered"] == (n + 1) // 2 and counts["delivering"] == n // 2
    assert await store.watches.tenant_counts("acme") == {**counts}
    scheduled = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert set(scheduled) == {m.watch_id for i, m in enumerate(made) if i % 2}
    # (due by Redis' clock: the delay the worker computed, after settle's own now)
    assert all(abs(v - later) < 1_000 for v in scheduled.values()), (scheduled, later)
    delivered = c.TENANT_FINAL_KEY.format("acme", "delivered")
    assert await store.redis.zcard(delivered) == (n + 1) // 2
    retried = await store.watches.get(made[1].watch_id)
    assert retried is not None and retried.last_error == "HTTP 500" and retried.attempt == 1
    first = made[0].watch
    assert first is not None
    (record,) = await store.watches.attempts(first)
    assert record["eventId"] == first.event_id and record["eventType"] == "clips.ready"
    assert (record["attempt"], record["statusCode"], record["latencyMs"]) == (1, 204, 1.5)


async def test_settle_keeps_the_newest_attempt_records(store: Store) -> None:
    (made,) = await fan_out(store, await registered(store, 1))
    w = made.watch
    assert w is not None
    for n in range(c.MAX_ATTEMPTS_KEPT + 3):
        rec = attempts.record(n + 1, now_ms(), 500, None, 1.0, f"n{n}")
        await store.deliveries.settle(
            [
                result(
                    made, "retry", rec, attempt=n + 1, record_no=n + 1, next_due_ms=made.deadline_ms
                )
            ]
        )
    kept = await store.watches.attempts(w)
    assert len(kept) == c.MAX_ATTEMPTS_KEPT
    assert kept[0]["responseBody"] == "n3" and kept[-1]["attempt"] == c.MAX_ATTEMPTS_KEPT + 3


async def test_a_watch_is_two_compact_keys_through_its_life(store: Store) -> None:
    """Registered, given its event and delivered (a 2xx attempt recorded), a watch is its
    registration string and a listpack-encoded state hash: no event body, no attempt list."""
    (w,) = await registered(store, 1)
    key = c.WATCH_KEY.format(w.id)
    assert await store.redis.object("encoding", key) == "listpack"
    (made,) = await fan_out(store, [w])
    rec = attempts.record(1, now_ms(), 204, None, 3.25, None)
    await store.deliveries.settle([result(made, "ok", rec)])
    assert await store.redis.object("encoding", key) == "listpack"
    owned = {k async for k in store.redis.scan_iter(f"*{w.id}*")}
    assert owned == {key, c.REGISTRATION_KEY.format(w.id)}
    got = await store.watches.get(w.id)
    assert got is not None and got.status == "delivered" and got.delivered_ms


async def test_cancel_and_redeliver_keep_the_tenant_counts_and_indexes(store: Store) -> None:
    a, b, other = await registered(store, 3)
    made_a, made_b = await fan_out(store, [a, b])
    rec = attempts.record(1, now_ms(), 500, None, 1.0, None)
    await store.deliveries.settle(
        [result(made_a, "failed", rec, last_error="HTTP 500"), result(made_b, "ok", rec)]
    )
    failed = c.TENANT_FINAL_KEY.format("acme", "failed")
    assert await store.redis.zrange(failed, 0, -1) == [a.id]
    assert await store.watches.redeliver(a) == "ok"
    assert await store.redis.zcard(failed) == 0
    await store.watches.cancel(b)
    await store.watches.cancel(other)
    assert await store.redis.zcard(c.TENANT_FINAL_KEY.format("acme", "delivered")) == 0
    cancelled = await store.redis.zrange(c.TENANT_FINAL_KEY.format("acme", "cancelled"), 0, -1)
    assert sorted(cancelled) == sorted([b.id, other.id])
    assert await store.watches.tenant_counts("acme") == {
        "watching": 0,
        "delivering": 1,
        "delivered": 0,
        "failed": 0,
        "disabled": 0,
        "cancelled": 2,
    }
    assert await store.watches.counts() == await store.watches.tenant_counts("acme")


async def test_a_watch_shows_its_videos_last_status_until_its_own(store: Store) -> None:
    """A poll writes no watch: a watch without its own event shows the video's last status
    and progress, and its updatedAt moves when they change; cancelled, it keeps them."""
    (w,) = await registered(store, 1)
    changed = w.created_ms + 60_000
    await store.redis.hset(  # type: ignore[misc]
        c.VIDEO_KEY.format("vid_1"),
        mapping={"status": "analyzing", "progress": "40.0", "changedAt": str(changed)},
    )
    got = await store.watches.get(w.id)
    assert got is not None and (got.video_status, got.video_progress) == ("analyzing", 40.0)
    assert got.updated_ms == changed
    await store.watches.cancel(w)
    await store.redis.delete(c.VIDEO_KEY.format("vid_1"))
    got = await store.watches.get(w.id)
    assert got is not None and (got.video_status, got.video_progress) == ("analyzing", 40.0)


async def test_scripts_run_twice_change_nothing_more(store: Store) -> None:
    """A script whose reply was lost may be sent again on a new connection: a second run of
    registration, of recording an attempt, of a rotation and of a redelivery changes nothing.
    Fails before issue 14: a second settle added a second attempt record, a second rotation a
    third secret, a second registration counted the watch twice, a second redelivery
    answered 'delivering' (a 409 for a redelivery that worked)."""
    (w,) = await registered(store, 1)
    assert (await store.watches.create(w, expire_after_s=3600)).outcome == "created"
    assert (await store.watches.tenant_counts("acme"))["watching"] == 1
    assert await store.redis.zcard(c.TENANT_INDEX_KEY.format("acme")) == 1
    first = await store.watches.rotate_secret(w.id, "sealed-new", 60)
    second = await store.watches.rotate_secret(w.id, "sealed-new", 60)
    assert first is not None and second is not None and len(first) == len(second) == 2
    (made,) = await fan_out(store, [w])
    rec = attempts.record(1, now_ms(), 500, None, 1.0, None)
    failed = result(made, "failed", rec, last_error="HTTP 500")
    assert await store.deliveries.settle([failed]) == ["failed"]
    assert await store.deliveries.settle([failed]) == ["failed"]
    assert len(await store.watches.attempts(w)) == 1
    assert (await store.watches.tenant_counts("acme"))["failed"] == 1
    script = scripts.register(store.redis, "redeliver")
    args = [w.id, now_ms(), c.TENANT_PREFIX, "acme", "request-1"]
    keys = [c.WATCH_KEY.format(w.id), c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY]
    assert await script(keys=keys, args=args) == "ok"
    assert await script(keys=keys, args=args) == "ok"
    assert await script(keys=keys, args=[*args[:4], "request-2"]) == "delivering"
    counts = await store.watches.tenant_counts("acme")
    assert counts["delivering"] == 1 and counts["failed"] == 0


async def test_a_settle_sent_again_after_another_owners_record_adds_nothing(
    store: Store,
) -> None:
    """A settle whose reply was lost is sent again (the flusher retries) after another
    worker took the watch over, sent and recorded its own attempt: the second run finds
    its record among those from its number on and adds nothing. Fails before: it looked
    at the last record only, and listed the same attempt twice (review, 2026-12-06)."""
    (mine,) = await fan_out(store, await registered(store, 1), claim=1)
    wid = mine.watch_id
    failed = attempts.record(1, now_ms(), 500, None, 1.0, "HTTP 500")
    retry = result(mine, "retry", failed, next_due_ms=now_ms() - 1, last_error="HTTP 500")
    assert await store.deliveries.settle([retry]) == ["delivering"]  # its reply lost ...
    [(theirs, _)] = await store.deliveries.claim(limit=1, lease_s=60)
    assert theirs.watch is not None and theirs.watch.records == 1
    ok = attempts.record(2, now_ms(), 204, None, 1.0, None)
    done = result(theirs, "ok", ok, attempt=2, record_no=2)
    assert await store.deliveries.settle([done]) == ["delivered"]
    assert await store.deliveries.settle([retry]) == ["delivered"]  # ... so sent again
    watch = await store.watches.get(wid)
    assert watch is not None and watch.records == 2
    assert sorted(a["statusCode"] for a in await store.watches.attempts(watch)) == [204, 500]


async def test_a_redelivery_sent_again_once_it_was_delivered_is_not_a_new_one(
    store: Store,
) -> None:
    """A redelivery whose reply was lost is sent again (a connection retry) after the
    redelivered event reached the receiver: the second run finds its request id and
    answers 'ok' without starting a third send. Fails before: it knew its id only while
    the watch was still delivering (review, 2026-12-06)."""
    (made,) = await fan_out(store, await registered(store, 1), claim=1)
    wid = made.watch_id
    ok = attempts.record(1, now_ms(), 204, None, 1.0, None)
    assert await store.deliveries.settle([result(made, "ok", ok)]) == ["delivered"]
    script = scripts.register(store.redis, "redeliver")
    args = [wid, now_ms(), c.TENANT_PREFIX, "acme", "request-1"]
    keys = [c.WATCH_KEY.format(wid), c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY]
    assert await script(keys=keys, args=args) == "ok"
    [(again, _)] = await store.deliveries.claim(limit=1, lease_s=60)
    ok = attempts.record(2, now_ms(), 204, None, 1.0, None)
    done = result(again, "ok", ok, attempt=2, record_no=2)
    assert await store.deliveries.settle([done]) == ["delivered"]
    assert await script(keys=keys, args=args) == "ok"
    watch = await store.watches.get(wid)
    assert watch is not None and watch.status == "delivered"
    assert await store.deliveries.claim_scores([wid]) == [None]
    counts = await store.watches.tenant_counts("acme")
    assert counts["delivered"] == 1 and counts["delivering"] == 0


async def test_attempts_list_each_kind_in_its_numbers_order_merged_by_time(
    store: Store,
) -> None:
    """An event's attempts keep their numbers' order whatever the workers' clocks wrote
    (attempt 2 stamped before attempt 1), pings theirs, and the two are merged by time."""
    (w,) = await registered(store, 1)
    key = c.WATCH_KEY.format(w.id)
    await store.redis.hset(
        key,
        mapping={
            "#1": attempts.record(1, 1_700_000_002_000, 500, None, 1.0, None),
            "#2": attempts.record(2, 1_700_000_001_000, 204, None, 1.0, None),
            "p1": attempts.ping_record(1_700_000_000_000, 204, None, 1.0, None, "evt_p1"),
            "p2": attempts.ping_record(1_700_000_003_000, 204, None, 1.0, None, "evt_p2"),
            "pn": "2",
            "ev": "clips.ready|1700000000000|100|completed|",
        },
    )
    rows = await store.watches.attempts(w)
    assert [(r["eventType"], r["attempt"], r["at"][17:23]) for r in rows] == [
        ("watch.ping", 1, "20.000"),
        ("clips.ready", 1, "22.000"),
        ("clips.ready", 2, "21.000"),
        ("watch.ping", 1, "23.000"),
    ]


# --- from a mutation review of the delivery scripts (2026-12-06): each test fails on a
# mutant the suite let through


async def test_a_claim_takes_at_most_its_limit(store: Store) -> None:
    """Claims are bounded per worker: 5 due, a claim of 2 takes 2 and leaves 3 due."""
    watches = await registered(store, 5)
    await fan_out(store, watches, claim=0)
    claimed = await store.deliveries.claim(limit=2, lease_s=30)
    assert len(claimed) == 2
    due = await store.redis.zrangebyscore(c.DELIVERY_SCHEDULE_KEY, "-inf", now_ms() + 10_000)
    assert len(due) == 3 and not {cl.watch_id for cl, _ in claimed} & set(due)


async def test_a_cancel_or_an_event_takes_the_watch_off_every_schedule(store: Store) -> None:
    """A cancelled watch leaves the delivery schedule (a claim on it no longer holds: the
    gate drops its attempt) and the expiry schedule; a watch given its event leaves the
    expiry schedule."""
    a, b = await registered(store, 2)
    assert await store.redis.zscore(c.EXPIRY_SCHEDULE_KEY, a.id) is not None
    await fan_out(store, [a])
    assert await store.redis.zscore(c.EXPIRY_SCHEDULE_KEY, a.id) is None
    await store.watches.cancel(a)
    assert await store.deliveries.claim_scores([a.id]) == [None]
    await store.watches.cancel(b)  # (waiting on its video)
    for key in (c.DELIVERY_SCHEDULE_KEY, c.EXPIRY_SCHEDULE_KEY):
        assert await store.redis.zscore(key, b.id) is None


async def test_a_redelivery_runs_the_retry_schedule_from_its_first_step(store: Store) -> None:
    """A redelivered watch's new series starts at the schedule's first step: its 'base' is
    the last attempt before it (the attempt numbers go on from there)."""
    (w,) = await registered(store, 1)
    (made,) = await fan_out(store, [w])
    rec = attempts.record(3, now_ms(), 500, None, 1.0, None)
    await store.deliveries.settle(
        [result(made, "failed", rec, attempt=3, record_no=1, last_error="HTTP 500")]
    )
    assert await store.watches.redeliver(w) == "ok"
    [(claim, _)] = await store.deliveries.claim(limit=5, lease_s=30)
    assert claim.watch is not None and claim.watch.attempt_base == 3


async def test_a_rotation_drops_the_secrets_past_their_grace(store: Store) -> None:
    """A secret whose grace has ended signs no more: the next rotation drops it."""
    (w,) = await registered(store, 1)
    first = await store.watches.rotate_secret(w.id, "sealed-two", 0.05)
    assert first is not None and [s.sealed for s in first] == ["sealed-two", "whsec_secret_0"]
    await asyncio.sleep(0.1)
    second = await store.watches.rotate_secret(w.id, "sealed-three", 60)
    assert second is not None and [s.sealed for s in second] == ["sealed-three", "sealed-two"]


async def test_a_clips_document_gone_since_an_earlier_chunk_is_stored_again(
    store: Store,
) -> None:
    """A fan-out's later chunks do not send the clips document an earlier chunk stored --
    unless it is gone since (purged): then it is sent after all, so no event of the video is
    left without its body."""
    watches = await registered(store, 4)
    event = clips_ready()
    await store.deliveries.finalize(
        "vid_1", event, [w.id for w in watches[:2]], claim=0, lease_s=30
    )
    source = c.SOURCE_KEY.format("vid_1", event.at_ms)
    assert await store.redis.hget(source, "doc")  # type: ignore[misc]
    await store.redis.delete(source)
    n, _ = await store.deliveries.finalize(
        "vid_1", event, [w.id for w in watches[2:]], claim=0, lease_s=30, doc_stored=True
    )
    assert n == 2
    assert await store.redis.hget(source, "doc") == event.clips_doc.decode()  # type: ignore[misc]


async def test_recover_takes_since_in_and_until_out(store: Store) -> None:
    """[since, until): a watch that failed at exactly *until* is not put back; one ms later
    it is."""
    (w,) = await registered(store, 1)
    (made,) = await fan_out(store, [w])
    rec = attempts.record(1, now_ms(), 500, None, 1.0, None)
    await store.deliveries.settle([result(made, "failed", rec, last_error="HTTP 500")])
    at = int(await store.redis.zscore(c.TENANT_FINAL_KEY.format("acme", "failed"), w.id))
    assert await store.watches.recover("acme", at - 1000, at) == (0, False)
    assert await store.watches.recover("acme", at, at + 1) == (1, False)


async def test_recover_goes_batch_by_batch_until_the_range_or_its_time_ends(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven failed watches, batches of two: with no time left after the first batch, a
    call puts two back and says more are left; the next call goes on batch by batch (each
    read in the pipeline of the one before) to the range's end, the index empties, and each
    call closes the one origin's circuit once. (A review: no test ran two batches a call.)"""
    from relay.store import recovery

    watches = await registered(store, 7)
    made = await fan_out(store, watches)
    rec = attempts.record(1, now_ms(), 500, None, 1.0, None)
    await store.deliveries.settle([result(m, "failed", rec, last_error="HTTP 500") for m in made])
    failed = c.TENANT_FINAL_KEY.format("acme", "failed")
    assert await store.redis.zcard(failed) == 7
    closes: list[list[str]] = []
    real_close = store.circuits.close

    async def counted(tags: Any, pipe: Any = None) -> None:
        closes.append(sorted(tags))
        await real_close(tags, pipe)

    monkeypatch.setattr(store.circuits, "close", counted)
    scripts, until = store.watches._recover, now_ms() + 1
    assert await recovery.recover(scripts, store.circuits, "acme", 0, until, 2, 0.0) == (2, True)
    assert await store.redis.zcard(failed) == 5 and len(closes) == 1 and len(closes[0]) == 1
    assert await recovery.recover(scripts, store.circuits, "acme", 0, until, 2) == (5, False)
    assert await store.redis.zcard(failed) == 0
    assert [len(tags) for tags in closes[1:]] == [1, 0, 0]  # three batches, one close
    assert (await store.watches.tenant_counts("acme"))["delivering"] == 7


async def test_a_waiting_watch_shows_its_videos_status_progress_and_change(
    store: Store,
) -> None:
    """A watch waiting on its video shows the status last seen, its progress -- null when
    ScaleReach gave none, not 0 -- and, as updatedAt, when they changed (a mutation
    review: null read as 0 went unnoticed)."""
    (w,) = await registered(store, 1, video="vid_p")
    video = c.VIDEO_KEY.format("vid_p")
    changed = now_ms() + 5_000
    await store.redis.hset(
        video, mapping={"status": "analyzing", "progress": "", "changedAt": changed}
    )
    got = await store.watches.get(w.id)
    assert got is not None and got.status == "watching"
    assert (got.video_status, got.video_progress, got.updated_ms) == ("analyzing", None, changed)
    await store.redis.hset(video, "progress", "40.0")
    got = await store.watches.get(w.id)
    assert got is not None and got.video_progress == 40.0
