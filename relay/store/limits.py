"""The limits shared by every replica through Redis: the upstream request budget and its 429
pause, the API's per-key request counters, and Redis' memory against its limit.
(Idempotency-Key records are made with their watch: :meth:`relay.store.Watches.create`.)"""

from __future__ import annotations

from redis.asyncio import Redis

from relay import constants as c
from relay.domain.clock import now_ms
from relay.store import scripts


class Limits:
    """``store.limits``: counters and reservations with a short life."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._tokens = scripts.register(redis, "upstream_tokens")
        self._pause = scripts.register(redis, "pause_upstream")

    # --- upstream budget ---------------------------------------------------------------

    async def upstream_tokens(self, want: int, rps: float) -> int:
        """Take up to *want* upstream requests from this second's budget, shared by every
        worker. Returns the number granted, or minus the milliseconds left of a pause."""
        granted = await self._tokens(
            keys=[c.UPSTREAM_RATE_KEY.format(""), c.UPSTREAM_PAUSE_KEY],
            args=[max(int(rps), 1), want, now_ms()],
        )
        return int(granted)

    async def pause_upstream(self, until_ms: int) -> None:
        """Pause all workers' upstream requests until *until_ms* (keeps the later pause)."""
        await self._pause(keys=[c.UPSTREAM_PAUSE_KEY], args=[until_ms, now_ms()])

    # --- API rate limit ----------------------------------------------------------------

    async def rate_add(self, second: int, counts: dict[str, int]) -> dict[str, int]:
        """Add API requests per key id to the counters of *second*; return the totals."""
        pipe = self.redis.pipeline(transaction=False)
        for key_id, n in counts.items():
            key = c.RATE_LIMIT_KEY.format(key_id, second)
            pipe.incrby(key, n)
            pipe.pexpire(key, 2000)
        replies = await pipe.execute()
        return {key_id: int(replies[2 * i]) for i, key_id in enumerate(counts)}

    # --- memory -------------------------------------------------------------------------

    async def memory(self) -> tuple[int, int]:
        """Redis' ``used_memory`` and ``maxmemory`` in bytes (0: no limit)."""
        info = await self.redis.info("memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
