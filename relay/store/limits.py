"""The limits shared by every replica through Redis: the upstream request budget and its 429
pause, the API's per-key request counters, and Redis' memory against its limit.
(Idempotency-Key records are made with their watch: :meth:`relay.store.Watches.create`.)"""

from __future__ import annotations

from redis.asyncio import Redis

from relay import constants as c
from relay.store import scripts
from relay.store.feeds import Feed

RESUME_CHUNK = 2_000  # put-off polls one resume_upstream call moves (a ZADD of each)


class Limits:
    """``store.limits``: counters and reservations with a short life."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._tokens = scripts.register(redis, "upstream_tokens")
        self._pause = scripts.register(redis, "pause_upstream")
        self._resume = scripts.register(redis, "resume_upstream")

    # --- upstream budget ---------------------------------------------------------------

    async def upstream_tokens(self, want: int, rps: float) -> tuple[int, int]:
        """Take up to *want* upstream requests from the budget of Redis' current second,
        shared by every worker. Returns (granted, ms): granted > 0 with the ms they may be
        sent in (their life: up to the last c.UPSTREAM_SEND_MARGIN_MS of the second; tokens
        granted within those are charged to the next second too, where a request on its way
        may land); 0 (spent) with the ms to the next second; -1 (paused) with the ms left of
        the pause."""
        granted, ms = await self._tokens(
            keys=[c.UPSTREAM_RATE_KEY.format(""), c.UPSTREAM_PAUSE_KEY],
            args=[max(int(rps), 1), want, c.UPSTREAM_SEND_MARGIN_MS],
        )
        return int(granted), int(ms)

    async def pause_upstream(self, pause_ms: int) -> None:
        """Pause all workers' upstream requests for *pause_ms* from Redis' now (keeps a
        later pause); a new pause is published on its :meth:`pause_feed`."""
        await self._pause(
            keys=[c.UPSTREAM_PAUSE_KEY], args=[max(pause_ms, 1), c.UPSTREAM_PAUSE_CHANNEL]
        )

    async def upstream_pause_left_ms(self) -> int:
        """The ms left of the upstream pause (0: none)."""
        return max(int(await self.redis.pttl(c.UPSTREAM_PAUSE_KEY)), 0)

    async def resume_upstream(self, lease_s: float) -> tuple[int, int]:
        """End the upstream pause now, for every worker (an operator's override of a
        Retry-After), making due now the polls put off to its end (not those a poller holds
        leases of *lease_s*: they are its own). Returns (the ms it had left, 0: there was
        none; the polls made due). A call moves at most RESUME_CHUNK polls (bounded
        script): while one moves that many, the next moves more."""
        keys = [c.UPSTREAM_PAUSE_KEY, c.POLL_SCHEDULE_KEY, c.UPSTREAM_RESUMING_KEY]
        args: list[str | int] = [
            c.UPSTREAM_PAUSE_CHANNEL,
            int(lease_s * 1000) + 1000,
            5000,
            RESUME_CHUNK,
        ]
        left, moved, pause_end = await self._resume(keys=keys, args=[*args, 0])
        total = int(moved)
        while int(moved) == RESUME_CHUNK:
            _, moved, _ = await self._resume(keys=keys, args=[*args, pause_end])
            total += int(moved)
        return int(left), total

    async def workers_lease_s(self) -> float | None:
        """The longest RELAY_LEASE of the workers seen in the last ten minutes (each says
        its own every few seconds: :func:`relay.store.upkeep.worker_round`), or None when none was
        (none running, or only workers of a release that does not say it)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(c.WORKER_LEASES_KEY)
        pipe.time()
        seen, (secs, micros) = await pipe.execute()
        now = int(secs) * 1000 + int(micros) // 1000
        live = [int(lease) for lease, until in seen.items() if int(until) > now]
        stale = [lease for lease, until in seen.items() if int(until) <= now]
        if stale:  # (a lease no worker holds any more: dropped, so the hash stays small)
            await self.redis.hdel(c.WORKER_LEASES_KEY, *stale)  # type: ignore[misc]
        return max(live) / 1000 if live else None

    def pause_feed(self) -> Feed:
        """The upstream pauses any worker sets from now on, as they are set: each one's
        length in ms, or ``0`` when an operator ends the pause (:mod:`relay.store.feeds`)."""
        return Feed(self.redis, c.UPSTREAM_PAUSE_CHANNEL)

    # --- API rate limit ----------------------------------------------------------------

    async def rate_add(
        self,
        second: int,
        counts: dict[str, int],
        ended: tuple[int, dict[str, int]] | None = None,
    ) -> dict[str, int]:
        """Add API requests per key id (*counts*, may be empty) to the counters of *second*
        (and *ended*'s to an earlier second's); return the totals of every key id counted
        in *second*, by any replica -- at most every configured API key, twice (its
        admitted requests, and under ``?`` + id all its requests). One round trip:
        the counters of a second are one hash (written with its TTL in one transaction)."""
        pipe = self.redis.pipeline(transaction=True)
        adds = [(second, counts)] if ended is None else [ended, (second, counts)]
        for at, add in adds:
            key = c.RATE_LIMIT_KEY.format(at)
            for key_id, n in add.items():
                pipe.hincrby(key, key_id, n)
            if add:
                pipe.pexpire(key, 2000)
        pipe.hgetall(c.RATE_LIMIT_KEY.format(second))
        replies = await pipe.execute()
        totals: dict[str, str] = replies[-1]
        return {key_id: int(n) for key_id, n in totals.items()}

    # --- memory -------------------------------------------------------------------------

    async def memory(self) -> tuple[int, int]:
        """Redis' ``used_memory`` and ``maxmemory`` in bytes (0: no limit)."""
        info = await self.redis.info("memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
