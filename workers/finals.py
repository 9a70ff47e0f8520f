"""The fan-out: a video's final event given to every watch waiting on it, a chunk at a time.

The poller decides that a video is final (:class:`Final`); :class:`FanOut` makes its events.
Each chunk of FINALIZE_CHUNK watches is one ``finalize`` call made under the poller's claim
of the video: it gives the chunk's watches their event and claims as many of them as this
worker's deliverer has room for, which go to it without a read-back (the others are due
for any worker). The watches come in the order :mod:`workers.fanout` gives them -- round
robin over tenants and origins, an origin yet to answer getting a wave or two ahead, a slow
origin's events paced and made last -- and the deliverer's hooks (:attr:`FanOut.room`,
:attr:`~FanOut.pace`, :attr:`~FanOut.origin_room`) say what it can take.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from relay import logs
from relay.domain.clips import ClipSet
from relay.domain.delivery import DeliveryClaim, FinalEvent
from relay.domain.video import VideoState
from relay.store import DELIVERY_BATCH, Store
from relay.store.codec import fan_out_order
from workers.fanout import FanOutOrder, Pages
from workers.fanout import Room as OriginRoom
from workers.leases import Lease, Leases

log = logs.get("workers.poller")  # the name operators know, from before the fan-out moved
FINALIZE_CHUNK = DELIVERY_BATCH  # watches given their events per round, at most
PACED_PAUSE_S = 0.05  # a fan-out waits this long after a chunk of paced events only
ROOM_WAIT_S = 0.05  # a fan-out waits this long, at most, for its deliverer to have room
ANSWER_WAIT_S = 0.005  # ... and in steps of this for an origin to answer (a wave is out)

Room = Callable[[int, float], Awaitable[int]]
"""How many of *n* claims this worker's deliverer can take, waiting up to a while for room."""


async def _no_room(n: int, wait_s: float) -> int:
    return 0


Pace = Callable[[Sequence[str]], list[int]]
"""For a fan-out's events, by origin tag: 0 (claimable now) or in how many ms each is due."""


def _no_pace(tags: Sequence[str]) -> list[int]:
    return [0] * len(tags)


Created = Callable[[Sequence[DeliveryClaim]], None]
"""Called with the events a fan-out round made and claimed for this worker (its offer)."""


@dataclass(slots=True)
class Final:
    """A video's final outcome: the event every waiting watch gets (made a chunk at a
    time: the first webhooks leave while a large fan-out is still being made)."""

    event: FinalEvent
    clips: ClipSet | None = None  # clips.ready: the clips its bodies are built from
    # the waiting watches (id, origin tag) in fan-out order, when deciding read them
    watch_ids: Sequence[tuple[str, str]] | None = None
    # watch_ids are some of them (the others wait on clips still rendering): the video is
    # not released at the end, its poller writes its next poll
    partial: bool = False


class FanOut:
    """Makes the events of the videos its poller finds final, under the poller's claims."""

    def __init__(self, store: Store, leases: Leases, lease_s: float) -> None:
        self.store = store
        self.leases = leases
        self.lease_s = lease_s
        self.on_events: Created = lambda claims: None  # (the deliverer's offer)
        self.room: Room = _no_room  # how many claims the deliverer can take
        self.pace: Pace = _no_pace  # which events its origins would not start soon
        self.origin_room: OriginRoom | None = None  # events an origin may get before others
        self.on_clips: Callable[[str, int, ClipSet], None] = lambda vid, at, clips: None

    async def run(self, state: VideoState, final: Final, lease: Lease) -> bool:
        """Give every watch of the video its final event (a chunk at a time, as the module
        says: delivery starts after the first chunk) and stop polling it: the last chunk
        releases the video (not a :attr:`Final.partial` one: its poller writes the next
        poll). Idempotent all the way: a worker that dies in between leaves the video
        claimed, and whoever polls it next creates only the events still missing. False
        when the claim was lost on the way."""
        vid = state.video_id
        ids, rest, pages = final.watch_ids, None, None
        if ids is None:  # the first page now, the others read while its events are made
            cursor, entries = await self.store.videos.waiting_page(vid)
            ids = fan_out_order(entries)
            if cursor:
                pages = Pages()
                rest = asyncio.create_task(
                    self.store.videos.waiting_rest(vid, cursor, dict(entries), pages.add)
                )
        order = FanOutOrder(ids, rest, pages)
        try:
            if final.clips is not None:
                self.on_clips(vid, final.event.at_ms, final.clips)
            created = await self._fan_out(vid, final.event, order, lease, final.partial)
        finally:
            order.close()
        if created >= 0:
            log.info(
                "video final" if not final.partial else "video final for some watches",
                video_id=vid,
                status=state.status,
                watches=len(order),
                events=created,
            )
        return created >= 0

    async def _fan_out(
        self, vid: str, event: FinalEvent, order: FanOutOrder, lease: Lease, partial: bool
    ) -> int:
        """The chunks of :meth:`run`: the number of events made, -1 when the poll claim
        was lost (the video's new owner finishes the fan-out)."""
        created = 0
        wait_budget = self.lease_s / 5
        first, stored = True, False  # stored: the clips document, by an earlier chunk
        while first or not order.done:
            first = False
            chunk, wait_budget = await self._next_chunk(order, FINALIZE_CHUNK, wait_budget)
            # events of an origin this worker would not start soon are due when it would
            # (paced: never claimed, nothing to hand back), and its other watches go last
            later = self.pace([tag for _, tag in chunk])
            order.slow(tag for (_, tag), d in zip(chunk, later, strict=True) if d)
            claimable = sum(1 for d in later if not d)
            # a busy worker leaves the rest due for any worker, one that keeps up claims them
            # as made (no second read); it waits for room a fifth of the video's lease in all
            waited = time.monotonic()
            room = await self.room(claimable, min(ROOM_WAIT_S, wait_budget)) if claimable else 0
            wait_budget -= time.monotonic() - waited
            made, claimed = await self.leases.write(
                lease,
                self._finalize(vid, event, [w for w, _ in chunk], room, later, stored),
                lambda got: got[0] < 0,
            )
            if made < 0:
                log.warning("poll claim lost mid fan-out", video_id=vid, events=created)
                return -1
            stored = stored or bool(made and event.clips_doc)  # later chunks add references
            if claimed:  # (before the release: a release that fails leaves them queued)
                self.on_events(claimed)
            if order.done:
                # (two script calls rather than one pipeline: a pipeline of scripts costs an
                # extra SCRIPT EXISTS round trip, and the two need not be atomic together)
                if not partial:
                    await self.leases.release(lease)
            elif not claimed and not claimable:
                # a chunk of paced events only: none is due soon, so the deliveries under
                # way (this worker's CPU and Redis') go first
                await asyncio.sleep(PACED_PAUSE_S)
            created += made
        return created

    async def _next_chunk(
        self, order: FanOutOrder, size: int, wait_budget: float
    ) -> tuple[list[tuple[str, str]], float]:
        """The fan-out's next chunk, origins yet to answer getting no more than a wave or
        two ahead of the others; what is left of *wait_budget*."""
        waited, ahead = 0.0, True
        while True:
            ahead = await order.fill() or ahead
            chunk = order.take(size, self.origin_room, ahead)
            if chunk or order.done:
                return chunk, wait_budget
            # every origin in reach has a wave out and no answer yet: a moment for one to
            # answer (fast: its events go on; slow: they are paced), then they go as they
            # are. (No sweep ahead meanwhile -- only the watches that wait already, or the
            # rest of the read if it comes in: the order is round robin, so the watches in
            # reach stand for the others, and watches swept into waiting would go first.)
            ahead = False
            if waited >= ROOM_WAIT_S or wait_budget <= 0:
                chunk = order.take(size)
                if chunk or order.done:
                    return chunk, wait_budget
                ahead = await order.fill(wait=True)  # only unread pages are left: the next one
                continue
            began = time.monotonic()
            await asyncio.sleep(ANSWER_WAIT_S)
            slept = time.monotonic() - began  # (a busy loop wakes later than asked)
            waited += slept
            wait_budget -= slept

    def _finalize(
        self,
        vid: str,
        event: FinalEvent,
        chunk: Sequence[str],
        room: int,
        later: Sequence[int],
        stored: bool,
    ) -> Callable[[int], Awaitable[tuple[int, list[DeliveryClaim]]]]:
        """One fan-out chunk's ``finalize``, to be made under the poll claim's token
        (*stored*: its clips document, by an earlier chunk)."""
        paced = later if any(later) else None

        def call(token: int) -> Awaitable[tuple[int, list[DeliveryClaim]]]:
            return self.store.deliveries.finalize(
                vid,
                event,
                chunk,
                claim=room,
                lease_s=self.lease_s,
                poll_token=token,
                later_ms=paced,
                doc_stored=stored,
            )

        return call
