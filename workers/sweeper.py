"""The sweeper: retention (RELAY_RETENTION). Deletes watches final for longer than the
retention, with everything they own, a bounded batch per script call.

Every worker runs one; a short lock (``cr:sweep:lock``, it lapses by itself) lets one sweep at
a time, and each ``purge`` call decides per watch atomically, so two sweepers never delete
one watch twice even without it -- as when Redis is full and refuses the lock's write: then
every worker sweeps (``purge`` deletes before it writes, so Redis runs it when full).
A sweep walks the set of tenants (``SSCAN``) and, per tenant, the indexes of final watches
by the time they became final: members older than Redis' clock minus the retention, never
a scan of the keyspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from redis.exceptions import OutOfMemoryError

from relay import constants as c
from relay import logs
from relay.logs import Every
from relay.metrics import WATCHES_PURGED
from relay.store import Store
from relay.tasks import finish

log = logs.get("workers.sweeper")
# watches per purge call: ~0.7 ms of Redis (13.6-19.5 µs a deleted watch in the lifetime
# scenario, 2026-12-07; calls of 25 made no difference to the API's p99 there:
# docs/performance.md)
BATCH = 50
# seconds between sweeps: a twentieth of the retention, within [0.5 s, 60 s] -- a 7-day
# retention sweeps once a minute (each sweep costs every tenant five script calls even when
# nothing is due), a retention of seconds (tests, demos) twice a second
MIN_INTERVAL, MAX_INTERVAL = 0.5, 60.0
FULL_LOG_S = 60.0  # between two "sweeping without the lock" lines while Redis stays full


class Sweeper:
    """Runs :meth:`sweep` every interval until stopped."""

    def __init__(self, store: Store, *, retention_s: float, batch: int = BATCH) -> None:
        self.store = store
        self.retention_ms = int(retention_s * 1000)
        self.batch = batch
        self.interval = min(max(retention_s / 20, MIN_INTERVAL), MAX_INTERVAL)
        self.owner = f"{os.getpid()}-{id(self):x}"
        self._full_log = Every(FULL_LOG_S)
        self.purged = 0
        self._stopping = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweep in the background."""
        self._runner = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self, grace_s: float) -> None:
        """Stop after the script call in flight (each is bounded)."""
        self._stopping.set()
        if self._runner is not None:
            await finish(self._runner, grace_s)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except Exception as exc:  # Redis away: try again next time, never die
                log.warning("sweep failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval)

    async def sweep(self) -> int:
        """One sweep (when this worker holds the lock): the number of watches deleted."""
        ttl = int(max(self.interval, 1.0) * 1000)
        try:
            if not await self.store.retention.lock(self.owner, ttl):
                return 0
        except OutOfMemoryError:
            # Redis full (noeviction) refuses the lock's SET, and the sweep is what frees
            # memory: sweep without it (each purge call decides per watch atomically, so
            # sweepers at once cost Redis some work, never a watch deleted twice)
            if self._full_log.due():
                log.warning("redis full: sweeping without the lock")
        started = time.monotonic()
        deleted = calls = 0
        cursor = 0
        while not self._stopping.is_set():
            cursor, tenants = await self.store.retention.tenants(cursor)
            for tenant in tenants:
                for status in c.FINAL_STATUSES:
                    while not self._stopping.is_set():
                        n, read = await self.store.retention.purge(
                            tenant, status, retention_ms=self.retention_ms, limit=self.batch
                        )
                        calls += 1
                        if n:
                            deleted += n
                            WATCHES_PURGED.inc(n)
                        if read < self.batch:
                            break
                # a tenant left with no watch (its key removed) is forgotten: its counters
                # and its member of the set of tenants are not kept for good
                if not self._stopping.is_set() and await self.store.retention.forget(tenant):
                    log.info("tenant forgotten: it holds no watch", tenant=tenant)
            if cursor == 0:
                break
        self.purged += deleted
        if deleted:
            log.info(
                "swept",
                deleted=deleted,
                calls=calls,
                seconds=round(time.monotonic() - started, 3),
                retention_s=self.retention_ms / 1000,
            )
        return deleted
