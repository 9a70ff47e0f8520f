"""RELAY_RATE_LIMIT: requests per second per API key, across every API replica.

Counting in Redis on every request would cost a round trip each. Instead each replica counts
locally and adds its counts to a shared per-second hash in Redis every :data:`SYNC_EVERY`
seconds (one pipelined round trip for all keys), learning the totals of all replicas in the
same reply -- an idle replica too (20 round trips a second each), so its first requests
count what the others admitted. A request is allowed while the last known total plus this
replica's counts not in it yet (unsynced, or on their way to Redis in a sync) stays within
the limit: exact with one replica. With several, a replica does not know what the others
admitted since its last sync; so from its second second on, a replica admits at most its
part of the limit: its share of the key's requests (admitted or refused, counted in Redis
beside the admitted) in the second before, as last known -- all of it for a key no other
replica had requests of -- when those requests were more than the limit (a key under its
limit is not split). Replicas behind a balancer admit about the limit together (a tester's
2 replicas at 20 a second admitted 34-36 before), and a held-back key whose requests move
to another replica gets its part there from the next second on (one request a second
there until then, where it had none). A key that was not held back the second before
can still pass up to the limit at each replica in a burst within one sync interval,
never more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from relay import logs
from relay.domain.clock import now_ms
from relay.logs import Every
from relay.store.limits import Limits
from relay.tasks import finish

log = logs.get("relay.api.throttle")
SYNC_EVERY = 0.05
SEEN = "?"  # before a key id: the field of its requests, admitted or not (key ids are hex)
FAIL_LOG_S = 60.0  # between two "rate limit sync failed" lines while it lasts
SYNC_DEADLINE = 1.0  # a sync that has not ended by then (a hung Redis) is given up
STOP_WAIT = 15.0  # longer than a sync that retries against an unreachable Redis


class RateLimiter:
    """Fixed one-second windows per API key id."""

    def __init__(self, limits: Limits, limit: float) -> None:
        self._limits = limits
        self._limit = limit
        self._second = 0
        self._known: dict[str, int] = {}  # totals of all replicas, as of the last sync
        self._unsynced: Counter[str] = Counter()
        # counts of this second on their way to Redis (a sync's round trip): still counted
        self._sending: Counter[str] = Counter()
        # the counts of the second before, if it ended before they were synced
        self._ended: tuple[int, dict[str, int]] | None = None
        # this second's requests here, per SEEN + key id, and those admitted, per key id;
        # this replica's part of each key's requests in the second before (absent: all)
        self._seen: Counter[str] = Counter()
        self._mine: Counter[str] = Counter()
        self._part: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failing = 0  # syncs failed in a row
        self._fail_log = Every(FAIL_LOG_S)

    def _roll(self, second: int) -> None:
        """Start counting *second*; what the last one admitted unsynced is still added."""
        self._part = {}
        if second == self._second + 1:  # (the second just before: its parts still tell)
            for field, total in self._known.items():
                if field.startswith(SEEN):
                    n = self._seen[field]
                    everyone = total + self._unsynced[field] + self._sending[field]
                    # (only a key that was held back: one under its limit is not split, so
                    # its requests moving to another replica meet no refusal it would not)
                    if n < everyone and everyone > self._limit:
                        self._part[field[1:]] = n / everyone
        self._seen = Counter()
        self._mine = Counter()
        if self._unsynced:
            self._ended = (self._second, dict(self._unsynced))
        self._second = second
        self._known.clear()
        self._unsynced = Counter()
        self._sending = Counter()  # (the sync in flight adds them to the second they were)

    def allow(self, key_id: str) -> bool:
        """Count a request of *key_id*; False when it is over the limit (not counted)."""
        # Redis' second (every replica counts in the same); never back to the one before (a
        # new offset to Redis' clock may step a few ms back: that second's counts are gone)
        second = max(now_ms() // 1000, self._second)
        if second != self._second:
            self._roll(second)
        seen = SEEN + key_id  # (its requests, admitted or not: the replicas' parts)
        self._unsynced[seen] += 1
        self._seen[seen] += 1
        counted = self._known.get(key_id, 0) + self._unsynced[key_id] + self._sending[key_id]
        if counted + 1 > self._limit:
            return False
        part = self._part.get(key_id)
        # (its part rounded half up: a limit of 5 split in two is 3 and 3, not 2 and 2)
        if part is not None and self._mine[key_id] >= max(1, int(self._limit * part + 0.5)):
            return False
        self._unsynced[key_id] += 1
        self._mine[key_id] += 1
        return True

    async def sync(self) -> None:
        """Add this replica's counts to the shared counters and learn the totals -- also
        with nothing to add: an idle replica learns what the others admitted this second."""
        second = max(now_ms() // 1000, self._second)
        if second != self._second:  # (no request here yet this second)
            self._roll(second)
        counts, ended = dict(self._unsynced), self._ended
        self._unsynced.clear()
        self._ended = None
        sending = self._sending = Counter(counts)  # (one sync at a time: the loop's)
        try:
            totals = await self._limits.rate_add(second, counts, ended)
        except BaseException:  # (failed, or given up: counted again, sent with the next
            # sync -- counted twice in Redis if this one landed after all: the safe side)
            if self._sending is sending:  # (the same second still)
                self._unsynced.update(sending)
                if self._ended is None:
                    self._ended = ended
            raise
        finally:
            if self._sending is sending:  # (not rolled to another second meanwhile)
                self._sending = Counter()
        if second == self._second:
            self._known.update(totals)

    def start(self) -> None:
        """Sync in the background."""
        self._task = asyncio.create_task(self._loop(), name="rate-limit-sync")

    async def stop(self) -> None:
        """Stop syncing: the loop ends after the sync in progress (never cancelled midway)."""
        self._stopping.set()
        if self._task is not None:
            await finish(self._task, STOP_WAIT)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), SYNC_EVERY)
            try:
                async with asyncio.timeout(SYNC_DEADLINE):  # a hung Redis: give up, go on
                    await self.sync()
                self._failing = 0
                self._fail_log.reset()
            except Exception as exc:  # Redis away: requests fail on their own; keep going
                self._failing += 1
                if self._fail_log.due():  # at the first failure, then once a minute
                    log.warning(
                        "rate limit sync failed",
                        error=type(exc).__name__,
                        failures_in_a_row=self._failing,
                    )
