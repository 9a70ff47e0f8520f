"""The poller (workers/poller.py) against the ScaleReach simulator and a real Redis.

A poller runs on its own (no deliverer): watches are stored as the API stores them, the
events a fan-out creates are what the poller hands to ``on_events``, and what reached the
upstream is the simulator's request log (each request with the simulator's clock, the same
wall clock as the poller's). Each test pins one rule; its docstring names it. Time rules are
checked on the log: a gap between two polls can only be longer than the rule's, so a loaded
machine makes the tests slower, not flaky.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from relay import constants as c
from relay.domain import events
from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.delivery import DeliveryClaim
from relay.domain.origin import url_origin_tag
from relay.domain.watch import SecretEntry, Watch
from relay.http.upstream import UpstreamClient
from relay.settings import Settings
from relay.store import Store
from relay.store.codec import fan_out_order
from tests.conftest import eventually
from workers.fanout import SCAN_AHEAD, FanOutOrder
from workers.finals import ROOM_WAIT_S, FanOut
from workers.poller import Poller
from workers.upstream_budget import UpstreamGate

Client = TestClient[web.Request, web.Application]
INTERVAL = 0.1


class Fanout:
    """What a poller handed on (it claims every event it creates here): every created
    event's watch, with when the event was made, and the clips the bodies are built from."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[Watch, int]] = {}
        self.clips: dict[str, ClipSet] = {}

    def offer(self, claims: Sequence[DeliveryClaim]) -> None:
        for claim in claims:
            watch = claim.watch
            assert watch is not None and claim.deadline_ms
            assert watch.id not in self.events, f"two events for {watch.id}"
            self.events[watch.id] = (watch, watch.final_ms or 0)

    def keep_clips(self, video_id: str, fetched_ms: int, clips: ClipSet) -> None:
        self.clips[video_id] = clips

    def body(self, watch_id: str) -> dict[str, Any]:
        watch = self.events[watch_id][0]
        data: dict[str, Any] = orjson.loads(events.body(watch, self.clips.get(watch.video_id)))
        return data


async def take_all(n: int, wait_s: float) -> int:
    return n


PollerFactory = Callable[..., Awaitable[tuple[Poller, Fanout]]]


@pytest.fixture
def store(redis: Redis) -> Store:
    return Store(redis)


@pytest.fixture
async def make_poller(store: Store, settings: Settings) -> AsyncIterator[PollerFactory]:
    """Start pollers (settings overridable) on the simulator; stopped after the test."""
    session = aiohttp.ClientSession()
    pollers: list[Poller] = []

    async def start(**overrides: Any) -> tuple[Poller, Fanout]:
        s = settings.model_copy(update={"poll_interval": INTERVAL, **overrides})
        upstream = UpstreamClient(
            session, s.scalereach_base_url, s.scalereach_api_key, s.upstream_timeout
        )
        poller = Poller(store, upstream, UpstreamGate(store.limits, s.upstream_rps), s)
        fanout = Fanout()
        poller.fan_out.on_events = fanout.offer
        poller.fan_out.on_clips = fanout.keep_clips
        poller.fan_out.room = take_all
        poller.start()
        pollers.append(poller)
        return poller, fanout

    yield start
    for poller in pollers:
        await poller.stop(1.0)
    await session.close()


async def sim_video(sim: Client, **spec: Any) -> str:
    resp = await sim.post("/_sim/videos", json=spec)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["id"])


async def fault(sim: Client, **spec: Any) -> None:
    resp = await sim.post("/_sim/faults", json=spec)
    assert resp.status == 201, await resp.text()


async def requests(sim: Client, video_id: str, path: str = "status") -> list[tuple[float, int]]:
    """(simulator time, HTTP status) of each request the upstream got for the video."""
    stats = await (await sim.get("/_sim/stats")).json()
    return [(at, status) for at, p, vid, status in stats["log"] if vid == video_id and p == path]


async def watch(store: Store, video_id: str, n: int = 1, **spec: Any) -> list[Watch]:
    """Register *n* watches of the video as the API does (schedules its poll)."""
    watches = []
    for _ in range(n):
        w = Watch(
            id=f"wat_{video_id}_{len(watches)}_{time.monotonic_ns()}",
            tenant="acme",
            video_id=video_id,
            callback_url="http://127.0.0.1:9/hook",
            secrets=[SecretEntry("whsec_unused")],
            created_ms=now_ms(),
            **spec,
        )
        await store.watches.create(w, expire_after_s=3600)
        watches.append(w)
    return watches


def gaps(log: list[tuple[float, int]]) -> list[float]:
    return [b[0] - a[0] for a, b in itertools.pairwise(log)]


async def scheduled(store: Store, video_id: str) -> float | None:
    got: float | None = await store.redis.zscore(c.POLL_SCHEDULE_KEY, video_id)
    return got


ANALYZING = [{"status": "analyzing", "progress": 40, "after": 0}]


async def test_one_poll_per_video_per_interval_however_many_watches(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a video is polled once per RELAY_POLL_INTERVAL however many watches wait on it
    -- also while more register (a new watch does not pull its video's poll forward) -- and
    a non-final status schedules the next poll one interval on."""
    interval = 0.2
    vid = await sim_video(sim, timeline=ANALYZING)
    await make_poller(poll_interval=interval)
    await watch(store, vid, 5)
    await eventually(lambda: requests(sim, vid), what="the first poll")
    for _ in range(12):  # a dozen more watches over a few intervals
        await watch(store, vid)
        await asyncio.sleep(0.05)
    log = await eventually(lambda: _at_least(requests(sim, vid), 5), timeout=10, what="five polls")
    assert min(gaps(log)) >= interval - 0.002, gaps(log)
    assert await store.redis.hlen(c.VIDEO_WATCHES_KEY.format(vid)) == 17  # type: ignore[misc]
    assert await requests(sim, vid, "clips") == []


async def _at_least(log: Awaitable[list[tuple[float, int]]], n: int) -> list[tuple[float, int]]:
    got = await log
    return got if len(got) >= n else []


async def test_an_unknown_status_counts_as_still_processing(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a status the relay does not know is not final: the video stays polled and its
    watches keep waiting (showing that status) until a final one comes."""
    vid = await sim_video(sim, timeline=[{"status": "transcoding_v2", "progress": 30}])
    watches = await watch(store, vid, 2)
    _, fanout = await make_poller()
    await eventually(lambda: _at_least(requests(sim, vid), 3), what="three polls")
    assert fanout.events == {}
    for w in watches:
        got = await store.watches.get(w.id)
        assert got is not None
        assert (got.status, got.video_status) == ("watching", "transcoding_v2")
    assert await scheduled(store, vid) is not None
    await sim.post(f"/_sim/videos/{vid}/status", json={"status": "completed"})
    await eventually(lambda: len(fanout.events) == 2, what="clips.ready after completed")


async def test_a_video_waiting_for_its_config_is_polled_once_a_minute(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """``pending_config`` does not move on its own (UPSTREAM.md): polled every
    RELAY_POLL_INTERVAL it cost 2,160 requests of the shared budget over a watch's 6 h. It
    is polled again after a minute (its owner may configure it); other statuses after the
    interval."""
    waiting = await sim_video(sim, timeline=[{"status": "pending_config", "after": 0}])
    moving = await sim_video(sim, timeline=ANALYZING)
    await watch(store, waiting)
    await watch(store, moving)
    await make_poller()
    await eventually(lambda: _at_least(requests(sim, moving), 2), what="two polls")
    assert len(await requests(sim, waiting)) == 1
    due = await scheduled(store, waiting)
    assert due is not None and due >= now_ms() + 55_000, due


async def test_a_poll_that_sees_a_change_dates_it_on_the_waiting_watches(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """A watch still ``watching`` shows as ``updatedAt`` when its video's status or progress
    last changed (the video hash's ``changedAt``, written with the poll's result): a
    mutation review found it never written went unnoticed."""
    vid = await sim_video(sim, timeline=ANALYZING)
    (w,) = await watch(store, vid)
    await make_poller()
    await eventually(lambda: _at_least(requests(sim, vid), 1), what="a poll")

    async def seen() -> bool:
        got = await store.watches.get(w.id)
        return got is not None and got.video_status == "analyzing"

    await eventually(seen, what="the poll's result written")
    changed = await store.redis.hget(c.VIDEO_KEY.format(vid), "changedAt")
    got = await store.watches.get(w.id)
    assert got is not None and changed and got.updated_ms == int(changed) >= w.created_ms
    assert got.video_progress == 40.0


async def test_a_watch_joining_a_polled_video_shows_the_status_seen(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule (SPEC: a watch's ``videoStatus`` is the "last upstream status seen"): a watch
    registered on a video that is already being polled shows the status the next poll sees,
    changed or not."""
    vid = await sim_video(sim, timeline=ANALYZING)
    await make_poller()
    (first,) = await watch(store, vid)
    await eventually(lambda: _video_status(store, first.id), what="the first watch's status")
    (late,) = await watch(store, vid)
    polls = len(await requests(sim, vid))
    await eventually(lambda: _at_least(requests(sim, vid), polls + 2), what="two more polls")
    assert await _video_status(store, late.id) == "analyzing"


async def _video_status(store: Store, watch_id: str) -> str | None:
    got = await store.watches.get(watch_id)
    return None if got is None else got.video_status


CLIPS = [{"score": s, "title": f"clip {s}"} for s in (95, 85, 70, 50, 20)]


async def test_completed_fetches_the_clips_once_for_every_watch(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: ``completed`` moves the video to the render phase: its clips are fetched once
    for all its watches, each watch gets ``clips.ready`` with the clips its own filters pass,
    and the video leaves the poll schedule."""
    vid = await sim_video(
        sim,
        timeline=[*ANALYZING, {"status": "completed", "after": 0.3}],
        clips=CLIPS,
    )
    _, fanout = await make_poller()
    watches = [w for i in range(10) for w in await watch(store, vid, 2, min_score=i * 10.0)]
    await eventually(lambda: len(fanout.events) == 20, timeout=10, what="20 events")
    for w in watches:
        body = fanout.body(w.id)
        assert body["type"] == "clips.ready"
        assert [clip["score"] for clip in body["data"]["clips"]] == [
            s for s in (95, 85, 70, 50, 20) if s >= w.min_score
        ]
    assert len(await requests(sim, vid, "clips")) == 1
    assert await scheduled(store, vid) is None
    polls = len(await requests(sim, vid))
    await asyncio.sleep(4 * INTERVAL)
    assert len(await requests(sim, vid)) == polls  # polling stopped
    assert len(await requests(sim, vid, "clips")) == 1


async def test_a_fan_out_read_a_page_at_a_time_gives_every_watch_one_event(
    store: Store, sim: Client, make_poller: PollerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule: a fan-out starts on the first page of the video's waiting watches while the
    others are read, then takes in their whole order: every watch gets its event once,
    whatever page it was on, and the video leaves the poll schedule."""
    monkeypatch.setattr("relay.store.videos.SCAN_COUNT", 40)  # about 15 pages
    vid = await sim_video(sim, timeline=ANALYZING, clips=CLIPS)
    ids = []
    for i in range(600):
        w = Watch(
            id=f"wat_{vid}_{i}",
            tenant="acme",
            video_id=vid,
            callback_url=f"http://127.0.0.{1 + i % 3}:9/hook",  # three origins
            secrets=[SecretEntry("whsec_unused")],
            created_ms=now_ms(),
        )
        await store.watches.create(w, expire_after_s=3600)
        ids.append(w.id)
    _, fanout = await make_poller()
    await eventually(lambda: requests(sim, vid), what="the first poll")
    await sim.post(f"/_sim/videos/{vid}/status", json={"status": "completed"})
    await eventually(lambda: len(fanout.events) == 600, timeout=20, what="600 events")
    assert sorted(fanout.events) == sorted(ids)  # (Fanout.offer: never two for one)
    await eventually(lambda: _unscheduled(store, vid), what="the video released")
    assert len(await requests(sim, vid, "clips")) == 1  # one fan-out made them all


async def test_watches_of_an_origin_that_never_answers_wait_then_go_and_others_go_first(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: while an origin has had its wave and no answer, its other watches wait and the
    answering origins' events are made first; waiting does not lose them: after a moment
    they get their events too, each once."""
    vid = await sim_video(sim, timeline=ANALYZING, clips=CLIPS)
    for i in range(300):
        w = Watch(
            id=f"wat_{vid}_{i}",
            tenant="acme",
            video_id=vid,
            callback_url=f"http://127.0.0.{1 + i % 2}:9/hook",  # .1 answers, .2 never does
            secrets=[SecretEntry("whsec_unused")],
            created_ms=now_ms(),
        )
        await store.watches.create(w, expire_after_s=3600)
    asked: set[str] = set()

    def origin_room(tag: str) -> int | None:
        asked.add(tag)
        return None if tag == url_origin_tag("http://127.0.0.1:9/") else 0

    poller, fanout = await make_poller()
    poller.fan_out.origin_room = origin_room
    await eventually(lambda: requests(sim, vid), what="the first poll")
    await sim.post(f"/_sim/videos/{vid}/status", json={"status": "completed"})
    await eventually(lambda: len(fanout.events) == 300, timeout=20, what="300 events")
    made = [watch.callback_url for watch, _ in fanout.events.values()]
    assert len(asked) == 2
    assert "127.0.0.2" not in "".join(made[:150])  # every answering watch first


async def test_a_release_that_fails_leaves_the_last_chunks_events_with_the_deliverer(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: the last chunk's claimed events reach this worker's deliverer before the
    video's release is written; a release that fails (a Redis timeout) does not leave
    them waiting out their lease. Fails before: the release came first, and its error
    ended the fan-out before the offer (review, 2026-12-06)."""
    vid = await sim_video(sim, timeline=ANALYZING, clips=CLIPS)
    ids = {w.id for w in await watch(store, vid, n=5)}
    _, fanout = await make_poller()
    release = store.videos.release
    failed = 0

    async def times_out(video_id: str, token: int) -> int:
        nonlocal failed
        if not failed:
            failed += 1
            raise TimeoutError("Timeout reading from 127.0.0.1")
        return await release(video_id, token)

    store.videos.release = times_out  # type: ignore[method-assign]
    await eventually(lambda: requests(sim, vid), what="the first poll")
    await sim.post(f"/_sim/videos/{vid}/status", json={"status": "completed"})
    await eventually(lambda: set(fanout.events) == ids, timeout=5, what="the 5 events")
    assert failed == 1


async def test_a_save_that_fails_does_not_hold_back_the_batchs_fan_outs(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a batch's poll results are written in one call; when that call fails (a
    Redis timeout), the videos of the batch that turned final still fan out (their
    upstream requests are made). Fails before: the error ended the batch, and the final
    video waited a lease to be polled again (review, 2026-12-06)."""
    busy = await sim_video(sim, timeline=ANALYZING)
    done = await sim_video(sim, timeline=ANALYZING, clips=CLIPS)
    await watch(store, busy)
    ids = {w.id for w in await watch(store, done, n=3)}
    _, fanout = await make_poller()
    await eventually(lambda: requests(sim, done), what="the first poll")

    async def times_out(*args: Any, **kwargs: Any) -> set[str]:
        raise TimeoutError("Timeout reading from 127.0.0.1")

    store.videos.save = times_out  # type: ignore[method-assign]
    await sim.post(f"/_sim/videos/{done}/status", json={"status": "completed"})
    await eventually(lambda: set(fanout.events) == ids, timeout=5, what="the 3 events")


async def _unscheduled(store: Store, video_id: str) -> bool:
    return await scheduled(store, video_id) is None


async def test_rendering_clips_hold_the_event_until_rendered_or_render_timeout(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: after ``completed``, a clip some watch's filters pass that is still rendering
    holds the event back (a clip no filter passes does not), until it renders or until
    RELAY_RENDER_TIMEOUT after ``completed``; then the event leaves without it."""
    render_timeout = 2.5
    completes = [*ANALYZING, {"status": "completed", "after": 0.1}]
    began = time.time()
    soon = await sim_video(
        sim,
        timeline=completes,
        clips=[
            {"score": 90, "renderAfter": 0.6},
            {"score": 85},
            {"score": 10, "renderAfter": 60},  # no watch wants it
        ],
    )
    never = await sim_video(sim, timeline=completes, clips=[{"score": 90, "renderAfter": 60}])
    _, fanout = await make_poller(render_timeout=render_timeout)
    (w_soon,) = await watch(store, soon, min_score=80)
    (w_never,) = await watch(store, never, min_score=80)

    await eventually(lambda: w_soon.id in fanout.events, timeout=10, what="the rendered clips")
    clips = fanout.body(w_soon.id)["data"]["clips"]
    assert [clip["score"] for clip in clips] == [90, 85]
    assert all(clip["status"] == "completed" and clip["downloadUrl"] for clip in clips)
    # ...not held back until the render timeout by the clip nobody wants
    assert fanout.events[w_soon.id][1] < (began + 0.1 + render_timeout) * 1000

    await eventually(lambda: w_never.id in fanout.events, timeout=10, what="the render timeout")
    assert fanout.body(w_never.id)["data"]["clips"] == []
    assert fanout.events[w_never.id][1] >= (began + 0.1 + render_timeout) * 1000
    assert len(await requests(sim, never, "clips")) >= 2  # looked again meanwhile


async def test_a_watch_waits_only_for_the_clips_its_own_filters_pass(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule (SPEC: ``clips.ready`` once every clip passing *the watch's* filters is final):
    a clip still rendering holds back only the watches whose filters pass it. The others on
    the same video -- another tenant's, say -- get their events as soon as their own clips
    are final; the held one gets its own when the clip renders, and then the video is
    released."""
    completes = [*ANALYZING, {"status": "completed", "after": 0.1}]
    began = time.time()
    clips = [{"score": 90, "renderAfter": 0.3}, {"score": 20, "renderAfter": 2.5}]
    vid = await sim_video(sim, timeline=completes, clips=clips)
    _, fanout = await make_poller(render_timeout=60)
    strict = await watch(store, vid, n=3, min_score=80)
    (lax,) = await watch(store, vid, min_score=0)

    await eventually(
        lambda: all(w.id in fanout.events for w in strict), timeout=10, what="the strict events"
    )
    assert time.time() < began + 2.5 and lax.id not in fanout.events  # (the 20 renders)
    assert [clip["score"] for clip in fanout.body(strict[0].id)["data"]["clips"]] == [90]
    assert await scheduled(store, vid) is not None  # still polled for the lax watch
    await eventually(lambda: lax.id in fanout.events, timeout=10, what="the lax watch's event")
    assert [clip["score"] for clip in fanout.body(lax.id)["data"]["clips"]] == [90, 20]
    await eventually(lambda: _unscheduled(store, vid), what="the video released")


async def test_the_render_phase_is_stored_before_an_early_fan_out_runs(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: the poll that finds the video ``completed`` and fans out to some watches early
    writes the render phase and when it turned completed before that fan-out: a claim lost
    or a worker killed during it must not make the next owner see ``completed`` anew (and
    restart the render timeout of the watches still waiting)."""
    completes = [*ANALYZING, {"status": "completed", "after": 0.1}]
    clips = [{"score": 90}, {"score": 20, "renderAfter": 60}]
    vid = await sim_video(sim, timeline=completes, clips=clips)
    poller, fanout = await make_poller(render_timeout=60)
    in_fan_out, go_on = asyncio.Event(), asyncio.Event()

    async def held_room(n: int, wait_s: float) -> int:
        in_fan_out.set()
        await go_on.wait()
        return n

    poller.fan_out.room = held_room
    (strict,) = await watch(store, vid, min_score=80)
    await watch(store, vid, min_score=0)
    await asyncio.wait_for(in_fan_out.wait(), 10)
    phase, completed = await store.redis.hmget(  # type: ignore[misc]
        c.VIDEO_KEY.format(vid), ["phase", "completedAt"]
    )
    assert phase == "render" and int(completed) > 0
    go_on.set()
    await eventually(lambda: strict.id in fanout.events, timeout=10, what="the early event")


async def test_the_render_timeout_counts_from_completed_across_early_events(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: the events made early for some watches do not restart the render timeout of
    the others: it still counts from ``completed``."""
    render_timeout = 2.0
    completes = [*ANALYZING, {"status": "completed", "after": 0.1}]
    began = time.time()
    clips = [{"score": 90, "renderAfter": 1.5}, {"score": 20, "renderAfter": 60}]
    vid = await sim_video(sim, timeline=completes, clips=clips)
    _, fanout = await make_poller(render_timeout=render_timeout)
    (strict,) = await watch(store, vid, min_score=80)
    (lax,) = await watch(store, vid, min_score=0)
    await eventually(lambda: lax.id in fanout.events, timeout=10, what="the render timeout")
    assert fanout.events[strict.id][1] < fanout.events[lax.id][1]
    assert [clip["score"] for clip in fanout.body(lax.id)["data"]["clips"]] == [90]
    # from completed (~0.1 s): ~2.1 s; restarted at the early events (~1.6 s) it would be 3.6
    assert fanout.events[lax.id][1] < (began + 3.2) * 1000


async def test_failed_error_and_expired_give_every_watch_video_failed(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: ``failed``, ``error`` and ``expired`` are final: every watch of the video gets
    ``video.failed`` with that status and the upstream's error, and polling stops."""
    _, fanout = await make_poller()
    videos = {}
    for status in ("failed", "error", "expired"):
        vid = await sim_video(
            sim, timeline=[*ANALYZING, {"status": status, "after": 0.1}], errorMessage=status
        )
        videos[vid] = (status, await watch(store, vid, 2))
    await eventually(lambda: len(fanout.events) == 6, timeout=10, what="six video.failed")
    for vid, (status, watches) in videos.items():
        for w in watches:
            body = fanout.body(w.id)
            assert body["type"] == "video.failed"
            assert body["data"]["videoStatus"] == status
            assert body["data"]["error"] == status
        assert await scheduled(store, vid) is None
        assert await requests(sim, vid, "clips") == []


async def test_a_video_fails_after_three_404s_in_a_row_only(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a video is unknown (``video.failed``, status ``not_found``) after 404 on three
    polls in a row -- not before the third, and not for 404s broken up by an answer."""
    _, fanout = await make_poller()
    known = await sim_video(sim, timeline=ANALYZING)
    await fault(sim, kind="404", path="status", videoId=known, times=2)
    (w_known,) = await watch(store, known)
    (w_unknown,) = await watch(store, "no_such_video")

    await eventually(lambda: w_unknown.id in fanout.events, timeout=10, what="not_found")
    body = fanout.body(w_unknown.id)
    assert body["type"] == "video.failed"
    assert (body["data"]["videoStatus"], body["data"]["error"]) == ("not_found", "video not found")
    assert [s for _, s in await requests(sim, "no_such_video")] == [404, 404, 404]

    log = await eventually(lambda: _at_least(requests(sim, known), 3), what="two 404s, then 200")
    assert [s for _, s in log[:3]] == [404, 404, 200]
    await fault(sim, kind="404", path="status", videoId=known, times=2)
    log = await eventually(
        lambda: _ends_after_404s(requests(sim, known), 4), what="two more 404s, then 200"
    )
    statuses = "".join("x" if s == 404 else "." for _, s in log)
    assert statuses.startswith("xx.") and statuses.count("x") == 4 and "xxx" not in statuses
    assert w_known.id not in fanout.events
    await asyncio.sleep(2 * INTERVAL)
    assert [s for _, s in await requests(sim, "no_such_video")] == [404, 404, 404]  # stopped


async def test_404s_broken_up_by_clips_answers_do_not_fail_a_rendering_video(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: in the render phase (only ``/clips`` is asked), a clips answer breaks a run of
    404s as a status answer does: three 404s that are not in a row do not make the video
    unknown. Fails before: only a status answer reset the count, so the third scattered 404
    while clips rendered gave every watch a final ``video.failed`` (``not_found``)."""
    vid = await sim_video(
        sim,
        timeline=[*ANALYZING, {"status": "completed", "after": 0.1}],
        clips=[{"score": 90, "renderAfter": 60}],
    )
    _, fanout = await make_poller(render_timeout=60)
    (w,) = await watch(store, vid, min_score=80)
    for n in (1, 2, 3):
        await fault(sim, kind="404", path="clips", videoId=vid, times=1)
        await eventually(
            lambda n=n: _ends_after_404s(requests(sim, vid, "clips"), n),  # type: ignore[misc]
            timeout=10,
            what=f"404 number {n}, then an answer",
        )
    assert w.id not in fanout.events  # still waiting for its clip to render, not failed


async def _ends_after_404s(
    log: Awaitable[list[tuple[float, int]]], n: int
) -> list[tuple[float, int]]:
    got = await log
    return got if sum(s == 404 for _, s in got) == n and got[-1][1] == 200 else []


async def test_a_429_pauses_all_polling_until_retry_after(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a 429 pauses the upstream for its Retry-After: neither that video nor any other
    is polled during the pause, and polling resumes when it ends."""
    limited = await sim_video(sim, timeline=ANALYZING)
    other = await sim_video(sim, timeline=ANALYZING)
    await make_poller()
    await watch(store, limited)
    await watch(store, other)
    await eventually(lambda: requests(sim, other), what="polling")
    await fault(sim, kind="429", path="status", videoId=limited, retryAfter=1)
    log = await eventually(
        lambda: _after_429(requests(sim, limited)), timeout=10, what="a poll after the 429"
    )
    limited_at = next(at for at, status in log if status == 429)
    resumed = [at for at, _ in log if at > limited_at]
    assert resumed[0] >= limited_at + 1.0
    await eventually(
        lambda: _at_least(_since(requests(sim, other), limited_at + 1.0), 1),
        what="the other video polled after the pause",
    )
    others = [at for at, _ in await requests(sim, other)]
    # requests already on their way when the 429 came back may land just after it
    assert not [at for at in others if limited_at + 0.25 < at < limited_at + 0.99], others


async def test_a_paused_poller_sleeps_the_pause_out_and_an_early_end_wakes_it(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: while the upstream is paused, a poller with due videos waits for the pause's
    end, not asking the schedule again and again; an operator ending the pause early wakes
    it at once. Fails before: its idle wait was the due video's (0), and it asked Redis for
    the next due time ~13,000 times a second for the whole pause (review, 2026-12-06)."""
    poller, _ = await make_poller()
    asked = 0
    next_due = poller.store.next_due_ms

    async def counting(schedule: str) -> int | None:
        nonlocal asked
        asked += 1
        return await next_due(schedule)

    poller.store.next_due_ms = counting  # type: ignore[method-assign]
    poller.gate._hold(30.0)  # a 429's pause, as heard from another worker
    vid = await sim_video(sim, timeline=ANALYZING)
    await watch(store, vid)  # due at once
    poller.wake()
    await asyncio.sleep(0.5)
    assert asked <= 3, asked
    assert await requests(sim, vid) == []
    poller.gate._resume()  # the operator's `clip-relay upstream resume`
    await eventually(lambda: requests(sim, vid), timeout=1.0, what="a poll right after")


async def _after_429(log: Awaitable[list[tuple[float, int]]]) -> list[tuple[float, int]]:
    got = await log
    statuses = [s for _, s in got]
    return got if 429 in statuses and statuses[-1] != 429 else []


async def _since(log: Awaitable[list[tuple[float, int]]], at: float) -> list[tuple[float, int]]:
    return [(t, s) for t, s in await log if t >= at]


async def test_5xx_backs_off_exponentially_and_recovers(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Rule: a 5xx does not fail the video: each error in a row doubles the gap to the next
    poll (2, 4, 8 intervals); the first good answer brings back the normal interval."""
    vid = await sim_video(sim, timeline=ANALYZING)
    for kind in ("500", "502", "503"):
        await fault(sim, kind=kind, path="status", videoId=vid)
    _, fanout = await make_poller()
    await watch(store, vid)
    log = await eventually(lambda: _at_least(requests(sim, vid), 5), timeout=10, what="5 polls")
    assert [s for _, s in log[:5]] == [500, 502, 503, 200, 200]
    after_errors = gaps(log)[:4]
    for gap, intervals in zip(after_errors, (2, 4, 8), strict=False):
        assert gap >= intervals * INTERVAL - 0.002, after_errors
    assert after_errors[3] < 8 * INTERVAL, after_errors  # back to the interval
    assert fanout.events == {}


async def test_an_upstream_outage_is_a_few_lines_not_one_per_video(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """Each video polled during an upstream outage said ``upstream error``, and again
    ``upstream recovered`` after it: tens of thousands of lines per incident with many
    videos (review, 2026-12-06). Each kind is one line per TROUBLE_LOG_EVERY_S; the next
    counts the ones left out (``others``)."""
    from structlog.testing import capture_logs

    videos = [await sim_video(sim, timeline=ANALYZING) for _ in range(12)]
    await fault(sim, kind="500", path="status", times=12)
    with capture_logs() as lines:
        await make_poller()
        for vid in videos:
            await watch(store, vid)

        async def all_back() -> bool:
            last = [[s for _, s in await requests(sim, vid)][-1:] for vid in videos]
            return all(statuses == [200] for statuses in last)

        await eventually(all_back, timeout=10, what="every video polled again after its 500")
    said = [e["event"] for e in lines if e["event"].startswith("upstream")]
    assert said.count("upstream error") == 1 and said.count("upstream recovered") == 1, said


async def test_waiting_for_an_answer_does_not_sweep_the_order_ahead() -> None:
    """Every origin in reach has its waves out and no answer: the fan-out waits for one,
    taking again every ANSWER_WAIT_S, and those takes look only at what waits already --
    they do not sweep the order further (each would move SCAN_AHEAD chunks more into
    waiting, which then goes first). After ROOM_WAIT_S the chunk goes as it is, in order."""
    full = fan_out_order({f"w{i:05d}": f"t:{'ABC'[i % 3]}" for i in range(3000)})
    order = FanOutOrder(full)
    asked = 0

    def no_room(tag: str) -> int:
        nonlocal asked
        asked += 1
        return 0

    fan_out: Any = SimpleNamespace(origin_room=no_room)
    began = time.monotonic()
    chunk, left = await FanOut._next_chunk(fan_out, order, 32, 10.0)
    assert time.monotonic() - began >= ROOM_WAIT_S and 10.0 - left >= ROOM_WAIT_S
    assert chunk == full[:32]
    waiting = sum(len(q) for q in order._waiting.values())
    assert waiting <= SCAN_AHEAD * 32  # swept once, by the first take
    # (it did take again while waiting, asking each of the 3 origins: at least once more; a
    # loaded loop may oversleep its ANSWER_WAIT_S steps past ROOM_WAIT_S)
    assert asked >= 2 * 3


async def test_a_503_with_retry_after_is_polled_again_no_sooner(
    store: Store, sim: Client, make_poller: PollerFactory
) -> None:
    """A 503 that says when to come back (Retry-After) is asked again no sooner, though
    the poll interval and the error backoff would ask sooner: an upstream in trouble is
    not polled faster than it asked (a mutation review: nothing checked it)."""
    video = await sim_video(sim, timeline=ANALYZING)
    await make_poller()
    await watch(store, video)
    await eventually(lambda: requests(sim, video), what="polling")
    await fault(sim, kind="503", path="status", videoId=video, retryAfter=2)
    log = await eventually(
        lambda: _after(requests(sim, video), 503), timeout=10, what="a poll after the 503"
    )
    refused_at = next(at for at, status in log if status == 503)
    assert next(at for at, _ in log if at > refused_at) >= refused_at + 1.9, log


async def _after(log: Awaitable[list[tuple[float, int]]], status: int) -> list[tuple[float, int]]:
    """*log* once it holds a request after the first answered *status* (else empty)."""
    got = await log
    at = next((at for at, s in got if s == status), None)
    return got if at is not None and any(t > at for t, _ in got) else []
