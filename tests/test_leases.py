"""Poll claims are leases kept while their work is alive, and only their owner writes
(workers/leases.py, workers/poller.py, relay/store/commands/{save_videos,finalize,
release_video}.lua), on the ScaleReach simulator and a real Redis.

A poller's claim of a video is its score in the poll schedule pushed to a lease deadline,
the claim's token. The poller extends it while it waits for the shared upstream budget and
while it fans a final event out, so no other poller polls the video meanwhile; and each of
its writes is made only while the token is still the video's score, so a poller whose claim
lapsed writes nothing, even after the video was released. Leases are short here (1 s or
less) and the waits several times longer, so a loaded machine makes the tests slower, not
flaky.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from relay import constants as c
from relay.domain.clock import now_ms
from relay.http.upstream import UpstreamClient
from relay.settings import Settings
from relay.store import Store
from tests.conftest import eventually
from tests.test_poller import ANALYZING, CLIPS, Client, Fanout, requests, sim_video, watch
from tests.test_store import clips_ready
from workers.leases import Leases
from workers.poller import Poller
from workers.upstream_budget import UpstreamGate

PollerFactory = Callable[..., Awaitable[tuple[Poller, Fanout]]]
Room = Callable[[int, float], Awaitable[int]]


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


@pytest.fixture
async def make_poller(store: Store, settings: Settings) -> AsyncIterator[PollerFactory]:
    """Start pollers (settings overridable, a room callback, extension on or off)."""
    session = aiohttp.ClientSession()
    pollers: list[Poller] = []

    async def start(
        room: Room | None = None, extend: bool = True, **overrides: Any
    ) -> tuple[Poller, Fanout]:
        s = settings.model_copy(update={"poll_interval": 30.0, **overrides})
        upstream = UpstreamClient(session, s.scalereach_base_url, s.scalereach_api_key, 2.0)
        poller = Poller(store, upstream, UpstreamGate(store.limits, s.upstream_rps), s)
        leases = getattr(poller, "leases", None)  # (None before issue 14)
        if not extend and leases is not None:  # its event loop starved: it extends nothing
            leases.every_s = 3600.0
        fanout = Fanout()
        poller.fan_out.on_events = fanout.offer
        poller.fan_out.on_clips = fanout.keep_clips

        async def take_all(n: int, wait_s: float) -> int:
            return n

        poller.fan_out.room = room or take_all
        poller.start()
        pollers.append(poller)
        return poller, fanout

    yield start
    for poller in pollers:
        await poller.stop(1.0)
    await session.close()


async def test_a_poll_claim_outlives_a_wait_for_the_upstream_budget(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a poller waiting for the shared upstream budget keeps its claims: with a budget
    of 1 request a second, a poller that claimed five videos polls the last one about 4 s
    later, its lease is 1 s, and a second poller runs all along -- yet each video is polled
    exactly once. Fails before issue 14: the claims lapsed while waiting for the budget and
    the second poller (or the first, claiming again) polled those videos a second time."""
    vids = [await sim_video(sim, timeline=ANALYZING) for _ in range(5)]
    for vid in vids:
        await watch(store, vid)
    await make_poller(upstream_rps=1, lease=1.0)
    await asyncio.sleep(0.3)  # the first poller claims all five
    await make_poller(upstream_rps=1, lease=1.0)

    async def all_polled() -> bool:
        return all([await requests(sim, vid) for vid in vids])

    await eventually(all_polled, timeout=20, what="every video polled")
    await asyncio.sleep(2.5)  # time for a second poll of a lapsed claim
    counts = [len(await requests(sim, vid)) for vid in vids]
    assert counts == [1] * 5, counts
    for vid in vids:  # the next poll is a poll interval (30 s) away, not a lease
        score = await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid)
        assert score is not None and score > now_ms() + 20_000


async def test_a_poll_claim_outlives_a_long_fan_out(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a fan-out keeps its video's claim to the end: 300 watches go out in 5 chunks,
    each waiting 0.5 s for its deliverer's room (2.5 s in all, the lease is 1 s), while a
    second poller runs -- the clips are fetched once, and every watch gets one event, from
    the first poller. Fails before issue 14: the claim lapsed mid fan-out, the second poller
    polled the video again (a second clips fetch) and finished the fan-out itself."""
    vid = await sim_video(sim, timeline=[{"status": "completed", "after": 0}], clips=CLIPS)
    watches = await watch(store, vid, 300)

    async def slow_room(n: int, wait_s: float) -> int:
        await asyncio.sleep(0.5)
        return n

    _, first = await make_poller(room=slow_room, lease=1.0)
    await eventually(lambda: requests(sim, vid, "clips"), timeout=10, what="the clips fetch")
    _, second = await make_poller(lease=1.0)
    await eventually(
        lambda: len(first.events) + len(second.events) >= 300, timeout=20, what="300 events"
    )
    await asyncio.sleep(1.5)  # time for a second poller's poll of a lapsed claim
    assert len(await requests(sim, vid, "clips")) == 1
    assert sorted(first.events) == sorted(w.id for w in watches) and not second.events
    assert await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid) is None  # released


async def test_a_stale_poller_writes_nothing_after_its_claim_lapsed(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a poller whose claim lapsed (here: its event loop starved, so it extended
    nothing, while it waited for the upstream budget) writes nothing when its poll finally
    answers -- not the video's state, not its next poll -- even though another poller took
    the video over and released it meanwhile. Fails before issue 14: the stale poller wrote
    the video's hash back after the release (and, before it, over the new owner's claim)."""
    vid = await sim_video(sim, timeline=ANALYZING)
    await watch(store, vid)
    hogging = True

    async def hog() -> None:  # another worker spends every second's budget (1 request)
        while hogging:
            await store.limits.upstream_tokens(1, 1)
            await asyncio.sleep(0.02)

    hog_task = asyncio.create_task(hog())
    try:
        await asyncio.sleep(0.2)
        await make_poller(upstream_rps=1, lease=0.5, extend=False)
        key = c.VIDEO_KEY.format(vid)

        async def claimed() -> bool:
            score = await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid)
            return score is not None and score > now_ms() + 100

        await eventually(claimed, timeout=5, what="the stale poller's claim")
        await asyncio.sleep(1.0)  # its lease (0.5 s) lapses while it waits for the budget
        # another poller takes the video over, then releases it (no watch waits any more)
        await store.redis.zadd(c.POLL_SCHEDULE_KEY, {vid: now_ms() + 60_000})
        await store.redis.hdel(
            c.VIDEO_WATCHES_KEY.format(vid),
            *(  # type: ignore[misc]
                await store.redis.hkeys(c.VIDEO_WATCHES_KEY.format(vid))  # type: ignore[misc]
            ),
        )
        await store.redis.zrem(c.POLL_SCHEDULE_KEY, vid)
        await store.redis.delete(key)
    finally:
        hogging = False
        await hog_task
    await eventually(lambda: requests(sim, vid), timeout=10, what="the stale poll")
    await asyncio.sleep(1.0)  # its write, if it made one
    assert await store.redis.exists(key) == 0
    assert await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid) is None


async def test_writes_under_a_stale_poll_token_change_nothing(store: Store) -> None:
    """Rule: the poll claim's writes (save_videos, finalize with a poll token, release_video)
    are made only while the video's score is the token they carry; with a stale token they
    change nothing and say so. Fails before issue 14: none of them looked at the claim."""
    vid = "vid_stale"
    [w] = await watch(store, vid)
    stale, _ = await store.videos.claim(limit=10, lease_s=0.05)
    await asyncio.sleep(0.1)
    token, [(state, waiting)] = await store.videos.claim(limit=10, lease_s=30)
    assert waiting == 1 and token != stale
    state.status, state.progress = "analyzing", 40.0
    assert await store.videos.save([(state, stale, 1000)]) == {vid}
    assert await store.redis.exists(c.VIDEO_KEY.format(vid)) == 0
    assert await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid) == token
    made, claims = await store.deliveries.finalize(
        vid, clips_ready(), [w.id], claim=1, lease_s=30, poll_token=stale
    )
    assert made == -1 and not claims
    assert (await store.watches.get(w.id)).status == "watching"  # type: ignore[union-attr]
    assert await store.videos.release(vid, stale) == -1
    assert await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid) == token
    # the owner's writes go through
    assert await store.videos.save([(state, token, 60_000)]) == set()
    assert await store.redis.hget(c.VIDEO_KEY.format(vid), "status") == "analyzing"  # type: ignore[misc]


async def test_a_write_refused_while_an_extension_is_in_flight_waits_for_its_reply(
    store: Store,
) -> None:
    """Rule: a write of the claim's owner that Redis refused because an extension's script
    ran just before it (on another connection of the pool, its reply not read yet) is made
    again with the new token, not taken for a lost claim. Fails before the fix: the fan-out
    stopped with 'poll claim lost mid fan-out' while its claim, extended, still held the
    video, so nobody finished it until the lease lapsed (the scale bench's 25 s windows)."""
    vid = "vid_crossed"
    await watch(store, vid)
    # due by Redis' clock (the poll was scheduled by the local, corrected one)
    token, rows = await eventually(lambda: _claim(store), timeout=5, what="the video due")
    [(state, waiting)] = rows
    assert waiting == 1
    await asyncio.sleep(0.01)  # the extension's deadline is a later millisecond than the claim's
    leases = Leases(store.videos, lease_s=30)
    lease = leases.hold(vid, token)
    real = store.videos.extend
    reply = asyncio.Event()

    async def late_reply(video_ids: Any, tok: int, lease_s: float) -> tuple[set[str], int]:
        got = await real(video_ids, tok, lease_s)  # ran in Redis: the score moved
        await reply.wait()  # ... but its reply is read only now
        return got

    store.videos.extend = late_reply  # type: ignore[method-assign]
    extending = asyncio.create_task(leases.extend())
    await eventually(lambda: _score_is_not(store, vid, token), timeout=5, what="the extension ran")
    writing = asyncio.create_task(
        leases.write(
            lease, lambda tok: store.videos.save([(state, tok, 60_000)]), lambda got: vid in got
        )
    )
    await asyncio.sleep(0.2)
    assert not writing.done()  # refused once, it waits for the extension's reply
    reply.set()
    assert await writing == set()  # made again with the new token
    await extending
    assert not lease.lost and lease.token != token
    assert await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid) > lease.token  # (next poll: 60 s)


async def test_an_extension_whose_reply_was_lost_keeps_the_claims_it_extended(
    store: Store,
) -> None:
    """Rule: an extension that ran in Redis but whose reply never came (a read timeout: the
    client does not re-send it) leaves the claims their owner's: the scores, read while the
    old token still holds, are the new tokens, and the next write goes through. A claim
    the extension did not reach keeps its token. Fails before: every claim of the call was
    lost at its next write, and its video waited a lease (review, 2026-12-06)."""
    vids = ["vid_lost_reply", "vid_not_reached"]
    for vid in vids:
        await watch(store, vid)
    await eventually(lambda: _all_due(store, vids), timeout=5, what="the videos due")
    token, rows = await store.videos.claim(limit=10, lease_s=30)
    assert len(rows) == 2
    await asyncio.sleep(0.01)  # the extension's deadline is a later millisecond
    leases = Leases(store.videos, lease_s=30)
    ran, missed = leases.hold(vids[0], token), leases.hold(vids[1], token)
    real = store.videos.extend

    async def timed_out(video_ids: Any, tok: int, lease_s: float) -> tuple[set[str], int]:
        await real([vids[0]], tok, lease_s)  # ran in Redis (for one of them) ...
        raise TimeoutError("Timeout reading from 127.0.0.1")  # ... its reply lost

    store.videos.extend = timed_out  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await leases.extend()
    store.videos.extend = real  # type: ignore[method-assign]
    assert not ran.lost and ran.token != token
    assert ran.token == await store.redis.zscore(c.POLL_SCHEDULE_KEY, vids[0])
    assert not missed.lost and missed.token == token
    for lease in (ran, missed):
        assert (
            await leases.write(
                lease, lambda tok, v=lease.video_id: store.videos.release(v, tok), lambda g: g < 0
            )
            >= 0
        )
        assert not lease.lost


async def _claim(store: Store) -> tuple[int, list[Any]] | None:
    token, rows = await store.videos.claim(limit=10, lease_s=30)
    return (token, rows) if rows else None


async def _all_due(store: Store, vids: list[str]) -> bool:
    scores, now = await store.videos.claim_scores(vids)
    return all(score is not None and score <= now for score in scores)


async def _score_is_not(store: Store, vid: str, token: int) -> bool:
    return await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid) != token


async def test_a_write_refused_under_a_token_that_did_not_change_marks_the_lease_lost(
    store: Store,
) -> None:
    """Another poller holds the video (its token 5, ours 4) and no extension of ours is in
    flight: the refused write is not tried again (it would be, forever), the lease is lost.
    (From a mutation review, 2026-12-06: no test made such a write.)"""
    await store.redis.zadd(c.POLL_SCHEDULE_KEY, {"vid_q": 5})
    leases = Leases(store.videos, lease_s=30)
    lease = leases.hold("vid_q", 4)
    got = await asyncio.wait_for(
        leases.write(lease, lambda t: store.videos.release("vid_q", t), lambda g: g < 0), 2
    )
    assert got == -1 and lease.lost


async def test_a_video_with_one_waiting_watch_is_polled_again_not_released(store: Store) -> None:
    """Releasing a video whose fan-out is done polls it again at once when a watch came in
    meanwhile -- one is enough (a mutant releasing it with one left stranded that watch
    until its expiry)."""
    vid = "vid_one_left"
    await watch(store, vid)
    token, rows = await eventually(lambda: _claim(store), timeout=5, what="the video due")
    [(_, waiting)] = rows
    assert waiting == 1  # the one watch that waits on it
    before = now_ms()
    assert await store.videos.release(vid, token) == 1
    score = await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid)
    assert score is not None and score <= now_ms() + 1000 and score >= before - 1000
    await store.redis.hdel(
        c.VIDEO_WATCHES_KEY.format(vid), *await store.redis.hkeys(c.VIDEO_WATCHES_KEY.format(vid))
    )  # type: ignore[misc]
    token, _ = await eventually(lambda: _claim(store), timeout=5, what="the video due again")
    assert await store.videos.release(vid, token) == 0  # none left: released
    assert await store.redis.zscore(c.POLL_SCHEDULE_KEY, vid) is None


async def test_a_lost_extension_reply_after_the_lease_lapsed_adopts_no_other_claim(
    store: Store,
) -> None:
    """An extension that failed without a reply is reconciled from the scores; once the
    claim's token is past (by Redis' clock), a score that moved may be another poller's
    claim of the lapsed video, so the lease is lost -- it is not taken for our own
    extension (two pollers would then fan the video out). (From a mutation review.)"""
    vid = "vid_taken_over"
    ours = now_ms() - 1_000  # lapsed
    await store.redis.zadd(c.POLL_SCHEDULE_KEY, {vid: now_ms() + 30_000})  # another's claim
    leases = Leases(store.videos, lease_s=30)
    lease = leases.hold(vid, ours)

    async def no_reply(*_: Any) -> tuple[set[str], int]:
        raise TimeoutError("no reply")

    store.videos.extend = no_reply  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await leases.extend()
    assert lease.lost and lease.token == ours


class ReplyDropper:
    """A TCP proxy on loopback in front of Redis that, when armed, forwards a command and
    then drops its connection instead of the reply: the command ran, its reply is lost."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, reply: bool) -> None:
            try:
                while data := await src.read(65536):
                    if reply and self.armed:
                        self.armed = False
                        self.dropped += 1
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
                up_w.close()

        await asyncio.gather(pump(reader, up_w, False), pump(up_r, writer, True))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_an_extension_sent_again_after_its_reply_was_dropped_keeps_its_claims(
    redis_server: Any,
) -> None:
    """The connection drops after Redis ran an extension and before its reply came: the
    client sends it again on a new connection, where it finds the claims extended already
    and answers none held. The poller keeps them, at the scores the first run wrote.
    Fails before: every claim of the call was marked lost, its poll results thrown away
    and its fan-outs stopped, the videos idle until the lease ran out (review,
    2026-12-07)."""
    from relay.store.connection import connect

    proxy = ReplyDropper(redis_server.port)
    client = connect(await proxy.start())
    try:
        videos = Store(client).videos
        token = now_ms() + 30_000
        await client.zadd(c.POLL_SCHEDULE_KEY, {"vid_a": token, "vid_b": token})
        leases = Leases(videos, lease_s=30)
        held = [leases.hold(vid, token) for vid in ("vid_a", "vid_b")]
        await leases.extend()  # (the script is loaded: the next call runs it at once)
        first = held[0].token
        assert first > token and not any(le.lost for le in held)
        await asyncio.sleep(0.01)
        proxy.armed = True
        await leases.extend()
        assert proxy.dropped == 1
        scores = [await client.zscore(c.POLL_SCHEDULE_KEY, le.video_id) for le in held]
        assert not any(le.lost for le in held), scores
        assert [le.token for le in held] == scores and scores[0] > first
    finally:
        await client.aclose()
        await proxy.stop()
