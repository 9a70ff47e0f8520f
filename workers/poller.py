"""The poller: one poll loop per video, shared by every watch on it.

A video is a member of the poll schedule while some watch waits on it. Each claimed video
goes through a small state machine:

- phase ``poll``: ask ``/status``. Not final: poll again after RELAY_POLL_INTERVAL (after
  a minute for ``pending_config``, which waits for its owner).
  ``failed``/``error``/``expired``, or three 404s in a row: ``video.failed`` to every watch.
  ``completed``: switch to phase ``render`` and look at the clips straight away.
- phase ``render``: ask ``/clips`` (once for all watches). While a clip that passes some
  watch's filters is still rendering, look again after the poll interval, until
  RELAY_RENDER_TIMEOUT after ``completed``; then ``clips.ready`` to every watch, each with
  its own filtered and ordered clips.

Upstream trouble never stops a video: 429 pauses every worker for Retry-After; 5xx,
timeouts, garbage and 401/402/403 back off exponentially (capped) and try again.

A claim of a video is a lease (its score pushed to a deadline, by Redis' clock: the claim's
token). While the work is alive -- waiting for the upstream budget, polling, fanning out --
one task per poller extends every claim it holds, a script call per lease/3 for all of them
(:class:`Leases`); every write of the claim's owner (the poll's result and reschedule, the
fan-out's chunks, the release) is made only while the video's score is still the token, so a
poller whose claim lapsed writes nothing and stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from relay import constants as c
from relay import logs
from relay.domain import events
from relay.domain.clips import ClipSet, is_settled, pending
from relay.domain.clock import now_ms
from relay.domain.delivery import DeliveryClaim, FinalEvent
from relay.domain.video import VideoState
from relay.http.upstream import Reply, UpstreamClient
from relay.metrics import UPSTREAM_RATE_LIMITED, UPSTREAM_REQUESTS
from relay.settings import Settings
from relay.store import DELIVERY_BATCH, Store
from relay.store.codec import fan_out_order
from workers.fanout import FanOutOrder, Pages
from workers.fanout import Room as OriginRoom
from workers.leases import Lease, LeaseLost, Leases
from workers.pump import Pump
from workers.upstream_budget import Paused, UpstreamGate

log = logs.get("workers.poller")
FINALIZE_CHUNK = DELIVERY_BATCH  # watches given their events per round, at most
PACED_PAUSE_S = 0.05  # a fan-out waits this long after a chunk of paced events only
ROOM_WAIT_S = 0.05  # a fan-out waits this long, at most, for its deliverer to have room
ANSWER_WAIT_S = 0.005  # ... and in steps of this for an origin to answer (a wave is out)

Room = Callable[[int, float], Awaitable[int]]
"""How many of *n* claims this worker's deliverer can take, waiting up to a while for room."""


async def _no_room(n: int, wait_s: float) -> int:
    return 0


Pace = Callable[[Sequence[str]], list[int]]
"""For a fan-out's events, by origin tag: 0 (claimable now) or in how many ms each is due."""


def _no_pace(tags: Sequence[str]) -> list[int]:
    return [0] * len(tags)


def _lost(got: int) -> bool:
    return got < 0


Created = Callable[[Sequence[DeliveryClaim]], None]
"""Called with the events a fan-out round made and claimed for this worker (its offer)."""


@dataclass(slots=True)
class Final:
    """A video's final outcome: the event every waiting watch gets (made a chunk at a
    time: the first webhooks leave while a large fan-out is still being made)."""

    event: FinalEvent
    clips: ClipSet | None = None  # clips.ready: the clips its bodies are built from
    # the waiting watches (id, origin tag) in fan-out order, when deciding read them
    watch_ids: Sequence[tuple[str, str]] | None = None


@dataclass(slots=True)
class Step:
    """What one poll decided for a video."""

    state: VideoState
    next_ms: int | None = None  # poll again then
    final: Final | None = None  # give every watch its event, and stop polling
    dropped: bool = False  # nobody waits on the video any more (or the claim was lost)


Claimed = tuple[VideoState, int, Lease]  # poll state, how many watches wait, the claim


class Poller(Pump[Claimed]):
    """Claims due videos and polls them."""

    schedule = c.POLL_SCHEDULE_KEY
    name = "poller"

    def __init__(
        self, store: Store, upstream: UpstreamClient, gate: UpstreamGate, settings: Settings
    ) -> None:
        super().__init__(
            store, concurrency=settings.poll_concurrency, lease_s=settings.lease, batch=256
        )
        self.upstream = upstream
        self.gate = gate
        gate.on_resume(self.wake)  # (it sleeps a pause out: an operator may end it early)
        self.settings = settings
        self.polls = 0  # status/clips requests made (for benchmarks and tests)
        self.on_events: Created = lambda claims: None  # (the deliverer's offer)
        self.room: Room = _no_room  # how many claims the deliverer can take
        self.pace: Pace = _no_pace  # which events its origins would not start soon
        self.origin_room: OriginRoom | None = None  # events an origin may get before others
        self.on_clips: Callable[[str, int, ClipSet], None] = lambda vid, at, clips: None
        self.leases = Leases(store.videos, self.lease_s)
        self.sampled = logs.Sampled(c.TROUBLE_LOG_EVERY_S)  # a line per video, at most so often

    def start(self) -> None:
        super().start()
        self.leases.start()

    async def stop(self, grace_s: float) -> None:
        await super().stop(grace_s)  # the claims of work in flight are kept till it ends
        await self.leases.stop()

    async def claim(self, limit: int) -> Sequence[Claimed]:
        """Claim due videos with their poll state and waiting watches (none while the
        upstream is paused by a 429: claims would only expire while waiting)."""
        if self.gate.paused_s() > 0:
            return []
        token, rows = await self.store.videos.claim(limit=limit, lease_s=self.lease_s)
        return [(st, waiting, self.leases.hold(st.video_id, token)) for st, waiting in rows]

    async def _idle_for(self) -> float:
        """While the upstream is paused, until the pause ends (due videos wait for it, not
        for their score: asking the schedule again at once would spin on Redis)."""
        paused = self.gate.paused_s()
        if paused > 0:
            return paused
        return await super()._idle_for()

    async def work(self, items: Sequence[Claimed], release: Callable[[], None]) -> None:
        """Poll a batch of videos; write every result back in one round trip."""
        try:
            results = await asyncio.gather(
                *(self._step(st, waiting, lease, release) for st, waiting, lease in items),
                return_exceptions=True,
            )
            steps: list[tuple[Step, Lease]] = []
            for (state, _, lease), result in zip(items, results, strict=True):
                if isinstance(result, Step):
                    steps.append((result, lease))
                else:  # that video's claim stays leased: it is polled again after the lease
                    log.error("poll failed", video_id=state.video_id, error=repr(result)[:300])
            try:
                await self._save(
                    [(s, lease) for s, lease in steps if s.final is None and not s.dropped]
                )
            except Exception as exc:  # Redis away: those claims lapse and are polled again;
                # the finals' fan-outs (their upstream requests made) go on regardless
                log.error("saving polls failed", error=f"{type(exc).__name__}: {exc}"[:300])
            # the batch's fan-outs side by side: one video's 10,000 watches never hold
            # back another's 20 (each is bounded by its own chunks)
            finals = [(s, s.final, lease) for s, lease in steps if s.final is not None]
            done = await asyncio.gather(
                *(self._finish(s, final, lease) for s, final, lease in finals),
                return_exceptions=True,
            )
            for (s, _, _), outcome in zip(finals, done, strict=True):
                if isinstance(outcome, BaseException):  # its claim stays: polled again later
                    log.error(
                        "fan-out failed", video_id=s.state.video_id, error=repr(outcome)[:300]
                    )
        finally:
            for _, _, lease in items:
                self.leases.drop(lease)

    async def _save(self, steps: list[tuple[Step, Lease]]) -> None:
        """Write the polls' results, each only while its claim holds (one script call; a
        write that crossed an extension of its claim is made again with the new token)."""
        while steps:
            sent = [lease.token for _, lease in steps]
            now = now_ms()
            lost = await self.store.videos.save(
                (s.state, lease.token, None if s.next_ms is None else s.next_ms - now)
                for s, lease in steps
            )
            if lost:  # an extension in flight may have moved a token already: its reply decides
                await self.leases.settled()
            again = []
            for (s, lease), token in zip(steps, sent, strict=True):
                if s.state.video_id not in lost:
                    continue
                if lease.token != token and not lease.lost:
                    again.append((s, lease))
                else:
                    lease.lost = True
                    log.warning("poll claim lost: result not written", video_id=lease.video_id)
            steps = again

    async def _step(
        self, state: VideoState, waiting: int, lease: Lease, release: Callable[[], None]
    ) -> Step:
        try:
            return await self._poll(state, waiting, lease)
        except Paused:  # poll it when the pause is over, not twice then
            return Step(state, next_ms=now_ms() + int(self.gate.paused_s() * 1000) + 1)
        except LeaseLost:  # another poller has the video now: nothing to write
            return Step(state, dropped=True)
        finally:
            release()

    async def _poll(self, state: VideoState, waiting: int, lease: Lease) -> Step:
        if not waiting:
            # every watch was cancelled or expired: stop polling (release re-checks)
            await self.leases.write(
                lease, lambda token: self.store.videos.release(lease.video_id, token), _lost
            )
            return Step(state, dropped=True)
        if state.phase == "render":
            return await self._clips(state, lease)
        return await self._status(state, lease)

    async def _request(self, endpoint: str, lease: Lease) -> Reply:
        # a claim must not wait out a long 429 pause (better rescheduled than extended)
        await self.gate.acquire(max_pause=self.lease_s / 3)
        lease.check()  # lost while waiting for the budget: another poller has it
        video_id = lease.video_id
        self.polls += 1
        call = self.upstream.clips if endpoint == "clips" else self.upstream.status
        reply = await call(video_id)
        UPSTREAM_REQUESTS.labels(endpoint, reply.kind, str(reply.http_status or 0)).inc()
        return reply

    async def _status(self, state: VideoState, lease: Lease) -> Step:
        reply = await self._request("status", lease)
        if reply.kind != "ok" or reply.video is None:
            return await self._trouble(state, reply)
        video = reply.video
        before = state.status
        if state.errors:
            say = self.sampled.say
            say(log.info, "upstream recovered", video_id=state.video_id, after_errors=state.errors)
        state.errors = state.not_found = 0
        seen = (state.status, state.progress)
        state.status = video.status
        state.progress = video.progress if video.progress is not None else state.progress
        if (state.status, state.progress) != seen:
            state.changed_ms = now_ms()
        if state.status != before:
            log.info("video status", video_id=state.video_id, status=state.status)
        if video.status in c.VIDEO_FINAL_BAD:
            error = video.error_message or f"video {video.status}"
            return self._final_failed(state, video.status, error)
        if video.status in c.VIDEO_FINAL_OK:
            state.phase = "render"
            state.completed_ms = now_ms()
            return await self._clips(state, lease)
        return Step(state, next_ms=self._next(slow=video.status == c.VIDEO_UNCONFIGURED))

    async def _clips(self, state: VideoState, lease: Lease) -> Step:
        reply = await self._request("clips", lease)
        if reply.kind != "ok":
            return await self._trouble(state, reply)
        state.errors = state.not_found = 0  # (404s count in a row: /status is not asked now)
        fetched = now_ms()
        clips = ClipSet(reply.clips)
        watch_ids = None
        if not all(is_settled(clip) for clip in clips.clips):
            # something still renders: wait for it if any watch's filters would pass it
            watch_ids = await self.store.videos.waiting(state.video_id)
            filters = []
            for start in range(0, len(watch_ids), FINALIZE_CHUNK):
                chunk = [w for w, _ in watch_ids[start : start + FINALIZE_CHUNK]]
                filters += [events.watch_filter(w) for w in await self.store.watches.specs(chunk)]
            waiting = pending(clips.clips, filters)
            deadline = state.completed_ms + int(self.settings.render_timeout * 1000)
            if waiting and now_ms() < deadline:
                return Step(state, next_ms=min(self._next(), deadline))
            if waiting:
                log.warning(
                    "render timeout: undeliverable clips left out",
                    video_id=state.video_id,
                    clips=waiting,
                )
        # the bodies are built from the stored document, so every build gives the same bytes
        doc = clips.doc()
        event = FinalEvent(
            "clips.ready",
            fetched,
            video_status=state.status,
            video_progress=state.progress,
            clips_doc=doc,
            clips_ms=fetched,
        )
        return Step(state, final=Final(event, ClipSet.from_doc(doc), watch_ids))

    def _final_failed(self, state: VideoState, video_status: str, error: str) -> Step:
        event = FinalEvent(
            "video.failed",
            now_ms(),
            video_status=video_status,
            video_progress=state.progress,
            video_error=error,
        )
        return Step(state, final=Final(event))

    async def _trouble(self, state: VideoState, reply: Reply) -> Step:
        vid = state.video_id
        if reply.kind == "not_found":
            state.not_found += 1
            if state.not_found >= c.NOT_FOUND_POLLS:
                log.info("video not found", video_id=vid, polls=state.not_found)
                state.status = c.NOT_FOUND_STATUS
                return self._final_failed(state, c.NOT_FOUND_STATUS, "video not found")
            return Step(state, next_ms=self._next())
        if reply.kind == "rate_limited":
            wait = reply.retry_after if reply.retry_after is not None else self._interval()
            UPSTREAM_RATE_LIMITED.inc()
            self.sampled.say(log.warning, "upstream rate limited", video_id=vid, retry_after=wait)
            await self.gate.pause(wait)
            return Step(state, next_ms=now_ms() + int(wait * 1000) + 1)
        state.errors += 1
        if reply.kind == "auth":
            now = now_ms()
            if now - state.auth_logged_ms >= c.AUTH_ERROR_LOG_EVERY * 1000 and self.sampled.say(
                log.error,
                # 402: the account's processing minutes or plan, not the key
                "upstream refused the request: payment required"
                if reply.http_status == 402
                else "upstream refused the API key",
                video_id=vid,
                http_status=reply.http_status,
                detail=reply.detail,
            ):
                state.auth_logged_ms = now
        elif state.errors == 1:
            self.sampled.say(log.warning, "upstream error", video_id=vid, detail=reply.detail)
        next_ms = self._next(backoff=state.errors)
        if reply.retry_after is not None:  # a 503 that says when to come back
            next_ms = max(next_ms, now_ms() + int(reply.retry_after * 1000))
        return Step(state, next_ms=next_ms)

    async def _finish(self, step: Step, final: Final, lease: Lease) -> None:
        """Give every watch of the video its final event and stop polling it.

        A chunk of FINALIZE_CHUNK at a time: one script call gives the chunk's
        watches their event, claims as many as this worker's deliverer has room for (they
        go to it without a read-back; the rest are due for any worker) -- so delivery starts
        after the first chunk, not after the whole fan-out. The watches come round robin
        over tenants and origins, and a slow origin's events are paced and made last
        (:mod:`workers.fanout`). The last chunk releases the video. Idempotent all the
        way: a worker that dies in between leaves the video claimed, and whoever polls it
        next creates only the events still missing.
        """
        vid = step.state.video_id
        ids, rest, pages = final.watch_ids, None, None
        if ids is None:  # the first page now, the others read while its events are made
            cursor, entries = await self.store.videos.waiting_page(vid)
            ids = fan_out_order(entries)
            if cursor:
                pages = Pages()
                rest = asyncio.create_task(
                    self.store.videos.waiting_rest(vid, cursor, dict(entries), pages.add)
                )
        order = FanOutOrder(ids, rest, pages)
        try:
            if final.clips is not None:
                self.on_clips(vid, final.event.at_ms, final.clips)
            created = await self._fan_out(vid, final.event, order, lease)
        finally:
            order.close()
        if created >= 0:
            log.info(
                "video final",
                video_id=vid,
                status=step.state.status,
                watches=len(order),
                events=created,
            )

    async def _fan_out(self, vid: str, event: FinalEvent, order: FanOutOrder, lease: Lease) -> int:
        """The chunks of :meth:`_finish`: the number of events made, -1 when the poll claim
        was lost (the video's new owner finishes the fan-out)."""
        created = 0
        wait_budget = self.lease_s / 5
        first, stored = True, False  # stored: the clips document, by an earlier chunk
        while first or not order.done:
            first = False
            chunk, wait_budget = await self._next_chunk(order, FINALIZE_CHUNK, wait_budget)
            # events of an origin this worker would not start soon are due when it would
            # (paced: never claimed, nothing to hand back), and its other watches go last
            later = self.pace([tag for _, tag in chunk])
            order.slow(tag for (_, tag), d in zip(chunk, later, strict=True) if d)
            claimable = sum(1 for d in later if not d)
            # a busy worker leaves the rest due for any worker, one that keeps up claims them
            # as made (no second read); it waits for room a fifth of the video's lease in all
            waited = time.monotonic()
            room = await self.room(claimable, min(ROOM_WAIT_S, wait_budget)) if claimable else 0
            wait_budget -= time.monotonic() - waited
            made, claimed = await self.leases.write(
                lease,
                self._finalize(vid, event, [w for w, _ in chunk], room, later, stored),
                lambda got: got[0] < 0,
            )
            if made < 0:
                log.warning("poll claim lost mid fan-out", video_id=vid, events=created)
                return -1
            stored = stored or bool(made and event.clips_doc)  # later chunks add references
            if claimed:  # (before the release: a release that fails leaves them queued)
                self.on_events(claimed)
            if order.done:
                # (two script calls rather than one pipeline: a pipeline of scripts costs an
                # extra SCRIPT EXISTS round trip, and the two need not be atomic together)
                await self.leases.write(
                    lease, lambda token: self.store.videos.release(vid, token), _lost
                )
            elif not claimed and not claimable:
                # a chunk of paced events only: none is due soon, so the deliveries under
                # way (this worker's CPU and Redis') go first
                await asyncio.sleep(PACED_PAUSE_S)
            created += made
        return created

    async def _next_chunk(
        self, order: FanOutOrder, size: int, wait_budget: float
    ) -> tuple[list[tuple[str, str]], float]:
        """The fan-out's next chunk, origins yet to answer getting no more than a wave or
        two ahead of the others; what is left of *wait_budget*."""
        waited, ahead = 0.0, True
        while True:
            ahead = await order.fill() or ahead
            chunk = order.take(size, self.origin_room, ahead)
            if chunk or order.done:
                return chunk, wait_budget
            # every origin in reach has a wave out and no answer yet: a moment for one to
            # answer (fast: its events go on; slow: they are paced), then they go as they
            # are. (No sweep ahead meanwhile -- only the watches that wait already, or the
            # rest of the read if it comes in: the order is round robin, so the watches in
            # reach stand for the others, and watches swept into waiting would go first.)
            ahead = False
            if waited >= ROOM_WAIT_S or wait_budget <= 0:
                chunk = order.take(size)
                if chunk or order.done:
                    return chunk, wait_budget
                ahead = await order.fill(wait=True)  # only unread pages are left: the next one
                continue
            began = time.monotonic()
            await asyncio.sleep(ANSWER_WAIT_S)
            slept = time.monotonic() - began  # (a busy loop wakes later than asked)
            waited += slept
            wait_budget -= slept

    def _finalize(
        self,
        vid: str,
        event: FinalEvent,
        chunk: Sequence[str],
        room: int,
        later: Sequence[int],
        stored: bool,
    ) -> Callable[[int], Awaitable[tuple[int, list[DeliveryClaim]]]]:
        """One fan-out chunk's ``finalize``, to be made under the poll claim's token
        (*stored*: its clips document, by an earlier chunk)."""
        paced = later if any(later) else None

        def call(token: int) -> Awaitable[tuple[int, list[DeliveryClaim]]]:
            return self.store.deliveries.finalize(
                vid,
                event,
                chunk,
                claim=room,
                lease_s=self.lease_s,
                poll_token=token,
                later_ms=paced,
                doc_stored=stored,
            )

        return call

    def _interval(self) -> float:
        return self.settings.poll_interval

    def _next(self, backoff: int = 0, slow: bool = False) -> int:
        delay = max(self._interval(), c.UNCONFIGURED_POLL_S) if slow else self._interval()
        if backoff:
            delay = max(delay, min(delay * 2 ** min(backoff, 16), c.UPSTREAM_BACKOFF_CAP))
        return now_ms() + int(delay * 1000)
