"""The videos being polled: claim due ones, write poll results, stop polling one.

A video being watched is a hash (its poll state) plus a hash of the watches still waiting
on it (watch id -> tenant and callback origin tag; read only when the video is final, a
chunk at a time), and a member of the poll schedule (video id -> next poll, ms). A claimed
member's score is pushed to a lease deadline (by Redis' clock), so a video held by a worker
that dies becomes due again. That deadline is the claim's token: the claim's owner extends
it while it works, and each of its writes (the poll's result, the fan-out's chunks, the
release) is made only while the video's score is still its token -- a poller whose claim
lapsed writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from redis.asyncio import Redis
from redis.typing import EncodableT

from relay import constants as c
from relay.domain import clock
from relay.domain.video import VideoState
from relay.store import scripts
from relay.store.codec import fan_out_order, video_from_hash, video_hash
from relay.store.deliveries import Deliveries

SCAN_COUNT = 1000  # entries per HSCAN call


class Videos:
    """``store.videos``: the poll schedule, the video hashes and their waiting watches."""

    def __init__(self, redis: Redis, deliveries: Deliveries) -> None:
        self.redis = redis
        self._deliveries = deliveries  # (its extend_claims serves both schedules)
        self._claim = scripts.register(redis, "claim_videos")
        self._release = scripts.register(redis, "release_video")
        self._save = scripts.register(redis, "save_videos")

    async def claim(
        self, *, limit: int, lease_s: float
    ) -> tuple[int, list[tuple[VideoState, int]]]:
        """Claim due videos for *lease_s* seconds (Redis' clock): the claims' token (their
        lease deadline) and (poll state, watches waiting) each."""
        lease_ms = int(lease_s * 1000)
        sent = clock.local_ms()
        deadline, *rows = await self._claim(
            keys=[c.POLL_SCHEDULE_KEY],
            args=[lease_ms, limit, c.VIDEO_PREFIX, c.VIDEO_WATCHES_SUFFIX],
        )
        clock.observe(int(deadline) - lease_ms, sent, clock.local_ms())
        return int(deadline), [
            (video_from_hash(vid, dict(zip(flat[::2], flat[1::2], strict=True))), int(waiting))
            for vid, flat, waiting in rows
        ]

    async def extend(
        self, video_ids: Sequence[str], token: int, lease_s: float
    ) -> tuple[set[str], int]:
        """Extend the claims on *video_ids* held with *token* to *lease_s* from Redis' now:
        those still held, and their new token."""
        return await self._deliveries.extend_schedule(
            c.POLL_SCHEDULE_KEY, video_ids, token, lease_s
        )

    async def claim_scores(self, video_ids: Sequence[str]) -> tuple[list[float | None], int]:
        """Each video's score in the poll schedule (None: off it), then Redis' clock (ms):
        one round trip, the clock read after the scores."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zmscore(c.POLL_SCHEDULE_KEY, list(video_ids))
            pipe.time()
            scores, (sec, usec) = await pipe.execute()
        return scores, int(sec) * 1000 + int(usec) // 1000

    async def waiting(self, video_id: str) -> list[tuple[str, str]]:
        """The watches waiting on a video, each with its origin tag, in fan-out order: round
        robin over tenants and callback origins (:func:`~relay.store.codec.fan_out_order`;
        HSCAN: each call bounded, however many)."""
        cursor, entries = await self.waiting_page(video_id)
        return await self.waiting_rest(video_id, cursor, entries)

    async def waiting_page(self, video_id: str, cursor: int = 0) -> tuple[int, dict[str, str]]:
        """One bounded page of a video's waiting watches (id -> entry) and the cursor of the
        next (0: that was the last). A watch may come on two pages."""
        key = c.VIDEO_WATCHES_KEY.format(video_id)
        cursor, batch = await self.redis.hscan(key, cursor, count=SCAN_COUNT)
        return int(cursor), batch

    async def waiting_rest(
        self,
        video_id: str,
        cursor: int,
        entries: dict[str, str],
        on_page: Callable[[Mapping[str, str]], None] | None = None,
    ) -> list[tuple[str, str]]:
        """Every waiting watch in fan-out order, *entries* (updated in place) read already
        and the pages from *cursor* on (0: none) still to read, each also given to
        *on_page* as it comes."""
        while cursor:
            cursor, batch = await self.waiting_page(video_id, cursor)
            entries.update(batch)
            if on_page is not None:
                on_page(batch)
        return fan_out_order(entries)

    async def save(self, updates: Iterable[tuple[VideoState, int, int | None]]) -> set[str]:
        """Write poll results in one script call: each is (state, the claim's token, the
        delay to the next poll in ms or None to leave the schedule alone), written only
        while the claim holds. The watches show the video's status from its hash. Returns
        the videos whose claim was lost (nothing was written for them)."""
        args: list[EncodableT] = [c.VIDEO_PREFIX]
        for state, token, delay_ms in updates:
            fields = video_hash(state)
            pairs: list[str] = []
            if fields != state.loaded:  # most polls change nothing but the schedule
                for k, v in fields.items():
                    pairs += [k, v]
            args += [state.video_id, token, "" if delay_ms is None else max(delay_ms, 0)]
            args += [len(pairs) // 2, *pairs]
        if len(args) == 1:
            return set()
        lost = await self._save(keys=[c.POLL_SCHEDULE_KEY], args=args)
        return {str(v) for v in lost}

    async def release(self, video_id: str, token: int) -> int:
        """Stop polling a video nobody waits on any more (its final fan-out took every
        watch out of its set, or they were cancelled) -- unless a watch registered
        meanwhile: then it is polled again at once. Only while the claim held with *token*
        holds. Returns 0 (released), 1 (polled again) or -1 (the claim was lost)."""
        got = await self._release(
            keys=[
                c.VIDEO_WATCHES_KEY.format(video_id),
                c.POLL_SCHEDULE_KEY,
                c.VIDEO_KEY.format(video_id),
            ],
            args=[video_id, token],
        )
        return int(got)
