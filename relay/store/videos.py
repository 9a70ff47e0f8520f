"""The videos being polled: claim due ones, write poll results, stop polling one.

A video being watched is a hash (its poll state) plus a set of the watches still waiting on
it, and a member of the poll schedule (video id -> next poll, ms). A claimed member's score
is pushed to a lease deadline, so a video held by a worker that dies becomes due again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from redis.asyncio import Redis

from relay import constants as c
from relay.domain.clock import now_ms
from relay.domain.video import VideoState
from relay.store import scripts
from relay.store.codec import video_from_hash, video_hash


class Videos:
    """``store.videos``: the poll schedule, the video hashes and their waiting sets."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = scripts.register(redis, "claim_videos")
        self._release = scripts.register(redis, "release_video")

    async def claim(self, *, limit: int, lease_s: float) -> list[tuple[VideoState, list[str]]]:
        """Claim due videos for *lease_s* seconds: (poll state, waiting watch ids) each."""
        now = now_ms()
        rows = await self._claim(
            keys=[c.POLL_SCHEDULE_KEY],
            args=[now, now + int(lease_s * 1000), limit, c.VIDEO_PREFIX],
        )
        return [
            (video_from_hash(vid, dict(zip(flat[::2], flat[1::2], strict=True))), sorted(ids))
            for vid, flat, ids in rows
        ]

    async def save(
        self,
        updates: Iterable[tuple[VideoState, int | None, Sequence[str], bool]],
    ) -> None:
        """Write poll results in one round trip.

        Each update is (state, next poll ms or None to leave the schedule alone, watch ids,
        whether the status/progress the watches show changed).
        """
        pipe = self.redis.pipeline(transaction=False)
        now = str(now_ms())
        n = 0
        for state, next_ms, watch_ids, changed in updates:
            n += 1
            fields = video_hash(state)
            if fields != state.loaded:  # most polls change nothing but the schedule
                pipe.hset(c.VIDEO_KEY.format(state.video_id), mapping=fields)
            if next_ms is not None:
                pipe.zadd(c.POLL_SCHEDULE_KEY, {state.video_id: next_ms}, xx=True)
            if changed:
                shown = {
                    "videoStatus": state.status,
                    "videoProgress": "" if state.progress is None else repr(state.progress),
                    "updatedAt": now,
                }
                for wid in watch_ids:
                    pipe.hset(c.WATCH_KEY.format(wid), mapping=shown)
        if n:
            await pipe.execute()

    async def drop(self, video_id: str) -> None:
        """Stop polling a video nobody waits on any more (unless one registered just now)."""
        await self._release(
            keys=[
                c.VIDEO_WATCHES_KEY.format(video_id),
                c.POLL_SCHEDULE_KEY,
                c.VIDEO_KEY.format(video_id),
            ],
            args=[video_id, now_ms()],
        )

    async def release(self, video_id: str, served_ids: Sequence[str], at_ms: int) -> None:
        """After a video's final fan-out (its events recorded at *at_ms*): drop the watches
        that were considered (*served_ids*) from its set and stop polling it -- unless a
        watch registered meanwhile, then poll it again at once."""
        await self._release(
            keys=[
                c.VIDEO_WATCHES_KEY.format(video_id),
                c.POLL_SCHEDULE_KEY,
                c.VIDEO_KEY.format(video_id),
            ],
            args=[video_id, at_ms, *served_ids],
        )
