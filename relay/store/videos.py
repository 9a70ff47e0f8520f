"""The videos being polled: claim due ones, write poll results, stop polling one.

A video being watched is a hash (its poll state) plus a hash of the watches still waiting
on it (watch id -> tenant; read only when the video is final, a chunk at a time), and a
member of the poll schedule (video id -> next poll, ms). A claimed member's score is pushed
to a lease deadline, so a video held by a worker that dies becomes due again.
"""

from __future__ import annotations

from collections.abc import Iterable

from redis.asyncio import Redis

from relay import constants as c
from relay.domain.clock import now_ms
from relay.domain.video import VideoState
from relay.store import scripts
from relay.store.codec import video_from_hash, video_hash

SCAN_COUNT = 1000  # entries per HSCAN call


class Videos:
    """``store.videos``: the poll schedule, the video hashes and their waiting watches."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = scripts.register(redis, "claim_videos")
        self._release = scripts.register(redis, "release_video")

    async def claim(self, *, limit: int, lease_s: float) -> list[tuple[VideoState, int]]:
        """Claim due videos for *lease_s* seconds: (poll state, watches waiting) each."""
        now = now_ms()
        rows = await self._claim(
            keys=[c.POLL_SCHEDULE_KEY],
            args=[now, now + int(lease_s * 1000), limit, c.VIDEO_PREFIX, c.VIDEO_WATCHES_SUFFIX],
        )
        return [
            (video_from_hash(vid, dict(zip(flat[::2], flat[1::2], strict=True))), int(waiting))
            for vid, flat, waiting in rows
        ]

    async def waiting(self, video_id: str) -> list[str]:
        """The watches waiting on a video, sorted (HSCAN: each call bounded, however many)."""
        ids: set[str] = set()
        cursor = 0
        key = c.VIDEO_WATCHES_KEY.format(video_id)
        while True:
            cursor, batch = await self.redis.hscan(key, cursor, count=SCAN_COUNT)
            ids.update(batch)
            if cursor == 0:
                return sorted(ids)

    async def save(self, updates: Iterable[tuple[VideoState, int | None]]) -> None:
        """Write poll results in one round trip: each is (state, next poll ms or None to
        leave the schedule alone). The watches show the video's status from its hash."""
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for state, next_ms in updates:
            fields = video_hash(state)
            if fields != state.loaded:  # most polls change nothing but the schedule
                pipe.hset(c.VIDEO_KEY.format(state.video_id), mapping=fields)
                n += 1
            if next_ms is not None:
                pipe.zadd(c.POLL_SCHEDULE_KEY, {state.video_id: next_ms}, xx=True)
                n += 1
        if n:
            await pipe.execute()

    async def release(self, video_id: str, at_ms: int | None = None) -> None:
        """Stop polling a video nobody waits on any more (its final fan-out took every
        watch out of its set, or they were cancelled) -- unless a watch registered
        meanwhile: then it is polled again at once."""
        await self._release(
            keys=[
                c.VIDEO_WATCHES_KEY.format(video_id),
                c.POLL_SCHEDULE_KEY,
                c.VIDEO_KEY.format(video_id),
            ],
            args=[video_id, now_ms() if at_ms is None else at_ms],
        )
