"""Fresh clip links: before a claimed batch is sent, fetch the clips again for each video
whose stored clips document is getting old (RELAY_LINK_REFRESH) -- or is missing -- and
store them as the video's one document, so every later attempt of its events carries them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.domain.clips import ClipSet
from relay.domain.clock import now_ms
from relay.domain.watch import Watch
from relay.http.upstream import UpstreamClient
from relay.settings import Settings
from relay.store import Store
from workers.delivery.bodies import Bodies
from workers.delivery.logger import log
from workers.upstream_budget import Paused, UpstreamGate

REFRESH_RETRY_S = 30.0  # a delivery whose clip links could not be refreshed waits this long


class LinkRefresher:
    """Asks the upstream for a video's clips again (within the shared budget) and stores
    them as the video's clips document."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        *,
        upstream: UpstreamClient,
        gate: UpstreamGate,
        bodies: Bodies,
    ) -> None:
        self.store = store
        self.settings = settings
        self.upstream = upstream
        self.gate = gate
        self.bodies = bodies
        self.lease_s = settings.lease

    async def refresh(
        self, items: list[Watch], deadline: int, release: Callable[[], None], missing: set[str]
    ) -> tuple[list[Watch], int]:
        """Fetch the clips again for the videos of ``clips.ready`` deliveries whose links are
        getting old, or whose clips document is *missing*: one clips request per video, all
        at once. Fetching can take a while, so afterwards the batch's claims are extended --
        and what another worker took over meanwhile is not sent. A video whose clips could
        not be had keeps its deliveries for a later try, with no attempt spent. Returns what
        to send and the claims' deadline from now on."""
        limit = now_ms() - int(self.settings.link_refresh * 1000)
        stale = {
            w.video_id
            for w in items
            if w.event_type == "clips.ready"
            and (w.video_id in missing or (w.clips_ms is not None and w.clips_ms < limit))
        }
        if not stale:
            return items, deadline
        fetched = dict(
            zip(stale, await asyncio.gather(*(self._fresh(v) for v in stale)), strict=True)
        )
        ours, deadline = await self.store.deliveries.extend(
            [w.id for w in items], deadline, self.lease_s
        )
        out: list[Watch] = []
        later: list[str] = []
        for w in items:
            refresh = w.video_id in stale and w.event_type == "clips.ready"
            got = fetched.get(w.video_id)
            if w.id not in ours:  # taken over by another worker: it sends this one
                release()
            elif refresh and got is None:
                later.append(w.id)
                release()
            else:
                if refresh and got is not None:
                    w.clips_ms = got
                out.append(w)
        await self.store.deliveries.defer(later, now_ms() + int(REFRESH_RETRY_S * 1000))
        for video_id in stale:
            log.info("clip links refreshed", video_id=video_id, ok=fetched[video_id] is not None)
        return out, deadline

    async def _fresh(self, video_id: str) -> int | None:
        """Fetch a video's clips, store and keep them; when they were fetched (None: they
        could not be had)."""
        try:
            await self.gate.acquire(max_pause=self.lease_s / 3)
        except Paused:
            return None
        reply = await self.upstream.clips(video_id)
        if reply.kind != "ok":
            return None
        fetched = now_ms()
        doc = ClipSet(reply.clips).doc()
        await self.store.deliveries.refresh_clips(video_id, doc, fetched)
        self.bodies.put(video_id, fetched, ClipSet.from_doc(doc))
        return fetched
