"""The limits shared by every replica through Redis: the upstream request budget and its 429
pause, the API's per-key request counters, and the Idempotency-Key reservations."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from relay import constants as c
from relay.store import scripts


class Limits:
    """``store.limits``: counters and reservations with a short life."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._tokens = scripts.register(redis, "upstream_tokens")
        self._pause = scripts.register(redis, "pause_upstream")

    # --- upstream budget ---------------------------------------------------------------

    async def upstream_tokens(self, want: int, rps: float) -> tuple[int, int]:
        """Take up to *want* upstream requests from the budget of Redis' current second,
        shared by every worker. Returns (granted, ms): granted > 0 with the ms left of that
        second (the tokens' life); 0 (spent) with the ms to the next second; -1 (paused)
        with the ms left of the pause."""
        granted, ms = await self._tokens(
            keys=[c.UPSTREAM_RATE_KEY.format(""), c.UPSTREAM_PAUSE_KEY],
            args=[max(int(rps), 1), want],
        )
        return int(granted), int(ms)

    async def pause_upstream(self, pause_ms: int) -> None:
        """Pause all workers' upstream requests for *pause_ms* from Redis' now (keeps a
        later pause)."""
        await self._pause(keys=[c.UPSTREAM_PAUSE_KEY], args=[max(pause_ms, 1)])

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

    # --- idempotency -------------------------------------------------------------------

    async def idempotency_reserve(
        self, tenant: str, key_hash: str, fingerprint: str, watch_id: str
    ) -> dict[str, str] | None:
        """Reserve an Idempotency-Key for a new watch. None when reserved; otherwise the
        earlier reservation (``fp`` and ``watchId``)."""
        rkey = c.IDEMPOTENCY_KEY.format(tenant, key_hash)
        value = orjson.dumps({"fp": fingerprint, "watchId": watch_id})
        if await self.redis.set(rkey, value, nx=True, ex=c.IDEMPOTENCY_TTL):
            return None
        raw = await self.redis.get(rkey)
        if raw is None:  # expired in between: reserve again
            return await self.idempotency_reserve(tenant, key_hash, fingerprint, watch_id)
        earlier: dict[str, str] = orjson.loads(raw)
        return earlier

    async def idempotency_release(self, tenant: str, key_hash: str) -> None:
        """Drop a reservation whose watch could not be created."""
        await self.redis.delete(c.IDEMPOTENCY_KEY.format(tenant, key_hash))
