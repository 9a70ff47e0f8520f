"""Retention: deleting watches final for longer than RELAY_RETENTION, with all they own.

The sweep reads each tenant's index of final watches by the time they became final
(``cr:t:{tenant}:s:{status}``), never the keyspace; one ``purge`` script call deletes a
bounded batch of one tenant and status atomically, so sweepers on several workers never
delete one watch twice. A short lock lets one worker sweep at a time (the scripts would be
safe without it; it saves the others the reads).
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from relay import constants as c
from relay.store import scripts

# a tenant's index or a schedule shrunk to this many members is rebuilt compact (Redis keeps
# a zset's hash table at its peak size otherwise): Redis' default zset-max-listpack-entries
COMPACT_ZSET = 128
COMPACT_VALUE = 64  # ... and zset-max-listpack-value: a longer member keeps it a skiplist


class Retention:
    """``store.retention``: the tenants, and deleting their old final watches."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._purge = scripts.register(redis, "purge")
        self._forget = scripts.register(redis, "forget_tenant")
        self._compact: tuple[int, int] | None = None  # as this Redis is configured (read once)

    async def _compact_size(self) -> tuple[int, int]:
        """The size at which a zset is rebuilt compact, and the longest member a compact one
        holds: Redis' own listpack limits when set lower than the defaults (a rebuild past
        them would stay a skiplist, rebuilt again on every call), COMPACT_ZSET and
        COMPACT_VALUE when they cannot be read (CONFIG refused: managed Redis)."""
        if self._compact is None:
            try:
                got = await self.redis.config_get("zset-max-listpack-*")
                self._compact = (
                    min(COMPACT_ZSET, int(got["zset-max-listpack-entries"])),
                    int(got.get("zset-max-listpack-value", COMPACT_VALUE)),
                )
            except (ResponseError, KeyError, ValueError):  # refused, or not this Redis' knob
                self._compact = (COMPACT_ZSET, COMPACT_VALUE)
            except RedisError:  # Redis away a moment: this call only, asked again next time
                return COMPACT_ZSET, COMPACT_VALUE
        return self._compact

    async def tenants(self, cursor: int, count: int = 100) -> tuple[int, list[str]]:
        """One bounded step through the set of tenants (SSCAN): (next cursor, tenants)."""
        nxt, batch = await self.redis.sscan(c.TENANTS_KEY, cursor, count=count)
        return int(nxt), list(batch)

    async def purge(
        self, tenant: str, status: str, *, retention_ms: int, limit: int
    ) -> tuple[int, int]:
        """Delete up to *limit* of *tenant*'s watches final in *status* for longer than
        *retention_ms* (Redis' clock). Returns (deleted, index members read): fewer read
        than *limit* means none older is left."""
        if not 0 < limit <= scripts.SCRIPT_BATCH:
            raise ValueError(f"limit must be 1..{scripts.SCRIPT_BATCH}")
        deleted, read = await self._purge(
            keys=[
                c.TENANT_FINAL_KEY.format(tenant, status),
                c.TENANT_INDEX_KEY.format(tenant),
                c.TENANT_COUNTS_KEY.format(tenant),
                c.WATCH_COUNTS_KEY,
                c.DELIVERY_SCHEDULE_KEY,
                c.EXPIRY_SCHEDULE_KEY,
                c.POLL_SCHEDULE_KEY,
            ],
            args=[
                max(int(retention_ms), 0),
                limit,
                status,
                c.WATCH_PREFIX,
                c.REGISTRATION_SUFFIX,
                c.TENANT_PREFIX + tenant,
                c.VIDEO_PREFIX,
                c.VIDEO_WATCHES_SUFFIX,
                c.SOURCE_PREFIX,
                *await self._compact_size(),
            ],
        )
        return int(deleted), int(read)

    async def forget(self, tenant: str) -> bool:
        """Forget *tenant* if it holds no watch (``forget_tenant.lua``): its counters and its
        member of the set of tenants go. True when it was forgotten."""
        keys = [
            c.TENANTS_KEY,
            c.TENANT_INDEX_KEY.format(tenant),
            c.TENANT_COUNTS_KEY.format(tenant),
        ]
        keys += [c.TENANT_FINAL_KEY.format(tenant, status) for status in c.FINAL_STATUSES]
        return bool(await self._forget(keys=keys, args=[tenant]))

    async def lock(self, owner: str, ttl_ms: int) -> bool:
        """Take the sweep lock for *ttl_ms* (it is never released early: it lapses)."""
        return bool(await self.redis.set(c.SWEEP_LOCK_KEY, owner, nx=True, px=max(ttl_ms, 1)))
