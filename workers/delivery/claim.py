"""Claiming deliveries and queueing them for the lanes: the offers of this worker's poller
first, then whatever is due; renewing a claim before a late attempt, handing claims back.

A queued :class:`Job` holds a claim; its lease deadline is the claim's token
(:meth:`relay.store.deliveries.Deliveries.extend`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relay import constants as c
from relay.domain.delivery import DeliveryClaim, NewEvent
from relay.domain.watch import Watch
from relay.store import Store
from workers.delivery.links import LinkRefresher
from workers.delivery.logger import log
from workers.pump import Pump

OFFERED_BYTES = 32 * 2**20  # event bodies held for claiming without a read-back, at most
CLAIM_AHEAD = 4  # deliveries claimed per lane, at most: the one in flight and three queued


@dataclass(slots=True)
class Job:
    """One claimed delivery waiting for a lane."""

    watch: Watch
    body: bytes
    deadline: int  # the claim's lease deadline (ms), its token
    done: Callable[[], None]  # the attempt is over (or skipped): frees the claim's slot


class Batch:
    """The jobs of one claimed batch: :meth:`wait` returns when a lane has finished each."""

    __slots__ = ("_future", "_left", "_release")

    def __init__(self, size: int, release: Callable[[], None]) -> None:
        self._left = size
        self._release = release
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(self) -> None:
        self._release()
        self._left -= 1
        if self._left == 0 and not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        if self._left:
            await self._future


class Claimer(Pump[DeliveryClaim]):
    """Claims due deliveries and queues them as :class:`Job` s in :attr:`jobs`, waking a
    parked lane (:attr:`idle`) for each."""

    schedule = c.DELIVERY_SCHEDULE_KEY
    name = "deliverer"

    def __init__(self, store: Store, *, lanes: int, lease_s: float, links: LinkRefresher) -> None:
        # claims run up to three lanes' worth ahead of the lanes: under load a claim's answer
        # takes a few loop turns of milliseconds each to reach them, and none should wait
        super().__init__(store, concurrency=CLAIM_AHEAD * lanes, lease_s=lease_s, batch=512)
        self.links = links
        self.jobs: deque[Job] = deque()
        self.idle: deque[asyncio.Future[None]] = deque()  # a parked lane's wake-up
        self._offered: deque[tuple[Watch, bytes]] = deque()
        self._offered_bytes = 0

    def offer(self, created: Sequence[tuple[Watch, NewEvent]], at_ms: int) -> None:
        """Events this worker has just created (at *at_ms*), with their watches: claimed
        from here without reading them back. They are due in the schedule all the same, so
        any worker may take them first; what is offered beyond the memory cap is left to
        the schedule alone."""
        for w, ev in created:
            if self._offered_bytes + len(ev.body) > OFFERED_BYTES:
                break
            w.begin_event(ev, at_ms)
            self._offered.append((w, ev.body))
            self._offered_bytes += len(ev.body)
        self.wake()

    async def claim(self, limit: int) -> Sequence[DeliveryClaim]:
        """Claim deliveries: the offered ones first, then any due in the schedule."""
        if self._offered:
            held = [self._offered.popleft() for _ in range(min(limit, len(self._offered)))]
            self._offered_bytes -= sum(len(body) for _, body in held)
            claimed = await self.store.deliveries.claim_known(held, lease_s=self.lease_s)
            if claimed or self._offered:
                return claimed
        return await self.store.deliveries.claim(limit=limit, lease_s=self.lease_s)

    async def work(self, items: Sequence[DeliveryClaim], release: Callable[[], None]) -> None:
        """Queue a claimed batch for the lanes; return when all of it is done."""
        due: list[tuple[Watch, bytes]] = []
        idle: list[str] = []
        deadline = items[0].deadline_ms if items else 0
        for item in items:
            watch, body = item.watch, item.body
            if watch is None or body is None or watch.status != "delivering":
                idle.append(item.watch_id)  # cancelled, or nothing to send: off the schedule
                release()
            else:
                due.append((watch, body))
        await self.store.deliveries.unschedule(idle)
        due, deadline = await self.links.refresh(due, deadline, release)
        if not due:
            return
        batch = Batch(len(due), release)
        self.jobs.extend(Job(w, body, deadline, batch.done) for w, body in due)
        self.wake_lanes(len(due))
        await batch.wait()

    def wake_lanes(self, n: int) -> None:
        """Wake up to *n* parked lanes."""
        while n > 0 and self.idle:
            wake = self.idle.popleft()
            if not wake.done():
                wake.set_result(None)
                n -= 1

    async def renew(self, job: Job) -> bool:
        """Extend a job's claim before an attempt could outlive it; False when it is no
        longer ours."""
        ours, deadline = await self.store.deliveries.extend(
            [job.watch.id], job.deadline, self.lease_s
        )
        job.deadline = deadline
        return job.watch.id in ours

    async def hand_back(self, jobs: Sequence[Job]) -> None:
        """Make the claims of jobs that were never started due again at once, for the next
        worker (instead of after their lease)."""
        by_deadline: dict[int, list[str]] = {}
        for job in jobs:
            by_deadline.setdefault(job.deadline, []).append(job.watch.id)
        try:
            for deadline, members in by_deadline.items():
                await self.store.deliveries.extend(members, deadline, 0)
        except Exception as exc:  # Redis away: the leases run out by themselves
            log.warning("handing back claims failed", error=type(exc).__name__)
