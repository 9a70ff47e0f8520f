"""Backpressure: new registrations wait while Redis is nearly full, so what was accepted
can still be delivered.

Above ``RELAY_REDIS_HIGH_WATER`` of Redis' ``maxmemory`` (nothing when it has none),
``POST /v1/watches`` and a ping (its attempt is recorded: nothing is sent that could not
be) answer 503 with ``Retry-After``; reads, cancels, deliveries and the
retention sweep go on, and registrations come back by themselves once the sweep (or the
operator) frees memory. Redis is asked at most once a second per API process, by one
request at a time, so the check costs Redis nothing per registration.
"""

from __future__ import annotations

import asyncio
import time

from relay import logs
from relay.api.problems import ProblemError
from relay.store.limits import Limits

log = logs.get("relay.api.backpressure")
REFRESH_S = 1.0  # how long a reading of Redis' memory is trusted
RETRY_AFTER_S = 5  # what a refused registration is told to wait
PAUSED = "registrations and pings paused: Redis memory above the high-water mark"


class Backpressure:
    """Refuses registrations while Redis' memory is above the high-water mark."""

    def __init__(self, limits: Limits, high_water: float, *, refresh_s: float = REFRESH_S):
        self.limits = limits
        self.high_water = high_water
        self.refresh_s = refresh_s
        self.used = 0
        self.limit = 0
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def over(self) -> bool:
        """Whether the last reading was above the mark."""
        return self.limit > 0 and self.used >= self.high_water * self.limit

    async def check(self, what: str = "registrations") -> None:
        """Raise a 503 problem while Redis is above the mark (reading it when stale);
        *what* (plural) is what waits."""
        if time.monotonic() - self._read_at >= self.refresh_s:
            async with self._lock:
                if time.monotonic() - self._read_at >= self.refresh_s:
                    was = self.over
                    self.used, self.limit = await self.limits.memory()
                    self._read_at = time.monotonic()
                    if self.over != was:
                        log.warning(
                            PAUSED if self.over else "registrations and pings resumed",
                            used_memory=self.used,
                            maxmemory=self.limit,
                            high_water=self.high_water,
                        )
        if self.over:
            raise ProblemError(
                503,
                "Storage nearly full",
                f"the relay's storage is above {self.high_water:.0%} of its memory; "
                f"{what} resume as finished watches age out",
                slug="storage-full",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
