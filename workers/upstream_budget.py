"""The upstream request budget (RELAY_UPSTREAM_RPS), shared by every worker through Redis.

Tokens are taken from Redis a few at a time and spent locally within the same second, so a
busy worker makes one Redis round trip per handful of upstream requests, not one each. The
seconds are Redis' (``TIME`` in the script), and a grant lives only for what is left of its
second as Redis told it (measured on this host's monotonic clock), so a worker whose wall
clock is off shares the same buckets as the others and never spends a second's tokens in
another. A request sent in the last 100 ms of a second (``UPSTREAM_SEND_MARGIN_MS``) may
reach the upstream in the next: tokens granted before those 100 ms are not spent in them,
and tokens granted in them count in both seconds. A 429
from the upstream pauses every worker until its Retry-After has passed; a caller holding a
lease does not sleep through a long pause (:class:`Paused`), it reschedules its work. A
gate learns of another worker's pause as it is set (:meth:`UpstreamGate.follow_pauses`, a
Redis subscription), so the tokens it holds of this second wait out the pause too; and of
an operator's ``clip-relay upstream resume`` the same way, which wakes whoever waits. What
a lost subscription missed is read from Redis when it is back and every 10 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from relay.metrics import UPSTREAM_WAIT
from relay.store.limits import Limits
from workers.feeds import Follower

CATCH_UP_SLACK_S = 1.0  # a hold this close to its end is left to end by itself


class Paused(Exception):
    """The upstream is paused (a 429) until :attr:`until` (epoch seconds)."""

    def __init__(self, until: float) -> None:
        super().__init__(f"upstream paused until {until:.3f}")
        self.until = until


class UpstreamGate:
    """``await gate.acquire()`` before each upstream request."""

    def __init__(self, limits: Limits, rps: float, *, chunk: int = 64) -> None:
        self._limits = limits
        self._rps = rps
        self._chunk = max(1, min(chunk, int(rps // 10)))
        self._tokens = 0
        self._until = 0.0  # (monotonic) when the tokens held end: their second is over
        self._lock = asyncio.Lock()
        self._sleeps = 0  # times a caller slept on the budget or a pause (its queue waited)
        self.paused_until = 0.0  # as last learnt from Redis (epoch seconds)
        self._paused_mono = 0.0  # the same end on this host's monotonic clock (what is slept)
        self._resumed = asyncio.Event()  # set (and replaced) when a pause is ended early
        self._on_resume: list[Callable[[], None]] = []  # ... and these are called
        self._pausing = 0  # pauses of this gate on their way to Redis
        self._pauses = Follower(
            lambda: limits.pause_feed(),  # (looked up when followed: a stand-in may have none)
            self._heard,
            "upstream pauses",
            self._catch_up,
        )

    async def acquire(self, *, max_pause: float = float("inf")) -> None:
        """Wait for one request's worth of the shared budget. A 429 pause longer than
        *max_pause* raises :class:`Paused` instead of waiting it out. The time waited,
        also behind other callers, counts in ``relay_upstream_wait_seconds_total`` (only the
        caller at the head of the queue counted before: 20 callers waiting 84 s in all
        showed as 8.7 s, a review found)."""
        entered, slept = time.monotonic(), self._sleeps
        async with self._lock:
            # (behind callers that slept on the budget or a pause: that wait counts; behind
            # their round trips for tokens only, it does not)
            waited = time.monotonic() - entered if self._sleeps != slept else 0.0
            try:
                while True:
                    left = self._paused_mono - time.monotonic()
                    if left > max_pause:
                        raise Paused(self.paused_until)
                    if left > 0:  # paused: the tokens held wait too (till it ends or is ended)
                        t0 = time.monotonic()
                        self._sleeps += 1
                        resumed = self._resumed
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(resumed.wait(), left)
                        waited += time.monotonic() - t0
                        continue
                    if self._tokens > 0 and time.monotonic() < self._until:
                        self._tokens -= 1
                        return
                    sent = time.monotonic()
                    granted, ms = await self._limits.upstream_tokens(self._chunk, self._rps)
                    if granted > 0:  # good for what is left of Redis' second (or till its margin)
                        self._until, self._tokens = sent + ms / 1000, granted - 1
                        return
                    self._tokens = 0
                    if granted < 0:  # paused: ms left (waited out at the top)
                        self._hold(ms / 1000)
                        continue
                    pause = ms / 1000 + 0.001  # this second's budget is spent
                    waited += pause
                    self._sleeps += 1
                    await asyncio.sleep(pause)
            finally:
                if waited:
                    UPSTREAM_WAIT.inc(waited)

    async def pause(self, seconds: float) -> None:
        """Pause every worker's upstream requests for *seconds* (after a 429)."""
        self._hold(seconds)
        self._pausing += 1
        try:
            await self._limits.pause_upstream(int(seconds * 1000))
        finally:
            self._pausing -= 1

    def _hold(self, seconds: float) -> None:
        """No request for *seconds* from now (a later end already known is kept)."""
        self._tokens = 0
        self.paused_until = max(self.paused_until, time.time() + seconds)
        self._paused_mono = max(self._paused_mono, time.monotonic() + seconds)

    def paused_s(self) -> float:
        """Seconds the pause has left (0: none), on this host's monotonic clock: a step of
        its wall clock neither lengthens nor ends it."""
        return max(0.0, self._paused_mono - time.monotonic())

    def on_resume(self, wake: Callable[[], None]) -> None:
        """Call *wake* whenever a pause is ended before its time (a poller sleeping the
        pause out polls again at once)."""
        self._on_resume.append(wake)

    def _resume(self) -> None:
        """The pause is over before its time (an operator ended it): wake whoever waits."""
        self.paused_until = self._paused_mono = 0.0
        self._resumed.set()
        self._resumed = asyncio.Event()
        for wake in self._on_resume:
            wake()

    def _heard(self, message: str) -> None:
        """A pause set by any worker, as the feed tells it (its length in ms; 0: ended)."""
        ms = float(message)  # (not a number: the follower logs it and goes on)
        if not math.isfinite(ms) or ms < 0:
            raise ValueError("not a pause length")
        if ms == 0:
            self._resume()
        else:
            self._hold(ms / 1000)

    async def _catch_up(self) -> None:
        """What the feed missed while it was away, from Redis: a pause set, or one ended."""
        left = await self._limits.upstream_pause_left_ms()
        if left > 0:
            self._hold(left / 1000)
        elif not self._pausing and self._paused_mono > time.monotonic() + CATCH_UP_SLACK_S:
            self._resume()  # (not while a pause of our own is on its way to Redis)

    async def follow_pauses(self, ready: asyncio.Event | None = None) -> None:
        """Learn of every worker's 429 pause as it is set, until :meth:`stop_following`;
        *ready* is set once subscribed. Without it a gate would learn of another worker's
        pause only at its next Redis round trip, spending the tokens it holds meanwhile."""
        await self._pauses.run(ready)

    def stop_following(self) -> None:
        """End :meth:`follow_pauses` (at once while it waits for a message)."""
        self._pauses.stop()
