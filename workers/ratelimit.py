"""The upstream request budget (RELAY_UPSTREAM_RPS), shared by every worker through Redis.

Tokens are taken from Redis a few at a time and spent locally within the same second, so a
busy worker makes one Redis round trip per handful of upstream requests, not one each. A 429
from the upstream pauses every worker until its Retry-After has passed.
"""

from __future__ import annotations

import asyncio
import time

from relay.metrics import UPSTREAM_WAIT
from relay.store import Store


class UpstreamGate:
    """``await gate.acquire()`` before each upstream request."""

    def __init__(self, store: Store, rps: float, *, chunk: int = 64) -> None:
        self._store = store
        self._rps = rps
        self._chunk = max(1, min(chunk, int(rps // 10)))
        self._tokens = 0
        self._second = -1
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for one request's worth of the shared budget (and for any 429 pause)."""
        async with self._lock:
            waited = 0.0
            while True:
                now = time.time()
                second = int(now)
                if second == self._second and self._tokens > 0:
                    self._tokens -= 1
                    break
                granted = await self._store.upstream_tokens(self._chunk, self._rps)
                if granted > 0:
                    self._second, self._tokens = second, granted - 1
                    break
                # budget spent (0) or paused (-ms): sleep to the next second or the pause end
                pause = -granted / 1000 if granted < 0 else (second + 1) - now + 0.001
                waited += pause
                await asyncio.sleep(pause)
            if waited:
                UPSTREAM_WAIT.inc(waited)

    async def pause(self, seconds: float) -> None:
        """Pause every worker's upstream requests for *seconds* (after a 429)."""
        self._tokens = 0
        await self._store.pause_upstream(int((time.time() + seconds) * 1000))
