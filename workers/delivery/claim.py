"""Claiming deliveries and queueing them for the lanes: what this worker's poller claimed as
it created the events first, then whatever is due; renewing a claim before a late attempt,
handing claims back.

A queued :class:`Job` holds a claim; its lease deadline is the claim's token
(:meth:`relay.store.deliveries.Deliveries.extend`). Jobs are queued per callback origin
(:mod:`workers.delivery.origins`); those a full, slow origin would not start soon are handed
back to the schedule, due when it is expected to have room (:meth:`Claimer.defer`), so its
backlog never holds the claim slots other origins' work needs.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from relay import constants as c
from relay.domain.clips import ClipSet
from relay.domain.delivery import DeliveryClaim
from relay.domain.origin import Origin, callback_origin
from relay.domain.watch import Watch
from relay.metrics import DEFERRED
from relay.store import DELIVERY_BATCH, Store
from workers.delivery.bodies import Bodies
from workers.delivery.links import LinkRefresher
from workers.delivery.logger import log
from workers.delivery.origins import OriginQueues
from workers.pump import Pump

CLAIM_BATCH = DELIVERY_BATCH  # deliveries claimed per script call, at most
CLAIM_AHEAD = 4  # deliveries claimed per lane, at most: the one in flight and three queued
AFTER_ERROR_S = 2.0  # a batch that failed before its jobs were queued is due again after this


def defer_step(delay: float) -> float:
    """A hand-back's delay (s) rounded up to its step: 0.1 s below 10 s, 0.5 s below 60 s,
    1 s above (hand-backs due in the same step share one ``extend``)."""
    step = 0.1 if delay < 10 else 0.5 if delay < 60 else 1.0
    return round(math.ceil(delay / step - 1e-9) * step, 3)


@dataclass(slots=True)
class Job:
    """One claimed delivery waiting for a lane."""

    watch: Watch
    clips: ClipSet | None  # what its body is built from (clips.ready), held with the job
    deadline: int  # the claim's lease deadline (ms), its token
    done: Callable[[], None]  # the attempt is over (or skipped): frees the claim's slot
    gone: bool = False  # its clips document is gone and could not be fetched again
    origin: Origin = ("", "", 0)  # where its callback goes (scheme, host, port)
    first: bool = False  # its claim was made with its event (DeliveryClaim.first)


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
    """Claims due deliveries and queues them as :class:`Job` s per origin in :attr:`jobs`
    (which wakes a parked lane for each that can run)."""

    schedule = c.DELIVERY_SCHEDULE_KEY
    name = "deliverer"

    def __init__(
        self,
        store: Store,
        *,
        lanes: int,
        lease_s: float,
        links: LinkRefresher,
        bodies: Bodies,
        origin_cap: int = 16,
    ) -> None:
        # claims run up to three lanes' worth ahead of the lanes: under load a claim's answer
        # takes a few loop turns of milliseconds each to reach them, and none should wait
        super().__init__(store, concurrency=CLAIM_AHEAD * lanes, lease_s=lease_s, batch=CLAIM_BATCH)
        self.links = links
        self.bodies = bodies
        self.jobs: OriginQueues[Job] = OriginQueues(origin_cap)
        # the deliverer's rule for jobs a full, slow origin would not start soon: handed
        # back as a batch is queued (and by its sweeper as estimates grow)
        self.defer_after_s = 1.0
        self.keep: Callable[[Origin], bool] | None = None  # origins never handed back
        self.slow: tuple[float, float] | None = None  # (slow_s, its budget): see overflow
        self._offered: deque[DeliveryClaim] = deque()
        self._cut: list[tuple[str, int]] = []  # claims of batches stopped before queuing
        self._late: set[asyncio.Task[None]] = set()  # hand-backs of offers made while stopping
        self.left_due = False  # a fan-out is leaving events due it had no room for

    def room(self) -> int:
        """How many more claims this worker can take now (a fan-out claims that many of
        the events it creates for it; the rest are due for any worker). 0 once it is
        stopping: nothing would queue them.

        Fan-outs whose create-and-claim calls are under way at once (the videos of one poll
        batch) each read the same room, so together they may claim up to that many times
        it, which this worker then works through in order. Kept: holding the room granted
        until the claims came (tried, 2026-12-08) left the other fan-outs' events due, to
        be claimed again with a read-back: 4.7-4.9 Redis commands a delivery in the
        eight-video scale run, 4.0-4.2 in most runs without (docs/performance.md)."""
        if self.stopping:
            return 0
        return max(self.concurrency - self.inflight - len(self._offered), 0)

    def crowded(self) -> bool:
        """Fewer claim slots are free than a claim call takes (or a quarter of them): due
        work may be waiting for them (queued jobs of an origin yet to answer are handed back
        then, not held)."""
        return self.room() < min(CLAIM_BATCH, self.concurrency // 4)

    def offer(self, claims: Sequence[DeliveryClaim]) -> None:
        """Deliveries this worker's poller claimed as it created them: queued from here
        without a read-back. Once it is stopping (a fan-out that asked for room before
        the stop) they are handed back at once, for the next worker, not left to their
        lease."""
        if self.stopping:
            task = asyncio.create_task(
                self.hand_back([(cl.watch_id, cl.deadline_ms) for cl in claims])
            )
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            return
        self._offered.extend(claims)
        if self.left_due:  # (its other events are in the schedule now: look there too)
            self.left_due = False
            self.wake()
        else:
            self.nudge()

    async def handed_back(self) -> None:
        """Wait for the hand-backs of offers made while stopping (those made so far)."""
        if self._late:
            await asyncio.gather(*self._late, return_exceptions=True)

    def handed(self, limit: int) -> Sequence[DeliveryClaim]:
        """The offered claims (taken before the schedule): one batch, one claim token --
        the claims of one fan-out round."""
        offered = self._offered
        out: list[DeliveryClaim] = []
        if offered:
            token = offered[0].deadline_ms
            while offered and len(out) < limit and offered[0].deadline_ms == token:
                out.append(offered.popleft())
        return out

    async def claim(self, limit: int) -> Sequence[DeliveryClaim]:
        """Claim deliveries due in the schedule."""
        rows = await self.store.deliveries.claim(limit=limit, lease_s=self.lease_s)
        for item, fetched in rows:
            if item.watch is not None:
                item.watch.clips_ms = fetched or None
        return [item for item, _ in rows]

    async def work(self, items: Sequence[DeliveryClaim], release: Callable[[], None]) -> None:
        """Queue a claimed batch for the lanes; return when all of it is done."""
        due: list[Watch] = []
        idle: list[str] = []
        deadline = items[0].deadline_ms if items else 0
        firsts = {item.watch_id for item in items if item.first}
        for item in items:
            watch = item.watch
            if watch is None or not watch.event_type or watch.status != "delivering":
                idle.append(item.watch_id)  # cancelled, or nothing to send: off the schedule
                release()
            else:
                due.append(watch)
        token = deadline  # (the claims' token: a link refresh renews them as it waits)

        def renewed(deadline: int) -> None:
            nonlocal token
            token = deadline

        # (the batch's clips documents are held until its jobs have them: other batches'
        # loads while this one waits on a link refresh cannot drop them)
        try:
            await self.store.deliveries.unschedule(idle, deadline)
            async with self.bodies.held(due) as missing:
                due, deadline, gone = await self.links.refresh(
                    due, deadline, release, missing, renewed
                )
                if not due:
                    return
                batch = Batch(len(due), release)
                clips = self.bodies.clips
                put = self.jobs.put
                for w in due:
                    origin = callback_origin(w.callback_url)
                    put(
                        Job(w, clips(w), deadline, batch.done, w.id in gone, origin, w.id in firsts)
                    )
        except asyncio.CancelledError:
            # stopped while getting its clips: none of it started, so its claims go back
            # with those of the jobs never started (take_cut), under their latest token.
            # (One taken over or settled meanwhile is not held under it: unchanged.)
            self._cut += [(w.id, token) for w in due]
            raise
        except (RedisError, OSError):
            # (Redis failed while it read or renewed: none of it started) its claims go
            # back, due after a moment (not at once: an error that repeats must not spin),
            # rather than after the whole lease; the pump logs the error. (Any other error
            # is a bug: its claims wait out their lease, and it comes back that seldom.)
            await self.hand_back([(w.id, token) for w in due], AFTER_ERROR_S)
            raise
        await self.hand_back_overflow()
        await batch.wait()

    async def hand_back_overflow(self, crowded: bool = False) -> None:
        """Hand back the queued jobs :meth:`OriginQueues.overflow` picks by this claimer's
        rule (*crowded*: claim slots are wanted now, whatever :meth:`crowded` says)."""
        crowded = crowded or self.crowded()
        extra = self.jobs.overflow(self.defer_after_s, self.keep, self.slow, crowded)
        if extra:
            await self.defer(extra)

    async def defer(self, jobs: Sequence[tuple[Job, float]]) -> None:
        """Hand queued jobs back to the schedule, each due after its delay (seconds): not an
        attempt. One token-checked ``extend`` per claim token and delay step (delays are
        rounded up: to 0.1 s below 10 s, 0.5 s below 60 s, 1 s above -- finer than the
        waves of an origin slow enough to be handed back, so each wave comes back when its
        room does, not with the next), sent together (pipelines of up to 64 calls); their
        claim slots are free at once."""
        groups: dict[tuple[int, float], list[str]] = {}
        for job, delay in jobs:
            groups.setdefault((job.deadline, defer_step(delay)), []).append(job.watch.id)
            job.done()
        DEFERRED.inc(len(jobs))
        try:
            await self.store.deliveries.hand_back(
                [(members, token, delay) for (token, delay), members in groups.items()]
            )
        except Exception as exc:  # Redis away: the leases run out by themselves
            log.warning("handing back deferred claims failed", error=type(exc).__name__)

    async def renew(self, job: Job) -> bool:
        """Extend a job's claim before an attempt could outlive it; False when it is no
        longer ours."""
        ours, deadline = await self.store.deliveries.extend(
            [job.watch.id], job.deadline, self.lease_s
        )
        job.deadline = deadline
        return job.watch.id in ours

    def take_cut(self) -> list[tuple[str, int]]:
        """The claims (watch id, deadline) of batches stopped before their jobs were
        queued (the deliverer is stopping)."""
        cut, self._cut = self._cut, []
        return cut

    def take_offered(self) -> list[DeliveryClaim]:
        """The offered claims not yet queued (the deliverer is stopping)."""
        left = list(self._offered)
        self._offered.clear()
        return left

    async def hand_back(self, claims: Sequence[tuple[str, int]], delay_s: float = 0.0) -> None:
        """Make claims -- (watch id, deadline) each -- of jobs that were never started due
        again at once (or after *delay_s*), for the next worker (instead of after their
        lease)."""
        by_deadline: dict[int, list[str]] = {}
        for watch_id, deadline in claims:
            by_deadline.setdefault(deadline, []).append(watch_id)
        try:  # (one pipeline for every claim token, as the overflow's hand-backs)
            await self.store.deliveries.hand_back(
                [(members, deadline, delay_s) for deadline, members in by_deadline.items()]
            )
        except Exception as exc:  # Redis away: the leases run out by themselves
            log.warning("handing back claims failed", error=type(exc).__name__)
