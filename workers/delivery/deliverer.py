"""The :class:`Deliverer`: claim -> send -> settle composed, and the lanes that run them.

Lanes -- RELAY_DELIVERY_CONCURRENCY coroutines -- send the attempts, one at a time each,
taking jobs from the claimer's queue (see :mod:`workers.delivery` for the whole path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.crypto import SecretBox
from relay.domain.delivery import DeliveryClaim
from relay.http.upstream import UpstreamClient
from relay.http.webhook import WebhookClient
from relay.settings import Settings
from relay.store import Store
from relay.tasks import finish_all
from workers.delivery.bodies import Bodies
from workers.delivery.claim import Claimer
from workers.delivery.gate import ClaimGate
from workers.delivery.links import LinkRefresher
from workers.delivery.logger import log
from workers.delivery.send import Sender
from workers.delivery.settle import Settler
from workers.upstream_budget import UpstreamGate

LEASE_MARGIN_S = 1.0  # a claim must outlast an attempt by this much, or it is renewed first


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
            store, lanes=self.lanes, lease_s=settings.lease, links=links, bodies=self.bodies
        )
        self._lane_tasks: list[asyncio.Task[None]] = []
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        freed = self.claimer.freed
        enough = min(n, self.claimer.concurrency)  # more never fits, however long it waits
        while (room := self.claimer.room()) < enough and (left := deadline - loop.time()) > 0:
            freed.clear()
            try:
                await asyncio.wait_for(freed.wait(), left)
            except TimeoutError:
                break
        return min(room, n)

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
        self._lane_tasks = [
            asyncio.create_task(self._lane(), name=f"deliverer-lane-{i}") for i in range(self.lanes)
        ]
        self.claimer.start()
        self.settler.start()

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; finish the attempts in flight and those queued (up to *grace_s*);
        hand back the claims of jobs never started; record every outcome. The flusher
        runs on through the grace, recording outcomes as they arrive, so none waits for
        the end of the grace while its claim's lease runs out (another worker would then
        send it again)."""
        await self.claimer.stop(grace_s)
        self._closing = True
        jobs = self.claimer.jobs
        unsent = list(jobs)
        jobs.clear()
        for job in unsent:
            job.done()
        self.claimer.wake_lanes(len(self.claimer.idle))
        await finish_all(self._lane_tasks, 0.5)
        never = [(job.watch.id, job.deadline) for job in unsent]
        never += [(cl.watch_id, cl.deadline_ms) for cl in self.claimer.take_offered()]
        await self.claimer.hand_back(never)
        await self.settler.stop()

    async def _lane(self) -> None:
        """Send queued jobs one after another, until the deliverer closes."""
        loop = asyncio.get_running_loop()
        claimer = self.claimer
        jobs, idle = claimer.jobs, claimer.idle
        attempt = self.sender.attempt
        build = self.bodies.build
        margin_ms = self._margin_ms
        ask = self.gate.ask
        while not self._closing:
            if not jobs:
                parked = loop.create_future()
                idle.append(parked)
                await parked
                continue
            job = jobs.popleft()
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
                body = None if job.gone else build(job.watch, job.clips)
                if held is not None and not await held:
                    continue
                if body is None:  # no clips to build it from, stored or fetched
                    self.sender.unsent(job.watch, "the video's clips are gone", job.deadline)
                    continue
                await attempt(job.watch, body, job.deadline)
            except Exception:  # the claim stays leased: the delivery comes back after it
                log.exception("delivery failed", watch_id=job.watch.id)
            finally:
                job.done()
