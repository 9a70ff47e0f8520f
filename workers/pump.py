"""A pump: claims due members of a schedule zset in batches and works on them concurrently.

The poller and the deliverer are pumps. Claiming moves a member's score to a lease deadline
(and returns what the work needs in the same round trip), so a worker that dies mid-work
loses its claims after the lease and another worker takes them up. ``stop()`` stops
claiming and waits (up to a grace period) for the work in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from relay import logs
from relay.domain.clock import now_ms
from relay.store import Store
from relay.tasks import finish, finish_all

log = logs.get("workers.pump")
T = TypeVar("T")
IDLE_BACKOFF = 8  # an idle pump's sleep grows up to this many times its idle_s


class Pump(Generic[T]):
    """Base class: subclasses implement :meth:`claim` and :meth:`work`."""

    schedule: str = ""
    name: str = "pump"

    def __init__(
        self,
        store: Store,
        *,
        concurrency: int,
        lease_s: float,
        batch: int = 256,
        idle_s: float = 0.05,
    ) -> None:
        self.store = store
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.batch = batch
        # an idle pump looks again after idle_s, then twice as long each time it finds
        # nothing, up to IDLE_BACKOFF times idle_s: work scheduled by another process (a
        # registration's first poll, deliveries left due by another worker) is seen within
        # that, and an idle worker costs Redis a few commands a second, not a few dozen.
        # Work due at a known time is claimed then (the sleep ends at the next due score),
        # and work of this process wakes it at once (wake()).
        self.idle_s = idle_s
        self._idle = idle_s  # the idle sleep now
        # while work is in flight, claim only once this many slots are free: a claim is a
        # round trip, and claiming one item per freed slot would spend more time claiming
        # than working
        self.min_claim = max(1, min(batch, concurrency // 4))
        self.inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # set to end an idle sleep early
        # (loop time) the schedule had nothing due for this pump before then when it last
        # looked: work handed over directly (nudge()) does not make it look again sooner
        self._quiet_until = 0.0
        self._woken = 0  # wake() calls: one during a next-due read voids what it learnt
        self._capacity = asyncio.Event()
        self.freed = asyncio.Event()  # set whenever work finishes (for waiters on room)
        self._runner: asyncio.Task[None] | None = None

    async def claim(self, limit: int) -> Sequence[T]:
        """Claim up to *limit* due items for the lease."""
        raise NotImplementedError

    def handed(self, limit: int) -> Sequence[T]:
        """Up to *limit* items handed to this pump directly (see :meth:`nudge`), taken
        before the schedule is looked at; none by default."""
        return ()

    async def work(self, items: Sequence[T], release: Callable[[], None]) -> None:
        """Handle one claimed batch. Call *release* as each item is finished to free its
        slot early; slots not released are freed when the batch returns."""
        raise NotImplementedError

    def wake(self) -> None:
        """New work was just scheduled: look for it now rather than after the idle sleep."""
        self._idle = self.idle_s
        self._quiet_until = 0.0
        self._woken += 1
        self._wake.set()

    def nudge(self) -> None:
        """Work was handed to this pump directly, not scheduled: :meth:`handed` gives it
        now, and the schedule, found with nothing due a moment ago, is looked at again
        within idle_s (not after every hand-over: a fan-out hands over a chunk every few
        milliseconds, and each look is two round trips that find nothing)."""
        self._idle = self.idle_s
        self._quiet_until = min(self._quiet_until, asyncio.get_running_loop().time() + self.idle_s)
        self._wake.set()

    @property
    def quiet(self) -> bool:
        """The schedule had nothing due for this pump when it last looked, and its sleep
        since would not have ended yet (only a :meth:`nudge` came): no need to look."""
        return asyncio.get_running_loop().time() < self._quiet_until

    def start(self) -> None:
        """Start claiming in the background."""
        self._runner = asyncio.create_task(self._run(), name=f"{self.name}-pump")

    @property
    def stopping(self) -> bool:
        """:meth:`stop` was called."""
        return self._stopping.is_set()

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, give work in flight up to *grace_s* seconds, then cancel it."""
        self._stopping.set()
        self._wake.set()
        self._capacity.set()
        if self._runner is not None:
            await finish(self._runner, grace_s)
        in_flight = len(self._tasks)
        if in_flight:
            await finish_all(list(self._tasks), grace_s)
            if self._tasks:
                log.warning("stopped with work in flight", pump=self.name, batches=in_flight)

    def _free(self, n: int) -> None:
        self.inflight -= n
        self._capacity.set()
        self.freed.set()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - self.inflight
            if free < (self.min_claim if self.inflight else 1):
                self._capacity.clear()
                await self._capacity.wait()
                continue
            limit = min(free, self.batch)
            items = self.handed(limit)
            try:
                if not items and not self.quiet:  # (quiet: only hand-overs since a look)
                    items = await self.claim(limit)
            except Exception as exc:  # Redis away: keep trying, never die
                log.warning("claim failed", pump=self.name, error=f"{type(exc).__name__}: {exc}")
                await self._sleep(1.0)
                continue
            if not items:
                left = self._quiet_until - asyncio.get_running_loop().time()
                if left > 0:  # (what a nudge handed over is taken; the rest of the sleep)
                    await self._sleep(left)
                    continue
                woken = self._woken
                pause = await self._idle_for()
                if woken == self._woken:  # (else new work came meanwhile: look again)
                    self._quiet_until = asyncio.get_running_loop().time() + pause
                self._idle = min(self._idle * 2, self.idle_s * IDLE_BACKOFF)  # (wake() resets)
                await self._sleep(pause)
                continue
            self._idle = self.idle_s
            self.inflight += len(items)
            task = asyncio.create_task(self._guard(items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _guard(self, items: Sequence[T]) -> None:
        held = len(items)

        def release() -> None:
            nonlocal held
            if held > 0:
                held -= 1
                self._free(1)

        try:
            await self.work(items, release)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the claims stay leased: the items come back after the lease
            log.exception("batch failed", pump=self.name, size=len(items))
        finally:
            if held:
                self._free(held)

    async def _idle_for(self) -> float:
        try:
            due = await self.store.next_due_ms(self.schedule)
        except Exception:
            return 1.0
        if due is None:
            return self._idle
        # (scores are Redis' clock: compared with this host's corrected to it)
        return min(max((due - now_ms()) / 1000, 0.0), self._idle)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0 and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        if not self._stopping.is_set():
            self._wake.clear()
