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

A final video's events are made by its fan-out (:class:`workers.finals.FanOut`), under the
poller's claim of the video.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay import constants as c
from relay import logs
from relay.domain import events
from relay.domain.clips import ClipSet, is_settled, pending
from relay.domain.clock import now_ms
from relay.domain.delivery import FinalEvent
from relay.domain.video import VideoState
from relay.http.upstream import Reply, UpstreamClient
from relay.metrics import UPSTREAM_RATE_LIMITED, UPSTREAM_REQUESTS
from relay.settings import Settings
from relay.store import Store
from workers.finals import FINALIZE_CHUNK, FanOut, Final
from workers.leases import Lease, LeaseLost, Leases
from workers.pump import Pump
from workers.upstream_budget import Paused, UpstreamGate

log = logs.get("workers.poller")


@dataclass(slots=True)
class Step:
    """What one poll decided for a video."""

    state: VideoState
    next_ms: int | None = None  # poll again then
    final: Final | None = None  # give every watch its event, and stop polling (or some
    # of them, when others wait on clips still rendering: Final.partial, then poll again at
    # next_ms)
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
        self.leases = Leases(store.videos, self.lease_s)
        self.fan_out = FanOut(store, self.leases, self.lease_s)  # (the deliverer's hooks)
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
                # (a partial final's state too -- the render phase and when it turned
                # completed -- before its fan-out: a claim lost on the way must not make the
                # next owner see `completed` anew and restart the render timeout; its next
                # poll is written after the fan-out)
                await self._save(
                    [
                        (s if s.final is None else Step(s.state), lease)
                        for s, lease in steps
                        if (s.final is None or s.final.partial) and not s.dropped
                    ]
                )
            except Exception as exc:  # Redis away: those claims lapse and are polled again;
                # the finals' fan-outs (their upstream requests made) go on regardless
                log.error("saving polls failed", error=f"{type(exc).__name__}: {exc}"[:300])
            # the batch's fan-outs side by side: one video's 10,000 watches never hold
            # back another's 20 (each is bounded by its own chunks)
            finals = [(s, s.final, lease) for s, lease in steps if s.final is not None]
            done = await asyncio.gather(
                *(self.fan_out.run(s.state, final, lease) for s, final, lease in finals),
                return_exceptions=True,
            )
            rest: list[tuple[Step, Lease]] = []
            for (s, final, lease), outcome in zip(finals, done, strict=True):
                if isinstance(outcome, BaseException):  # its claim stays: polled again later
                    log.error(
                        "fan-out failed", video_id=s.state.video_id, error=repr(outcome)[:300]
                    )
                elif final.partial and outcome:  # the other watches wait: poll it again
                    rest.append((s, lease))
            if rest:
                try:
                    await self._save(rest)
                except Exception as exc:  # Redis away: those claims lapse, polled again then
                    log.error("saving polls failed", error=f"{type(exc).__name__}: {exc}"[:300])
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
            await self.leases.release(lease)
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
        state.poll_error = ""
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
        state.poll_error = ""
        fetched = now_ms()
        clips = ClipSet(reply.clips)
        watch_ids = None
        next_ms: int | None = None
        if not all(is_settled(clip) for clip in clips.clips):
            # something still renders: a watch whose filters pass a clip still rendering
            # waits for it; the others get their events now (SPEC: every clip passing *the
            # watch's* filters is final), and the video is polled again for the rest
            watch_ids = await self.store.videos.waiting(state.video_id)
            held, wanted = await self._held(clips, [w for w, _ in watch_ids])
            deadline = state.completed_ms + int(self.settings.render_timeout * 1000)
            if held and now_ms() < deadline:
                watch_ids = [item for item in watch_ids if item[0] not in held]
                next_ms = min(self._next(), deadline)
                if not watch_ids:
                    return Step(state, next_ms=next_ms)
                log.info(
                    "clips still rendering: events for the watches they do not concern",
                    video_id=state.video_id,
                    watches=len(watch_ids),
                    waiting=len(held),
                )
            elif held:
                log.warning(
                    "render timeout: undeliverable clips left out",
                    video_id=state.video_id,
                    clips=wanted,
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
        partial = next_ms is not None
        final = Final(event, ClipSet.from_doc(doc), watch_ids, partial=partial)
        return Step(state, next_ms=next_ms, final=final)

    async def _held(self, clips: ClipSet, watch_ids: Sequence[str]) -> tuple[set[str], int]:
        """The watches of *watch_ids* whose filters pass a clip still rendering, and how
        many such clips there are (registrations read a chunk at a time; each distinct
        filter judged once)."""
        judged: dict[tuple[object, ...], bool] = {}
        wanted: set[int] = set()  # (indexes in clips.clips)
        held: set[str] = set()
        for start in range(0, len(watch_ids), FINALIZE_CHUNK):
            chunk = watch_ids[start : start + FINALIZE_CHUNK]
            for w in await self.store.watches.specs(chunk):
                f = events.watch_filter(w)
                key = (f.min_score, f.max_score, f.favorited_only)
                waits = judged.get(key)
                if waits is None:
                    passed = pending(clips.clips, [f])
                    wanted |= passed
                    waits = judged[key] = bool(passed)
                if waits:
                    held.add(w.id)
        return held, len(wanted)

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
        state.poll_error = poll_error(reply)
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

    def _interval(self) -> float:
        return self.settings.poll_interval

    def _next(self, backoff: int = 0, slow: bool = False) -> int:
        delay = max(self._interval(), c.UNCONFIGURED_POLL_S) if slow else self._interval()
        if backoff:
            delay = max(delay, min(delay * 2 ** min(backoff, 16), c.UPSTREAM_BACKOFF_CAP))
        return now_ms() + int(delay * 1000)


def poll_error(reply: Reply) -> str:
    """What a watch waiting on the video shows as its ``lastError`` while its polls fail (a
    tester's watches showed nothing while the upstream refused the relay's key): the
    relay's words only, never the upstream's body."""
    status = reply.http_status
    if status is None:
        code = "timeout" if reply.detail == "timeout" else "no connection"
    else:
        code = "a malformed answer" if 200 <= status < 300 else f"HTTP {status}"
    if reply.kind == "auth":
        if reply.http_status == 402:
            return "upstream: payment required (HTTP 402); polling retries"
        return f"upstream refused the relay's API key ({code}); polling retries"
    return f"upstream error ({code}); polling retries"
