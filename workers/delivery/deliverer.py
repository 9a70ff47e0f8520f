"""The :class:`Deliverer`: claim -> send -> settle composed, and the lanes that run them.

Lanes -- RELAY_DELIVERY_CONCURRENCY coroutines -- send the attempts, one at a time each,
taking jobs from the claimer's queues: the next job of the next origin that has fewer than
RELAY_ORIGIN_CONCURRENCY attempts in flight, round robin over origins
(:mod:`workers.delivery.origins`); an origin whose circuit is open gets its attempts recorded
``circuit open`` without a connection (:mod:`workers.delivery.breaker`). A sweeper hands the
claims of jobs a full, slow origin would not start soon back to the schedule (see
:mod:`workers.delivery` for the whole path).

Many dead origins at once -- a tenant's hundred receivers that accept and never answer, each
with a few watches, none reaching its breaker's count -- could still hold every lane for a
whole attempt timeout. So when every lane is busy and jobs wait, an attempt on the wire for
over STALL_S stops holding its lane: another lane takes its place (at most as many as there
are lanes: in flight stays under twice RELAY_DELIVERY_CONCURRENCY), and while any lane is
replaced, an origin that is not answering (none yet, its last attempt unanswered, or one on
the wire for STALL_S) gets one attempt at a time, a probe, in a quarter of the lanes at most
(:meth:`~workers.delivery.origins.OriginQueues.short`) -- the lanes go to the origins that
answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.crypto import SecretBox
from relay.domain.delivery import DeliveryClaim
from relay.http.upstream import UpstreamClient
from relay.http.webhook import WebhookClient
from relay.metrics import DEFERRED, LANES_STALLED, ORIGIN_WAITING
from relay.settings import Settings
from relay.store import Store
from relay.store.feeds import ALL_ORIGINS
from relay.tasks import finish, finish_all
from workers.delivery.bodies import Bodies
from workers.delivery.breaker import Breakers, Verdict
from workers.delivery.claim import Claimer
from workers.delivery.gate import ClaimGate
from workers.delivery.links import LinkRefresher
from workers.delivery.logger import log
from workers.delivery.send import Sender
from workers.delivery.settle import Settler
from workers.feeds import Follower
from workers.upstream_budget import UpstreamGate

LEASE_MARGIN_S = 1.0  # a claim must outlast an attempt by this much, or it is renewed first
DEFER_AFTER_S = 1.0  # a queued job its origin would not start within this is handed back
SLOW_S = 0.025  # an origin whose attempts take this long or more is slow: it holds and is
SLOW_AFTER_S = 0.1  # ... given only the jobs it would start within this; the others are
SLOW = (SLOW_S, SLOW_AFTER_S)  # handed back, and a fan-out's events for it are paced
SWEEP_S = 0.1  # how often the queues are looked over for such jobs
STALL_S = 1.0  # an attempt on the wire this long gives its lane up when lanes are short
PROBES_PER = 4  # ... and then origins not answering get probes in a quarter of the lanes
FORGET_EVERY_S = 10.0  # how often origins idle for long are forgotten


class _Lane:
    """A lane's attempt on the wire (when it went: loop time), and whether another lane has
    taken its place (it ends with that attempt)."""

    __slots__ = ("replaced", "since")

    def __init__(self) -> None:
        self.since: float | None = None
        self.replaced = False


class Deliverer:
    """Claims due deliveries and performs them."""

    def __init__(
        self,
        store: Store,
        client: WebhookClient,
        settings: Settings,
        *,
        box: SecretBox,
        upstream: UpstreamClient,
        gate: UpstreamGate,
    ) -> None:
        self.lanes = settings.delivery_concurrency
        self.settler = Settler(store)
        self.sender = Sender(client, settings, box=box, settler=self.settler)
        self.bodies = Bodies(store)
        self.gate = ClaimGate(store)
        links = LinkRefresher(store, settings, upstream=upstream, gate=gate, bodies=self.bodies)
        self.claimer = Claimer(
            store,
            lanes=self.lanes,
            lease_s=settings.lease,
            links=links,
            bodies=self.bodies,
            origin_cap=settings.origin_concurrency,
        )
        self.breakers = Breakers(settings.breaker_failures, settings.breaker_cooldown)
        self.claimer.defer_after_s = DEFER_AFTER_S
        self.claimer.keep = self.breakers.is_open
        self._circuits = store.circuits
        self._closes_seen_ms: int | None = None  # Redis' ms of the last catch-up
        self.circuit_news = Follower(
            store.circuits.feed, self._close_circuits, "circuit closes", self._closes_missed
        )
        self._following: asyncio.Task[None] | None = None
        self.claimer.slow = SLOW
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._lanes: list[_Lane] = []
        self.stalled = 0  # lanes replaced whose attempt is still on the wire
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._margin_ms = int((settings.delivery_timeout + LEASE_MARGIN_S) * 1000)

    @property
    def sent(self) -> int:
        """Attempts made so far."""
        return self.sender.sent

    def offer(self, claims: Sequence[DeliveryClaim]) -> None:
        """Deliveries this worker's poller claimed as it created them: see
        :meth:`~workers.delivery.claim.Claimer.offer`."""
        self.claimer.offer(claims)

    async def room(self, n: int, wait_s: float) -> int:
        """How many of *n* claims this worker can take, waiting up to *wait_s* for room
        for all of them."""
        if self.claimer.stopping:  # (nothing would queue them: due for any worker)
            return 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        freed = self.claimer.freed
        enough = min(n, self.claimer.concurrency)  # more never fits, however long it waits
        if self.claimer.room() < enough:
            # a slow origin's backlog, or one yet to answer, gives its room back
            await self._hand_back_overflow(crowded=True)
        while (room := self.claimer.room()) < enough and (left := deadline - loop.time()) > 0:
            freed.clear()
            try:
                await asyncio.wait_for(freed.wait(), left)
            except TimeoutError:
                break
        if room < n:  # (until its next offer, which looks in the schedule too)
            self.claimer.left_due = True
        return min(room, n)

    def pace(self, tags: Sequence[str]) -> list[int]:
        """For a fan-out's events, by their callbacks' origin tags: 0 for those this worker
        would start soon (claimable), else in how many ms their origin is expected to have
        room for them (:meth:`~workers.delivery.origins.OriginQueues.plan`)."""
        later = self.claimer.jobs.plan(tags, SLOW_AFTER_S, SLOW_S, self.breakers.is_open)
        paced = sum(1 for d in later if d)
        if paced:
            DEFERRED.inc(paced)
        return later

    def origin_room(self, tag: str) -> int | None:
        """How many more of a fan-out's events an origin may get before other origins'
        (:meth:`~workers.delivery.origins.OriginQueues.unanswered_room`)."""
        return self.claimer.jobs.unanswered_room(tag, SLOW_S, self.breakers.is_open)

    def keep_clips(self, video_id: str, event_at: int, clips: ClipSet) -> None:
        """The clips of a fan-out (its events made at *event_at*, when they were fetched) as
        this worker's poller just stored them: its bodies are built from these without
        reading them back."""
        self.bodies.put((video_id, event_at), event_at, clips)

    def wake(self) -> None:
        """New deliveries were just scheduled: look for them now."""
        self.claimer.wake()

    def start(self) -> None:
        """Start the lanes, claiming and the result flusher."""
        for _ in range(self.lanes):
            self._add_lane()
        self.claimer.start()
        self.settler.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="deliverer-origin-sweep")
        self._following = asyncio.create_task(self.circuit_news.run(), name="circuit-closes")

    def _add_lane(self) -> None:
        lane = _Lane()
        self._lanes.append(lane)
        n = len(self._lane_tasks)
        self._lane_tasks.append(asyncio.create_task(self._lane(lane), name=f"deliverer-lane-{n}"))

    def _replace_stalled(self) -> None:
        """When every lane is busy and jobs wait: each attempt on the wire for over STALL_S
        gives its lane up to a new one (at most :attr:`lanes` at once), and while any has,
        the origins of such attempts get no new one (see the module)."""
        jobs = self.claimer.jobs
        if len(jobs) and not jobs.idle and self.stalled < self.lanes:
            now = asyncio.get_running_loop().time()
            for lane in list(self._lanes):
                if self.stalled >= self.lanes:
                    break
                if lane.since is not None and not lane.replaced and now - lane.since > STALL_S:
                    lane.replaced = True
                    self.stalled += 1
                    self._add_lane()
        if self.stalled:
            jobs.short(STALL_S, max(self.lanes // PROBES_PER, 1))
        elif jobs.stall_s is not None:
            jobs.short(None)
        LANES_STALLED.set(self.stalled)
        if len(self._lane_tasks) > 2 * self.lanes:  # (lanes replaced that have ended)
            self._lane_tasks = [t for t in self._lane_tasks if not t.done()]
            self._lanes = [lane for lane in self._lanes if not lane.replaced or lane.since]

    async def _closes_missed(self) -> None:
        """(Re)subscribed: apply the closes asked while this worker's feed was down (none
        at its first subscription: its circuits are new)."""
        tags, self._closes_seen_ms = await self._circuits.closed_since(self._closes_seen_ms)
        for tag in tags:
            self._close_circuits(tag)

    def _close_circuits(self, tag: str) -> None:
        """A redelivery or recovery was started (its origin's tag, or ``*``): close those
        circuits, so the attempts asked for are sent."""
        closed = self.breakers.close(None if tag == ALL_ORIGINS else tag)
        if closed:
            log.info("circuits closed for a redelivery", origins=closed, origin_tag=tag)

    async def _sweep(self) -> None:
        """Every SWEEP_S: hand back the claims of queued jobs that a full, slow origin would
        not start within DEFER_AFTER_S (due when it is expected to have room), so they hold
        no claim slot that other origins' work needs; every FORGET_EVERY_S, forget the
        origins idle for long, close the circuits nothing is sent to any more and forget old
        failure streaks."""
        swept = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_S)
            if self._closing:
                return
            ORIGIN_WAITING.set(len(self.claimer.jobs))
            try:  # (the lanes' shortage ends only here: this loop must not die)
                self._replace_stalled()
            except Exception:
                log.exception("replacing stalled lanes failed")
            await self._hand_back_overflow()
            if time.monotonic() - swept >= FORGET_EVERY_S:
                swept = time.monotonic()
                self.claimer.jobs.forget_idle()
                self.breakers.close_idle()
                self.breakers.forget_stale()

    async def _hand_back_overflow(self, crowded: bool = False) -> None:
        if len(self.claimer.jobs) and not self._closing:
            await self.claimer.hand_back_overflow(crowded)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming, and end within *grace_s* with every outcome recorded:

        - the claims offered by this worker's fan-outs and not yet queued go back at once
          (they would otherwise wait out the grace unsent, for the next worker);
        - queued jobs start for as long as the grace leaves room for an attempt after them
          (the grace less ``RELAY_DELIVERY_TIMEOUT`` and a second; a second at least),
          then the ones never started go back;
        - the attempts on the wire get the rest of the grace to end (before, 0.5 s: a
          backlog used the grace up and those attempts were cut off, unrecorded, and sent
          again after their leases -- a review).

        The flusher runs on meanwhile, recording outcomes as they arrive, so none waits for
        the end of the grace while its claim's lease runs out."""
        loop = asyncio.get_running_loop()
        end = loop.time() + grace_s
        # (a second at least, or the whole of a shorter grace: a claim call under way
        # returns its claims rather than being cut, with them taken and unanswered)
        queue_s = max(grace_s - self._margin_ms / 1000, min(grace_s, 1.0))
        claiming = asyncio.create_task(self.claimer.stop(queue_s))
        await asyncio.sleep(0)  # (its pump has seen the stop: it takes no more offers)
        offered = [(cl.watch_id, cl.deadline_ms) for cl in self.claimer.take_offered()]
        if offered:
            await self.claimer.hand_back(offered)
        await claiming
        self._closing = True
        self.circuit_news.stop()
        if self._following is not None:
            await finish(self._following, 2.0)
        if self._sweeper is not None:
            # (ends after its round: cancelled in a hand-back, the jobs it took off the
            # queues would be neither queued nor handed back -- a review)
            await finish(self._sweeper, SWEEP_S + 2.0)
        jobs = self.claimer.jobs
        unsent = jobs.drain()
        for job in unsent:
            job.done()
        jobs.wake_all()
        never = [(job.watch.id, job.deadline) for job in unsent]
        never += [(cl.watch_id, cl.deadline_ms) for cl in self.claimer.take_offered()]
        never += self.claimer.take_cut()
        handing = asyncio.create_task(self.claimer.hand_back(never))
        await finish_all(self._lane_tasks, max(end - loop.time(), 0.5))
        LANES_STALLED.set(0)
        await handing
        await self.claimer.handed_back()
        await self.settler.stop()

    async def _lane(self, lane: _Lane) -> None:
        """Send queued jobs one after another, until the deliverer closes (or, once another
        lane took its place, its attempt on the wire ends)."""
        loop = asyncio.get_running_loop()
        claimer = self.claimer
        jobs = claimer.jobs
        idle = jobs.idle
        attempt = self.sender.attempt
        build = self.bodies.build
        margin_ms = self._margin_ms
        ask = self.gate.ask
        breakers = self.breakers
        while not (self._closing or lane.replaced):
            job = jobs.take()
            if job is None:
                parked = loop.create_future()
                idle.append(parked)
                await parked
                continue
            verdict = breakers.check(job.origin)
            answered: bool | None = None
            took: float | None = None
            sent = False
            went: float | None = None
            try:
                # the claim must hold right before the attempt: renewing it checks that
                # too; else the gate does (a cancelled watch is off the schedule), while
                # the body is built
                if job.deadline - now_ms() < margin_ms:
                    if not await claimer.renew(job):
                        continue  # cancelled, or taken over by another worker
                    held = None
                else:
                    held = ask(job.watch.id, job.deadline)
                body = None if job.gone or verdict is Verdict.OPEN else build(job.watch, job.clips)
                if held is not None and not await held:
                    continue
                if verdict is Verdict.OPEN:  # a failed attempt, no connection
                    breakers.refused_one()
                    self.sender.unsent(
                        job.watch, "circuit open", job.deadline, prefix="", first=job.first
                    )
                    continue
                if body is None:  # no clips to build it from, stored or fetched
                    self.sender.unsent(
                        job.watch, "the video's clips are gone", job.deadline, first=job.first
                    )
                    continue
                went = jobs.sending(job.origin)  # (what the origin's estimate times)
                sent = True
                started = lane.since = loop.time()
                answered = await attempt(job.watch, body, job.deadline, job.first)
                took = loop.time() - started
            except Exception:  # the claim stays leased: the delivery comes back after it
                log.exception("delivery failed", watch_id=job.watch.id)
            finally:
                lane.since = None
                if lane.replaced:
                    self.stalled -= 1
                if verdict is not Verdict.OPEN:
                    breakers.record(job.origin, answered, verdict is Verdict.PROBE)
                jobs.finish(job.origin, took, sent=sent, started=went, answered=answered)
                job.done()
