"""The store's claim and fan-out primitives (relay/store/, its commands/*.lua) on a real Redis.

The worker tests drive these end to end; here each rule is pinned on its own: a delivery
held in memory is claimed exactly when a read-back claim would claim it, a claim's deadline is
its token, and event creation is idempotent.
"""

from __future__ import annotations

import asyncio
import dataclasses

import orjson
import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.domain import events
from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.delivery import AttemptResult, NewEvent
from relay.domain.watch import SecretEntry, Watch
from relay.store import SCRIPT_BATCH, Store

CLIPS = [
    {"id": "a", "score": 90, "status": "completed", "downloadUrl": "https://cdn/a"},
    {"id": "b", "score": 40, "status": "completed", "downloadUrl": "https://cdn/b"},
]


async def registered(store: Store, n: int, video: str = "vid_1") -> list[Watch]:
    """*n* watches of *video*, stored as the API stores them."""
    watches = [
        Watch(
            id=f"wat_{video}_{i:04d}",
            tenant="acme",
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


async def fan_out(store: Store, watches: list[Watch]) -> tuple[list[tuple[Watch, bytes]], int]:
    """Create every watch's clips.ready as the poller does; the created ones, as held in
    memory by the deliverer after an offer."""
    specs = await store.watches.specs([w.id for w in watches])
    by_id = {w.id: w for w in specs}
    clips = ClipSet(CLIPS)
    held: list[tuple[Watch, bytes]] = []
    at = now_ms()
    for start in range(0, len(specs), 200):
        made = [events.clips_ready(w, clips, at, at) for w in specs[start : start + 200]]
        created, at = await store.deliveries.finalize(watches[0].video_id, made)
        for ev in created:
            w = by_id[ev.watch_id]
            w.begin_event(ev, at)
            held.append((w, ev.body))
    return held, at


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


async def test_finalize_returns_what_it_created_and_is_idempotent(store: Store) -> None:
    watches = await registered(store, 5)
    held, _ = await fan_out(store, watches)
    assert len(held) == 5
    again, _ = await fan_out(store, watches)  # a second worker, or a re-run after a crash
    assert again == []
    counts = await store.watches.counts()
    assert counts["delivering"] == 5 and counts["watching"] == 0
    stored = await store.watches.get(watches[0].id)
    assert stored is not None and stored.status == "delivering"
    assert stored.event_id == held[0][0].event_id == events.event_id(watches[0].id, "clips.ready")


async def test_finalize_refuses_events_that_are_not_alike(store: Store) -> None:
    a = NewEvent("wat_a", "evt_a", "clips.ready", b"{}", "completed", 1)
    b = NewEvent("wat_b", "evt_b", "video.failed", b"{}", "failed")
    with pytest.raises(ValueError, match="alike"):
        await store.deliveries.finalize("vid_1", [a, b])
    with pytest.raises(ValueError, match="at most"):
        await store.deliveries.finalize("vid_1", [a] * (SCRIPT_BATCH + 1))


async def test_begin_event_matches_what_finalize_stored(store: Store) -> None:
    """A watch handed over in memory looks exactly like the same watch read back."""
    held, _ = await fan_out(store, await registered(store, 1))
    mine, body = held[0]
    [claim] = await store.deliveries.claim(limit=10, lease_s=30)
    read, read_body = claim.watch, claim.body
    assert read is not None and read_body == body
    for name in ("id", "status", "event_id", "event_type", "attempt", "final_ms", "clips_ms"):
        assert getattr(mine, name) == getattr(read, name), name


async def test_claim_known_claims_what_a_read_back_claim_would(store: Store) -> None:
    watches = await registered(store, 6)
    held, _ = await fan_out(store, watches)
    w_taken, w_cancelled, w_rotated = held[0][0], held[1][0], held[2][0]
    # another worker claims one (its score is its lease deadline now)
    await store.redis.zadd(c.DELIVERY_SCHEDULE_KEY, {w_taken.id: now_ms() + 30_000})
    # one is cancelled, one has its secret rotated since the offer
    await store.watches.cancel(w_cancelled)
    await store.watches.rotate_secret(w_rotated.id, "whsec_new_one", 60)

    claimed = await store.deliveries.claim_known(held, lease_s=30)
    got = {cl.watch_id: (cl.watch, cl.body, cl.deadline_ms) for cl in claimed}
    assert set(got) == {w.id for w, _ in held} - {w_taken.id, w_cancelled.id}
    w, _, deadline = got[w_rotated.id]
    assert w is not None and [s.sealed for s in w.secrets] == ["whsec_new_one", "whsec_secret_2"]
    # claimed as a read-back claim claims: the score is the lease deadline, nothing is due
    assert await store.deliveries.claim(limit=10, lease_s=30) == []
    assert await store.redis.zscore(c.DELIVERY_SCHEDULE_KEY, w_rotated.id) == deadline
    # and claiming again finds nothing due
    assert await store.deliveries.claim_known(held, lease_s=30) == []


async def test_claim_known_skips_a_watch_on_another_event(store: Store) -> None:
    held, _ = await fan_out(store, await registered(store, 1))
    w, body = held[0]
    stale = dataclasses.replace(w, event_id="evt_" + "x" * 24)
    assert await store.deliveries.claim_known([(stale, body)], lease_s=30) == []
    assert len(await store.deliveries.claim_known([(w, body)], lease_s=30)) == 1


async def test_a_claims_deadline_is_its_token(store: Store) -> None:
    held, _ = await fan_out(store, await registered(store, 3))
    claimed = await store.deliveries.claim_known(held, lease_s=30)
    ids = [cl.watch_id for cl in claimed]
    deadline = claimed[0].deadline_ms
    ours, renewed = await store.deliveries.extend(ids, deadline, 60)
    assert ours == set(ids) and renewed > deadline
    # the old token no longer works: somebody holding it lost the claim
    lost, _ = await store.deliveries.extend(ids, deadline, 60)
    assert lost == set()
    # handing back (lease 0) makes them due at once, for any worker
    back, _ = await store.deliveries.extend(ids[:2], renewed, 0)
    assert back == set(ids[:2])
    again = await store.deliveries.claim(limit=10, lease_s=30)
    assert sorted(cl.watch_id for cl in again) == sorted(ids[:2])


async def test_settle_in_several_script_calls_moves_every_watch_on(store: Store) -> None:
    n = SCRIPT_BATCH + 5
    held, _ = await fan_out(store, await registered(store, n, video="big"))
    later = now_ms() + 60_000
    results = [
        AttemptResult(
            w.id,
            w.event_id,
            "retry" if i % 2 else "ok",
            {"eventId": w.event_id, "attempt": 1, "statusCode": 500 if i % 2 else 204},
            1,
            later if i % 2 else 0,
            "HTTP 500" if i % 2 else "",
        )
        for i, (w, _) in enumerate(held)
    ]
    statuses = await store.deliveries.settle(results)
    assert statuses == ["delivering" if i % 2 else "delivered" for i in range(n)]
    counts = await store.watches.counts()
    assert counts["delivered"] == (n + 1) // 2 and counts["delivering"] == n // 2
    scheduled = dict(await store.redis.zrange(c.DELIVERY_SCHEDULE_KEY, 0, -1, withscores=True))
    assert set(scheduled) == {w.id for i, (w, _) in enumerate(held) if i % 2}
    assert set(scheduled.values()) == {later}
    retried = await store.watches.get(held[1][0].id)
    assert retried is not None and retried.last_error == "HTTP 500" and retried.attempt == 1
    record = await store.watches.attempts(held[0][0].id)
    assert record == [orjson.loads(orjson.dumps(results[0].record))]


async def test_settle_keeps_the_newest_attempt_records(store: Store) -> None:
    held, _ = await fan_out(store, await registered(store, 1))
    w = held[0][0]
    for n in range(c.MAX_ATTEMPTS_KEPT + 3):
        result = AttemptResult(w.id, w.event_id, "retry", {"n": n}, n + 1, now_ms() + 1000)
        await store.deliveries.settle([result])
    kept = await store.watches.attempts(w.id)
    assert len(kept) == c.MAX_ATTEMPTS_KEPT
    assert kept[0] == {"n": 3} and kept[-1] == {"n": c.MAX_ATTEMPTS_KEPT + 2}
