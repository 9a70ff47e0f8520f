"""Retention (issue 14, RELAY_RETENTION) in the store: ``store.retention.purge`` (the
``purge`` script) deletes a watch final for longer than the retention with everything it owns
-- no key or member naming it is left, the status counters stay right, a clips document
shared by several watches goes with the last of them -- never touches a watch still
``watching`` or ``delivering``, and two sweepers racing never delete one watch twice.
Each test fails before issue 14: nothing was ever deleted (there was no ``purge``)."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.constants import FINAL_STATUSES
from relay.domain import attempts
from relay.domain.clock import now_ms
from relay.store import Store
from tests.test_store import clips_ready, fan_out, registered, result


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


async def purge_all(store: Store, tenant: str = "acme", retention_ms: int = 0) -> int:
    """Run the sweep's calls for *tenant* until nothing older than the retention is left."""
    deleted = 0
    for status in FINAL_STATUSES:
        while True:
            n, read = await store.retention.purge(
                tenant, status, retention_ms=retention_ms, limit=7
            )
            deleted += n
            if read < 7:
                break
    return deleted


async def naming(redis: Redis, watch_id: str) -> list[str]:
    """Every key whose name, or one of whose members/fields, contains *watch_id*."""
    found = []
    async for key in redis.scan_iter("*"):
        if watch_id in key:
            found.append(key)
            continue
        kind = await redis.type(key)
        if kind == "zset":
            members = await redis.zrange(key, 0, -1)
        elif kind == "hash":
            h = await redis.hgetall(key)  # type: ignore[misc]
            members = [*h, *h.values()]
        elif kind == "set":
            members = list(await redis.smembers(key))  # type: ignore[misc]
        elif kind == "string":
            members = [await redis.get(key) or ""]
        else:
            members = []
        if any(watch_id in m for m in members):
            found.append(key)
    return found


async def delivered(store: Store, watches: list, *, at: int | None = None) -> None:
    made = await fan_out(store, watches, event=clips_ready(at))
    rec = attempts.record(1, now_ms(), 204, None, 1.0, None)
    await store.deliveries.settle([result(m, "ok", rec) for m in made])


async def test_a_purged_watch_leaves_no_key_or_member_naming_it(store: Store) -> None:
    """Delivered, failed, cancelled while waiting, and with an idempotency record: after the
    purge nothing in the keyspace names any of them, and every counter is back to 0."""
    a, b = await registered(store, 2, video="v1")
    (w,) = await registered(store, 1, video="v2")
    await delivered(store, [a])
    (made,) = await fan_out(store, [b])
    rec = attempts.record(1, now_ms(), 500, None, 1.0, "no")
    await store.deliveries.settle([result(made, "failed", rec, last_error="HTTP 500")])
    idem = c.IDEMPOTENCY_KEY.format("acme", "f" * 64)
    await store.redis.set(idem, f'{{"fp":"x","watchId":"{w.id}"}}')
    await store.redis.hset(c.WATCH_KEY.format(w.id), "idem", idem)  # type: ignore[misc]
    await store.watches.cancel(w)
    assert await purge_all(store) == 3
    for watch in (a, b, w):
        assert await naming(store.redis, watch.id) == [], watch.id
        assert await store.watches.get(watch.id) is None
    assert not await store.redis.exists(idem)
    assert set((await store.watches.counts()).values()) == {0}
    assert set((await store.watches.tenant_counts("acme")).values()) == {0}
    assert not [k async for k in store.redis.scan_iter(c.SOURCE_PREFIX + "*")]


async def test_an_idempotency_key_used_again_keeps_its_new_record(store: Store) -> None:
    """A key's record lives 24 h; a watch kept longer may see its key make another watch.
    Purging the old watch leaves the record that names the new one."""
    (old,) = await registered(store, 1, video="v1")
    idem = c.IDEMPOTENCY_KEY.format("acme", "e" * 64)
    await store.redis.hset(c.WATCH_KEY.format(old.id), "idem", idem)  # type: ignore[misc]
    await store.redis.set(idem, '{"fp":"x","watchId":"wat_another"}')
    await store.watches.cancel(old)
    assert await purge_all(store) == 1
    assert await store.redis.get(idem) == '{"fp":"x","watchId":"wat_another"}'


async def test_a_shared_clips_document_goes_with_its_last_watch(store: Store) -> None:
    """Two watches share one fan-out's clips document; purging the first keeps it (the
    second's body is built from it), purging the second deletes it."""
    x, y = await registered(store, 2, video="v1")
    at = now_ms()
    await delivered(store, [x, y], at=at)
    doc = c.SOURCE_KEY.format("v1", at)
    assert await store.redis.hget(doc, "refs") == "2"  # type: ignore[misc]
    await store.watches.cancel(y)  # y moves to the cancelled index, x stays delivered
    n, _ = await store.retention.purge("acme", "delivered", retention_ms=0, limit=10)
    assert n == 1
    assert await store.redis.hget(doc, "refs") == "1"  # type: ignore[misc]
    assert await store.redis.hexists(doc, "doc")  # type: ignore[misc]
    assert (await store.watches.get(y.id)) is not None
    n, _ = await store.retention.purge("acme", "cancelled", retention_ms=0, limit=10)
    assert n == 1 and not await store.redis.exists(doc)


async def test_a_clips_document_purged_mid_fan_out_is_stored_again(store: Store) -> None:
    """Rule: when a retention shorter than a fan-out purges the events of its first chunk
    (and with them the clips document they shared), the next chunk, which counts on the
    document being stored, stores it again: no event of the video is left without its
    body. Fails before: the next chunk only added references to a document that was gone
    (a hash of ``refs`` alone), so its events had no stored body to be built from."""
    ws = await registered(store, 4, video="v1")
    event = clips_ready()
    made, claims = await store.deliveries.finalize("v1", event, [ws[0].id, ws[1].id], claim=2)
    assert made == 2
    await store.deliveries.settle([result(cl, "ok", b'{"r":1}') for cl in claims])
    assert await purge_all(store) == 2
    doc = c.SOURCE_KEY.format("v1", event.at_ms)
    assert not await store.redis.exists(doc)
    made, _ = await store.deliveries.finalize(
        "v1", event, [ws[2].id, ws[3].id], claim=2, doc_stored=True
    )
    assert made == 2
    assert await store.deliveries.clips_doc("v1", event.at_ms) is not None
    assert await store.redis.hget(doc, "refs") == "2"  # type: ignore[misc]
    # a document still there is not sent again: the chunk only adds its references
    w = (await registered(store, 1, video="v1"))[0]
    await store.redis.hset(doc, "doc", "kept")  # type: ignore[misc]
    made, _ = await store.deliveries.finalize("v1", event, [w.id], doc_stored=True)
    assert made == 1 and await store.redis.hget(doc, "doc") == "kept"  # type: ignore[misc]
    assert await store.redis.hget(doc, "refs") == "3"  # type: ignore[misc]


async def test_live_and_recent_watches_are_not_touched(store: Store) -> None:
    """A watch still watching, one still delivering (retrying), one final for less than the
    retention, and one redelivered (its stale final-index member read) stay as they were."""
    waiting, retrying, recent, again = await registered(store, 4)
    made = {m.watch_id: m for m in await fan_out(store, [retrying, recent, again])}
    rec = attempts.record(1, now_ms(), 500, None, 1.0, None)
    await store.deliveries.settle(
        [
            result(made[retrying.id], "retry", rec, next_due_ms=now_ms() + 60_000),
            result(made[recent.id], "ok", rec),
            result(made[again.id], "ok", rec),
        ]
    )
    assert await store.watches.redeliver(again) == "ok"
    # a stale member, as if the index had kept it: the script checks the watch's status
    await store.redis.zadd(c.TENANT_FINAL_KEY.format("acme", "delivered"), {again.id: 1})
    before = await store.watches.counts()
    assert await purge_all(store, retention_ms=3_600_000) == 0
    n, read = await store.retention.purge("acme", "delivered", retention_ms=3_600_000, limit=10)
    assert (n, read) == (0, 0)
    assert await purge_all(store, retention_ms=60_000) == 0  # `again` was read, not deleted
    for w, status in ((waiting, "watching"), (retrying, "delivering"), (again, "delivering")):
        got = await store.watches.get(w.id)
        assert got is not None and got.status == status
    assert (await store.watches.get(recent.id)) is not None
    assert await store.watches.counts() == before


async def test_two_sweepers_racing_delete_each_watch_once(store: Store) -> None:
    """Many concurrent purge calls over 300 delivered watches: 300 deleted in all, each
    counter decremented once (not below zero)."""
    watches = await registered(store, 300, video="v1")
    await delivered(store, watches)
    calls = [
        store.retention.purge("acme", "delivered", retention_ms=0, limit=25) for _ in range(40)
    ]
    got = await asyncio.gather(*calls)
    assert sum(n for n, _ in got) == 300
    assert (await store.watches.counts())["delivered"] == 0
    assert (await store.watches.tenant_counts("acme"))["delivered"] == 0
    assert not [k async for k in store.redis.scan_iter(c.WATCH_PREFIX + "*")]


async def test_an_index_that_held_many_watches_is_compact_again(store: Store) -> None:
    """A tenant index that held 600 watches, back to 10 (the others purged), is a listpack
    of a few hundred bytes again, not a skiplist keeping its peak-sized hash table (Redis
    never shrinks one after ZREMs), with the same members and scores."""
    live = await registered(store, 10, video="live")
    watches = await registered(store, 600, video="v1")
    index = c.TENANT_INDEX_KEY.format("acme")
    assert await store.redis.object("encoding", index) == "skiplist"
    await delivered(store, watches)
    kept = {w.id: await store.redis.zscore(index, w.id) for w in live}
    # the poll schedule held 600 videos once (released since): it is rebuilt too
    polls = c.POLL_SCHEDULE_KEY
    await store.redis.zadd(polls, {f"gone{i}": i for i in range(600)})
    await store.redis.zrem(polls, *(f"gone{i}" for i in range(600)))
    polled = dict(await store.redis.zrange(polls, 0, -1, withscores=True))
    assert polled and await store.redis.object("encoding", polls) == "skiplist"
    assert await purge_all(store) == 600
    assert await store.redis.object("encoding", index) == "listpack"
    assert dict(await store.redis.zrange(index, 0, -1, withscores=True)) == kept
    size = await store.redis.memory_usage(index, samples=0)
    assert size is not None and size < 2_000, size
    assert await store.redis.object("encoding", c.EXPIRY_SCHEDULE_KEY) == "listpack"
    assert await store.redis.object("encoding", polls) == "listpack"
    assert dict(await store.redis.zrange(polls, 0, -1, withscores=True)) == polled


async def test_a_lower_listpack_limit_is_not_rebuilt_on_every_call(store: Store) -> None:
    """Rule: with Redis' zset-max-listpack-entries set below the default (64), an index
    of 100 members (a skiplist, and one again if rebuilt) is not rebuilt by every purge:
    only one of 64 or fewer is. Fails before: the size was fixed at 128, so every call
    rebuilt it (a ZRANGE, a DEL and a ZADD of every member) to no use."""
    redis = store.redis
    await redis.config_set("zset-max-listpack-entries", 64)
    try:
        store = Store(redis)  # (the limit is read once per store)
        watches = await registered(store, 101, video="live")
        await delivered(store, watches[:1])
        index = c.TENANT_INDEX_KEY.format("acme")
        assert await redis.object("encoding", index) == "skiplist"
        await redis.config_resetstat()
        assert await purge_all(store) == 1  # (it read one, so it looks at the sizes)
        assert await redis.zcard(index) == 100
        stats = await redis.info("commandstats")
        assert "cmdstat_zrange" not in stats, stats
    finally:
        await redis.config_set("zset-max-listpack-entries", 128)


async def test_a_full_redis_is_swept_all_the_same(store: Store) -> None:
    """Redis at its maxmemory (noeviction) refuses the sweep's lock (a SET), but the sweep is
    what frees memory: every worker sweeps without it then (each purge decides per watch
    atomically), and the final watches past the retention are deleted. Fails before: the
    refused lock failed every sweep, and a full Redis stayed full."""
    from workers.sweeper import Sweeper

    watches = await registered(store, 40, video="v1")
    await delivered(store, watches)
    await store.redis.config_set("maxmemory-policy", "noeviction")
    await store.redis.config_set("maxmemory", 1)  # below what it holds: writes are refused
    try:
        sweepers = [Sweeper(store, retention_s=0.001) for _ in range(2)]
        assert sum(await asyncio.gather(*(s.sweep() for s in sweepers))) == 40
    finally:
        await store.redis.config_set("maxmemory", 0)
    assert (await store.watches.counts())["delivered"] == 0
    assert not [k async for k in store.redis.scan_iter(c.WATCH_PREFIX + "*")]


async def test_the_listpack_limit_is_asked_again_after_a_failed_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: a read of Redis' listpack limit that fails on the connection (a blip) is
    asked again on the next purge; only a refused CONFIG settles on 128. Fails before:
    any error settled on 128 for the process' life."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    real = store.redis.config_get
    calls = 0

    async def flaky(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("a blip")
        return {"zset-max-listpack-entries": "64"}

    monkeypatch.setattr(store.redis, "config_get", flaky)
    assert await store.retention._compact_size() == (128, 64)
    assert await store.retention._compact_size() == (64, 64)
    assert await store.retention._compact_size() == (64, 64) and calls == 2
    monkeypatch.setattr(store.redis, "config_get", real)


async def test_a_zset_with_a_long_member_is_not_rebuilt_on_every_call(store: Store) -> None:
    """Rule: a schedule that stays a skiplist however rebuilt -- a member longer than
    zset-max-listpack-value (a video id of 100 characters in the poll schedule) -- is not
    rebuilt by every purge (a ZRANGE, a DEL and a ZADD to no use). Fails before: every
    purge call that deleted a watch rebuilt it again (a review, 2026-12-07)."""
    redis = store.redis
    long_id = "v" * 100
    await redis.zadd(c.POLL_SCHEDULE_KEY, {long_id: 1, **{f"x{i}": i for i in range(200)}})
    await redis.zrem(c.POLL_SCHEDULE_KEY, *(f"x{i}" for i in range(200)))
    for i in range(3):
        (w,) = await registered(store, 1, video=f"v{i}")
        await store.watches.cancel(w)
    await redis.config_resetstat()
    assert await purge_all(store) == 3
    stats = await redis.info("commandstats")
    assert "cmdstat_zadd" not in stats, stats  # (no rebuild: it would stay a skiplist)
    assert await redis.zscore(c.POLL_SCHEDULE_KEY, long_id) == 1


# --- bounds and reach (from a mutation review, 2026-12-06: each test fails on a mutant the
# suite let through: a unit mix-up deleting 1000x early, an unbounded purge call, a sweep
# that stops after one batch or one SSCAN page of tenants)


async def test_a_purge_call_deletes_at_most_its_limit(store: Store) -> None:
    """A purge is bounded work per call, whatever the backlog."""
    watches = await registered(store, 20, video="v1")
    await delivered(store, watches)
    assert await store.retention.purge("acme", "delivered", retention_ms=0, limit=7) == (7, 7)
    assert (await store.watches.counts())["delivered"] == 13


async def test_a_watch_younger_than_the_retention_is_kept(store: Store) -> None:
    """Retention is milliseconds in the purge and seconds in the sweeper: a watch final for
    0.3 s survives a retention of a minute in both (a unit mix-up deletes it)."""
    from workers.sweeper import Sweeper

    (w,) = await registered(store, 1, video="v1")
    await delivered(store, [w])
    await asyncio.sleep(0.3)
    assert await store.retention.purge("acme", "delivered", retention_ms=60_000, limit=7) == (0, 0)
    await store.redis.delete(c.SWEEP_LOCK_KEY)
    sweeper = Sweeper(store, retention_s=60)
    assert await sweeper.sweep() == 0
    assert await store.redis.get(c.SWEEP_LOCK_KEY) == sweeper.owner  # (it did sweep)
    assert await store.watches.get(w.id) is not None


async def test_a_sweep_goes_past_one_batch(store: Store) -> None:
    from workers.sweeper import Sweeper

    watches = await registered(store, 60, video="v1")
    await delivered(store, watches)
    await store.redis.delete(c.SWEEP_LOCK_KEY)
    assert await Sweeper(store, retention_s=0.001, batch=25).sweep() == 60


async def test_a_sweep_reaches_every_tenant(store: Store) -> None:
    """More tenants than one SSCAN page brings (a set of <= 128 comes back whole)."""
    from workers.sweeper import Sweeper

    for i in range(150):
        (w,) = await registered(store, 1, video=f"v{i}", tenant=f"t{i:03d}")
        await store.watches.cancel(w)
    await store.redis.delete(c.SWEEP_LOCK_KEY)
    assert await Sweeper(store, retention_s=0.001).sweep() == 150


async def test_a_tenant_with_no_watch_left_is_forgotten(store: Store) -> None:
    """Rule: once a tenant's last watch is purged (its API key removed, say), the sweep
    forgets it: its status counters and its member of the set of tenants go, and later
    sweeps do not visit it. A tenant with a watch left is kept, and a forgotten one that
    registers again is back. Fails before: both were kept for good, and every sweep made
    four purge calls for it."""
    from workers.sweeper import Sweeper

    for w in await registered(store, 3, video="v1", tenant="gone"):
        await store.watches.cancel(w)
    await registered(store, 1, video="v2")  # (a live watch: acme is kept)
    (done,) = await registered(store, 1, video="v3")
    await store.watches.cancel(done)
    await store.redis.delete(c.SWEEP_LOCK_KEY)
    assert await Sweeper(store, retention_s=0.001).sweep() == 4
    assert await store.redis.smembers(c.TENANTS_KEY) == {"acme"}
    assert not await store.redis.exists(c.TENANT_COUNTS_KEY.format("gone"))
    assert (await store.watches.tenant_counts("acme"))["watching"] == 1
    assert [k async for k in store.redis.scan_iter(c.TENANT_PREFIX + "gone*")] == []
    await registered(store, 1, video="v4", tenant="gone")
    assert await store.redis.smembers(c.TENANTS_KEY) == {"acme", "gone"}
    assert (await store.watches.tenant_counts("gone"))["watching"] == 1
    assert await store.retention.forget("acme") is False  # (its live watch keeps it)
    # each guard alone keeps a tenant: an index left while its counters read 0, and a
    # counter not at 0 with no index (counts that drifted are not taken for an empty tenant)
    await store.redis.hset(c.TENANT_COUNTS_KEY.format("acme"), mapping={"watching": 0})
    assert await store.retention.forget("acme") is False
    await store.redis.delete(c.TENANT_INDEX_KEY.format("acme"))
    await store.redis.hset(c.TENANT_COUNTS_KEY.format("acme"), mapping={"watching": 1})
    assert await store.retention.forget("acme") is False
    assert "acme" in await store.redis.smembers(c.TENANTS_KEY)


async def test_a_purge_takes_leftover_members_of_a_watch_too(store: Store) -> None:
    """guarantees.md: a purged watch leaves no member anywhere -- also ones a crash or an
    older release left behind (a stale delivery or expiry schedule member, a waiting entry
    of its video), which the transitions that make a watch final normally remove."""
    (w,) = await registered(store, 1, video="v1")
    await delivered(store, [w])
    await store.redis.zadd(c.DELIVERY_SCHEDULE_KEY, {w.id: now_ms()})
    await store.redis.zadd(c.EXPIRY_SCHEDULE_KEY, {w.id: now_ms()})
    await store.redis.hset(c.VIDEO_WATCHES_KEY.format("v1"), w.id, "acme")  # type: ignore[misc]
    assert await purge_all(store) == 1
    assert await naming(store.redis, w.id) == []


async def test_a_purge_is_not_stopped_part_way_by_an_odd_watch(store: Store) -> None:
    """Redis does not undo a script's writes when it fails part-way, and a purge takes its
    batch out of the index first: a watch whose state lacks its video, whose clips document
    is not a counter, or whose idempotency record is not a string must not stop the call,
    or the rest of the batch would be out of the index and never deleted."""
    watches = await registered(store, 4, video="v1")
    await delivered(store, watches)
    odd = watches[:3]
    await store.redis.hdel(c.WATCH_KEY.format(odd[0].id), "video")  # type: ignore[misc]
    ev = await store.redis.hget(c.WATCH_KEY.format(odd[1].id), "ev")  # type: ignore[misc]
    at = ev.split("|")[1]
    doc = f"{c.SOURCE_PREFIX}v1:{at}"
    await store.redis.hset(doc, "refs", "many")  # type: ignore[misc]
    await store.redis.lpush("odd-record", "x")  # type: ignore[misc]
    await store.redis.hset(c.WATCH_KEY.format(odd[2].id), "idem", "odd-record")  # type: ignore[misc]
    assert await purge_all(store) == 4
    for w in watches:
        assert await store.watches.get(w.id) is None
        assert await store.redis.exists(c.WATCH_KEY.format(w.id)) == 0
    assert await store.redis.zcard(c.TENANT_FINAL_KEY.format("acme", "delivered")) == 0
