"""What the dashboard (``/ui/``) reads and counts beyond the watches themselves: a tenant's
delivery attempts per minute (written by ``settle.lua``, read here), the sign-in attempts
per client address, and the sessions signed out before their cookie expires."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from relay import constants as c


@dataclass(frozen=True, slots=True)
class Minute:
    """A tenant's delivery attempts in one minute."""

    minute: int  # minutes since the epoch
    ok: int
    fail: int


class Dashboard:
    """The dashboard's counters, each page's read in one round trip."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def attempts_per_minute(self, tenant: str, now_ms: int, minutes: int) -> list[Minute]:
        """The tenant's attempts in each of the last *minutes* minutes, oldest first, the
        current minute last (one pipeline of HMGETs: one round trip)."""
        last = now_ms // 60_000
        span = range(last - minutes + 1, last + 1)
        pipe = self.redis.pipeline(transaction=False)
        for minute in span:
            pipe.hmget(c.TENANT_MINUTE_KEY.format(tenant, minute), ["ok", "fail"])
        rows = await pipe.execute()
        return [
            Minute(minute, int(ok or 0), int(fail or 0))
            for minute, (ok, fail) in zip(span, rows, strict=True)
        ]

    async def sign_in_attempt(self, address: str, now_ms: int) -> int:
        """Count a sign-in attempt from *address* in the current minute; the count so far
        (one round trip; the counter expires with its minute: the count and its TTL are one
        transaction, so no counter is ever left without one)."""
        key = c.UI_LOGIN_KEY.format(address, now_ms // 60_000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
        return int(count)

    async def end_session(self, session_id: str, lifetime_s: float) -> None:
        """Mark a session signed out, for as long as its cookie could still be valid."""
        await self.redis.set(c.UI_ENDED_KEY.format(session_id), 1, ex=max(int(lifetime_s), 1))

    async def session_ended(self, session_id: str) -> bool:
        """Was this session signed out (one round trip per signed-in request)?"""
        return bool(await self.redis.exists(c.UI_ENDED_KEY.format(session_id)))
